"""A demo page for a fine-tuned classifier: `python scripts/demo.py out` (or me/model; --push-space me/demo)."""

import argparse

from hf_finetune.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Start a Gradio page where a person uploads or drops an image and sees its labels with "
                    "probabilities as bars (the same numbers as scripts/predict.py), with the model card's summary "
                    "and, for a run folder, example photos of its eval split. Needs the demo extra: "
                    'pip install -e ".[demo]".')
    parser.add_argument("model", help="A run's --output-dir, or a Hub id (me/model, hf-hub:me/model).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (default 127.0.0.1; 0.0.0.0 "
                                                            "for the whole network).")
    parser.add_argument("--port", type=int, default=7860, help="Port to serve on (default 7860).")
    parser.add_argument("--push-space", metavar="SPACE",
                        help="Instead of serving here, publish the page as a Hugging Face Space (app.py, "
                             "requirements.txt, README.md) that loads MODEL by its Hub name; MODEL must then be "
                             "a Hub id (push a run with scripts/push.py first). The token comes from HF_TOKEN or "
                             "`hf auth login`.")
    parser.add_argument("--private", action="store_true", help="With --push-space: make a new Space private.")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: choose a port from 1 to 65535")

    if args.push_space:
        from hf_finetune.publish.space import push_space
        from hf_finetune.serve.demo import hub_model_id

        print(f"pushed: {push_space(hub_model_id(args.model), args.push_space, args.private)}")
        return
    from hf_finetune.serve.demo import create_demo

    create_demo(args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    run_cli(main)

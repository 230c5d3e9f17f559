"""The demo page: an image in, its labels with probabilities as bars out, with the model card's summary.

This file is also the `app.py` of the Hugging Face Space that `scripts/demo.py --push-space` publishes, so it
imports nothing of hf_finetune: only gradio, timm, torch and huggingface_hub, which the Space's requirements.txt
installs. `build_app` is the page; `main` (the Space) loads the model by its Hub name with timm's own eval
transform, and scores as its config.json says: a softmax, or for `problem_type` multi_label_classification a
sigmoid per label with the label's threshold from `thresholds`. `scripts/demo.py` builds the same page around
hf_finetune's classifier (predict.py's preprocessing and decisions).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

MODEL_ID = None  # the Hub model repo the Space serves; written into the Space's copy of this file
HEADLINE_METRICS = {"accuracy": "Accuracy", "map": "mAP"}  # model-index metric type -> the summary's name
MULTI_LABEL = "multi_label_classification"  # config.json's problem_type of a multi-label model (transformers')


def build_app(classify: Callable, title: str, summary: str, examples: Sequence[str] = (), num_labels: int = 5,
              multi_label: bool = False):
    """A gradio Blocks page: `classify(path)` maps an uploaded image file to {label: probability}; with
    `multi_label`, to ({label: sigmoid score}, the text of `decided_text`), shown as bars and as the labels
    predicted present."""
    import gradio as gr

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\n\n{summary}")
        with gr.Row():
            image = gr.Image(type="filepath", label="Image (upload, drop or paste)", sources=["upload", "clipboard"])
            with gr.Column():
                outputs = [gr.Label(num_top_classes=min(num_labels, 10),
                                    label="Scores (a sigmoid per label)" if multi_label else "Labels")]
                if multi_label:
                    outputs.append(gr.Textbox(label="Predicted labels (score at or above the label's threshold)",
                                              lines=min(num_labels, 10)))
        button = gr.Button("Classify", variant="primary")
        if examples:
            gr.Examples(examples=[[path] for path in examples], inputs=image, label="Examples from the eval split")
        button.click(classify, inputs=image, outputs=outputs, api_name="classify")
        image.upload(classify, inputs=image, outputs=outputs, api_name=False)
    return app


def decided_text(decided: Sequence[tuple[str, float]], thresholds: dict[str, float]) -> str:
    """The labels predicted present, one a line with its score and threshold, highest score first."""
    if not decided:
        return "none: no label's score reaches its threshold"
    return "\n".join(f"{label}: {score:.4f} (threshold {thresholds[label]:.4f})"
                     for label, score in sorted(decided, key=lambda pair: -pair[1]))


def card_summary(card) -> str:
    """Task, data and accuracy (mAP for multi-label) of a huggingface_hub ModelCard's metadata, as one Markdown
    paragraph."""
    data = card.data
    lines = [f"**Task:** {data.pipeline_tag or 'image-classification'}"]
    results = data.eval_results or []
    dataset = results[0].dataset_name if results else ", ".join(data.datasets or []) or None
    if dataset:
        lines.append(f"**Data:** {dataset}")
    for result in results:
        if result.metric_type in HEADLINE_METRICS and not (result.metric_config or result.metric_args):
            lines.append(f"**{HEADLINE_METRICS[result.metric_type]}:** {result.metric_value:.4f} on the "
                         f"`{result.dataset_split}` split")
    return " · ".join(lines)


def main(model_id: Optional[str] = MODEL_ID):
    """The Space: the model by its Hub name, timm's eval transform, the Hub card's summary; scores and
    thresholds as the model's config.json says."""
    import json

    import timm
    import torch
    from huggingface_hub import ModelCard, hf_hub_download
    from PIL import Image

    model = timm.create_model(f"hf-hub:{model_id}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    label_names = model.pretrained_cfg.get("label_names") or [str(index) for index in range(model.num_classes)]
    with open(hf_hub_download(model_id, "config.json")) as file:
        config = json.load(file)
    multi_label = config.get("problem_type") == MULTI_LABEL
    thresholds = dict(zip(label_names, config.get("thresholds") or [0.5] * len(label_names)))

    def classify(path: str):
        with Image.open(path) as image, torch.no_grad():
            logits = model(transform(image.convert("RGB")).unsqueeze(0))[0]
        if not multi_label:
            return dict(zip(label_names, logits.softmax(dim=-1).tolist()))
        scores = dict(zip(label_names, logits.sigmoid().tolist()))
        decided = [(label, score) for label, score in scores.items() if score >= thresholds[label]]
        return scores, decided_text(decided, thresholds)

    summary = card_summary(ModelCard.load(model_id))
    return build_app(classify, model_id.split("/")[-1], summary, num_labels=len(label_names), multi_label=multi_label)


if __name__ == "__main__":
    main().launch()

"""`scripts/demo.py MODEL`: the demo page (space_app.build_app) around hf_finetune's own classifier.

An uploaded file is classified exactly as `scripts/predict.py` classifies it (load_classifier, the eval crop of
the file, its task's scores over all labels: a softmax, or for multi-label a sigmoid per label with the labels
at or above their thresholds). The page shows the model card's summary (README.md of the run folder or of
the Hub repo) and, for a run folder whose data is a local image folder or manifests, a few photos of its eval
split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from hf_finetune.data.manifest import recorded_manifest_rows
from hf_finetune.errors import UserError, first_line
from hf_finetune.serve.predict import image_logits, load_classifier, timm_model_name

EXTRA_HINT = 'pip install -e ".[demo]"'
MAX_EXAMPLES = 6


def require_gradio() -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError(f"gradio is not installed: the demo needs the demo extra, `{EXTRA_HINT}`") from None


def create_demo(model: str):
    """The gradio app for MODEL (a run folder or a Hub id), not yet launched."""
    from hf_finetune.serve.space_app import build_app, decided_text

    require_gradio()
    classifier = load_classifier(model)
    labels, task = classifier.label_names, classifier.task
    # Multi-label (thresholds in its config.json): the labels at or above them too, decided as predict.py does.
    saved_thresholds = task.saved_config().get("thresholds")
    thresholds = dict(zip(labels, saved_thresholds)) if saved_thresholds else None

    def classify(path: Optional[str]):
        if not path:
            raise _gradio_error("no image: upload or drop one first")
        try:
            logits = image_logits(classifier, [path])
        except UserError as error:  # an unreadable upload: said on the page, the app stays up
            raise _gradio_error(str(error)) from None
        scores = dict(task.top_labels(logits, top_k=len(labels))[0])
        decided = task.decided_labels(logits)
        return scores if decided is None else (scores, decided_text(decided[0], thresholds))

    title = Path(model).resolve().name if Path(model).is_dir() else str(model).removeprefix("hf-hub:")
    return build_app(classify, title, load_summary(model), eval_examples(model), num_labels=len(labels),
                     multi_label=thresholds is not None)


def _gradio_error(message: str) -> Exception:
    import gradio as gr

    return gr.Error(message)


def load_summary(model: str) -> str:
    """The summary of MODEL's card (space_app.card_summary), or a line saying there is none."""
    from huggingface_hub import ModelCard

    from hf_finetune.serve.space_app import card_summary

    name = timm_model_name(model)
    source = Path(name[len("local-dir:"):]) / "README.md" if name.startswith("local-dir:") else name[len("hf-hub:"):]
    try:
        return card_summary(ModelCard.load(source))
    except Exception as error:  # no card, unreadable metadata, offline: the page works without a summary
        return f"(no model card summary: {first_line(error)})"


def eval_examples(model: str, limit: int = MAX_EXAMPLES) -> list[str]:
    """Up to `limit` photos of a run folder's eval split (a class folder's, one class after another, or the first
    rows of its eval manifest); [] when it has none here."""
    record = Path(model) / "run_config.json"
    if not record.is_file():
        return []
    run = json.loads(record.read_text())
    config = run.get("config", {})
    try:
        manifests = recorded_manifest_rows(config, keys=("eval",))
    except UserError:  # the manifests moved or changed since: the page works without examples
        return []
    if manifests is not None:
        return [str(path) for path, _ in manifests.get("eval", [])[:limit] if path.is_file()]
    data_dir, split = config.get("data_dir"), run.get("data", {}).get("eval_split")
    folder = Path(data_dir) / split if data_dir and split else None
    if folder is None or not folder.is_dir():  # a Hub dataset, a holdout carved from train, or moved away
        return []
    from hf_finetune.data.folders import IMAGE_EXTENSIONS

    per_class = [sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
                 for class_dir in sorted(folder.iterdir()) if class_dir.is_dir()]
    rounds = (files[index] for index in range(max(map(len, per_class), default=0))
              for files in per_class if index < len(files))
    return [str(path) for _, path in zip(range(limit), rounds)]


def hub_model_id(model: str) -> str:
    """MODEL as a plain Hub id (`me/model`, `hf-hub:me/model`); UserError for a local folder."""
    name = timm_model_name(model)
    if name.startswith("local-dir:"):
        raise UserError(f"{model} is a local folder: a Space loads its model from the Hub; push it with "
                        f"`python scripts/push.py {model} me/model`, then pass me/model")
    return name[len("hf-hub:"):]

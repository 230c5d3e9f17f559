"""The demo page: an image in, its labels with probabilities as bars out, with the model card's summary.

This file is also the `app.py` of the Hugging Face Space that `scripts/demo.py --push-space` publishes, so it
imports nothing of hf_finetune: only gradio, timm, torch and huggingface_hub, which the Space's requirements.txt
installs. `build_app` is the page; `main` (the Space) loads the model by its Hub name with timm's own eval
transform. `scripts/demo.py` builds the same page around hf_finetune's classifier (predict.py's preprocessing).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

MODEL_ID = None  # the Hub model repo the Space serves; written into the Space's copy of this file
ACCURACY_METRICS = ("accuracy",)


def build_app(classify: Callable[[str], dict[str, float]], title: str, summary: str,
              examples: Sequence[str] = (), num_labels: int = 5):
    """A gradio Blocks page: `classify(path)` maps an uploaded image file to {label: probability}."""
    import gradio as gr

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\n\n{summary}")
        with gr.Row():
            image = gr.Image(type="filepath", label="Image (upload, drop or paste)", sources=["upload", "clipboard"])
            labels = gr.Label(num_top_classes=min(num_labels, 10), label="Labels")
        button = gr.Button("Classify", variant="primary")
        if examples:
            gr.Examples(examples=[[path] for path in examples], inputs=image, label="Examples from the eval split")
        button.click(classify, inputs=image, outputs=labels, api_name="classify")
        image.upload(classify, inputs=image, outputs=labels, api_name=False)
    return app


def card_summary(card) -> str:
    """Task, data and accuracy of a huggingface_hub ModelCard's metadata, as one Markdown paragraph."""
    data = card.data
    lines = [f"**Task:** {data.pipeline_tag or 'image-classification'}"]
    results = data.eval_results or []
    dataset = results[0].dataset_name if results else ", ".join(data.datasets or []) or None
    if dataset:
        lines.append(f"**Data:** {dataset}")
    for result in results:
        if result.metric_type in ACCURACY_METRICS and not (result.metric_config or result.metric_args):
            lines.append(f"**Accuracy:** {result.metric_value:.4f} on the `{result.dataset_split}` split")
    return " · ".join(lines)


def main(model_id: Optional[str] = MODEL_ID):
    """The Space: the model by its Hub name, timm's eval transform, the Hub card's summary."""
    import timm
    import torch
    from huggingface_hub import ModelCard
    from PIL import Image

    model = timm.create_model(f"hf-hub:{model_id}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    label_names = model.pretrained_cfg.get("label_names") or [str(index) for index in range(model.num_classes)]

    def classify(path: str) -> dict[str, float]:
        with Image.open(path) as image, torch.no_grad():
            probabilities = model(transform(image.convert("RGB")).unsqueeze(0)).softmax(dim=-1)[0]
        return dict(zip(label_names, probabilities.tolist()))

    summary = card_summary(ModelCard.load(model_id))
    return build_app(classify, model_id.split("/")[-1], summary, num_labels=len(label_names))


if __name__ == "__main__":
    main().launch()

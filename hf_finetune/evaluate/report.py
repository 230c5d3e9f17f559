"""What a run leaves beside the model: metrics.json, training_curves.png, run_config.json."""

from __future__ import annotations

from pathlib import Path


def plot_training_curves(history: list[dict], path: Path, accuracy_name: str = "accuracy") -> None:
    """The chapter's plot: train loss, train acc and test acc per epoch (the accuracy named by the task:
    multi-label's is the exact match)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = [row["epoch"] for row in history]
    figure, axis = plt.subplots(figsize=(5, 3.5), dpi=120)
    axis.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    accuracy = "acc" if accuracy_name == "accuracy" else accuracy_name
    axis.plot(epochs, [row["train_acc"] for row in history], linestyle="--", label=f"train {accuracy}")
    axis.plot(epochs, [row["eval_acc"] for row in history], linestyle="-.", label=f"test {accuracy}")
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def summary_lines(final: dict, devices: list[str]) -> list[str]:
    """The chapter's closing lines, e.g. 'loss 0.220, train acc 0.926, test acc 0.935'."""
    return [f"loss {final['train_loss']:.3f}, train acc {final['train_acc']:.3f}, test acc {final['eval_acc']:.3f}",
            f"{final['examples_per_sec']:.1f} examples/sec on [{', '.join(devices)}]"]


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = ("torch", "torchvision", "timm", "transformers", "accelerate", "datasets", "huggingface_hub",
             "hf_finetune")
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions

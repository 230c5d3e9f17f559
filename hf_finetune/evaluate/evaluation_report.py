"""What scripts/evaluate.py writes beside metrics.json: the task's plot, mistakes.png and report.md (the summary,
the per-class or per-label table and the most confident mistakes), so one evaluation reads as one page."""

from __future__ import annotations

from pathlib import Path

from hf_finetune.files import write_json


def write_evaluation(result: dict, classifier, model: str, summary: str, output_dir: Path) -> list[str]:
    """metrics.json, the plot (single-label: the confusion matrix; multi-label: per-label AP, as a run's),
    mistakes.png and report.md in output_dir; returns their names."""
    from hf_finetune.evaluate.evaluation import plot_mistake_grid
    from hf_finetune.evaluate.plots import plot_confusion_matrix, plot_per_label_ap

    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "metrics.json", result)
    if "confusion_matrix" in result:  # single-label
        plot = "confusion_matrix.png"
        plot_confusion_matrix(result["confusion_matrix"], result["label_names"], output_dir / plot)
    else:  # multi-label: no confusion between labels an image can have together
        plot = "per_label_ap.png"
        plot_per_label_ap(result["per_label"], output_dir / plot)
    plot_mistake_grid(result["mistakes"], classifier, output_dir / "mistakes.png")
    (output_dir / "report.md").write_text(render_report(result, classifier.task, model, summary, plot))
    return ["metrics.json", plot, "mistakes.png", "report.md"]


def render_report(result: dict, task, model: str, summary: str, plot: str) -> str:
    """report.md: the summary line, the task's per-class/per-label table (the card's columns) and the mistakes."""
    word = task.per_label_key.removeprefix("per_")  # class / label
    columns = [title for _, title in task.card_per_label]
    rows = [[name] + [_cell(scores[key]) for key, _ in task.card_per_label]
            for name, scores in result[task.per_label_key].items()]
    lines = [f"# Evaluation of `{model}` on `{result['split']}`", "", summary, "", f"![{plot}]({plot})", "",
             f"## Per {word}", "", *_table([word, *columns], rows), "",
             "## Most confident mistakes", "", "![mistakes](mistakes.png)", ""]
    mistakes = result["mistakes"]
    if mistakes:
        keys = list(mistakes[0])
        lines += _table(keys, [[_cell(mistake[key]) for key in keys] for mistake in mistakes])
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |"
                                                                            for row in rows]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "(none)"
    return str(value).replace("|", "\\|")

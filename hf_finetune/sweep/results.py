"""What a sweep leaves in its folder: best.yaml (a --config for finetune), trials.csv / trials.md (every trial),
and Optuna's optimization-history and parameter-importance plots (its matplotlib backend)."""

from __future__ import annotations

import csv
import dataclasses
import io
import warnings
from pathlib import Path

from hf_finetune.config import FinetuneConfig, parse_config
from hf_finetune.files import write_atomically, write_text
from hf_finetune.sweep.space import NOT_SEARCHABLE


def write_results(study, output_dir: Path) -> list[Path]:
    """Every file the sweep writes from the study (whoever ran its trials); returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written = write_trials_table(study, output_dir)
    if best_trial(study) is not None:
        written.append(write_best_config(best_trial(study), output_dir / "best.yaml"))
    else:
        print("no trial completed: no best.yaml (trials.csv says how each ended)")
    return written + write_plots(study, output_dir)


def best_trial(study):
    """The best complete trial, or None before any completed (study.best_trial raises then)."""
    from optuna.trial import TrialState

    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def best_settings(trial) -> dict:
    """The best trial's run as --config values: its recipe, and every option its flags set that differs from the
    default (the recipe fills the rest again, the same way), without the run folder."""
    config = parse_config(trial.user_attrs["finetune_args"])
    defaults = FinetuneConfig()
    return {"recipe": config.recipe} | {
        field.name: getattr(config, field.name) for field in dataclasses.fields(FinetuneConfig)
        if field.name not in NOT_SEARCHABLE and field.name not in config.recipe_values
        and getattr(config, field.name) != getattr(defaults, field.name)}


def write_best_config(trial, path: Path) -> Path:
    import yaml

    header = (f"# best trial {trial.number}: {trial.value!r} ({trial.user_attrs['run_dir']})\n"
              f"# finetune --config {path.name} --output-dir DIR reproduces it\n")
    write_text(path, header + yaml.safe_dump(best_settings(trial), sort_keys=False))
    return path


def trial_rows(study) -> tuple[list[str], list[dict]]:
    """One row per trial: number, state, value, epochs reported, seconds, each searched value, run folder."""
    params = sorted({name for trial in study.trials for name in trial.params})
    columns = ["trial", "state", "value", "epochs", "seconds", *params, "run_dir"]
    rows = []
    for trial in study.trials:
        seconds = trial.duration.total_seconds() if trial.duration is not None else None
        rows.append({"trial": trial.number, "state": trial.state.name, "value": trial.value,
                     "epochs": max(trial.intermediate_values, default=None), "seconds": seconds,
                     **{name: trial.params.get(name) for name in params}, "run_dir": trial.user_attrs.get("run_dir")})
    return columns, rows


def write_trials_table(study, output_dir: Path) -> list[Path]:
    columns, rows = trial_rows(study)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(output_dir / "trials.csv", table.getvalue())
    best = best_trial(study)
    lines = [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
    for row in rows:
        mark = " (best)" if best is not None and row["trial"] == best.number else ""
        cells = [_cell(row[column]) + (mark if column == "trial" else "") for column in columns]
        lines.append(f"| {' | '.join(cells)} |")
    write_text(output_dir / "trials.md", "\n".join(lines) + "\n")
    return [output_dir / "trials.csv", output_dir / "trials.md"]


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_plots(study, output_dir: Path) -> list[Path]:
    """optimization_history.png, and param_importances.png once two trials completed (fANOVA needs them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    plots = {"optimization_history.png": plot_optimization_history}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= 2 and any(trial.distributions for trial in complete):
        plots["param_importances.png"] = plot_param_importances
    written = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # the matplotlib backend is marked experimental
            axes = plot(study)
        write_atomically(output_dir / name, lambda partial: axes.figure.savefig(partial, format="png",
                                                                                 bbox_inches="tight", dpi=100))
        plt.close(axes.figure)
        written.append(output_dir / name)
    return written

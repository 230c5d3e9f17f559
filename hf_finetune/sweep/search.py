"""The study and its trials: Optuna's storage, TPE sampler and median pruner around in-process finetune runs.

The study lives in an Optuna storage (any SQLAlchemy URL): several sweep processes, on one machine or many, can
work on one study, and a sweep run again after a crash goes on with it. A trial that was running when its
process died stops sending heartbeats; the next sweep to start a trial marks it failed and queues its values
again (Optuna's RetryHeartbeatStaleTrialCallback), and the retry resumes that trial's run folder from its last
checkpoint. A trial stopped by SIGTERM (preemption: the run checkpoints and exits 75) is queued again the same way.

A sweep launched on several processes (torchrun / accelerate launch) trains each trial on all of them: the main
process asks Optuna for the trial and sends its values to the others, reports every epoch's score and sends
its prune decision, so every rank stops the trial after the same epoch.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hf_finetune.config import MULTI_LABEL_SELECT_METRICS, SELECT_METRICS, FinetuneConfig, parse_config
from hf_finetune.errors import TrainingStopped, UserError
from hf_finetune.run import finetune
from hf_finetune.sweep.ranks import receive, reset_accelerate_state, send, shared_state
from hf_finetune.sweep.space import as_flags, load_space, suggest
from hf_finetune.tasks.multi_label import MultiLabel
from hf_finetune.tasks.single_label import SingleLabel
from hf_finetune.train.guard import NON_FINITE

# Every --select-metric, either task's: (metrics key, higher is better); a name both tasks have means the same.
SELECT_DIRECTIONS = SELECT_METRICS | MULTI_LABEL_SELECT_METRICS
# Without --select-metric a run takes its task's default, known only once its data is read; a study needs its
# direction first, so a sweep gives every trial eval_loss, which both tasks have.
DEFAULT_SELECT_METRIC = "eval_loss"


@dataclass
class SweepSettings:
    storage: str
    study_name: str
    output_dir: Path
    n_trials: int  # finished (complete or pruned) trials the study should reach, whoever ran them
    timeout: Optional[float]  # seconds this process starts new trials for
    seed: int  # the TPE sampler's
    prune_startup_trials: int
    prune_warmup_epochs: int
    heartbeat: int  # seconds; a running trial silent for twice as long is failed and retried


def sweep(finetune_args: list[str], space_path: Optional[str], settings: SweepSettings) -> None:
    """Check the flags and the space, run this process's share of the study, then write the results."""
    if importlib.util.find_spec("optuna") is None:
        raise UserError("the sweep needs Optuna: pip install 'hf_finetune[sweep]'")
    from hf_finetune.sweep.results import write_results

    if parse_config(finetune_args).select_metric is None:  # the study's direction is needed before any data is read
        finetune_args = [*finetune_args, "--select-metric", DEFAULT_SELECT_METRIC]
    base = base_config(finetune_args)
    space = load_space(base, space_path)
    main_process = shared_state().is_main_process
    study = load_study(settings, finetune_args, base.select_metric) if main_process else None
    run_study(study, settings, finetune_args, space)
    if main_process:
        for path in write_results(study, settings.output_dir):
            print(f"written: {path}")


def load_study(settings: SweepSettings, finetune_args: list[str], select_metric: str):
    """Create the study, or load it when it exists: its direction and finetune flags must be this sweep's."""
    import optuna

    direction = "maximize" if SELECT_DIRECTIONS[select_metric][1] else "minimize"
    storage = open_storage(settings.storage, settings.heartbeat)
    study = optuna.create_study(storage=storage, study_name=settings.study_name, direction=direction,
                                load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise UserError(f"study {settings.study_name!r} in {settings.storage} is to {study.direction.name.lower()}, "
                        f"not {direction} --select-metric {select_metric}; use another --study-name")
    recorded = study.user_attrs.get("finetune_args")
    if recorded is None:
        study.set_user_attr("finetune_args", finetune_args)
    elif recorded != finetune_args:
        raise UserError(f"study {settings.study_name!r} searches with the finetune flags {' '.join(recorded)!r}, "
                        "not these; give the same flags after -- or use another --study-name")
    # Seeded, and offset by the trials already there: a resumed study or a second process does not replay the
    # first process's random start-up trials.
    study.sampler = optuna.samplers.TPESampler(seed=settings.seed + len(study.trials))
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup_trials,
                                               n_warmup_steps=settings.prune_warmup_epochs)
    return study


def open_storage(url: str, heartbeat: int, attempts: int = 5):
    """Optuna's RDBStorage, which creates a new database's tables and stamps its schema version.

    It does so check-then-create (optuna/optuna#4621): sweeps started together on one new database race, and the
    losers fail with "table ... already exists" or a unique-constraint error once a winner has made the schema.
    Opening again then finds it complete and writes nothing, so those two errors are retried a few times; any
    other (a bad URL, a missing driver), or one that persists (an unreachable server), becomes one line.
    """
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; we rely on them knowingly
                warnings.simplefilter("ignore", ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                      max_retry=3, inherit_intermediate_values=True))
        except Exception as error:  # SQLAlchemy's ArgumentError, OperationalError, IntegrityError; ImportError
            if attempt == attempts - 1 or not isinstance(error, (OperationalError, IntegrityError)):
                raise UserError(f"--storage {url}: {str(error).splitlines()[0]}") from None
            time.sleep(0.2 * (attempt + 1))


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(study, settings: SweepSettings, finetune_args: list[str], space: dict[str, dict]) -> None:
    """Run trials until the study holds n_trials finished ones or the timeout passes; on every rank."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    state = shared_state()
    if not state.is_main_process:
        return follow_trials(finetune_args)
    try:
        remaining = settings.n_trials - finished_count(study)
        if remaining > 0:
            # n_trials bounds this process; the callback stops it once all processes together reached the total.
            study.optimize(lambda trial: run_trial(trial, settings.output_dir, finetune_args, space),
                           n_trials=remaining, timeout=settings.timeout,
                           callbacks=[MaxTrialsCallback(settings.n_trials,
                                                        states=(TrialState.COMPLETE, TrialState.PRUNED))])
    finally:
        send([None])  # the other ranks leave their loop


def run_trial(trial, output_dir: Path, finetune_args: list[str], space: dict[str, dict]) -> float:
    """One trial on the main process: choose its values and folder, tell the other ranks, train, score."""
    values = suggest(trial, space)
    # A retried trial carries its original's user attributes, so it goes on in that trial's run folder.
    retried_dir = trial.user_attrs.get("run_dir")
    run_dir = retried_dir or str(output_dir / f"trial-{trial.number}")
    args = [*finetune_args, *as_flags(values), "--output-dir", run_dir]
    trial.set_user_attr("run_dir", run_dir)
    trial.set_user_attr("finetune_args", args)
    print(f"== trial {trial.number}" + (f" (goes on in {run_dir})" if retried_dir else "") + ": "
          + " ".join(as_flags(values)), flush=True)
    send([args])
    try:
        return train_trial(args, trial)
    except TrainingStopped:  # SIGTERM: the run saved a checkpoint; the next sweep goes on from it
        trial.study.enqueue_trial(trial.params, user_attrs={"run_dir": run_dir})
        raise


def follow_trials(finetune_args: list[str]) -> None:
    """The other ranks: train each trial the main process sends, until it sends None."""
    import optuna

    while (args := receive()) is not None:
        try:
            train_trial(args, trial=None)
        except optuna.TrialPruned:
            pass


def train_trial(args: list[str], trial) -> float:
    """Train one trial's run (trial: the Optuna trial on the main process, None on the others) and return its
    selected weights' --select-metric on the eval split; NaN (a failed trial) when the loss diverged."""
    config = parse_config(args)
    reset_accelerate_state()
    shared_state()
    try:
        metrics = finetune(config, on_epoch_end=[PruneHook(trial, config.select_metric)])
    except UserError as error:
        if not str(error).startswith(NON_FINITE):
            raise
        if trial is not None:
            trial.set_user_attr("failure", str(error))
        return math.nan  # Optuna records a failed trial and the study goes on
    return metrics["selected"]["eval"][SELECT_DIRECTIONS[config.select_metric][0]]


class PruneHook:
    """Report each epoch's score to the trial; stop the run on every rank when the main process's pruner says so."""

    def __init__(self, trial, select_metric: str):
        self.trial, self.select_metric = trial, select_metric

    def __call__(self, epoch: int, row: dict) -> None:
        import optuna

        decision = [False]
        if self.trial is not None:
            self.trial.report(epoch_score(row, self.select_metric), step=epoch)
            decision = [self.trial.should_prune()]
        decision = send(decision)
        if decision[0]:
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")


# metrics key -> column suffix of a metrics.json row, read off the tasks' own history columns so they cannot drift
_COLUMNS = dict(SingleLabel.history_columns) | dict(MultiLabel.history_columns)


def epoch_score(row: dict, select_metric: str) -> float:
    """The epoch's selection score: its --select-metric for the better of the trained and the EMA weights."""
    key, higher_is_better = SELECT_DIRECTIONS[select_metric]
    columns = [f"{prefix}_{_COLUMNS[key]}" for prefix in ("eval", "ema_eval")]
    scores = [row[column] for column in columns if column in row]
    return max(scores) if higher_is_better else min(scores)


def base_config(finetune_args: list[str]) -> FinetuneConfig:
    """The finetune flags as a config (their errors answer before any trial); the sweep owns the run folders."""
    if any(arg.split("=")[0] in ("--output-dir", "--output_dir") for arg in finetune_args):
        raise UserError("--output-dir is the sweep's, not a trial's: give it before --; it holds trial-N/ run folders")
    config = parse_config(finetune_args)
    if config.push_to_hub:
        raise UserError("a sweep pushes no trial: drop --push-to-hub, then push the best with "
                        "`scripts/finetune.py --config SWEEP/best.yaml --output-dir DIR --push-to-hub REPO`")
    return config

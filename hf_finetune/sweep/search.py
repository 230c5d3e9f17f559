"""The study and its trials: Optuna's storage, TPE sampler and median pruner around in-process finetune runs.

The study lives in an Optuna storage (any SQLAlchemy URL): several sweep processes, on one machine or many, can
work on one study, and a sweep run again after a crash goes on with it. A trial that was running when its
process died stops sending heartbeats; the next sweep to start a trial marks it failed and queues its values
again (Optuna's RetryHeartbeatStaleTrialCallback), and the retry resumes that trial's run folder from its last
checkpoint.

A sweep launched on several processes (torchrun / accelerate launch) trains each trial on all of them: the main
process asks Optuna for the trial and sends its values to the others, reports every epoch's score and sends
its prune decision, so every rank stops the trial after the same epoch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hf_finetune.config import SELECT_METRICS, FinetuneConfig, parse_config
from hf_finetune.errors import UserError
from hf_finetune.run import finetune
from hf_finetune.sweep.space import as_flags, load_space, suggest
from hf_finetune.train.guard import NON_FINITE
from hf_finetune.train.selection import eval_columns


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
    from hf_finetune.sweep.results import write_results

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
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    direction = "maximize" if SELECT_METRICS[select_metric][1] else "minimize"
    try:
        storage = RDBStorage(settings.storage, heartbeat_interval=settings.heartbeat,
                             grace_period=2 * settings.heartbeat,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                 max_retry=3, inherit_intermediate_values=True))
    except Exception as error:  # SQLAlchemy's ArgumentError, a missing driver, an unreachable server
        raise UserError(f"--storage {settings.storage}: {str(error).splitlines()[0]}") from None
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
    print(f"== trial {trial.number}" + (f" (resumes the stale {run_dir})" if retried_dir else "") + ": "
          + " ".join(as_flags(values)), flush=True)
    send([args])
    return train_trial(args, trial)


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
    return metrics["selected"]["eval"][SELECT_METRICS[config.select_metric][0]]


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


class _KeyNames(dict):
    def __missing__(self, key):
        return key


# metrics key -> column of a metrics.json row, read off eval_columns itself so the two cannot drift apart
_COLUMNS = {key: column.removeprefix("eval_") for column, key in eval_columns(_KeyNames()).items()}


def epoch_score(row: dict, select_metric: str) -> float:
    """The epoch's selection score: its --select-metric for the better of the trained and the EMA weights."""
    key, higher_is_better = SELECT_METRICS[select_metric]
    scores = [row[f"{prefix}_{_COLUMNS[key]}"] for prefix in ("eval", "ema_eval") if f"{prefix}_{_COLUMNS[key]}" in row]
    return max(scores) if higher_is_better else min(scores)


def shared_state():
    """Accelerate's process state, made as the runs' Accelerator makes it (gloo on a CPU-only multi-process
    launch), so that the sweep can talk to its ranks between trials."""
    import torch
    from accelerate import PartialState

    multi_process = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if multi_process and not torch.distributed.is_initialized():
        reset_accelerate_state()
        new_process_group()
    return PartialState(cpu=multi_process and not torch.cuda.is_available())


_RENDEZVOUS: dict = {}  # this process's connection to the launcher's store, and how many groups it has made


def new_process_group() -> None:
    """A process group for the next trial. A finished run's end_training destroys the group, and a second
    env:// initialization hangs in the launcher's store on keys the first one left (seen with torchrun); each
    group therefore gets its own key prefix on one store connection. Accelerate then uses the group as it is."""
    import torch
    import torch.distributed as dist

    if not _RENDEZVOUS:
        store, rank, world_size = next(dist.rendezvous("env://"))
        _RENDEZVOUS.update(store=store, rank=rank, world_size=world_size, groups=0)
    _RENDEZVOUS["groups"] += 1
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=_RENDEZVOUS["rank"],
                            world_size=_RENDEZVOUS["world_size"],
                            store=dist.PrefixStore(f"hf_finetune-sweep-{_RENDEZVOUS['groups']}", _RENDEZVOUS["store"]))


def reset_accelerate_state() -> None:
    """Forget the last trial's Accelerate state (one per process, shared by every Accelerator), so that each trial
    sets up as a fresh run would. Accelerate has no public call for several runs in one process; `_reset_state`
    is the one its own tests use between Accelerators."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def send(objects: list) -> list:
    """The main process's `objects`, on every process (a no-op with one)."""
    from accelerate.utils import broadcast_object_list

    if shared_state().num_processes > 1:
        broadcast_object_list(objects)
    return objects


def receive():
    return send([None])[0]


def base_config(finetune_args: list[str]) -> FinetuneConfig:
    """The finetune flags as a config (their errors answer before any trial); the sweep owns the run folders."""
    for flag in ("--output-dir", "--output_dir", "--push-to-hub", "--push_to_hub"):
        if any(arg == flag or arg.startswith(flag + "=") for arg in finetune_args):
            raise UserError(f"{flag} is the sweep's, not a trial's: the sweep's --output-dir holds trial-N/ run "
                            "folders; push the best with `finetune --config SWEEP/best.yaml --push-to-hub ...`")
    return parse_config(finetune_args)

"""Hyper-parameter search with Optuna (`scripts/sweep.py`): each trial is an ordinary run in SWEEP/trial-N.

space: what is searched (defaults around the recipe's values, a YAML file overrides them); search: the study
(storage, TPE sampler, median pruner, heartbeat) and the trials; ranks: a sweep's processes between trials;
results: the best trial's settings as a --config YAML, the table of all trials and Optuna's plots.
"""

"""The command line and config files: every field is a flag, files give defaults, bad values are refused."""

from __future__ import annotations

import dataclasses

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from hf_finetune.config import FinetuneConfig, parse_config
from hf_finetune.errors import UserError


def test_dashed_flags_negations_and_bool_values(tmp_path):
    (tmp_path / "photos").mkdir()
    config = parse_config(["--data-dir", str(tmp_path / "photos"), "--no-pretrained", "--param-group", "false",
                           "--head-lr-mult", "5", "--mixed-precision", "bf16", "--batch-size", "64"])
    assert (config.data_dir, config.pretrained, config.param_group) == (str(tmp_path / "photos"), False, False)
    assert (config.head_lr_mult, config.mixed_precision, config.batch_size) == (5.0, "bf16", 64)
    assert parse_config([]) == FinetuneConfig().validate()


@pytest.mark.parametrize("suffix, dump", [(".yaml", None), (".json", json.dumps)])
def test_config_file_gives_defaults_that_flags_override(tmp_path, suffix, dump):
    import yaml

    values = {"model": "convnext_nano", "epochs": 3, "lr": 0.001, "head-lr-mult": 4}
    path = tmp_path / f"run{suffix}"
    path.write_text(dump(values) if dump else yaml.safe_dump(values))
    config = parse_config(["--config", str(path), "--epochs", "7"])
    assert (config.model, config.epochs, config.lr, config.head_lr_mult) == ("convnext_nano", 7, 0.001, 4)


def test_unknown_key_in_config_file_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown option.*learning_rate"):
        parse_config(["--config", str(path)])


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--data-dir", "a", "--dataset-name", "b"], "give one of --data-dir, --dataset-name and --train-file"),
    (["--pretrained-path", "/nonexistent.safetensors"], "no such file"),
    (["--num-workers", "-1"], "--num-workers cannot be negative"),
    (["--data-dir", "/nonexistent/photos"], "--data-dir /nonexistent/photos: no such folder"),
])
def test_bad_values_are_refused(argv, message):
    with pytest.raises(UserError, match=message):
        parse_config(argv)


@pytest.mark.parametrize("name, text, message", [
    ("run.json", '{"epochs": 3,', r"run.json: not valid JSON \(.*\); fix the file"),
    ("run.yaml", "epochs: [3\n", r"run.yaml: not valid YAML \(.*\); fix the file"),
    ("run.yaml", "- epochs\n- 3\n", "holds a list, not a mapping of options to values"),
    ("run.json", "[]", "holds a list, not a mapping"),
    ("run.yaml", "epochs: [3]\n", "epochs: \\[3\\] is not a single value"),
    ("run.yaml", "epochs: 2.5\n", "epochs: invalid literal for int"),
    ("run.yaml", "seed: null\n", "seed: needs a value \\(null given\\)"),
    ("run.yaml", "mixed_precision: no\n", "mixed_precision: False is not one of auto, no, fp16, bf16 .*quote it"),
    ("run.yaml", "num_workers: -1\n", "--num-workers cannot be negative"),
])
def test_a_broken_config_file_is_one_error_naming_the_fix(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        parse_config(["--config", str(path)])


def test_config_file_values_are_converted_as_their_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\nlr: 1\ncache: false\nfreeze_bn: true\nmixed_precision: 'no'\nfreeze_epochs: null\n")
    config = parse_config(["--config", str(path)])
    assert (config.epochs, config.lr, config.cache, config.freeze_bn) == (3, 1.0, False, True)
    assert isinstance(config.lr, float) and config.mixed_precision == "no"


def test_help_documents_every_field_and_the_conventions():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "finetune.py"), "--help"],
                            capture_output=True, text=True, check=True)
    text = " ".join(result.stdout.split())
    for field in dataclasses.fields(FinetuneConfig):
        if field.init:  # init=False fields are records (recipe_values), not options
            assert f"--{field.name.replace('_', '-')}" in text
    assert "MEAN loss" in text and "SUMMED loss" in text  # which loss convention --lr uses
    assert "resnet18.tv_in1k" in text  # which weights a bare name means vs the chapter's
    assert "GLOBAL batch" in text


def test_a_bare_resume_flag_means_auto():
    assert parse_config(["--resume"]).resume == "auto"
    assert parse_config(["--resume", "--epochs", "3"]).resume == "auto"
    assert parse_config(["--resume", "none"]).resume == "none"
    assert parse_config([]).resume == "auto"


def test_help_answers_before_the_training_stack_is_imported():
    """`--help` must not wait for the training stack's import (seconds): parse first, import it after. (Whether
    torch loads at all is up to transformers' HfArgumentParser: 5.24 imports none, 5.0 does.)"""
    code = ("import sys\nfrom hf_finetune.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint('imported:', sorted(name for name in ('hf_finetune.run', 'hf_finetune.train.parts', "
            "'timm', 'accelerate', 'datasets', 'torch') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "--mixed-precision" in result.stdout and "--resume" in result.stdout
    # torch only where the parser itself brings it (config imports hardware.py, which loads torch when used).
    parser_alone = subprocess.run([sys.executable, "-c", "import sys\nfrom transformers import HfArgumentParser\n"
                                   "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=120)
    expected = ["torch"] if parser_alone.stdout.strip() == "True" else []
    assert result.stdout.strip().splitlines()[-1] == f"imported: {expected}"

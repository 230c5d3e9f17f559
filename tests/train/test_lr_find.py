"""scripts/find_lr.py: the LR range test on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import make_image_folder, run_script


def test_find_lr_writes_its_plot_prints_a_suggestion_and_leaves_the_output_dir_alone(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=(12, 4))
    out, plot = tmp_path / "out", tmp_path / "plots" / "lr.png"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_script("find_lr.py", "--plot", plot, "--steps", "20", "--", "--data-dir", folder, "--model",
                        "test_resnet", "--no-pretrained", "--img-size", "64", "--num-workers", "0",
                        "--output-dir", out)
    assert plot.is_file() and plot.stat().st_size > 1000
    suggested = float(result.stdout.split("suggested --lr ")[1].split(":")[0])
    # The range, then exactly one of the two ways _suggest chooses, in the line that gave the number.
    line = next(line for line in result.stdout.splitlines() if line.startswith("suggested --lr "))
    assert 1e-7 < suggested < 1, line
    assert ("steepest descent of the smoothed loss" in line) != ("the loss fell too little" in line), line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


SWEEP = """
import json, sys
from hf_finetune.config import parse_config
from hf_finetune.train.lr_find import sweep
from hf_finetune.train.parts import create_training_parts

lrs, losses = sweep(create_training_parts(parse_config(sys.argv[1:])), 6, 1e-3, 1.0)
print(json.dumps({"lrs": lrs, "losses": losses}))
"""


def test_with_gradient_accumulation_each_point_is_one_optimizer_update_of_the_whole_batch(tmp_path):
    """Batch 8 as 2 accumulated micro-batches of 4 is batch 8 (BatchNorm statistics fixed, so each image's
    gradient does not depend on its micro-batch): the same LRs and losses. Today the optimizer steps every
    micro-batch, at half the gradient and twice the LRs."""
    folder = make_image_folder(tmp_path / "photos", per_class=(16, 4))
    common = ["--data-dir", str(folder), "--model", "test_resnet", "--no-pretrained", "--img-size", "64",
              "--num-workers", "0", "--batch-size", "8", "--freeze-bn", "--freeze-epochs", "0",
              "--mixed-precision", "no", "--output-dir", str(tmp_path / "out")]
    sweeps = [json.loads(subprocess.run([sys.executable, "-c", SWEEP, *common, "--gradient-accumulation-steps",
                                         steps], capture_output=True, text=True, check=True).stdout.splitlines()[-1])
              for steps in ("1", "2")]
    assert len(sweeps[0]["lrs"]) == 6 and sweeps[0]["lrs"] == sweeps[1]["lrs"]
    assert sweeps[1]["losses"] == pytest.approx(sweeps[0]["losses"], rel=1e-4)


def test_a_model_without_layer_groups_loses_the_recipes_layer_decay_as_in_training(tmp_path):
    """The default recipe's layer-wise decay needs timm's group_matcher; PiT has none. Training turns the decay off
    and says so; today the range test fails instead (its copy of the config forgot what the recipe had set)."""
    import timm

    folder = make_image_folder(tmp_path / "photos", per_class=(8, 4))
    weights = tmp_path / "pit.pth"
    torch.save(timm.create_model("pit_ti_224", img_size=64).state_dict(), weights)
    argv = ["--data-dir", folder, "--model", "pit_ti_224", "--pretrained-path", weights, "--img-size", "64",
            "--batch-size", "8", "--num-workers", "0", "--output-dir", tmp_path / "out"]
    said = "layer_decay off, not the recipe's 0.75: the model has no timm group_matcher"
    result = run_script("find_lr.py", "--plot", tmp_path / "lr.png", "--steps", "3", "--", *argv)
    assert said in result.stdout
    trained = run_script("finetune.py", *argv, "--epochs", "1")
    assert said in trained.stdout

"""The default recipe against the chapter's on mid-size data (issue 20), from lite0's real ImageNet weights.

ACCURACY.md has the grid over seeds, data sets and epoch budgets; this test keeps one mid-size cell honest: 20
Food-101 classes, 150 training photos each (3,000 images, so the recipe picks batch 128, where an LR measured
at batch 16 would move each sample 8x less), 3 epochs, compared through scripts/compare.py.
"""

import json
import os

import pytest

from conftest import run_script
from paths import LITE0_WEIGHTS, SHARED

FOOD101_30 = SHARED / "data" / "food101-30"


def link_subset(source, target, classes: int, per_class: dict):
    """target/<split>/<class>/ holding symlinks to the first photos (by name) of the first `classes` classes."""
    names = sorted(path.name for path in (source / "train").iterdir())[:classes]
    for split, count in per_class.items():
        for name in names:
            folder = target / split / name
            folder.mkdir(parents=True)
            for photo in sorted((source / split / name).iterdir())[:count]:
                (folder / photo.name).symlink_to(photo)
    return target


@pytest.mark.slow
def test_the_default_recipe_beats_the_chapters_on_mid_size_data(tmp_path):
    data = link_subset(FOOD101_30, tmp_path / "food20", classes=20, per_class={"train": 150, "val": 20})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run_script("compare.py", "--variants", "d2l,default", "--output-dir", tmp_path / "compare", "--",
               "--model", f"local-dir:{LITE0_WEIGHTS}", "--data-dir", data, "--img-size", "64", "--epochs", "3",
               "--seed", "0", "--cache-dir", tmp_path / "cache", "--calibrate", "none", env=env, timeout=1800)
    variants = json.loads((tmp_path / "compare" / "comparison.json").read_text())["variants"]
    d2l, default = variants["d2l"]["eval_acc"], variants["default"]["eval_acc"]
    # A margin of 5 points, not a tie: on all 9,000 food101-30 photos at 3 epochs the default leads by 13.2
    # (ACCURACY.md, 3 seeds). This smaller case passes in ~2 min on an idle 2-core AMD EPYC.
    assert default >= d2l + 0.05, (default, d2l)

"""Where the checkout and the read-only assets beside it (`../shared`, see its README) are."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
HOTDOG_MINI = SHARED / "data" / "hotdog-mini"
FOOD101_MINI = SHARED / "data" / "food101-mini"
LITE0_WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k"

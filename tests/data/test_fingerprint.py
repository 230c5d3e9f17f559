"""`data_fingerprint`: what the resume identity records of a split; the same files and selection give the same
value in a new process, a changed file or another subset a new one."""

from __future__ import annotations

import subprocess
import sys

from conftest import make_image_folder

from hf_finetune.config import FinetuneConfig
from hf_finetune.data.cache import data_fingerprint
from hf_finetune.data.sources import load_image_data

IN_A_NEW_PROCESS = ("import sys; from hf_finetune.config import FinetuneConfig; "
                    "from hf_finetune.data.cache import data_fingerprint; "
                    "from hf_finetune.data.sources import load_image_data; "
                    "data = load_image_data(FinetuneConfig(data_dir=sys.argv[1], cache_dir=sys.argv[2], "
                    "max_train_samples=6)); print(data_fingerprint(data.train), data_fingerprint(data.eval))")


def test_fingerprint_follows_the_files_and_the_selection(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=(8, 3))
    config = FinetuneConfig(data_dir=str(folder), cache_dir=str(tmp_path / "cache"), max_train_samples=6)
    data = load_image_data(config)
    here = f"{data_fingerprint(data.train)} {data_fingerprint(data.eval)}"
    there = subprocess.run([sys.executable, "-c", IN_A_NEW_PROCESS, str(folder), config.cache_dir],
                           capture_output=True, text=True, check=True).stdout.split("\n")[-2]
    assert there == here
    other_subset = load_image_data(FinetuneConfig(data_dir=str(folder), cache_dir=config.cache_dir,
                                                  max_train_samples=6, seed=1))
    assert data_fingerprint(other_subset.train) != data_fingerprint(data.train)
    (folder / "val" / "cat" / "cat_0.jpg").write_bytes((folder / "val" / "dog" / "dog_0.jpg").read_bytes())
    changed = load_image_data(config)
    assert data_fingerprint(changed.eval) != data_fingerprint(data.eval)

"""Split and label discovery, holdouts, the hotdog download, Hub datasets: all on real files."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

import pytest
from conftest import HOTDOG_MINI, make_image_folder

from hf_finetune.config import FinetuneConfig
from hf_finetune.data.sources import find_classes, find_splits, load_image_data
from hf_finetune.data.download import download_and_extract
from hf_finetune.errors import UserError


@pytest.mark.parametrize("eval_name", ["val", "validation", "valid", "test"])
def test_find_splits_accepts_every_eval_name(tmp_path, eval_name):
    make_image_folder(tmp_path, per_class=(2, 1), splits=("train", eval_name))
    train, evaluation = find_splits(tmp_path)
    assert (train.name, evaluation.name) == ("train", eval_name)


def test_find_splits_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        find_splits(tmp_path / "missing")
    make_image_folder(tmp_path, per_class=(2, 1), splits=("training", "val"))
    with pytest.raises(UserError, match="no 'train' folder"):
        find_splits(tmp_path)
    with pytest.raises(UserError, match="--eval-split dev: no such folder"):
        find_splits(tmp_path, train_split="training", eval_split="dev")


def test_classes_skip_hidden_special_and_empty_folders(tmp_path, caplog):
    make_image_folder(tmp_path, classes=("b_dog", "a_cat"), per_class=(2,), splits=("train",))
    for odd in (".git", "__MACOSX", "empty"):
        (tmp_path / "train" / odd).mkdir()
    (tmp_path / "train" / "__MACOSX" / "._x.jpg").write_bytes(b"junk")
    assert find_classes(tmp_path / "train") == ["a_cat", "b_dog"]
    assert "empty" in caplog.text


def test_single_class_is_refused(tmp_path):
    make_image_folder(tmp_path, classes=("only",), per_class=(3, 1))
    with pytest.raises(UserError, match="at least two"):
        load_image_data(FinetuneConfig(data_dir=str(tmp_path)))


def test_hotdog_mini_labels_and_splits():
    data = load_image_data(FinetuneConfig(data_dir=str(HOTDOG_MINI)))
    assert data.label_names == ["hotdog", "not_hotdog"]
    assert (len(data.train), len(data.eval), data.eval_split) == (200, 50, "val")
    assert sorted(set(data.eval["label"])) == [0, 1]
    assert data.name == "hotdog-mini"


def test_holdout_is_stratified_and_seeded(tmp_path):
    make_image_folder(tmp_path, classes=("a", "b", "c"), per_class=(10,), splits=(None,))
    first = load_image_data(FinetuneConfig(data_dir=str(tmp_path), val_fraction=0.3, seed=1))
    again = load_image_data(FinetuneConfig(data_dir=str(tmp_path), val_fraction=0.3, seed=1))
    other = load_image_data(FinetuneConfig(data_dir=str(tmp_path), val_fraction=0.3, seed=2))
    assert first.eval_split == "holdout" and len(first.eval) == 9 and len(first.train) == 21
    assert sorted(first.eval["label"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    files = lambda data: sorted(image.filename for image in data.eval["image"])  # noqa: E731
    assert files(first) == files(again) and files(first) != files(other)


def test_eval_class_unknown_to_train_is_refused(tmp_path):
    make_image_folder(tmp_path, classes=("a", "b"), per_class=(2, 1))
    make_image_folder(tmp_path, classes=("zebra",), per_class=(1,), splits=("val",))
    with pytest.raises(UserError, match="zebra"):
        load_image_data(FinetuneConfig(data_dir=str(tmp_path)))


def test_eval_classes_unlike_train_name_the_other_candidate_splits(tmp_path):
    """As a new user laid it out: validation/ holds other classes, test/ one extra class."""
    make_image_folder(tmp_path, classes=("a", "b"), per_class=(2,), splits=("train",))
    make_image_folder(tmp_path, classes=("x", "y"), per_class=(1,), splits=("validation",))
    make_image_folder(tmp_path, classes=("a", "b", "c"), per_class=(1,), splits=("test",))
    with pytest.raises(UserError, match=r"validation has class folder\(s\) that train does not: x, y; other folders "
                                        r"here: test \(choose the eval split with --eval-split NAME\)"):
        load_image_data(FinetuneConfig(data_dir=str(tmp_path)))


def _zip_of(folder: Path, archive: Path) -> str:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in folder.rglob("*"):
            zipped.write(path, path.relative_to(folder.parent))
    return hashlib.sha1(archive.read_bytes()).hexdigest()


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_verifies_extracts_once_and_caches(tmp_path, file_server):
    served, url = file_server
    sha1 = _zip_of(make_image_folder(tmp_path / "src" / "hotdog"), served / "hotdog.zip")
    cache = tmp_path / "cache"
    extracted = download_and_extract(url + "hotdog.zip", sha1, cache)
    assert sorted(p.name for p in (extracted / "hotdog" / "train").iterdir()) == ["cat", "dog"]
    (served / "hotdog.zip").unlink()  # a second call must use the cache, not the network
    assert download_and_extract(url + "hotdog.zip", sha1, cache) == extracted


def test_download_rejects_a_wrong_checksum(tmp_path, file_server):
    served, url = file_server
    _zip_of(make_image_folder(tmp_path / "src" / "hotdog"), served / "hotdog.zip")
    with pytest.raises(UserError, match="SHA-1"):
        download_and_extract(url + "hotdog.zip", "0" * 40, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.zip*")), "a corrupt download must not stay in the cache"


def test_default_hotdog_fails_fast_offline_naming_data_dir(tmp_path):
    started = time.monotonic()
    with pytest.raises(UserError, match="--data-dir"):
        load_image_data(FinetuneConfig(cache_dir=str(tmp_path)))
    assert time.monotonic() - started < 30


def test_hub_dataset_through_the_local_hub(tmp_path, hub):
    from huggingface_hub import HfApi

    folder = make_image_folder(tmp_path / "ds", classes=("ant", "bee"), per_class=(3, 2), splits=("train", "test"))
    api = HfApi(endpoint=hub.url, token="hf_test_token")
    api.create_repo("tester/insects", repo_type="dataset")
    api.upload_folder(folder_path=folder, repo_id="tester/insects", repo_type="dataset")
    data = load_image_data(FinetuneConfig(dataset_name="tester/insects", cache_dir=str(tmp_path / "cache")))
    assert data.label_names == ["ant", "bee"]
    assert (len(data.train), len(data.eval), data.eval_split, data.name) == (6, 4, "test", "tester/insects")
    with pytest.raises(UserError, match="no split 'dev'"):
        load_image_data(FinetuneConfig(dataset_name="tester/insects", eval_split="dev",
                                       cache_dir=str(tmp_path / "cache")))
    with pytest.raises(UserError, match="could not load Hub dataset"):
        load_image_data(FinetuneConfig(dataset_name="tester/missing", cache_dir=str(tmp_path / "cache")))


def _upload_parquet_dataset(hub, tmp_path, repo_id: str, splits: dict[str, list[str]]) -> None:
    """A Hub dataset of parquet files whose labels are plain strings (no ClassLabel), one file per split."""
    import io

    import datasets
    from huggingface_hub import HfApi
    from PIL import Image

    folder = tmp_path / repo_id.replace("/", "_")
    (folder / "data").mkdir(parents=True)
    for split, labels in splits.items():
        images = []
        for index, label in enumerate(labels):
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (index * 40 % 255, 0, 0)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
        datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    api = HfApi(endpoint=hub.url, token="hf_test_token")
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset")


def test_hub_string_labels_are_encoded_with_the_train_classes(tmp_path, hub):
    _upload_parquet_dataset(hub, tmp_path, "tester/strings", {"train": ["cow", "ant", "bee", "ant", "cow", "bee"],
                                                              "test": ["cow", "bee", "cow"]})  # no ant in test
    data = load_image_data(FinetuneConfig(dataset_name="tester/strings", cache_dir=str(tmp_path / "cache")))
    assert data.label_names == ["ant", "bee", "cow"]
    assert data.eval.features["label"].names == data.label_names and data.eval["label"] == [2, 1, 2]
    _upload_parquet_dataset(hub, tmp_path, "tester/stranger", {"train": ["ant", "bee"], "test": ["bee", "emu"]})
    with pytest.raises(UserError, match="split test of tester/stranger has label\\(s\\) that train does not: emu"):
        load_image_data(FinetuneConfig(dataset_name="tester/stranger", cache_dir=str(tmp_path / "cache")))


def test_validation_selects_and_test_is_held_out_in_folders_and_hub_datasets(tmp_path, hub):
    from huggingface_hub import HfApi

    folder = make_image_folder(tmp_path / "ds", classes=("ant", "bee"), per_class=(3, 2, 1),
                               splits=("train", "validation", "test"))
    data = load_image_data(FinetuneConfig(data_dir=str(folder), cache_dir=str(tmp_path / "cache")))
    assert (data.eval_split, len(data.eval), data.test_split, len(data.test)) == ("validation", 4, "test", 2)
    # Asked to evaluate on test, there is nothing left to hold out.
    data = load_image_data(FinetuneConfig(data_dir=str(folder), eval_split="test", cache_dir=str(tmp_path / "cache")))
    assert (data.eval_split, data.test, data.test_split) == ("test", None, None)
    api = HfApi(endpoint=hub.url, token="hf_test_token")
    api.create_repo("tester/insects3", repo_type="dataset")
    api.upload_folder(folder_path=folder, repo_id="tester/insects3", repo_type="dataset")
    data = load_image_data(FinetuneConfig(dataset_name="tester/insects3", cache_dir=str(tmp_path / "cache")))
    assert (data.eval_split, len(data.eval), data.test_split, len(data.test)) == ("validation", 4, "test", 2)
    assert data.test.features["label"].names == ["ant", "bee"]


class _SlowCountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files in small, slow chunks (so concurrent downloads overlap) and counts the GETs."""

    gets = 0

    def do_GET(self):
        type(self).gets += 1
        path = Path(self.translate_path(self.path))
        payload = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        for start in range(0, len(payload), len(payload) // 20 + 1):
            self.wfile.write(payload[start:start + len(payload) // 20 + 1])
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args):
        pass


def test_processes_sharing_a_cache_download_and_extract_once(tmp_path):
    import subprocess
    import sys

    served = tmp_path / "served"
    served.mkdir()
    sha1 = _zip_of(make_image_folder(tmp_path / "src" / "hotdog", per_class=(20, 10)), served / "hotdog.zip")
    handler = type("Handler", (_SlowCountingHandler,), {"gets": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hotdog.zip"
    cache = tmp_path / "shared_cache"  # one disk, two nodes
    code = ("import sys; from pathlib import Path; from hf_finetune.data.download import download_and_extract; "
            "print(download_and_extract(sys.argv[1], sys.argv[2], Path(sys.argv[3])))")
    try:
        nodes = [subprocess.Popen([sys.executable, "-c", code, url, sha1, str(cache)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(node.wait(timeout=120), *node.communicate()) for node in nodes]
    finally:
        server.shutdown()
    assert [code for code, _, _ in results] == [0, 0], results
    assert {out.strip() for _, out, _ in results} == {str(cache / f"hotdog-{sha1[:8]}")}
    assert handler.gets == 1
    assert hashlib.sha1((cache / "hotdog.zip").read_bytes()).hexdigest() == sha1
    assert sorted(p.name for p in (cache / f"hotdog-{sha1[:8]}" / "hotdog" / "train").iterdir()) == ["cat", "dog"]
    assert not list(cache.glob("*.partial")) and not list(cache.glob(".extract-*"))

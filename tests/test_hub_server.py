"""The real huggingface_hub client (and timm) against the local Hub server in tests/hub_server.py.

Client code runs in a subprocess: huggingface_hub reads HF_ENDPOINT once, at import, and another test
(or conftest) may already have imported it in this process.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import LITE0, LocalHub, free_port  # noqa: E402

TOKEN = "hf_test_xyz"

PRELUDE = """
import hashlib, json
from pathlib import Path
from huggingface_hub import HfApi, CommitOperationAdd, CommitOperationDelete, hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError,
                                    RevisionNotFoundError)
api = HfApi()
def sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()
def out(**kw): print("RESULT " + json.dumps(kw))
def error_of(fn):
    try:
        fn()
    except Exception as e:
        return [type(e).__name__, getattr(getattr(e, "response", None), "status_code", None),
                isinstance(e, EntryNotFoundError), isinstance(e, RepositoryNotFoundError),
                isinstance(e, RevisionNotFoundError)]
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    # A fixed port chosen up front: HF_ENDPOINT must be known before the client is imported.
    with LocalHub(tmp_path_factory.mktemp("hub"), port=free_port()) as h:
        yield h


@pytest.fixture
def client(hub, tmp_path):
    def run(code: str, token: str | None = TOKEN, timeout: float = 120) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost",
                   # Defensive: the hub answers uploadMode "regular" and never sends X-Xet-* headers, so the
                   # client never takes the Xet path; this keeps it that way if that ever changes.
                   HF_HUB_DISABLE_XET="1")
        if token:
            env["HF_TOKEN"] = token
        proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    return run


def _png(w: int = 4, h: int = 3) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    rows = b"".join(b"\0" + b"".join(bytes((x * 60, y * 80, 200)) for x in range(w)) for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _safetensors(values: list[float]) -> bytes:
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}).encode()
    return struct.pack("<Q", len(header)) + header + data


def _write(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_private_repo_commit_and_download_roundtrip(hub, client, tmp_path):
    files = {"config.json": b'{"num_classes": 2}', "model.safetensors": _safetensors([1.5, -2.0, 0.0]),
             "plots/loss.png": _png(), "bin/zeros.bin": bytes(300) + b"\xff\x00\x80"}
    digests = _write(tmp_path / "src", files)
    res = client(f"""
        files = {sorted(files)!r}
        info = api.create_repo("alice/clf", private=True)
        again = api.create_repo("alice/clf", private=True, exist_ok=True)   # 409 -> ok
        ci = api.create_commit("alice/clf", commit_message="Add model", commit_description="first upload",
            operations=[CommitOperationAdd(f, path_or_fileobj=str(Path("src") / f)) for f in files])
        got = {{f: sha(hf_hub_download("alice/clf", f)) for f in files}}
        from safetensors.numpy import load_file
        weights = load_file(hf_hub_download("alice/clf", "model.safetensors"))["w"].tolist()
        mi = api.model_info("alice/clf")
        out(url=str(info), again=str(again), oid=ci.oid, commit_url=ci.commit_url, got=got, weights=weights,
            listed=api.list_repo_files("alice/clf"), sha=mi.sha, private=mi.private,
            siblings=sorted(s.rfilename for s in mi.siblings), exists=api.file_exists("alice/clf", "config.json"),
            not_exists=api.file_exists("alice/clf", "nope.json"),
            anonymous=error_of(lambda: hf_hub_download("alice/clf", "config.json", token=False,
                                                        cache_dir="anonymous_cache")))
    """)
    assert res["url"] == res["again"] == f"{hub.url}/alice/clf"
    assert res["got"] == digests
    assert res["weights"] == [1.5, -2.0, 0.0]
    assert sorted(res["listed"]) == res["siblings"] == sorted(files)
    assert res["sha"] == res["oid"] and len(res["oid"]) == 40
    assert res["commit_url"] == f"{hub.url}/alice/clf/commit/{res['oid']}"
    assert res["private"] is True and res["exists"] is True and res["not_exists"] is False
    assert res["anonymous"][0] == "RepositoryNotFoundError"  # private: no token, no read
    head = hub.commits("alice/clf")[0]
    assert (head["sha"], head["message"], head["description"]) == (res["oid"], "Add model", "first upload")
    assert head["files"] == digests and hub.files("alice/clf") == files
    assert f"Bearer {TOKEN}" in hub.auth_headers
    assert ("POST", "/api/models/alice/clf/commit/main", 200) in hub.requests


def test_second_commit_replaces_and_deletes_and_keeps_history(hub, client, tmp_path):
    _write(tmp_path, {"v1.bin": b"\x00\x01version-one", "v2.bin": b"\x00\x02version-two"})
    res = client("""
        api.create_repo("alice/hist")
        first = api.create_commit("alice/hist", commit_message="v1", operations=[
            CommitOperationAdd("weights.bin", "v1.bin"), CommitOperationAdd("notes.txt", b"old notes")]).oid
        second = api.create_commit("alice/hist", commit_message="v2", operations=[
            CommitOperationAdd("weights.bin", "v2.bin"), CommitOperationDelete("notes.txt")]).oid
        out(first=first, second=second,
            main=sha(hf_hub_download("alice/hist", "weights.bin")),
            old=sha(hf_hub_download("alice/hist", "weights.bin", revision=first)),
            old_notes=Path(hf_hub_download("alice/hist", "notes.txt", revision=first)).read_text(),
            deleted=error_of(lambda: hf_hub_download("alice/hist", "notes.txt")),
            files=api.list_repo_files("alice/hist"), old_files=api.list_repo_files("alice/hist", revision=first),
            log=[(c.commit_id, c.title) for c in api.list_repo_commits("alice/hist")])
    """)
    assert res["first"] != res["second"]
    assert res["main"] == hashlib.sha256(b"\x00\x02version-two").hexdigest()
    assert res["old"] == hashlib.sha256(b"\x00\x01version-one").hexdigest()
    assert res["old_notes"] == "old notes"
    assert res["deleted"][:3] == ["RemoteEntryNotFoundError", 404, True]
    assert res["files"] == ["weights.bin"] and sorted(res["old_files"]) == ["notes.txt", "weights.bin"]
    assert [tuple(x) for x in res["log"][:2]] == [(res["second"], "v2"), (res["first"], "v1")]
    history = hub.commits("alice/hist")
    assert history[0]["parent"] == res["first"] and history[1]["sha"] == res["first"]
    assert hub.files("alice/hist", res["first"])["notes.txt"] == b"old notes"


def test_missing_file_revision_and_repo_raise_the_client_errors(hub, client, tmp_path):
    _write(tmp_path / "seed", {"config.json": b"{}"})
    hub.seed_model_repo("alice/errs", tmp_path / "seed")
    res = client("""
        out(entry=error_of(lambda: hf_hub_download("alice/errs", "missing.txt")),
            revision=error_of(lambda: hf_hub_download("alice/errs", "config.json", revision="nope")),
            repo=error_of(lambda: hf_hub_download("alice/none", "x.txt")),
            info=error_of(lambda: api.model_info("alice/none")))
    """)
    assert res["entry"] == ["RemoteEntryNotFoundError", 404, True, False, False]
    assert res["revision"] == ["RevisionNotFoundError", 404, False, False, True]
    assert res["repo"][0] == res["info"][0] == "RepositoryNotFoundError"


def test_client_retries_503_on_head_and_preupload_but_not_on_get_or_commit(hub, client):
    # hf_hub_download's metadata HEAD and the preupload POST go through http_backoff (retries 429/5xx);
    # the file GET only retries 408/429 and the commit POST is never retried: callers must retry.
    hub.inject_fault(503, 2, "/alice/flaky/resolve/", method="HEAD")
    hub.inject_fault(503, 2, "/api/models/alice/flaky/preupload/")
    res = client("""
        api.create_repo("alice/flaky")
        api.create_commit("alice/flaky", commit_message="c1", operations=[CommitOperationAdd("a.bin", b"\\x01" * 9)])
        out(got=sha(hf_hub_download("alice/flaky", "a.bin")))
    """)
    assert res["got"] == hashlib.sha256(b"\x01" * 9).hexdigest()
    heads = [s for m, p, s in hub.requests if m == "HEAD" and p == "/alice/flaky/resolve/main/a.bin"]
    assert heads == [503, 503, 200]
    assert [s for m, p, s in hub.requests if "/alice/flaky/preupload/" in p] == [503, 503, 200]

    hub.inject_fault(503, 1, "/api/models/alice/flaky/commit/")
    hub.inject_fault(503, 1, "/alice/flaky/resolve/", method="GET")
    res = client("""
        def retried(fn, attempts=3):
            errors = []
            for _ in range(attempts):
                try:
                    return fn(), errors
                except HfHubHTTPError as e:
                    errors.append(e.response.status_code)
            raise AssertionError(errors)
        oid, commit_errors = retried(lambda: api.create_commit("alice/flaky", commit_message="c2",
                                     operations=[CommitOperationAdd("b.bin", b"\\x02" * 5)]).oid)
        path, get_errors = retried(lambda: hf_hub_download("alice/flaky", "b.bin"))
        out(oid=oid, commit_errors=commit_errors, get_errors=get_errors, got=sha(path))
    """)
    assert res["commit_errors"] == [503] and res["get_errors"] == [503]
    assert res["got"] == hashlib.sha256(b"\x02" * 5).hexdigest()
    assert [c["message"] for c in hub.commits("alice/flaky")][:2] == ["c2", "c1"]  # no half-made commit


def test_timm_pretrained_downloads_through_the_hub(hub, client):
    if not (LITE0 / "model.safetensors").exists():
        pytest.skip(f"{LITE0} not present")
    sha = hub.seed_model_repo("timm/tf_efficientnet_lite0.in1k", LITE0)
    res = client(f"""
        import timm, torch
        torch.manual_seed(0)
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            hub_logits = timm.create_model("tf_efficientnet_lite0", pretrained=True).eval()(x)
            ref_logits = timm.create_model("local-dir:{LITE0}", pretrained=True).eval()(x)
        out(equal=torch.equal(hub_logits, ref_logits), top=hub_logits.argmax(1).tolist())
    """, token=None)
    assert res["equal"] is True
    url = "/timm/tf_efficientnet_lite0.in1k/resolve/main/model.safetensors"
    assert ("HEAD", url, 200) in hub.requests and ("GET", url, 200) in hub.requests
    assert hub.commits("timm/tf_efficientnet_lite0.in1k")[0]["sha"] == sha


def test_raw_http_headers_and_ranges(hub, tmp_path):
    data = bytes(range(256)) * 4
    _write(tmp_path / "seed", {"sub dir/blob.bin": data})
    sha = hub.seed_model_repo("alice/raw", tmp_path / "seed")
    assert hub.files("alice/raw") == {"sub dir/blob.bin": data} and len(hub.commits("alice/raw")) == 1
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    url = f"{hub.url}/alice/raw/resolve/main/sub%20dir/blob.bin"
    with opener.open(urllib.request.Request(url, method="HEAD")) as r:
        assert r.headers["X-Repo-Commit"] == sha and int(r.headers["Content-Length"]) == len(data)
        assert r.headers["ETag"].startswith('"') and r.read() == b""
    with opener.open(urllib.request.Request(url, headers={"Range": "bytes=10-19"})) as r:
        assert r.status == 206 and r.read() == data[10:20]
        assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(f"{hub.url}/alice/raw/resolve/{sha}/nope.txt")
    assert e.value.code == 404 and e.value.headers["X-Error-Code"] == "EntryNotFound"
    assert e.value.headers["X-Repo-Commit"] == sha


def test_data_shards_go_up_through_lfs_and_come_back_by_range(hub, client, tmp_path):
    shard = bytes(range(256)) * 40
    _write(tmp_path, {"train.parquet": shard})
    res = client("""
        from huggingface_hub import HfFileSystem
        api.create_repo("alice/shards", repo_type="dataset")
        first = api.upload_file(path_or_fileobj="train.parquet", path_in_repo="data/train-0.parquet",
                                repo_id="alice/shards", repo_type="dataset")
        again = api.upload_file(path_or_fileobj="train.parquet", path_in_repo="data/copy.parquet",
                                repo_id="alice/shards", repo_type="dataset")  # same bytes: not sent again
        tree = {e.path: e.lfs for e in api.list_repo_tree("alice/shards", "data", repo_type="dataset")}
        with HfFileSystem().open("datasets/alice/shards/data/train-0.parquet", "rb", block_size=1024) as f:
            f.seek(5000)
            middle = list(f.read(10))
        out(tree={p: lfs and [lfs.sha256, lfs.size] for p, lfs in tree.items()}, middle=middle,
            got=sha(hf_hub_download("alice/shards", "data/train-0.parquet", repo_type="dataset")))
    """)
    digest = hashlib.sha256(shard).hexdigest()
    assert res["got"] == digest and res["middle"] == list(shard[5000:5010])
    assert res["tree"] == {"data/train-0.parquet": [digest, len(shard)], "data/copy.parquet": [digest, len(shard)]}
    assert [(m, s) for m, p, s in hub.requests if p.startswith("/lfs-upload/")] == [("PUT", 200)]
    assert ("POST", "/datasets/alice/shards.git/info/lfs/objects/batch", 200) in hub.requests
    assert any(m == "GET" and s == 206 and p.endswith("/train-0.parquet") for m, p, s in hub.requests)


def test_lfs_rejects_bytes_that_do_not_match_and_commits_of_objects_never_uploaded(hub, tmp_path):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(urllib.request.Request(f"{hub.url}/lfs-upload/{'0' * 64}", data=b"not those bytes", method="PUT"))
    assert e.value.code == 400
    (tmp_path / "empty").mkdir()
    hub.seed_model_repo("alice/lfs-missing", tmp_path / "empty", repo_type="dataset")
    lines = [{"key": "header", "value": {"summary": "x", "description": ""}},
             {"key": "lfsFile", "value": {"path": "a.parquet", "algo": "sha256", "oid": "1" * 64, "size": 3}}]
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(urllib.request.Request(f"{hub.url}/api/datasets/alice/lfs-missing/commit/main", method="POST",
                                           data="\n".join(map(json.dumps, lines)).encode(),
                                           headers={"Authorization": f"Bearer {TOKEN}"}))
    assert e.value.code == 400 and "never uploaded" in e.value.headers["X-Error-Message"]
    assert hub.files("alice/lfs-missing", repo_type="dataset") == {}
    assert len(hub.commits("alice/lfs-missing", "dataset")) == 1  # only the empty first one

"""A real, local Hugging Face Hub HTTP server for tests (stdlib only).

Point the real client at it with ``HF_ENDPOINT=<hub.url>`` *before* ``huggingface_hub`` is imported
(it reads the variable into ``huggingface_hub.constants.ENDPOINT`` at import time), so start the hub
on a known port (``free_port()``) and run client code in a subprocess.

Storage under ``root``: ``blobs/<sha256>`` (content-addressed file bytes), ``<type>s/<ns>/<name>/``
with ``meta.json`` (private flag, branch refs) and ``commits/<sha>.json`` (parent, message and the
full ``path -> blob`` map). Every commit is a full snapshot, so old shas stay resolvable.

Files are stored "regular" (inline base64 in the commit NDJSON), except data shards (``LFS_SUFFIXES``):
for those preupload answers ``uploadMode: lfs`` and the client uploads the bytes first through the LFS batch
API (basic transfer: one PUT), as on the Hub, where ``datasets``' ``push_to_hub`` relies on it (it deletes
each shard once uploaded, before the commit). Resolve never sends ``X-Xet-*`` headers, so Xet is never used.

Dataset repos serve what ``datasets.load_dataset("org/name", streaming=True)`` and ``HfFileSystem``
(``hf://datasets/...``) call: repo info, tree / paths-info listings and resolve with Range requests.

Standalone: ``python tests/hub_server.py --root DIR --port 8765 [--seed-lite0]``.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import re
import shutil
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

USER = "tester"
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_RE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)"
                    r"(?:/(revision|tree|commits|preupload|commit|paths-info)/([^/]+)(/.*)?)?$")
RESOLVE_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
LFS_BATCH_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
LFS_UPLOAD_RE = re.compile(r"^/lfs-upload/([0-9a-f]{64})$")
# The Hub's default .gitattributes puts these in LFS (they are the shards `datasets` writes); other files are not.
LFS_SUFFIXES = (".parquet", ".arrow", ".tar")
from paths import LITE0_WEIGHTS as LITE0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_oid(data: bytes) -> str:
    # The Hub's oid/ETag of a non-LFS file is git's blob sha1; the client compares it with its own
    # git_hash() (preupload "oid") to drop unchanged files from a commit.
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _write_atomic(path: Path, data: bytes) -> None:
    # Downloads read without the lock: never let them see a half-written file.
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _write_json(path: Path, obj) -> None:
    _write_atomic(path, json.dumps(obj).encode())


class HubError(Exception):
    """An HTTP error the way the Hub reports it: the client maps X-Error-Code to exception classes."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class LocalHub:
    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0):
        self.root, self.host, self.port = Path(root), host, port
        self.requests: list[tuple[str, str, int]] = []
        self.auth_headers: list[str] = []
        self._faults: list[dict] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "LocalHub":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- test-facing helpers
    def seed_model_repo(self, repo_id: str, folder: Path, private: bool = False, repo_type: str = "model") -> str:
        """Copy a local folder into the hub as one commit (the first one if the repo is new); returns its sha."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        with self._lock:
            if self._meta(repo_type, repo_id) is None:
                return self._create(repo_type, repo_id, private, files, f"Upload {folder.name}")
            head = self._resolve(repo_type, repo_id, "main")
            new = {**head["files"], **{p: self._put_blob(b) for p, b in files.items()}}
            return self._write_commit(repo_type, repo_id, "main", new, f"Upload {folder.name}", "", head["id"])

    def inject_fault(self, status: int, count: int, path_contains: str | None = None,
                     method: str | None = None) -> None:
        """The next `count` requests matching `path_contains`/`method` (None: any) are answered `status`."""
        with self._lock:
            self._faults.append({"status": status, "count": count, "path": path_contains, "method": method})

    def commits(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        """History of `main`, newest first: sha, parent, message, description, date, files (path -> sha256)."""
        return [{"sha": c["id"], "parent": c["parent"], "message": c["title"], "description": c["message"],
                 "date": c["date"], "files": {p: f["sha256"] for p, f in c["files"].items()}}
                for c in self._history(repo_type, repo_id, self._resolve(repo_type, repo_id, "main"))]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        c = self._resolve(repo_type, repo_id, revision)
        return {p: self._blob(f["sha256"]) for p, f in c["files"].items()}

    # ---------------------------------------------------------------- storage
    def _dir(self, rtype: str, repo_id: str) -> Path:
        return self.root / f"{rtype}s" / repo_id

    def _meta(self, rtype: str, repo_id: str) -> dict | None:
        p = self._dir(rtype, repo_id) / "meta.json"
        return json.loads(p.read_text()) if p.exists() else None

    def _commit(self, rtype: str, repo_id: str, sha: str) -> dict:
        return json.loads((self._dir(rtype, repo_id) / "commits" / f"{sha}.json").read_text())

    def _blob(self, sha256: str) -> bytes:
        return (self.root / "blobs" / sha256).read_bytes()

    def _history(self, rtype: str, repo_id: str, commit: dict):
        while commit:
            yield commit
            commit = commit["parent"] and self._commit(rtype, repo_id, commit["parent"])

    def _put_blob(self, data: bytes) -> dict:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / sha256
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, data)
        return {"sha256": sha256, "size": len(data), "oid": git_oid(data)}

    def _create(self, rtype: str, repo_id: str, private: bool, files: dict[str, bytes], title: str) -> str:
        d = self._dir(rtype, repo_id)
        (d / "commits").mkdir(parents=True)
        _write_json(d / "meta.json", {"private": private, "createdAt": _now(), "refs": {}})
        return self._write_commit(rtype, repo_id, "main", {p: self._put_blob(b) for p, b in files.items()},
                                  title, "", None)

    def _write_commit(self, rtype, repo_id, branch, files, title, message, parent) -> str:
        c = {"parent": parent, "title": title, "message": message, "date": _now(), "files": files}
        # time_ns keeps two identical commits made in the same millisecond distinct.
        c["id"] = hashlib.sha1(json.dumps([c, time.time_ns()], sort_keys=True).encode()).hexdigest()
        d = self._dir(rtype, repo_id)
        _write_json(d / "commits" / f"{c['id']}.json", c)
        meta = self._meta(rtype, repo_id)
        meta["refs"][branch] = c["id"]
        _write_json(d / "meta.json", meta)
        return c["id"]

    def _resolve(self, rtype: str, repo_id: str, rev: str, token_sent: bool = True) -> dict:
        meta = self._meta(rtype, repo_id)
        # A private repo read without a token looks like a missing one (401 + RepoNotFound), as on the real Hub.
        if meta is None or (meta["private"] and not token_sent):
            raise HubError(404 if meta is None else 401, "RepoNotFound", f"Repository {repo_id} not found")
        sha = meta["refs"].get(rev, rev)
        if not (re.fullmatch(r"[0-9a-f]{40}", sha) and (self._dir(rtype, repo_id) / f"commits/{sha}.json").exists()):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return self._commit(rtype, repo_id, sha)

    # ---------------------------------------------------------------- HTTP routing
    def _handle(self, method: str, path: str, query: dict, headers, body: bytes):
        """Returns (status, headers, body)."""
        with self._lock:
            for f in self._faults:
                if f["count"] > 0 and (f["path"] is None or f["path"] in path) and f["method"] in (None, method):
                    f["count"] -= 1
                    extra = {"Retry-After": "0"} if f["status"] in (429, 503) else {}
                    return f["status"], extra, json.dumps({"error": "injected fault"}).encode()
        auth = headers.get("Authorization")
        try:
            if m := RESOLVE_RE.match(path):
                rtype = TYPES[m[1]] if m[1] else "model"
                repo_id, rev, fname = (urllib.parse.unquote(g) for g in m.group(2, 3, 4))
                return self._resolve_file(rtype, repo_id, rev, fname, auth, method, headers.get("Range"))
            if m := LFS_BATCH_RE.match(path):
                return self._lfs_batch(json.loads(body), auth)
            if m := LFS_UPLOAD_RE.match(path):
                return self._lfs_upload(m[1], body)
            if path == "/api/whoami-v2":
                if not auth:
                    raise HubError(401, None, "Invalid credentials in Authorization header")
                return self._json({"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                                   "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
            if path == "/api/validate-yaml":
                return self._json({"errors": [], "warnings": []})
            if path in ("/api/repos/create", "/api/repos/delete"):
                if not auth:
                    raise HubError(401, None, "You must be authenticated to create or delete a repo")
                return self._repo_admin(path.endswith("create"), json.loads(body or b"{}"))
            if m := API_RE.match(path):
                rtype, repo_id = TYPES[m[1]], urllib.parse.unquote(m[2])
                action, rev = m[3], urllib.parse.unquote(m[4] or "main")
                sub = urllib.parse.unquote((m[5] or "").lstrip("/"))
                if action in ("preupload", "commit") and not auth:
                    raise HubError(401, None, "Write access requires a token")
                with self._lock:
                    return self._api(method, rtype, repo_id, action, rev, sub, query, body, auth)
            raise HubError(404, None, f"No route for {method} {path}")
        except HubError as e:
            hdrs = {"X-Error-Message": e.message}
            if e.code:
                hdrs["X-Error-Code"] = e.code
            if e.commit:
                hdrs["X-Repo-Commit"] = e.commit
            return e.status, hdrs, json.dumps({"error": e.message}).encode()

    @staticmethod
    def _json(obj, status: int = 200):
        return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()

    def _repo_admin(self, create: bool, req: dict):
        name, org = req["name"], req.get("organization")
        repo_id = name if "/" in name else f"{org or USER}/{name}"
        rtype = req.get("type") or "model"
        with self._lock:
            exists = self._meta(rtype, repo_id) is not None
            if not create:
                if not exists:
                    raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
                shutil.rmtree(self._dir(rtype, repo_id))
                return self._json({})
            url = f"{self.url}/{URL_PREFIX[rtype]}{repo_id}"
            if exists:  # the client turns 409 into success when exist_ok=True
                return self._json({"error": "You already created this repo", "url": url}, 409)
            private = req.get("visibility", "private" if req.get("private") else "public") == "private"
            self._create(rtype, repo_id, private, {}, "initial commit")
            return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _resolve_file(self, rtype, repo_id, rev, fname, auth, method, range_header):
        c = self._resolve(rtype, repo_id, rev, bool(auth))
        f = c["files"].get(fname)
        if f is None:  # X-Repo-Commit lets the client cache the absence of the file
            raise HubError(404, "EntryNotFound", f"{fname} does not exist on {rev}", commit=c["id"])
        # The Hub's ETag of an LFS file is its sha256 (the LFS oid), of any other file its git oid.
        etag = f["sha256"] if fname.endswith(LFS_SUFFIXES) else f["oid"]
        hdrs = {"X-Repo-Commit": c["id"], "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream"}
        data = b"" if method == "HEAD" else self._blob(f["sha256"])
        size, status = f["size"], 200
        # http_get sends "Range: bytes=N-" to resume a broken download; HfFileSystem reads ranges.
        if range_header and (rm := re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())):
            start, end = (int(rm[1]), int(rm[2] or size - 1)) if rm[1] else (max(size - int(rm[2]), 0), size - 1)
            if start >= size:
                return 416, {"Content-Range": f"bytes */{size}"}, b""
            end, status = min(end, size - 1), 206
            hdrs["Content-Range"] = f"bytes {start}-{end}/{size}"
            data, size = data[start:end + 1], end + 1 - start
        hdrs["Content-Length"] = str(size)
        return status, hdrs, data

    def _api(self, method, rtype, repo_id, action, rev, sub, query, body, auth):
        if action == "commit" and method == "POST":
            return self._json(self._apply_commit(rtype, repo_id, rev, body))
        c = self._resolve(rtype, repo_id, rev, bool(auth))
        files = c["files"]
        if action in (None, "revision"):
            meta = self._meta(rtype, repo_id)
            return self._json({
                "id": repo_id, "author": repo_id.split("/")[0], "sha": c["id"], "private": meta["private"],
                "gated": False, "disabled": False, "createdAt": meta["createdAt"], "lastModified": c["date"],
                "tags": [], "downloads": 0, "likes": 0,
                "siblings": [{"rfilename": p, "size": f["size"], "blobId": f["oid"]}
                             for p, f in sorted(files.items())]})
        if action == "preupload":
            req = json.loads(body)
            return self._json({"commitOid": c["id"], "files": [
                {"path": x["path"], "uploadMode": "lfs" if x["path"].endswith(LFS_SUFFIXES) else "regular",
                 "shouldIgnore": False,
                 "oid": files[x["path"]]["oid"] if x["path"] in files else None} for x in req["files"]]})
        if action == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = _tree(files, sub, recursive)
            if sub and not entries:
                raise HubError(404, "EntryNotFound", f"{sub} does not exist on {rev}", commit=c["id"])
            return self._json(entries)
        if action == "paths-info":
            wanted = urllib.parse.parse_qs(body.decode()).get("paths", [])  # form-encoded, not JSON
            return self._json([e for e in _tree(files, "", True) if e["path"] in wanted])
        if action == "commits":
            return self._json([{"id": cc["id"], "title": cc["title"], "message": cc["message"], "date": cc["date"],
                                "authors": [{"user": USER}]} for cc in self._history(rtype, repo_id, c)])
        raise HubError(405, None, f"{method} not supported on {action}")

    def _lfs_batch(self, req: dict, auth):
        """The LFS batch API, basic transfer: each object not stored yet gets a PUT to /lfs-upload/<sha256>."""
        if not auth:
            raise HubError(401, None, "Write access requires a token")
        objects = []
        for obj in req["objects"]:
            if (self.root / "blobs" / obj["oid"]).exists():
                objects.append({"oid": obj["oid"], "size": obj["size"]})  # no actions: already uploaded
            else:
                objects.append({"oid": obj["oid"], "size": obj["size"],
                                "actions": {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}})
        return self._json({"transfer": "basic", "objects": objects})

    def _lfs_upload(self, sha256: str, body: bytes):
        if hashlib.sha256(body).hexdigest() != sha256:
            raise HubError(400, None, f"The uploaded bytes do not hash to {sha256}")
        with self._lock:
            self._put_blob(body)
        return self._json({})

    def _apply_commit(self, rtype, repo_id, rev, body: bytes) -> dict:
        head = self._resolve(rtype, repo_id, rev)
        if rev not in self._meta(rtype, repo_id)["refs"]:
            raise HubError(400, None, f"Can only commit to a branch, not {rev}")
        files, header = dict(head["files"]), {}
        for line in filter(None, body.splitlines()):
            item = json.loads(line)
            key, v = item["key"], item["value"]
            if key == "header":
                header = v
            elif key == "file":
                files[v["path"]] = self._put_blob(base64.b64decode(v["content"]))
            elif key == "deletedFile":
                if files.pop(v["path"], None) is None:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {v['path']}")
            elif key == "deletedFolder":
                prefix = v["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            elif key == "lfsFile":
                if not (self.root / "blobs" / v["oid"]).exists():
                    raise HubError(400, None, f"LFS object {v['oid']} of {v['path']} was never uploaded")
                files[v["path"]] = self._put_blob(self._blob(v["oid"]))
            else:
                raise HubError(400, None, f"Unsupported commit operation {key}")
        if header.get("parentCommit") not in (None, head["id"]):
            raise HubError(412, None, "A commit has happened since parentCommit. Please retry.")
        sha = self._write_commit(rtype, repo_id, rev, files, header.get("summary", ""),
                                 header.get("description", ""), head["id"])
        repo_url = f"{self.url}/{URL_PREFIX[rtype]}{repo_id}"
        return {"success": True, "commitOid": sha, "commitUrl": f"{repo_url}/commit/{sha}", "pullRequestUrl": None}


def _tree(files: dict, base: str, recursive: bool) -> list[dict]:
    prefix = base.strip("/") + "/" if base.strip("/") else ""
    out: dict[str, dict] = {}
    for p, f in sorted(files.items()):
        if not p.startswith(prefix):
            continue
        parts = p[len(prefix):].split("/")
        for i in range(1, len(parts) if recursive else min(len(parts), 2)):
            d = prefix + "/".join(parts[:i])
            out.setdefault(d, {"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()})
        if recursive or len(parts) == 1:
            out[p] = {"type": "file", "path": p, "size": f["size"], "oid": f["oid"]}
            if p.endswith(LFS_SUFFIXES):
                out[p]["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": 134}
    return list(out.values())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the client keeps connections alive: every reply carries Content-Length
    hub: LocalHub

    def log_message(self, *args) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        body = self._read_body()  # always drain the body, or the next request on this connection breaks
        split = urllib.parse.urlsplit(self.path)
        status, headers, data = self.hub._handle(self.command, split.path, urllib.parse.parse_qs(split.query),
                                                 self.headers, body)
        with self.hub._lock:
            self.hub.requests.append((self.command, split.path, status))
            self.hub.auth_headers.append(self.headers.get("Authorization", ""))
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--seed-lite0", action="store_true", help=f"serve {LITE0} as timm/tf_efficientnet_lite0.in1k")
    args = ap.parse_args()
    hub = LocalHub(args.root, args.host, args.port).start()
    if args.seed_lite0:
        print("seeded timm/tf_efficientnet_lite0.in1k @", hub.seed_model_repo("timm/tf_efficientnet_lite0.in1k", LITE0))
    print(f"serving {hub.url}  (export HF_ENDPOINT={hub.url}); Ctrl-C to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()

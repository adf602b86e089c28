"""A fake Hugging Face Hub on 127.0.0.1 and a local Hub cache laid out as huggingface_hub does.

The fake server answers the endpoints huggingface_hub 2.4.0 calls for a pull and a push (see
``docs/hub.md``): model info, file resolution (HEAD and GET, with ``ETag``, ``X-Repo-Commit``,
``Content-Length``, ``Range``), repo creation, preupload (every file ``"regular"``: uploads go
inline, base64 in the commit payload, never through LFS or xet) and the NDJSON commit with its
``parentCommit`` check. It sends no ``X-Xet-*`` headers, so downloads take the plain HTTP path.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` once, when it is
imported; :func:`use_hub` sets the variables for child processes and the already-imported
module's constants for in-process runs (``CliRunner``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

# ------------------------------------------------------------------------------ the cache layout


def write_hub_cache(
    cache: Path, repo: str, files: dict[str, bytes], *, commit: str, branch: str | None = "main"
) -> Path:
    """``models--ORG--REPO`` in ``cache`` as huggingface_hub lays it out: ``blobs/<sha256>``,
    ``snapshots/<commit>/<file>`` relative links into ``blobs/``, ``refs/<branch>``."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = storage / "snapshots" / commit
    for rel, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (storage / "blobs" / sha).write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(storage / "blobs" / sha, link.parent)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    if branch is not None:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / branch).write_text(commit)
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------ the fake server


@dataclass
class FakeRepo:
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    private: bool = False
    gated: bool = False
    token: str | None = None  # required when set (a private repo)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


class FakeHub:
    """State of the fake Hub; ``errors`` maps a path substring to a status it answers once
    (``sticky_errors``: every time)."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Request] = []
        self.errors: dict[str, int] = {}
        self.sticky_errors: dict[str, int] = {}  # likewise, answered every time (retries too)
        self.raw: dict[str, bytes] = {}  # a path substring -> a 200 answer with this body (garbage)
        self.stall: dict[str, int] = {}  # a file name -> send this many bytes, then hang
        self.release = threading.Event()  # set: stalled downloads end (the connection closes)
        self.honour_range = True
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.endpoint = ""

    # -- state
    def add_repo(self, repo: str, files: dict[str, bytes], *, branch: str = "main", **kw: Any) -> str:
        fake = self.repos.setdefault(repo, FakeRepo(**kw))
        return self._commit(fake, branch, dict(files))

    def _commit(self, fake: FakeRepo, branch: str, files: dict[str, bytes]) -> str:
        parent = fake.branches.get(branch, "")
        digest = hashlib.sha1(parent.encode() + json.dumps(sorted(
            (k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode())
        commit = digest.hexdigest()
        fake.commits[commit] = files
        fake.branches[branch] = commit
        return commit

    def head(self, repo: str, branch: str = "main") -> str:
        return self.repos[repo].branches[branch]

    def files(self, repo: str, branch: str = "main") -> dict[str, bytes]:
        fake = self.repos[repo]
        return fake.commits[fake.branches[branch]]

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    # -- lifetime
    def start(self) -> None:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    state: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    # -- plumbing
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              *, method: str = "GET") -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(),
                   {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, method: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"Content-Type": "application/json", **headers}, method=method)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = unquote(urlsplit(self.path).path)
        hub = self.state
        with hub.lock:
            hub.requests.append(Request(method, path, dict(self.headers.items()), body))
            failing = next((k for k in hub.errors if k in path), None)
            status = hub.errors.pop(failing) if failing is not None else None
            if status is None:
                status = next((v for k, v in hub.sticky_errors.items() if k in path), None)
        if status is not None:
            code = {404: "RepoNotFound"}.get(status)
            return self._error(status, code, f"injected {status}", method)
        garbage = next((v for k, v in hub.raw.items() if k in path), None)
        if garbage is not None:
            return self._send(200, garbage, {"Content-Type": "application/json"}, method=method)
        with contextlib.suppress(BrokenPipeError):
            self._route(method, path, body)

    def _repo(self, repo: str, method: str) -> FakeRepo | None:
        fake = self.state.repos.get(repo)
        auth = self.headers.get("Authorization", "")
        if fake is None or (fake.token and auth != f"Bearer {fake.token}"):
            status = 401 if not auth else 404
            self._error(status, "RepoNotFound", "Repository not found", method)
            return None
        if fake.gated and auth != f"Bearer {fake.token or 'granted'}":
            self._error(403, "GatedRepo", "Access to this model is restricted", method)
            return None
        return fake

    def _revision(self, fake: FakeRepo, rev: str, method: str) -> str | None:
        commit = fake.branches.get(rev) or (rev if rev in fake.commits else None)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", method)
        return commit

    def _route(self, method: str, path: str, body: bytes) -> None:
        hub = self.state
        if path == "/api/agent-harnesses":  # huggingface_hub asks this once per process
            return self._json(200, {"standardEnvVars": [], "harnesses": {}})
        if path.startswith("/api/models/") and method == "GET" and (
            "/revision/" in path or path.count("/") <= 4
        ):
            repo, _, rev = path[len("/api/models/"):].partition("/revision/")
            rev = rev or "main"
            fake = self._repo(repo, method)
            if fake is None:
                return
            commit = self._revision(fake, rev, method)
            if commit is None:
                return
            files = fake.commits[commit]
            return self._json(200, {
                "_id": "x", "id": repo, "modelId": repo, "sha": commit, "private": fake.private,
                "gated": fake.gated, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                "siblings": [{"rfilename": name, "size": len(data)} for name, data in sorted(files.items())],
                "lastModified": "2026-01-01T00:00:00.000Z",
            })
        if "/resolve/" in path and method in ("GET", "HEAD"):
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            rev, _, name = rest.partition("/")
            fake = self._repo(repo, method)
            if fake is None:
                return
            commit = self._revision(fake, rev, method)
            if commit is None:
                return
            data = fake.commits[commit].get(name)
            if data is None:
                return self._error(404, "EntryNotFound", f"{name} does not exist", method)
            headers = {
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "X-Repo-Commit": commit,
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            wanted = self.headers.get("Range")
            if wanted and hub.honour_range and method == "GET" and wanted.startswith("bytes="):
                start_s, _, end_s = wanted[len("bytes="):].partition("-")
                start, end = int(start_s), min(int(end_s or len(data) - 1), len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send(206, data[start:end + 1], headers, method=method)
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            stall = hub.stall.get(name)
            if method == "GET" and stall is not None:  # part of the file, then hang
                self.wfile.write(data[:stall])
                self.wfile.flush()
                hub.release.wait(60)
                self.close_connection = True
                return None
            if method == "GET":
                self.wfile.write(data)
            return None
        if path.startswith("/api/models/") and "/tree/" in path and method == "GET":
            repo, _, rev = path[len("/api/models/"):].partition("/tree/")
            fake = self._repo(repo, method)
            if fake is None:
                return
            commit = self._revision(fake, rev.split("/")[0], method)
            if commit is None:
                return
            return self._json(200, [
                {"type": "file", "path": name, "size": len(data),
                 "oid": hashlib.sha1(data).hexdigest()}
                for name, data in sorted(fake.commits[commit].items())
            ])
        if path == "/api/validate-yaml" and method == "POST":  # a commit that adds README.md
            return self._json(200, {"errors": [], "warnings": []})
        if path == "/api/repos/create" and method == "POST":
            payload = json.loads(body or b"{}")
            repo = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            if repo in hub.repos:  # the Hub answers the repo's url with the 409
                return self._json(409, {"error": "You already created this model repo",
                                        "url": f"{hub.endpoint}/{repo}"})
            with hub.lock:
                hub.add_repo(repo, {".gitattributes": b"*.safetensors filter=lfs\n"},
                             private=payload.get("visibility") == "private")
            return self._json(200, {"url": f"{hub.endpoint}/{repo}", "name": repo})
        if path.startswith("/api/models/") and "/branch/" in path and method == "POST":
            repo, _, branch = path[len("/api/models/"):].partition("/branch/")
            fake = self._repo(repo, method)
            if fake is None:
                return
            if branch in fake.branches:
                return self._error(409, None, "Reference already exists", method)
            fake.branches[branch] = fake.branches["main"]
            return self._json(200, {})
        if path.startswith("/api/models/") and "/preupload/" in path and method == "POST":
            repo, _, _ = path[len("/api/models/"):].partition("/preupload/")
            if self._repo(repo, method) is None:
                return
            files = json.loads(body)["files"]
            return self._json(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in files
            ]})
        if path.startswith("/api/models/") and "/commit/" in path and method == "POST":
            repo, _, branch = path[len("/api/models/"):].partition("/commit/")
            fake = self._repo(repo, method)
            if fake is None:
                return
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = lines[0]["value"]
            with hub.lock:
                head = fake.branches.get(branch)
                if head is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}", method)
                if header.get("parentCommit") not in (None, head):
                    return self._error(412, None, "A commit has happened since. Please refresh and try again.", method)
                files = dict(fake.commits[head])
                for item in lines[1:]:
                    if item["key"] != "file" or item["value"].get("encoding") != "base64":
                        return self._error(400, None, f"unsupported commit line {item['key']}", method)
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                commit = hub._commit(fake, branch, files)
            return self._json(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/{commit}",
                                    "commitOid": commit, "success": True})
        return self._error(404, None, f"no route {method} {path}"[:80], method)


# ------------------------------------------------------------------------------ the fixtures


def use_hub(
    monkeypatch: pytest.MonkeyPatch,
    *,
    cache: Path,
    endpoint: str | None = None,
    offline: bool = False,
    token: str | None = None,
) -> dict[str, str]:
    """Point huggingface_hub at ``endpoint`` (127.0.0.1 only) and ``cache``; returns the
    environment for child processes."""
    from huggingface_hub import constants

    endpoint = endpoint or "http://127.0.0.1:9"  # the discard port: nothing answers
    assert urlsplit(endpoint).hostname == "127.0.0.1", endpoint  # never the real network
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN_PATH": str(cache.parent / "hf-token"),
    }
    if token is not None:
        env["HF_TOKEN"] = token
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cache.parent / "hf-token"))
    return env


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()

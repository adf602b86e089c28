"""HTTP API under load: a real ``loradex serve`` on 127.0.0.1 and concurrent async clients.

For each registry size (1,000 and 10,000 versions by default) the fixture rows are bulk-inserted
(``registry_bench.populate``: adapters x versions x 5 eval scores) and a few versions are
registered through the use case with real blobs (the download target). A server is started for
each size, and in ``--rounds`` interleaved rounds (every size in turn, so that all of them meet
the same moments of a shared machine) each server gets:

1. show alone: closed-loop clients GET version records as fast as the server answers them;
2. mixed: an open-loop stream of reads at a fixed rate (70% show, 20% search, 10% download of a
   small file) with a write stream beside it from a process of its own (upload + register a new
   version, add an eval score); every write is checked afterwards (it landed, once).

Then the same read queries run in-process (the use cases alone: the ceiling).

Prints a markdown table: read and write throughput and p50/p99, errors, lost writes, the
in-process times, and show/search p95 at the largest size against the smallest. Exit status 1
when a target is missed. Loopback only; about 3-4 minutes at the defaults.

    .venv/bin/python benchmarks/api_load_bench.py [--sizes 1000,10000] [--rate 200]
        [--duration 15] [--show-duration 8] [--clients 32] [--writes 5] [--workers 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from benchmarks.registry_bench import populate  # noqa: E402
from registry.inputs import EvalInput  # noqa: E402
from registry.search import SearchQuery, parse_metric_filter  # noqa: E402
from registry.service import Registry  # noqa: E402
from registry.settings import Settings  # noqa: E402

TARGET_READ_P99_MS = 50.0
TARGET_SHOW_RPS = 500.0
TARGET_P95_RATIO = 1.5
REAL_VERSIONS = 5
VERSIONS_PER_ADAPTER = 10
DRAIN_S = 10.0
REQUEST_TIMEOUT_S = 10.0


# ------------------------------------------------------------------------------ fixture


def write_adapter(folder: Path, seed: int) -> Path:
    """A tiny PEFT adapter (safetensors + adapter_config.json); distinct bytes per seed."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for module in ("q_proj", "v_proj"):
        prefix = f"base_model.model.model.layers.0.self_attn.{module}"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((4, 16)).astype(np.float32)
        tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((16, 4)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "base_model_name_or_path": "tiny-llama",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def build_registry(home: Path, versions: int, scratch: Path) -> tuple[float, str]:
    """Populate a registry of ``versions`` versions; (seconds taken, an admin token secret)."""
    settings = Settings(home=home, database_url=None, user="bench")
    registry = Registry(settings, auto_upgrade=True)
    try:
        start = time.perf_counter()
        populate(registry, adapters=max(1, versions // VERSIONS_PER_ADAPTER), versions=VERSIONS_PER_ADAPTER)
        for seed in range(REAL_VERSIONS):
            registry.register(
                write_adapter(scratch / f"real-{versions}-{seed}", seed),
                name="real",
                evals=[EvalInput("accuracy", 0.5 + seed / 100, None, None)],
                tags={"team": "bench"},
            )
        took = time.perf_counter() - start
        secret = registry.create_token(scope="admin", name="bench").secret
    finally:
        registry.close()
    return took, secret


# ------------------------------------------------------------------------------ server


class Server:
    def __init__(self, home: Path, workers: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        env = {**os.environ, "LORADEX_HOME": str(home)}
        env.pop("LORADEX_DATABASE_URL", None)
        self.log = open(home / "serve.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import main; main()", "serve",
             "--port", str(self.port), "--workers", str(workers)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}/api/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"loradex serve did not start: {(home / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# ------------------------------------------------------------------------------ read client


class ReadClient:
    """Keep-alive HTTP/1.1 GETs over ``connections`` raw asyncio connections.

    The reads' load generator. httpx's AsyncClient took 4-10 ms of CPU per request here (more
    with more connections): on 2 cores it could not send 200 reads/s, let alone take 500 show
    answers/s, and it ate the CPU the server was being measured on. This client parses only the
    status line and Content-Length (every answer of these routes has one), ~0.1 ms a request.
    Writes stay on httpx (a few per second).
    """

    def __init__(self, url: str, headers: dict[str, str], *, connections: int) -> None:
        parsed = httpx.URL(url)
        self.host, self.port, self.prefix = parsed.host, parsed.port or 80, parsed.path.rstrip("/")
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = f"Host: {self.host}:{self.port}\r\n{extra}\r\n"
        self.size = connections
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.opened = 0

    async def get(self, path: str, params: dict[str, str] | None = None) -> int:
        """GET ``path``; the status code (the body is read and dropped). Raises OSError or
        asyncio.IncompleteReadError when the connection fails (it is not reused)."""
        if self.idle.empty() and self.opened < self.size:
            self.opened += 1
            try:
                conn = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.opened -= 1
                raise
        else:
            conn = await self.idle.get()
        reader, writer = conn
        target = self.prefix + path + ("?" + urlencode(params) if params else "")
        try:
            writer.write(f"GET {target} HTTP/1.1\r\n{self.head}".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = next(
                int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")
            )
            await reader.readexactly(length)
        except BaseException:
            self.opened -= 1
            writer.close()
            raise
        self.idle.put_nowait(conn)
        return status

    async def aclose(self) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()


# ------------------------------------------------------------------------------ workload


@dataclass
class Samples:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)  # "show: HTTP 500", "search: ReadTimeout"

    def add(self, kind: str, seconds: float, ok: bool, reason: str = "") -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        if not ok:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            why = f"{kind}: {reason or 'failed'}"
            self.reasons[why] = self.reasons.get(why, 0) + 1

    def of(self, *kinds: str) -> list[float]:
        return sorted(x for k in kinds for x in self.latencies.get(k, []))

    def error_count(self, *kinds: str) -> int:
        return sum(self.errors.get(k, 0) for k in kinds)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


SEARCHES = (
    {"filter": "accuracy>=0.8", "sort": "accuracy", "limit": "20"},
    {"name": "adapter-0*", "module": "q_proj", "max_rank": "16", "tag": "stage=prod", "limit": "20"},
    {"base": "tiny-llama", "tag": "team=team-3", "limit": "50"},
)


def read_request(rng: random.Random, adapters: int) -> tuple[str, str, dict[str, str] | None]:
    roll = rng.random()
    if roll < 0.7:
        name = f"adapter-{rng.randrange(1, adapters + 1):04d}"
        # (not the alias: the fixture points some at yanked versions, which is a 404)
        ref = rng.choice([str(rng.randrange(1, VERSIONS_PER_ADAPTER + 1)), "latest"])
        return "show", f"/adapters/{name}/versions/{ref}", None
    if roll < 0.9:
        return "search", "/search", dict(rng.choice(SEARCHES))
    return "download", f"/adapters/real/versions/{rng.randrange(1, REAL_VERSIONS + 1)}/files/adapter_config.json", None


async def show_alone(url: str, headers: dict[str, str], *, adapters: int, seconds: float, clients: int) -> tuple[float, int, list[float]]:
    """Closed loop: ``clients`` clients GET version records for ``seconds``; (req/s, errors, latencies)."""
    rng = random.Random(1)
    latencies: list[float] = []
    errors = 0
    http = ReadClient(url, headers, connections=clients)
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        while time.perf_counter() < end:
            path = f"/adapters/adapter-{rng.randrange(1, adapters + 1):04d}/versions/{rng.randrange(1, VERSIONS_PER_ADAPTER + 1)}"
            start = time.perf_counter()
            try:
                status = await asyncio.wait_for(http.get(path), REQUEST_TIMEOUT_S)
                errors += status != 200
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                errors += 1
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    took = time.perf_counter() - start
    await http.aclose()
    return len(latencies) / took, errors, latencies


async def _write_stream(
    url: str, headers: dict[str, str], *, adapters: int, start_at: float, seconds: float,
    writes: float, folders: list[Path],
) -> dict[str, Any]:
    """``writes`` ops/s from ``start_at`` (a ``time.time()``) for ``seconds``: upload two blobs and
    register a version, or add an eval score to a bulk-inserted version, alternately."""
    rng = random.Random(4)
    samples = Samples()
    registered: list[tuple[int, str]] = []
    evals_added: list[tuple[str, int]] = []
    done = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        interval = 1.0 / writes
        next_at = time.perf_counter()
        end = next_at + seconds
        index = 0
        while time.perf_counter() < end:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += interval
            start = time.perf_counter()
            ok = False
            kind = "register" if done % 2 == 0 else "eval"
            try:
                if kind == "register":
                    folder = folders[index]
                    index += 1
                    files = {}
                    for path in sorted(folder.iterdir()):
                        data = path.read_bytes()
                        sha = hashlib.sha256(data).hexdigest()
                        put = await http.put(f"/blobs/{sha}", content=data)
                        files[path.name] = sha
                        if put.status_code not in (200, 201):
                            raise RuntimeError(put.text)
                    response = await http.post("/adapters/written/versions", json={"files": files})
                    ok = response.status_code == 201
                    if ok:
                        registered.append((response.json()["version"], response.json()["weights_sha256"]))
                else:
                    name = f"adapter-{rng.randrange(1, adapters + 1):04d}"
                    ref = f"{name}@{rng.randrange(1, VERSIONS_PER_ADAPTER + 1)}"
                    response = await http.post(
                        f"/adapters/{name}/versions/{ref.split('@')[1]}/evals",
                        json={"evals": [{"metric": "bench_score", "value": rng.random(), "dataset": f"run-{done}"}]},
                    )
                    ok = response.status_code == 201
                    if ok:
                        evals_added.append((ref, done))
            except (httpx.HTTPError, RuntimeError):
                pass
            samples.add(kind, time.perf_counter() - start, ok)
            done += 1
    return {
        "latencies": samples.latencies, "errors": samples.errors, "reasons": samples.reasons,
        "registered": registered, "evals": evals_added, "done": done, "took": time.time() - start_at,
    }


def write_stream_process(url: str, headers: dict[str, str], adapters: int, start_at: float, seconds: float,
                         writes: float, folders: list[str]) -> dict[str, Any]:
    """:func:`_write_stream` in a process of its own (run through a process pool)."""
    return asyncio.run(_write_stream(url, headers, adapters=adapters, start_at=start_at, seconds=seconds,
                                     writes=writes, folders=[Path(f) for f in folders]))


async def mixed(
    url: str, headers: dict[str, str], *, adapters: int, seconds: float, rate: float, clients: int,
    writes: float, scratch: Path, seed: int = 10_000,
) -> tuple[Samples, float, float, list[tuple[int, str]], list[tuple[str, int]]]:
    """Open-loop reads at ``rate`` req/s and a write stream of ``writes`` ops/s beside them.

    The writes come from a process of their own, as a training job or CI would: in the readers'
    event loop, httpx's CPU time per request (4-10 ms) stalled the reads being timed and showed up
    as server latency. Returns the samples, the read rate offered (over the sending window), the
    write rate, the registered (version, weights sha256) and the (version ref, eval value id) of
    every eval added.
    """
    rng = random.Random(seed)
    samples = Samples()
    folders = [write_adapter(scratch / f"w{i}", seed + i) for i in range(int(seconds * writes) + 2)]
    start_at = time.time() + 3.0  # the writer's process has started and imported by then
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        writer = asyncio.get_running_loop().run_in_executor(
            pool, write_stream_process, url, headers, adapters, start_at, seconds, writes,
            [str(f) for f in folders],
        )
        semaphore = asyncio.Semaphore(clients)
        reads = ReadClient(url, headers, connections=clients)
        pending: set[asyncio.Task[None]] = set()

        async def read(kind: str, path: str, params: dict[str, str] | None) -> None:
            async with semaphore:
                start = time.perf_counter()
                reason = ""
                try:
                    status = await asyncio.wait_for(reads.get(path, params), REQUEST_TIMEOUT_S)
                    ok = status == 200
                    reason = f"HTTP {status}"
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as exc:
                    ok, reason = False, type(exc).__name__
                samples.add(kind, time.perf_counter() - start, ok, reason)

        await asyncio.sleep(max(0.0, start_at - time.time()))
        interval = 1.0 / rate
        start = time.perf_counter()
        end = start + seconds
        sent = 0
        while True:
            now = time.perf_counter()
            due = start + sent * interval
            if due >= end:
                break
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.ensure_future(read(*read_request(rng, adapters)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        sending = time.perf_counter() - start  # the rate offered is over this window, not the drain
        # Bounded: reads still queued DRAIN_S after the end are cancelled and counted as errors.
        _, late = await asyncio.wait(pending, timeout=DRAIN_S) if pending else (set(), set())
        for task in late:
            task.cancel()
        samples.errors["timed out"] = len(late)
        written = await writer
        await reads.aclose()
    for kind, values in written["latencies"].items():
        samples.latencies.setdefault(kind, []).extend(values)
    for kind, count in written["errors"].items():
        samples.errors[kind] = samples.errors.get(kind, 0) + count
    for why, count in written["reasons"].items():
        samples.reasons[why] = samples.reasons.get(why, 0) + count
    registered = [tuple(r) for r in written["registered"]]
    evals_added = [tuple(e) for e in written["evals"]]
    return samples, sent / sending, written["done"] / written["took"], registered, evals_added  # type: ignore[return-value]


def check_writes(url: str, headers: dict[str, str], registered: list[tuple[int, str]], evals: list[tuple[str, int]]) -> int:
    """How many acknowledged writes are not in the registry (each must be there, once)."""
    lost = 0
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        listed = http.get("/adapters/written/versions").json() if registered else []
        stored = {(v["version"], v["weights_sha256"]) for v in listed}
        lost += sum(1 for r in registered if r not in stored)
        lost += len(listed) - len(stored) if registered else 0
        for ref, run in evals:
            name, version = ref.split("@")
            rows = http.get(f"/adapters/{name}/versions/{version}/evals").json()
            hits = [r for r in rows if r["metric"] == "bench_score" and r["dataset"] == f"run-{run}"]
            lost += len(hits) != 1
    return lost


def in_process(home: Path, *, adapters: int, repeat: int) -> dict[str, list[float]]:
    """The same reads through the use cases, no HTTP (the ceiling)."""
    registry = Registry(Settings(home=home, database_url=None, user="bench"))
    rng = random.Random(3)
    out: dict[str, list[float]] = {"show": [], "search": [], "download": []}
    try:
        searches = [
            SearchQuery(metrics=(parse_metric_filter("accuracy>=0.8"),), sort="accuracy", limit=20),
            SearchQuery(name="adapter-0*", target_module="q_proj", max_rank=16, tags={"stage": "prod"}, limit=20),
            SearchQuery(base="tiny-llama", tags={"team": "team-3"}, limit=50),
        ]

        def show() -> None:
            ref = f"adapter-{rng.randrange(1, adapters + 1):04d}@{rng.randrange(1, VERSIONS_PER_ADAPTER + 1)}"
            detail, lineage = registry.show_with_lineage(ref)  # what the route reads
            detail.to_dict()
            lineage.to_dict()

        def search() -> None:
            registry.search(rng.choice(searches)).to_dict()

        def download() -> None:
            _, chunks = registry.read_file(f"real@{rng.randrange(1, REAL_VERSIONS + 1)}", "adapter_config.json")
            b"".join(chunks)

        work: dict[str, Callable[[], None]] = {"show": show, "search": search, "download": download}
        for kind, fn in work.items():
            for _ in range(5):
                fn()
            for _ in range(repeat):
                start = time.perf_counter()
                fn()
                out[kind].append(time.perf_counter() - start)
    finally:
        registry.close()
    return out


# ------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="registry sizes in versions (comma-separated)")
    parser.add_argument("--rate", type=float, default=200.0, help="read requests per second of the mixed phase")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of the mixed phase")
    parser.add_argument("--show-duration", type=float, default=8.0, help="seconds of the show-alone phase")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client connections")
    parser.add_argument("--writes", type=float, default=5.0, help="write operations per second")
    parser.add_argument("--workers", type=int, default=1, help="loradex serve --workers")
    parser.add_argument("--repeat", type=int, default=200, help="in-process runs per query")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the sizes")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds = args.rounds
    results = []
    with tempfile.TemporaryDirectory(prefix="loradex-api-bench-") as tmp:
        servers: dict[int, tuple[Server, dict[str, str], int]] = {}
        try:
            for size in sizes:
                home = Path(tmp) / f"r{size}"
                took, secret = build_registry(home, size, Path(tmp) / "scratch")
                print(f"{size} versions populated in {took:.1f} s", file=sys.stderr)
                headers = {"Authorization": f"Bearer {secret}"}
                servers[size] = (Server(home, args.workers), headers, max(1, size // VERSIONS_PER_ADAPTER))
            for server, headers, adapters in servers.values():  # warm every server first
                asyncio.run(show_alone(server.url, headers, adapters=adapters, seconds=1.0, clients=4))
            runs: dict[int, dict[str, Any]] = {
                size: {"show": [0, 0.0, 0, []], "samples": Samples(), "reads": 0.0, "writes": 0.0,
                       "registered": [], "evals": []}
                for size in sizes
            }
            # Interleaved rounds: every size meets the same moments of a shared machine, so that the
            # size ratios compare the sizes, not two stretches of time.
            for r in range(rounds):
                for size in sizes:
                    server, headers, adapters = servers[size]
                    run = runs[size]
                    rps, errors, lat = asyncio.run(show_alone(
                        server.url, headers, adapters=adapters, seconds=args.show_duration / rounds,
                        clients=args.clients))
                    run["show"][0] += len(lat)
                    run["show"][1] += len(lat) / rps
                    run["show"][2] += errors
                    run["show"][3] += lat
                    samples, read_rps, write_rps, registered, evals = asyncio.run(mixed(
                        server.url, headers, adapters=adapters, seconds=args.duration / rounds,
                        rate=args.rate, clients=args.clients, writes=args.writes,
                        scratch=Path(tmp) / f"writes-{size}-{r}", seed=10_000 + 1_000 * r))
                    for kind, values in samples.latencies.items():
                        run["samples"].latencies.setdefault(kind, []).extend(values)
                    for kind, count in samples.errors.items():
                        run["samples"].errors[kind] = run["samples"].errors.get(kind, 0) + count
                    for why, count in samples.reasons.items():
                        run["samples"].reasons[why] = run["samples"].reasons.get(why, 0) + count
                    run["reads"] += read_rps / rounds
                    run["writes"] += write_rps / rounds
                    run["registered"] += registered
                    run["evals"] += evals
                    print(f"round {r + 1}/{rounds}, {size} versions: show alone {rps:.0f} req/s", file=sys.stderr)
            lost = {
                size: check_writes(servers[size][0].url, servers[size][1], runs[size]["registered"], runs[size]["evals"])
                for size in sizes
            }
        finally:
            for server, _, _ in servers.values():
                server.stop()
        for size in sizes:
            run = runs[size]
            count, busy, errors, lat = run["show"]
            ceiling = in_process(Path(tmp) / f"r{size}", adapters=servers[size][2], repeat=args.repeat)
            acknowledged = len(run["registered"]) + len(run["evals"])
            results.append((size, count / busy, errors, lat, run["samples"], run["reads"], run["writes"],
                            lost[size], acknowledged, ceiling))

    print(f"\nloradex serve --workers {args.workers}, {args.clients} client connections, reads at {args.rate:.0f} req/s "
          f"for {args.duration:.0f} s (70% show, 20% search, 10% download) with {args.writes:.0f} writes/s beside them\n")
    print("| versions | what | req/s | p50 ms | p95 ms | p99 ms | errors | in-process p50 / p99 ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    failures = []
    for size, show_rps, show_errors, show_lat, samples, read_rps, write_rps, lost, acked, ceiling in results:
        print(f"| {size} | show alone (closed loop) | {show_rps:.0f} | {pct(show_lat, .5):.1f} | {pct(show_lat, .95):.1f} | {pct(show_lat, .99):.1f} | {show_errors} | |")
        reads = samples.of("show", "search", "download")
        print(f"| {size} | mixed reads | {read_rps:.0f} | {pct(reads, .5):.1f} | {pct(reads, .95):.1f} | {pct(reads, .99):.1f} | {samples.error_count('show', 'search', 'download', 'timed out')} | |")
        for kind in ("show", "search", "download"):
            values = samples.of(kind)
            inproc = ceiling[kind]
            print(f"| {size} | - {kind} | {read_rps * len(values) / (len(reads) or 1):.0f} | {pct(values, .5):.1f} | {pct(values, .95):.1f} | {pct(values, .99):.1f} | {samples.error_count(kind)} | {pct(inproc, .5):.1f} / {pct(inproc, .99):.1f} |")
        writes = samples.of("register", "eval")
        print(f"| {size} | writes (register, eval add) | {write_rps:.1f} | {pct(writes, .5):.1f} | {pct(writes, .95):.1f} | {pct(writes, .99):.1f} | {samples.error_count('register', 'eval')} | {acked} acknowledged, {lost} lost |")
        if pct(reads, .99) >= TARGET_READ_P99_MS:
            failures.append(f"{size}: read p99 {pct(reads, .99):.1f} ms >= {TARGET_READ_P99_MS:.0f} ms")
        if show_rps < TARGET_SHOW_RPS:
            failures.append(f"{size}: show alone {show_rps:.0f} req/s < {TARGET_SHOW_RPS:.0f}")
        errors = show_errors + samples.error_count("show", "search", "download", "register", "eval", "timed out")
        if errors or lost:
            reasons = {**samples.reasons, "timed out (still queued at the end)": samples.errors.get("timed out", 0)}
            why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()) if n)
            failures.append(f"{size}: {errors} errors{f' ({why})' if why else ''}, {lost} lost writes")
        if read_rps < 0.95 * args.rate:
            failures.append(f"{size}: the client sent {read_rps:.0f} reads/s, not {args.rate:.0f}")
    if len(results) > 1:
        small, large = results[0], results[-1]
        print()
        for kind in ("show", "search"):
            p_small, p_large = pct(small[4].of(kind), .95), pct(large[4].of(kind), .95)
            ratio = p_large / p_small
            print(f"{kind} p95 at {large[0]} versions vs {small[0]}: {p_large:.1f} / {p_small:.1f} ms = {ratio:.2f}x (target <= {TARGET_P95_RATIO}x)")
            if ratio > TARGET_P95_RATIO:
                failures.append(f"{kind} p95 ratio {ratio:.2f}x > {TARGET_P95_RATIO}x")
    print("\n" + ("all targets met" if not failures else "missed: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())


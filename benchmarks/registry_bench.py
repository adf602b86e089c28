"""Registry query latency: 1,000 adapters x 10 versions x 5 eval scores, in-process.

Fixture rows are bulk-inserted with Core inserts (one transaction); then ``search`` (filters and
a metric sort, keyset pages) and ``show`` are timed, p50/p95 over repeated runs, on SQLite and,
when ``LORADEX_TEST_DATABASE_URL`` names a server, on a scratch PostgreSQL database (created and
dropped here). Prints a markdown table. Target: every query <= 50 ms p95.

    .venv/bin/python benchmarks/registry_bench.py [--adapters 1000] [--versions 10] [--repeat 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402

from registry.metrics import better, default_direction  # noqa: E402
from registry.models import (  # noqa: E402
    Adapter,
    AdapterVersion,
    Alias,
    EvalScore,
    Tag,
    VersionFile,
    VersionModule,
    VersionScore,
)
from registry.search import SearchQuery, parse_metric_filter  # noqa: E402
from registry.service import Registry  # noqa: E402
from registry.settings import Settings, normalize_database_url  # noqa: E402

METRICS = ("accuracy", "f1", "bleu", "rouge", "loss")
MODULE_SETS = (
    ("q_proj", "v_proj"),
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("gate_proj", "up_proj"),
)
RANKS = (4, 8, 16, 32, 64)
TARGET_LIST_S = 0.5
TARGET_P95_MS = 50.0


def populate(registry: Registry, *, adapters: int, versions: int) -> None:
    """Bulk-insert the fixture rows (deterministic)."""
    rng = random.Random(0)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    adapter_rows, version_rows, module_rows, file_rows, tag_rows, eval_rows, alias_rows = (
        [] for _ in range(7)
    )
    vid = 0
    for a in range(1, adapters + 1):
        adapter_rows.append(
            {
                "id": a,
                "name": f"adapter-{a:04d}",
                "description": "",
                "last_version": versions,
                "created_at": now,
                "created_by": "bench",
            }
        )
        for n in range(1, versions + 1):
            vid += 1
            modules = MODULE_SETS[rng.randrange(len(MODULE_SETS))]
            rank = RANKS[rng.randrange(len(RANKS))]
            weights = uuid.UUID(int=rng.getrandbits(128)).hex * 2
            version_rows.append(
                {
                    "id": vid,
                    "adapter_id": a,
                    "version": n,
                    "status": "yanked" if rng.random() < 0.05 else "ready",
                    "content_sha256": uuid.UUID(int=rng.getrandbits(128)).hex * 2,
                    "weights_sha256": weights,
                    "weights_path": "adapter_model.safetensors",
                    "base_fingerprint": "b" * 64 if a % 2 else "c" * 64,
                    "base_name_or_path": "tiny-llama" if a % 2 else "tiny-gpt2",
                    "max_rank": rank,
                    "alpha": float(2 * rank),
                    "use_dora": False,
                    "use_rslora": False,
                    "dtype": "bfloat16",
                    "param_count": 1000 * rank,
                    "nbytes": 2000 * rank,
                    "adapter_fingerprint": weights,
                    "target_modules": list(modules),
                    "ranks": {f"model.layers.0.self_attn.{m}": rank for m in modules},
                    "flags": {},
                    "summary": {},
                    "metadata": {},
                    "description": "",
                    "created_at": now + dt.timedelta(seconds=vid),
                    "created_by": "bench",
                }
            )
            module_rows += [{"version_id": vid, "module": m} for m in modules]
            file_rows += [
                {
                    "version_id": vid,
                    "path": "adapter_config.json",
                    "sha256": weights[::-1],
                    "size": 300,
                },
                {
                    "version_id": vid,
                    "path": "adapter_model.safetensors",
                    "sha256": weights,
                    "size": 2000 * rank,
                },
            ]
            tag_rows += [
                {
                    "version_id": vid,
                    "key": "stage",
                    "value": rng.choice(["dev", "staging", "prod"]),
                },
                {"version_id": vid, "key": "team", "value": f"team-{a % 20}"},
            ]
            eval_rows += [
                {
                    "version_id": vid,
                    "metric": metric,
                    "value": rng.random(),
                    "dataset": "mmlu" if metric != "bleu" else "wmt",
                    "split": "test",
                    "recorded_at": now,
                    "recorded_by": "bench",
                }
                for metric in METRICS
            ]
        alias_rows.append(
            {
                "adapter_id": a,
                "name": "production",
                "version_id": vid - 1,
                "updated_at": now,
                "updated_by": "bench",
            }
        )
    # Core inserts; the column is named "metadata" while the attribute is "meta".
    version_table = AdapterVersion.__table__
    with registry.engine.begin() as conn:
        conn.execute(insert(Adapter), adapter_rows)
        conn.execute(insert(version_table), version_rows)
        for model, rows in (
            (VersionModule, module_rows),
            (VersionFile, file_rows),
            (Tag, tag_rows),
            (EvalScore, eval_rows),
            (VersionScore, _best_scores(eval_rows)),
            (Alias, alias_rows),
        ):
            conn.execute(insert(model), rows)
    if registry.engine.dialect.name == "postgresql":
        with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    else:
        with registry.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def _best_scores(eval_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The version_scores rows of ``eval_rows``: each version's best value per metric by the
    default direction rule (the benchmark declares no direction)."""
    best: dict[tuple[int, str], float] = {}
    for row in eval_rows:
        key = (row["version_id"], row["metric"])
        if key not in best or better(default_direction(row["metric"]), row["value"], best[key]):
            best[key] = row["value"]
    return [{"version_id": v, "metric": m, "value": x} for (v, m), x in sorted(best.items())]


def timed(fn: Callable[[], object], *, repeat: int) -> tuple[float, float]:
    for _ in range(3):  # warm caches and statement compilation
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))]
    return statistics.median(samples), p95


def queries(registry: Registry) -> list[tuple[str, Callable[[], object]]]:
    acc = parse_metric_filter("accuracy>=0.8")
    page1 = registry.search(SearchQuery(metrics=(acc,), sort="accuracy", limit=20))
    assert page1.items and page1.next_cursor
    return [
        (
            "search: accuracy>=0.8, sort accuracy, 20 rows",
            lambda: registry.search(SearchQuery(metrics=(acc,), sort="accuracy", limit=20)),
        ),
        (
            "search: same, page 2 (keyset cursor)",
            lambda: registry.search(
                SearchQuery(metrics=(acc,), sort="accuracy", limit=20, after=page1.next_cursor)
            ),
        ),
        (
            "search: name glob + module + max rank + tag + 2 metrics, sort f1",
            lambda: registry.search(
                SearchQuery(
                    name="adapter-0*",
                    target_module="q_proj",
                    max_rank=16,
                    tags={"stage": "prod"},
                    metrics=(parse_metric_filter("accuracy>=0.5"), parse_metric_filter("loss<0.5")),
                    sort="f1",
                    limit=20,
                )
            ),
        ),
        (
            "search: base + tag, default sort (name, version)",
            lambda: registry.search(
                SearchQuery(base="tiny-llama", tags={"team": "team-3"}, limit=50)
            ),
        ),
        ("show NAME@7", lambda: registry.show("adapter-0500@7")),
        ("show NAME@production", lambda: registry.show("adapter-0731@production")),
        ("list adapters (first page of 50)", lambda: registry.list_adapters(limit=50)),
    ]


def bench_backend(
    label: str, settings: Settings, *, adapters: int, versions: int, repeat: int
) -> list[tuple[str, str, float, float]]:
    registry = Registry(settings, auto_upgrade=True)
    try:
        start = time.perf_counter()
        populate(registry, adapters=adapters, versions=versions)
        print(
            f"{label}: inserted {adapters * versions} versions in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
        return [(label, name, *timed(fn, repeat=repeat)) for name, fn in queries(registry)]
    finally:
        registry.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    rows: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="loradex-bench-") as tmp:
        sqlite = Settings(home=Path(tmp) / "sqlite", user="bench")
        rows += bench_backend(
            "SQLite", sqlite, adapters=args.adapters, versions=args.versions, repeat=args.repeat
        )
        list_wall = whole_process_list(sqlite.home)
        pg_url = os.environ.get("LORADEX_TEST_DATABASE_URL")
        if pg_url:
            import psycopg
            from sqlalchemy.engine import make_url

            url = make_url(normalize_database_url(pg_url))
            name = f"loradex_bench_{uuid.uuid4().hex[:8]}"
            admin = dict(
                host=url.host,
                port=url.port,
                user=url.username,
                password=url.password,
                dbname=url.database or "postgres",
            )
            with psycopg.connect(**admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            try:
                pg = Settings(
                    home=Path(tmp) / "pg",
                    database_url=url.set(database=name).render_as_string(hide_password=False),
                    user="bench",
                )
                rows += bench_backend(
                    "PostgreSQL",
                    pg,
                    adapters=args.adapters,
                    versions=args.versions,
                    repeat=args.repeat,
                )
            finally:
                with psycopg.connect(**admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print("PostgreSQL skipped: set LORADEX_TEST_DATABASE_URL", file=sys.stderr)
    print(
        f"\n{args.adapters} adapters x {args.versions} versions x {len(METRICS)} eval scores, {args.repeat} runs each\n"
    )
    print("| database | query | p50 ms | p95 ms |")
    print("|---|---|---:|---:|")
    worst = 0.0
    for label, name, p50, p95 in rows:
        print(f"| {label} | {name} | {p50:.1f} | {p95:.1f} |")
        worst = max(worst, p95)
    print(f"\nworst p95: {worst:.1f} ms (target <= {TARGET_P95_MS:.0f} ms)")
    print(
        f"`loradex list` as a whole process (SQLite, this registry): median {list_wall[0]:.3f} s, "
        f"best {list_wall[1]:.3f} s of 7 runs (target < {TARGET_LIST_S:.1f} s)"
    )
    return 0 if worst <= TARGET_P95_MS and list_wall[0] < TARGET_LIST_S else 1


def whole_process_list(home: Path, *, runs: int = 7) -> tuple[float, float]:
    """Median and best wall time of `loradex list` in a fresh interpreter."""
    env = dict(os.environ, LORADEX_HOME=str(home))
    env.pop("LORADEX_DATABASE_URL", None)
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cli.main", "list"], env=env, capture_output=True, check=True
        )
        walls.append(time.perf_counter() - start)
    return statistics.median(walls), min(walls)


if __name__ == "__main__":
    raise SystemExit(main())

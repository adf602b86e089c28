"""Migrations on SQLite and PostgreSQL: head has no drift, downgrade/upgrade, data kept, refusals."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import text

from registry.db import (
    SCHEMA_HEAD,
    SCHEMA_REVISIONS,
    check_schema,
    create_registry_engine,
    current_revision,
)
from registry.errors import SchemaVersionError
from registry.inputs import parse_eval_spec
from registry.schema import alembic_config, downgrade, schema_diff, script_revisions, upgrade
from registry.service import Registry
from registry.settings import Settings, normalize_database_url


def test_known_revisions_match_the_alembic_history() -> None:
    assert list(SCHEMA_REVISIONS) == script_revisions()


def test_script_location_is_the_installed_package() -> None:
    import migrations

    engine = create_registry_engine("sqlite://")
    location = Path(alembic_config(engine).get_main_option("script_location") or "")
    assert location == Path(migrations.__file__).parent
    assert (location / "env.py").is_file()
    assert sorted(p.name for p in (location / "versions").glob("0*.py")) == [
        "0001_initial.py",
        "0002_evals_checkpoints_lineage.py",
        "0003_metric_directions.py",
        "0004_names_casefold.py",
        "0005_journal_counter.py",
        "0006_api_tokens.py",
        "0007_base_files.py",
        "0008_publish_gates.py",
        "0009_version_scores.py",
    ]
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert 'migrations = ["script.py.mako", "versions/*.py"]' in pyproject


def test_migrations_never_import_orm_classes() -> None:
    import migrations

    root = Path(migrations.__file__).parent
    for path in [root / "env.py", *(root / "versions").glob("*.py")]:
        source = path.read_text()
        assert "import registry" not in source and "from registry" not in source, path


def test_upgrade_head_then_no_autogenerate_diff(empty_db_url: str) -> None:
    engine = create_registry_engine(empty_db_url)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == SCHEMA_HEAD
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_downgrade_base_then_upgrade_again(empty_db_url: str) -> None:
    engine = create_registry_engine(empty_db_url)
    try:
        upgrade(engine)
        downgrade(engine, "base")
        assert current_revision(engine) is None
        upgrade(engine, "0001")
        assert current_revision(engine) == "0001"
        upgrade(engine)
        assert current_revision(engine) == SCHEMA_HEAD
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_data_is_kept_across_an_upgrade(empty_db_url: str, tmp_path: Path) -> None:
    """Rows written at revision 0001 (raw SQL, as an old loradex would) survive 0002."""
    engine = create_registry_engine(empty_db_url)
    upgrade(engine, "0001")
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO adapters (id, name, description, last_version, created_at, created_by) "
                "VALUES (1, 'old', 'from 0001', 1, :now, 'alice')"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO adapter_versions (id, adapter_id, version, status, content_sha256, "
                "weights_sha256, weights_path, max_rank, alpha, use_dora, use_rslora, dtype, "
                "param_count, nbytes, target_modules, ranks, flags, summary, metadata, description, "
                "created_at, created_by) VALUES (1, 1, 1, 'ready', :c, :w, 'adapter_model.safetensors', "
                "8, 16.0, false, false, 'float32', 100, 400, '[\"q_proj\"]', '{}', '{}', '{}', '{}', "
                "'', :now, 'alice')"
            ),
            {"c": "c" * 64, "w": "a" * 64, "now": now},
        )
        conn.execute(text("INSERT INTO version_modules (version_id, module) VALUES (1, 'q_proj')"))
    engine.dispose()

    settings = Settings(home=tmp_path / "home", database_url=empty_db_url, user="bob")
    with Registry(settings, auto_upgrade=True) as registry:
        assert current_revision(registry.engine) == SCHEMA_HEAD
        detail = registry.show("old@1")
        assert (detail.created_by, detail.max_rank, detail.target_modules) == (
            "alice",
            8,
            ["q_proj"],
        )
        registry.add_evals("old@1", [parse_eval_spec("accuracy=0.5")])
        assert [e.value for e in registry.list_evals("old")] == [0.5]
        assert [a.name for a in registry.list_adapters().items] == ["old"]


def test_newer_schema_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    engine = create_registry_engine(empty_db_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaVersionError, match=r"revision '9999'.*newer loradex"):
        check_schema(engine, auto_upgrade=True)
    engine.dispose()
    settings = Settings(home=tmp_path / "home", database_url=empty_db_url)
    with pytest.raises(SchemaVersionError, match="newer loradex") as refused:
        Registry(settings, auto_upgrade=True)
    assert refused.value.hint_action == "upgrade_loradex"
    assert refused.value.fields["got"] == "9999"


@pytest.mark.postgres
def test_older_postgres_schema_is_refused_with_the_command(
    empty_db_url: str, backend: str, tmp_path: Path
) -> None:
    if backend != "postgres":
        pytest.skip("SQLite is upgraded automatically (embedded mode)")
    engine = create_registry_engine(empty_db_url)
    upgrade(engine, "0001")
    engine.dispose()
    settings = Settings(home=tmp_path / "home", database_url=empty_db_url)
    with pytest.raises(SchemaVersionError, match="has schema '0001'") as refused:
        Registry(settings)
    from cli.main import render_hint

    # The core's hint is neutral; the CLI words its action with the command to run.
    assert refused.value.hint_action == "db_upgrade"
    assert "loradex db upgrade" in str(render_hint(refused.value))


def test_sqlite_is_created_and_upgraded_on_first_use(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "fresh")
    with Registry(settings) as registry:
        assert current_revision(registry.engine) == SCHEMA_HEAD
        with registry.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    assert (tmp_path / "fresh" / "registry.db").is_file()


def test_postgres_urls_are_normalised_to_psycopg() -> None:
    assert normalize_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"
    assert Settings(database_url="postgresql://u@h/db").effective_database_url.startswith(
        "postgresql+psycopg://"
    )


def test_sqlite_write_transactions_begin_immediate(tmp_path: Path) -> None:
    """Writes open with BEGIN IMMEDIATE (wait for the lock); reads with a deferred BEGIN."""
    from sqlalchemy import event

    with Registry(Settings(home=tmp_path / "home")) as registry:
        statements: list[str] = []
        event.listen(registry.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        registry.events()
        assert statements[0] == "BEGIN"
        statements.clear()
        with pytest.raises(Exception, match="not registered"):
            registry.set_tags("nothing", set_tags={"a": "b"})
        assert statements[0] == "BEGIN IMMEDIATE"


def test_empty_database_is_initialised_on_first_use(empty_db_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=empty_db_url)
    with Registry(settings) as registry:  # no auto_upgrade: PostgreSQL is still initialised
        assert current_revision(registry.engine) == SCHEMA_HEAD
        assert registry.list_adapters().items == []


_OPEN_WHEN_TOLD = """
import logging, os, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from registry.service import Registry
from registry.settings import Settings
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
with Registry(Settings(home=Path(sys.argv[2]), database_url=sys.argv[3])) as registry:
    print(len(registry.list_adapters().items))
"""


@pytest.mark.postgres
def test_processes_opening_an_empty_postgres_at_once_create_the_schema_once(
    empty_db_url: str, backend: str, tmp_path: Path
) -> None:
    if backend != "postgres":
        pytest.skip("the advisory lock is PostgreSQL's")
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_WHEN_TOLD, str(go), str(tmp_path / f"h{i}"), empty_db_url],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    import time

    time.sleep(2.0)  # let every interpreter import and wait at the line
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "0"
        assert "Traceback" not in err and "error" not in err.lower(), err
    initialised = sum(err.count("initialising registry schema") for _, err in results)
    assert initialised == 1, [err for _, err in results]
    engine = create_registry_engine(empty_db_url)
    try:
        assert current_revision(engine) == SCHEMA_HEAD
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()

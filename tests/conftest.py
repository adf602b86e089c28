"""Shared fixtures. Registry part: backends (SQLite in tmp_path, PostgreSQL scratch databases),
a migrated :class:`registry.service.Registry`, tiny PEFT adapter folders, the ``postgres`` marker.

PostgreSQL runs when ``LORADEX_TEST_DATABASE_URL`` names a server (e.g.
``postgresql://postgres@127.0.0.1:5432/postgres``): each test run creates its own template
database ``loradex_test_<random>_tpl`` migrated to head, and each test its own copy of it; all are
dropped at the end. Without the variable the ``postgres`` parameters are skipped, with a reason.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# No test reaches the real Hugging Face Hub: huggingface_hub reads HF_ENDPOINT once, at import.
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")

PG_ENV = "LORADEX_TEST_DATABASE_URL"
PG_SKIP_REASON = (
    f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
)

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with a visible reason, tests marked ``postgres`` when no server is configured."""
    if os.environ.get(PG_ENV):
        return
    skip = pytest.mark.skip(reason=PG_SKIP_REASON)
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------------------ PostgreSQL


class PgServer:
    """Creates and drops scratch databases on the server named by ``LORADEX_TEST_DATABASE_URL``."""

    def __init__(self, url: str) -> None:
        from registry.settings import normalize_database_url

        self.url = normalize_database_url(url)
        self.prefix = f"loradex_test_{uuid.uuid4().hex[:10]}"
        self.created: list[str] = []
        self._template: str | None = None

    def _admin(self) -> Any:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.url)
        return psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database or "postgres",
            autocommit=True,
        )

    def url_for(self, name: str) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def create(self, *, template: str | None = None) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        with self._admin() as conn:
            conn.execute(
                f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
            )
        self.created.append(name)
        return self.url_for(name)

    def drop(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def migrated_copy(self) -> str:
        """A fresh database at schema head (a copy of a template migrated once per run)."""
        if self._template is None:
            from registry.db import create_registry_engine
            from registry.schema import upgrade

            url = self.create()
            engine = create_registry_engine(url)
            upgrade(engine)
            engine.dispose()
            from sqlalchemy.engine import make_url

            self._template = str(make_url(url).database)
        return self.create(template=self._template)

    def drop_all(self) -> None:
        for name in list(self.created):
            self.drop(self.url_for(name))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer | None]:
    url = os.environ.get(PG_ENV)
    if not url:
        yield None
        return
    server = PgServer(url)
    try:
        yield server
    finally:
        server.drop_all()


# ------------------------------------------------------------------------------ registry


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path, pg_server: PgServer | None) -> Iterator[str]:
    """A database with no schema at all, on the parametrized backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
        return
    if pg_server is None:
        pytest.skip(PG_SKIP_REASON)
    url = pg_server.create()
    yield url
    pg_server.drop(url)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, pg_server: PgServer | None) -> Iterator[str]:
    """A database at schema head: SQLite (migrated on first open) or a PostgreSQL copy."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
        return
    if pg_server is None:
        pytest.skip(PG_SKIP_REASON)
    url = pg_server.migrated_copy()
    yield url
    pg_server.drop(url)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Any:
    from registry.settings import Settings

    return Settings(home=tmp_path / "home", database_url=db_url, user="tester")


@pytest.fixture
def registry(settings: Any) -> Iterator[Any]:
    from registry.service import Registry

    reg = Registry(settings, auto_upgrade=True)
    yield reg
    reg.close()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str) -> dict[str, str]:
    """Environment for CLI tests: LORADEX_HOME in tmp_path, the backend's database, a user."""
    env = {"LORADEX_HOME": str(tmp_path / "home"), "LORADEX_USER": "tester"}
    if not db_url.startswith("sqlite"):
        env["LORADEX_DATABASE_URL"] = db_url
    else:
        monkeypatch.delenv("LORADEX_DATABASE_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# ------------------------------------------------------------------------------ adapters


def write_tiny_adapter(
    folder: Path,
    *,
    seed: int = 0,
    rank: int = 4,
    alpha: float = 8.0,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    layers: int = 2,
    hidden: int = 16,
    base_model_name_or_path: str | None = "tiny-llama",
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a PEFT-format LoRA adapter folder (safetensors + adapter_config.json)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors: dict[str, Any] = {}
    for layer in range(layers):
        for module in modules:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, hidden)).astype(
                np.float32
            )
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((hidden, rank)).astype(
                np.float32
            )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "base_model_name_or_path": base_model_name_or_path,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def make_adapter(tmp_path: Path) -> Callable[..., Path]:
    """``make_adapter(seed=1, rank=8, ...)`` -> a fresh adapter folder under tmp_path."""
    counter = iter(range(1_000_000))

    def make(**kwargs: Any) -> Path:
        return write_tiny_adapter(tmp_path / "adapters" / f"a{next(counter)}", **kwargs)

    return make


def write_tiny_base(
    folder: Path, *, hidden: int = 16, layers: int = 2, vocab: int = 32, seed: int = 0
) -> Path:
    """Write a minimal Llama-layout base checkpoint (config.json + model.safetensors)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {
        f"model.layers.{layer}.self_attn.{module}.weight": rng.standard_normal(
            (hidden, hidden)
        ).astype(np.float32)
        for layer in range(layers)
        for module in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    tensors["model.embed_tokens.weight"] = rng.standard_normal((vocab, hidden)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def tiny_base(tmp_path: Path) -> Path:
    """A base checkpoint the adapters of ``make_adapter`` (hidden 16) fit."""
    return write_tiny_base(tmp_path / "bases" / "tiny-base")

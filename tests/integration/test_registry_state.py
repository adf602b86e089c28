"""A registry whose database and blob store do not add up is refused, never recreated empty; a
brand-new home initialises itself; LORADEX_BLOB_URL is parsed and refused when unsupported."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mergetools.errors import InvalidInputError
from registry.errors import RegistryStateError
from registry.service import Registry
from registry.settings import Settings

MakeAdapter = Callable[..., Path]


def _open(home: Path, **kwargs: object) -> Registry:
    return Registry(Settings(home=home, database_url=None, user="tester", **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("exists", [False, True], ids=["missing", "empty-folder"])
def test_a_brand_new_home_initialises_itself(tmp_path: Path, exists: bool) -> None:
    home = tmp_path / "new" / "home"
    if exists:
        home.mkdir(parents=True)
    with _open(home) as registry:
        assert registry.list_adapters().items == []
    assert (home / "registry.db").is_file()
    with _open(home) as registry:  # and opens again: no blobs, no files named
        assert registry.list_adapters().items == []


def test_database_gone_while_blobs_remain_is_refused(
    tmp_path: Path, make_adapter: MakeAdapter
) -> None:
    home = tmp_path / "home"
    with _open(home) as registry:
        registry.register(make_adapter(seed=1), name="a")
    for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
        (home / name).unlink(missing_ok=True)
    with pytest.raises(RegistryStateError) as caught:
        _open(home)
    message = str(caught.value)
    assert f"registry database {home / 'registry.db'} does not exist" in message
    assert f"blob store at {home / 'blobs'}" in message and "holds 2 stored file(s)" in message
    assert "does not recreate it empty" in message
    assert not (home / "registry.db").exists()  # not recreated


@pytest.mark.parametrize("how", ["removed", "emptied"])
def test_blobs_gone_while_the_database_names_them_is_refused(
    tmp_path: Path, make_adapter: MakeAdapter, how: str
) -> None:
    home = tmp_path / "home"
    with _open(home) as registry:
        registry.register(make_adapter(seed=1), name="a")
        registry.register(make_adapter(seed=2), name="a")
    if how == "removed":
        shutil.rmtree(home / "blobs")
    else:
        for blob in (home / "blobs").glob("??/??/*"):
            blob.unlink()
    with pytest.raises(RegistryStateError) as caught:
        _open(home)
    message = str(caught.value)
    assert "names 4 stored file(s) of 2 version(s)" in message
    assert f"blob store at {home / 'blobs'} (the default" in message
    assert "LORADEX_BLOB_URL" in message
    assert not (home / "blobs").is_dir() or not list((home / "blobs").glob("??/??/*"))


def test_purged_versions_name_no_blobs(tmp_path: Path, make_adapter: MakeAdapter) -> None:
    home = tmp_path / "home"
    with _open(home) as registry:
        registry.register(make_adapter(seed=1), name="a")
        registry.delete("a@1", purge=True)
    with _open(home) as registry:  # an empty store is right: nothing names a blob
        assert registry.verify() == []


def test_blob_url_chooses_the_store(tmp_path: Path, make_adapter: MakeAdapter) -> None:
    shared = tmp_path / "shared store"
    url = "file://" + str(shared).replace(" ", "%20")
    with _open(tmp_path / "home", blob_url=url) as registry:
        result = registry.register(make_adapter(seed=1), name="a")
        assert registry.settings.blob_dir == shared
    sha = result.weights_sha256
    assert (shared / sha[:2] / sha[2:4] / sha).is_file()
    assert not (tmp_path / "home" / "blobs").exists()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("s3://bucket/prefix", "s3:// stores are not supported yet"),
        ("/plain/path", "no scheme"),
        ("file://otherhost/x", "not an absolute path on this machine"),
        ("https://x/y", "scheme 'https'"),
    ],
)
def test_unsupported_blob_urls_are_refused(tmp_path: Path, url: str, why: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Settings(home=tmp_path, blob_url=url)
    assert str(caught.value) == (
        f"LORADEX_BLOB_URL={url!r} is not a blob store loradex supports ({why}); expected "
        "file:///ABSOLUTE/PATH (unset: the folder blobs/ in LORADEX_HOME)"
    )


@pytest.mark.parametrize(
    ("url", "shown", "why"),
    [
        ("mysql://root:pw@h/db", "mysql://root:***@h/db", "scheme 'mysql'"),
        ("nonsense", "nonsense", "no scheme"),
        (
            "postgresql+psycopg2://h/db",
            "postgresql+psycopg2://h/db",
            "scheme 'postgresql+psycopg2'",
        ),
    ],
)
def test_unsupported_database_urls_are_refused(
    tmp_path: Path, url: str, shown: str, why: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Settings(home=tmp_path, database_url=url)
    assert str(caught.value).startswith(
        f"LORADEX_DATABASE_URL={shown!r} names a database loradex does not support ({why}); "
        "expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    )


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite+pysqlite://"])
def test_in_memory_sqlite_is_refused_not_silently_forgotten(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Settings(home=tmp_path, database_url=url)
    assert str(caught.value) == (
        f"LORADEX_DATABASE_URL={url!r} names an in-memory SQLite database: every change would be "
        "lost when the command ends; expected sqlite:///PATH to a file (or leave it unset for "
        "SQLite in LORADEX_HOME)"
    )
    assert Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/r.db").database_url

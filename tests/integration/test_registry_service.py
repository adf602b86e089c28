"""Registry use cases on SQLite and PostgreSQL (each test has its own fresh database)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mergetools.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    OutputExistsError,
)
from registry.blobstore import LocalBlobStore
from registry.errors import CorruptBlobError
from registry.inputs import EvalInput, ParentInput, parse_eval_spec, parse_ref
from registry.merges import record_merge
from registry.models import Event
from registry.refs import resolve_adapter_ref, resolve_adapter_refs
from registry.search import SearchQuery, parse_metric_filter
from registry.service import Registry
from registry.sources import registry_source

MakeAdapter = Callable[..., Path]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def events_of(registry: Registry) -> list[tuple[str, str]]:
    with registry.engine.connect() as conn:
        return [
            (k, s) for k, s in conn.execute(select(Event.kind, Event.subject).order_by(Event.id))
        ]


# ------------------------------------------------------------------------------ register


def test_register_records_summary_files_and_journal(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    folder = make_adapter(seed=1, rank=4, extra_files={"README.md": "# support bot\n"})
    result = registry.register(
        folder,
        name="support",
        evals=[EvalInput("accuracy", 0.81, dataset="mmlu", split="test")],
        tags={"team": "search"},
        description="first",
    )
    assert (result.ref, result.created, result.status) == ("support@1", True, "ready")
    assert result.weights_sha256 == sha256_of(folder / "adapter_model.safetensors")

    detail = registry.show("support@1")
    assert detail.latest and detail.created_by == "tester" and detail.description == "first"
    assert detail.target_modules == ["q_proj", "v_proj"]
    assert detail.max_rank == 4 and detail.alpha == 8.0 and detail.dtype == "float32"
    assert detail.ranks["model.layers.0.self_attn.q_proj"] == 4
    assert detail.base_name_or_path == "tiny-llama"
    assert detail.tags == {"team": "search"}
    assert [(e.metric, e.value, e.dataset, e.split) for e in detail.evals] == [
        ("accuracy", 0.81, "mmlu", "test")
    ]
    files = {f.path: f.sha256 for f in detail.files}
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    for rel, sha in files.items():
        assert sha == sha256_of(folder / rel)
        blob = registry.settings.blob_dir / sha[:2] / sha[2:4] / sha
        assert blob.read_bytes() == (folder / rel).read_bytes()
    assert events_of(registry) == [
        ("adapter.created", "support"),
        ("version.registered", "support@1"),
    ]


def test_identical_content_returns_the_existing_version(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    first = make_adapter(seed=1)
    copy = make_adapter(seed=1)  # same bytes, another folder
    assert registry.register(first, name="dup").version == 1
    again = registry.register(copy, name="dup")
    assert (again.version, again.created) == (1, False)
    assert registry.register(make_adapter(seed=2), name="dup").version == 2
    assert [v.version for v in registry.versions("dup")] == [2, 1]
    # Under another name the same bytes are a new adapter; the blob is stored once.
    assert registry.register(copy, name="dup-b").ref == "dup-b@1"
    blobs = list(LocalBlobStore(registry.settings.blob_dir).iter_blobs())
    assert len(blobs) == 3  # one shared config + 2 weights (dup@1 == dup-b@1)


def test_register_refuses_bad_input(
    registry: Registry, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError, match="name 'bad name' is not valid"):
        registry.register(make_adapter(), name="bad name")
    with pytest.raises(InvalidInputError, match="is not a folder"):
        registry.register(tmp_path / "missing", name="x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError):
        registry.register(empty, name="x")
    assert registry.list_adapters().items == []


# ------------------------------------------------------------------------------ references


def test_references(registry: Registry, make_adapter: MakeAdapter) -> None:
    one = registry.register(make_adapter(seed=1), name="ref")
    two = registry.register(make_adapter(seed=2), name="ref")
    assert registry.resolve("ref").version == 2
    assert registry.resolve("ref@latest").version == 2
    assert registry.resolve("ref@1").version == 1
    assert registry.resolve(f"sha256:{one.weights_sha256[:12]}").ref == "ref@1"
    assert registry.resolve(f"sha256:{two.weights_sha256.upper()}").ref == "ref@2"
    registry.set_alias("ref@1", "production")
    assert registry.resolve("ref@production").version == 1

    registry.yank("ref@2", reason="regressed")
    assert registry.resolve("ref").version == 1  # latest skips yanked
    assert registry.resolve("ref@2").status == "yanked"  # still fetchable by number
    registry.set_alias("ref@1", "staging")
    registry.yank("ref@1", reason="broken too")
    with pytest.raises(NotFoundError, match="no ready version"):
        registry.resolve("ref")
    with pytest.raises(NotFoundError, match=r"points to ref@1, which is yanked \(broken too\)"):
        registry.resolve("ref@production")
    with pytest.raises(NotFoundError, match="has no version 9"):
        registry.resolve("ref@9")
    with pytest.raises(NotFoundError, match="no alias 'canary'"):
        registry.resolve("ref@canary")
    with pytest.raises(NotFoundError, match="'nope' is not registered"):
        registry.resolve("nope")
    with pytest.raises(InvalidInputError, match="12 to 64 hex"):
        registry.resolve("sha256:abc")
    with pytest.raises(NotFoundError, match="no registered version"):
        registry.resolve("sha256:" + "0" * 12)


def test_sha256_prefix_shared_by_two_versions_is_ambiguous(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    a = registry.register(make_adapter(seed=1), name="amb-a")
    registry.register(make_adapter(seed=1), name="amb-b")
    with pytest.raises(ConflictError, match=r"ambiguous: it matches amb-a@1, amb-b@1"):
        registry.resolve(f"sha256:{a.weights_sha256[:16]}")


def test_parse_ref_forms() -> None:
    assert parse_ref("a").name == "a"
    assert parse_ref("a@7").version == 7
    assert parse_ref("a@production").alias == "production"
    with pytest.raises(InvalidInputError, match="neither a version number nor an alias"):
        parse_ref("a@!x")


def test_resolve_adapter_ref_materialises_once_and_reuses(
    registry: Registry, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    folder = make_adapter(seed=3)
    registry.register(folder, name="mat")
    as_path = resolve_adapter_ref(registry, str(folder))
    assert as_path.path == folder and not as_path.registered

    first = resolve_adapter_ref(registry, "mat")
    assert first.version is not None and first.version.ref == "mat@1"
    assert first.path.parent == registry.settings.cache_dir / "versions"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (first.path / name).read_bytes() == (folder / name).read_bytes()
    inode = (first.path / "adapter_model.safetensors").stat().st_ino
    second = resolve_adapter_ref(
        registry_source(registry.settings), "mat@1"
    )  # from settings: opens its own registry
    assert second.path == first.path
    assert (second.path / "adapter_model.safetensors").stat().st_ino == inode  # reused, not rebuilt

    # A tampered cache folder is detected and rebuilt from the verified blobs.
    target = first.path / "adapter_model.safetensors"
    os.chmod(target, 0o644)
    target.write_bytes(b"tampered")
    third = resolve_adapter_ref(registry, "mat")
    assert (third.path / "adapter_model.safetensors").read_bytes() == (
        folder / "adapter_model.safetensors"
    ).read_bytes()

    refs = resolve_adapter_refs(registry, [str(folder), "mat"])
    assert [r.registered for r in refs] == [False, True]
    with pytest.raises(NotFoundError, match="adapter folder '.*such' does not exist"):
        resolve_adapter_ref(registry, str(tmp_path / "no" / "such"))


# ------------------------------------------------------------------------------ search


def _seed_search(registry: Registry, make_adapter: MakeAdapter) -> None:
    specs = [
        ("search-a", 4, ("q_proj", "v_proj"), 0.70, "prod"),
        ("search-a", 8, ("q_proj",), 0.85, "dev"),
        ("search-b", 16, ("v_proj",), 0.90, "prod"),
        ("other", 4, ("q_proj",), 0.95, "prod"),
    ]
    for i, (name, rank, modules, acc, stage) in enumerate(specs):
        registry.register(
            make_adapter(seed=i, rank=rank, modules=modules),
            name=name,
            evals=[EvalInput("accuracy", acc, dataset="mmlu"), EvalInput("loss", 1 - acc)],
            tags={"stage": stage},
        )


def test_search_filters_and_metric_sort(registry: Registry, make_adapter: MakeAdapter) -> None:
    _seed_search(registry, make_adapter)

    def refs(**kwargs: object) -> list[str]:
        return [v.ref for v in registry.search(SearchQuery(**kwargs)).items]  # type: ignore[arg-type]

    assert refs() == ["other@1", "search-a@2", "search-a@1", "search-b@1"]
    assert refs(name="search-*") == ["search-a@2", "search-a@1", "search-b@1"]
    assert refs(target_module="v_proj") == ["search-a@1", "search-b@1"]
    assert refs(max_rank=8) == ["other@1", "search-a@2", "search-a@1"]
    assert refs(tags={"stage": "prod"}) == ["other@1", "search-a@1", "search-b@1"]
    assert refs(base="tiny-llama", max_rank=4) == ["other@1", "search-a@1"]
    acc = parse_metric_filter("accuracy>=0.85")
    assert refs(metrics=(acc,), sort="accuracy") == ["other@1", "search-b@1", "search-a@2"]
    assert refs(metrics=(acc,), sort="+accuracy", name="search-*") == ["search-a@2", "search-b@1"]
    # loss is lower-is-better: the best (lowest) first; "-loss" lists descending values.
    assert refs(metrics=(parse_metric_filter("loss<0.2"),), sort="loss") == [
        "other@1",
        "search-b@1",
        "search-a@2",
    ]
    assert refs(metrics=(parse_metric_filter("loss<0.2"),), sort="-loss") == [
        "search-a@2",
        "search-b@1",
        "other@1",
    ]
    with pytest.raises(NotFoundError, match="dataset 'other-set': no eval score"):
        refs(sort="accuracy", dataset="other-set")  # names no dataset: an error, not an empty page
    assert refs(sort="loss", dataset="mmlu") == []  # a dataset, but no loss on it: empty
    page = registry.search(SearchQuery(sort="accuracy", metrics=(acc,), tags={"stage": "prod"}))
    assert [(v.ref, v.scores["accuracy"]) for v in page.items] == [
        ("other@1", 0.95),
        ("search-b@1", 0.90),
    ]

    registry.yank("other@1", reason="x")
    assert refs(sort="accuracy", limit=1) == ["search-b@1"]
    assert refs(sort="accuracy", limit=1, include_yanked=True) == ["other@1"]


def test_search_keyset_pagination_visits_every_row_once(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    _seed_search(registry, make_adapter)
    for sort in (None, "accuracy", "+loss"):
        seen: list[str] = []
        after = None
        while True:
            page = registry.search(SearchQuery(sort=sort, limit=1, after=after))
            seen += [v.ref for v in page.items]
            if page.next_cursor is None:
                break
            after = page.next_cursor
        assert sorted(seen) == ["other@1", "search-a@1", "search-a@2", "search-b@1"], sort
        assert len(seen) == 4
    with pytest.raises(InvalidInputError, match="cursor"):
        registry.search(SearchQuery(after="garbage"))
    with pytest.raises(InvalidInputError, match="not understood"):
        parse_metric_filter("accuracy~0.8")


def test_list_adapters_paginates_by_name(registry: Registry, make_adapter: MakeAdapter) -> None:
    for i, name in enumerate(["b", "a", "c"]):
        registry.register(make_adapter(seed=i), name=name)
    registry.yank("b@1", reason="x")
    first = registry.list_adapters(limit=2)
    assert [(a.name, a.latest) for a in first.items] == [("a", 1), ("b", None)]
    rest = registry.list_adapters(limit=2, after=first.next_cursor)
    assert [a.name for a in rest.items] == ["c"] and rest.next_cursor is None
    assert [
        a.name for a in registry.list_adapters(pattern="[ab]*").items
    ] == []  # glob is literal-ish
    assert [a.name for a in registry.list_adapters(pattern="?").items] == ["a", "b", "c"]


# ------------------------------------------------------------------------------ evals, tags, aliases


def test_evals_tags_and_journal(registry: Registry, make_adapter: MakeAdapter) -> None:
    registry.register(make_adapter(), name="ev")
    rows = registry.add_evals(
        "ev",
        [parse_eval_spec("bleu=31.5,dataset=wmt,split=valid"), parse_eval_spec("accuracy=0.5")],
    )
    assert [(r.metric, r.value, r.dataset, r.split) for r in rows] == [
        ("accuracy", 0.5, None, None),
        ("bleu", 31.5, "wmt", "valid"),
    ]
    assert len(registry.list_evals("ev@1")) == 2
    assert registry.set_tags("ev", set_tags={"a": "1", "b": "2"}) == {"a": "1", "b": "2"}
    assert registry.set_tags("ev", set_tags={"a": "3"}, remove=["b"]) == {"a": "3"}
    kinds = [k for k, _ in events_of(registry)]
    assert kinds[-3:] == ["eval.added", "tags.changed", "tags.changed"]
    with pytest.raises(InvalidInputError, match="not a number"):
        parse_eval_spec("accuracy=high")
    with pytest.raises(InvalidInputError, match="dataset=D or split=S"):
        parse_eval_spec("accuracy=0.1,foo=bar")


def test_alias_moves_are_recorded_and_latest_is_reserved(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    for seed in range(3):
        registry.register(make_adapter(seed=seed), name="al")
    registry.set_alias("al@1", "production")
    move = registry.set_alias("al@3", "production")
    assert (move.from_version, move.to_version) == (1, 3)
    registry.remove_alias("al", "production")
    history = registry.alias_history("al", "production")
    assert [(m.from_version, m.to_version, m.moved_by) for m in history] == [
        (None, 1, "tester"),
        (1, 3, "tester"),
        (3, None, "tester"),
    ]
    with pytest.raises(InvalidInputError, match="reserved"):
        registry.set_alias("al@1", "latest")
    registry.yank("al@2", reason="bad")
    with pytest.raises(ConflictError, match="only point at a ready version"):
        registry.set_alias("al@2", "staging")
    before = len(events_of(registry))
    with pytest.raises(NotFoundError):
        registry.remove_alias("al", "staging")
    assert len(events_of(registry)) == before  # a failed use case leaves no journal entry


def test_yank_unyank_and_delete_purge(registry: Registry, make_adapter: MakeAdapter) -> None:
    registry.register(make_adapter(seed=1), name="del")
    two = registry.register(make_adapter(seed=2), name="del")
    with pytest.raises(InvalidInputError, match="needs a reason"):
        registry.yank("del@2", reason=" ")
    registry.yank("del@2", reason="leaks PII")
    assert registry.show("del@2").status_reason == "leaks PII"
    with pytest.raises(ConflictError, match="expected yanked"):
        registry.unyank("del@1")
    registry.unyank("del@2")

    registry.set_alias("del@2", "production")
    with pytest.raises(ConflictError, match="alias\\(es\\) production"):
        registry.delete("del@2", purge=True)
    registry.remove_alias("del", "production")
    with pytest.raises(InvalidInputError, match="was not confirmed") as refused:
        registry.delete("del@2", purge=False)
    assert refused.value.hint_action == "purge" and refused.value.fields["ref"] == "del@2"
    weights = (
        registry.settings.blob_dir
        / two.weights_sha256[:2]
        / two.weights_sha256[2:4]
        / two.weights_sha256
    )
    assert weights.exists()
    registry.delete("del@2", purge=True)
    assert not weights.exists()
    assert registry.show("del@2").status == "deleted"
    with pytest.raises(NotFoundError, match="deleted and its files purged"):
        registry.resolve("del@2")
    assert registry.resolve("del").version == 1
    # The number stays retired; identical content gets a new number.
    again = registry.register(make_adapter(seed=2), name="del")
    assert (again.version, again.created) == (3, True)
    assert weights.exists()


# ------------------------------------------------------------------------------ blobs


def test_export_is_byte_for_byte(
    registry: Registry, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    folder = make_adapter(seed=5, extra_files={"README.md": "hi"})
    registry.register(folder, name="exp")
    out = registry.export("exp", tmp_path / "out")
    for name in ("README.md", "adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    with pytest.raises(OutputExistsError, match="not empty"):
        registry.export("exp", out)
    registry.export("exp", out, force=True)


def test_corrupted_blob_is_detected_and_never_served(
    registry: Registry, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    result = registry.register(make_adapter(seed=6), name="bad")
    blob = (
        registry.settings.blob_dir
        / result.weights_sha256[:2]
        / result.weights_sha256[2:4]
        / result.weights_sha256
    )
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))

    with pytest.raises(CorruptBlobError, match=f"blob {result.weights_sha256} .* is corrupt"):
        registry.export("bad", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    with pytest.raises(CorruptBlobError):
        resolve_adapter_ref(registry, "bad@1")
    assert not any((registry.settings.cache_dir / "versions").glob("[0-9a-f]*"))
    assert registry.verify() == [
        {
            "ref": "bad@1",
            "name": "bad",
            "version": 1,
            "path": "adapter_model.safetensors",
            "sha256": result.weights_sha256,
            "problem": "corrupt",
        }
    ]

    blob.unlink()
    with pytest.raises(NotFoundError, match="missing from the blob store"):
        registry.export("bad", tmp_path / "out")


def test_gc_removes_only_unreferenced_blobs_past_grace(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    registry.register(make_adapter(seed=1), name="gc")
    store = LocalBlobStore(registry.settings.blob_dir)
    orphan_src = make_adapter(seed=99) / "adapter_model.safetensors"
    orphan = store.put_file(orphan_src)  # as if a register died before its commit
    assert registry.gc(grace_s=3600).removed == []
    result = registry.gc(grace_s=0, dry_run=True)
    assert result.removed == [orphan.sha256] and store.exists(orphan.sha256)
    result = registry.gc(grace_s=0)
    assert result.removed == [orphan.sha256] and not store.exists(orphan.sha256)
    assert result.scanned == 3
    assert registry.verify() == []


# ------------------------------------------------------------------------------ lineage, checkpoints


def test_lineage_and_checkpoints(
    registry: Registry, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    registry.register(make_adapter(seed=1), name="parent-a")
    registry.register(make_adapter(seed=2), name="parent-b")
    child = registry.register(
        make_adapter(seed=3),
        name="child",
        parents=[
            ParentInput("parent-a", relation="combined-from", method="cat", weight=0.7),
            ParentInput("parent-b@1", relation="combined-from", method="cat", weight=0.3),
        ],
    )
    view = registry.lineage(child.ref)
    assert [(p.ref, p.relation, p.method, p.weight) for p in view.parents] == [
        ("parent-a@1", "combined-from", "cat", 0.7),
        ("parent-b@1", "combined-from", "cat", 0.3),
    ]
    assert [c.ref for c in registry.lineage("parent-a").children] == ["child@1"]

    out = tmp_path / "merged"
    out.mkdir()
    resolved = resolve_adapter_refs(registry, ["parent-a", "parent-b@1", str(make_adapter(seed=9))])
    row = record_merge(
        registry, out=out, adapters=resolved, weights=[1.0, 0.5, 0.25], fingerprint="f" * 64
    )
    assert row is not None
    assert row.members == [
        {"ref": "parent-a@1", "name": "parent-a", "version": 1, "weight": 1.0},
        {"ref": "parent-b@1", "name": "parent-b", "version": 1, "weight": 0.5},
    ]
    assert row.metadata["unregistered"] == [str(resolved[2].path)]
    assert record_merge(registry, out=out, adapters=resolved[2:]) is None
    page = registry.list_checkpoints(ref="parent-b@1")
    assert [(c.location, c.fingerprint) for c in page.items] == [(str(out.resolve()), "f" * 64)]
    assert registry.list_checkpoints(ref="child").items == []
    assert [c["location"] for c in registry.lineage("parent-a").checkpoints] == [str(out.resolve())]
    with pytest.raises(InvalidInputError, match="relation 'bogus'"):
        registry.register(
            make_adapter(seed=4), name="child", parents=[ParentInput("parent-a", relation="bogus")]
        )


def test_journal_counts_match_changes(registry: Registry, make_adapter: MakeAdapter) -> None:
    registry.register(make_adapter(seed=1), name="j")
    registry.register(make_adapter(seed=1), name="j")  # no change, no event
    with registry.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Event)) == 2
    assert [e.kind for e in registry.events(name="j")] == ["version.registered", "adapter.created"]


# ------------------------------------------------------------------------------ bases


def test_register_against_a_base(
    registry: Registry, make_adapter: MakeAdapter, tiny_base: Path
) -> None:
    from mergetools.errors import IncompatibleError
    from registry.refs import resolve_base_ref

    result = registry.register(make_adapter(seed=1), name="based", base=str(tiny_base))
    detail = registry.show(result.ref)
    assert detail.base is not None and detail.base["name"] == "tiny-base"
    assert detail.base["architectures"] == ["LlamaForCausalLM"]
    assert (
        detail.base_fingerprint == detail.base["fingerprint"]
        and len(detail.base_fingerprint or "") == 64
    )
    assert [b.name for b in registry.list_bases()] == ["tiny-base"]
    assert registry.get_base("tiny-base").signature["vocab_size"] == 32  # type: ignore[index]
    assert registry.get_base(f"sha256:{detail.base_fingerprint[:12]}").name == "tiny-base"  # type: ignore[index]
    # A registered base name works wherever a base path does.
    resolved = resolve_base_ref(registry, "tiny-base")
    assert resolved.path == tiny_base.resolve() and resolved.base_id is not None
    assert registry.register(make_adapter(seed=2), name="based", base="tiny-base").version == 2
    assert [v.ref for v in registry.search(SearchQuery(base="tiny-base")).items] == [
        "based@2",
        "based@1",
    ]

    with pytest.raises(
        IncompatibleError, match=r"failed its check against base .*in_features 8 != 16"
    ):
        registry.register(make_adapter(seed=3, hidden=8), name="based", base="tiny-base")
    assert registry.register(make_adapter(seed=4), name="based").version == 3  # no number burnt
    again = registry.add_base(tiny_base)
    assert again.name == "tiny-base"
    with pytest.raises(ConflictError, match="already registered as 'tiny-base'"):
        registry.add_base(tiny_base, name="other-name")
    with pytest.raises(NotFoundError, match="not registered"):
        resolve_base_ref(registry, "no-such-base")


def test_adapter_created_is_journaled_once_on_every_backend(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    """Regression: on PostgreSQL psycopg reports rowcount -1 for INSERT ... ON CONFLICT DO
    NOTHING, and every new version was journaled as a new adapter too."""
    for seed in (1, 2, 3):
        registry.register(make_adapter(seed=seed), name="once")
    kinds = [e.kind for e in registry.events(name="once")]
    assert kinds.count("adapter.created") == 1 and kinds.count("version.registered") == 3


# ------------------------------------------------------------------------------ actors


def test_each_write_use_case_records_the_actor_it_is_given(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    """The acting user is an argument of the use case: the caller names who acts (a token's
    owner, a job's submitter); left out, the registry's default (the OS user) acts."""
    default = registry.actor
    registry.register(make_adapter(seed=1), name="support", actor="trainer")
    registry.add_evals("support@1", [EvalInput("accuracy", 0.8)], actor="evaluator")
    registry.set_tags("support@1", set_tags={"team": "cx"}, actor="tagger")
    registry.set_alias("support@1", "production", actor="publisher")
    registry.yank("support@1", reason="regressed", actor="oncall")
    registry.unyank("support@1")
    registry.set_metric_direction("loss", "lower", actor="statistician")
    with registry.engine.connect() as conn:
        actors = [
            (kind, actor)
            for kind, actor in conn.execute(select(Event.kind, Event.actor).order_by(Event.id))
        ]
    assert actors == [
        ("adapter.created", "trainer"),
        ("version.registered", "trainer"),
        ("eval.added", "evaluator"),
        ("tags.changed", "tagger"),
        ("alias.set", "publisher"),
        ("version.yanked", "oncall"),
        ("version.unyanked", default),
        ("metric.direction_set", "statistician"),
    ]
    detail = registry.show("support@1")
    assert [e.recorded_by for e in detail.evals] == ["evaluator"]
    assert [m.moved_by for m in registry.alias_history("support", "production")] == ["publisher"]
    assert registry.get_adapter("support").created_by == "trainer"


def test_an_actor_is_plain_bounded_text(registry: Registry, make_adapter: MakeAdapter) -> None:
    folder = make_adapter(seed=2)
    for bad in ("", "a\nb", "x" * 201):
        with pytest.raises(InvalidInputError, match="actor"):
            registry.register(folder, name="support", actor=bad)
    assert registry.list_adapters().items == []


"""Request bodies of the HTTP API (pydantic lives only in ``registry/api/``).

Responses are the registry's own records (``registry.records``) rendered as JSON, so the API and
``loradex ... --json`` print the same fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

MAX_INTEGER = 2**63 - 1
"""The largest integer a request may carry (the databases' 64-bit integers)."""


class EvalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(examples=["accuracy"])
    value: float = Field(examples=[0.91])
    dataset: str | None = None
    split: str | None = None


class ParentIn(BaseModel):
    """A lineage parent: a version reference and how the new version relates to it."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(examples=["support@3"])
    relation: str = Field(default="derived-from", examples=["derived-from"])
    method: str | None = Field(default=None, examples=["cat"])
    weight: float | None = None
    seed: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class RegisterIn(BaseModel):
    """A new version from uploaded blobs: file path (relative, posix) -> sha256 of its bytes."""

    model_config = ConfigDict(extra="forbid")

    files: dict[str, str] = Field(
        examples=[{"adapter_config.json": "9f86d08...", "adapter_model.safetensors": "2c26b46..."}]
    )
    base: str | None = None
    evals: list[EvalIn] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    source: str | None = Field(
        default=None, description="where it came from (default: 'upload by <token name>')"
    )
    parents: list[ParentIn] = Field(default_factory=list, max_length=1000)
    metadata: dict[str, Any] = Field(default_factory=dict, description="free JSON kept with the version")


class BaseIn(BaseModel):
    """A base model known by its fingerprint and structural signature (computed where its
    folder is), with optionally its files, uploaded as blobs first (path -> sha256)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the name; the default name for the folder unless name_given")
    name_given: bool = Field(
        default=True, description="false: name is only the default (a known fingerprint keeps its own)"
    )
    fingerprint: str = Field(pattern="^[0-9a-f]{64}$")
    signature: dict[str, Any]
    source_path: str | None = None
    repo: str | None = None
    revision: str | None = None
    description: str = ""
    files: dict[str, str] | None = None


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str = Field(examples=["support@3"])
    weight: float = 1.0


class CheckpointIn(BaseModel):
    """A merged checkpoint made elsewhere (where the merge ran) from registered versions."""

    model_config = ConfigDict(extra="forbid")

    location: str = Field(min_length=1, max_length=4000)
    members: list[MemberIn] = Field(min_length=1, max_length=1000)
    base: str | None = Field(default=None, description="a registered base (name or sha256:)")
    base_fingerprint: str | None = None
    fingerprint: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class AliasIn(BaseModel):
    """Point an alias at ``version``; with ``expected_version``, only if it still points there
    (``null``: only if it is unset)."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_INTEGER)
    expected_version: int | None = Field(default=None, ge=1, le=MAX_INTEGER)


class EvalsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evals: list[EvalIn] = Field(min_length=1)


class TagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class YankIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(description="why; checked by the use case (not empty, one line, bounded)")


class PublishIn(BaseModel):
    """A publish of ``version`` (a number, an alias or ``latest``) to ``alias``, or with
    ``rollback`` a rollback of ``alias``; the gates as ``loradex publish`` takes them."""

    model_config = ConfigDict(extra="forbid")

    alias: str = Field(examples=["production"])
    version: StrictInt | StrictStr | None = Field(default=None, examples=[7])
    rollback: bool = False
    require: list[str] = Field(default_factory=list, examples=[["accuracy>=0.82@squad/validation"]])
    no_regress: list[str] = Field(default_factory=list, examples=[["accuracy@squad:0.005"]])
    serving: list[str] = Field(default_factory=list, examples=[["vllm:max_rank=64"]])
    base: str | None = None
    base_signature: dict[str, Any] | None = None
    dry_run: bool = False


class PolicyIn(BaseModel):
    """The gates every publish to an alias runs."""

    model_config = ConfigDict(extra="forbid")

    require: list[str] = Field(default_factory=list)
    no_regress: list[str] = Field(default_factory=list)
    serving: list[str] = Field(default_factory=list)


class CheckIn(BaseModel):
    """What ``POST /api/v1/check`` checks: one adapter (a registry reference, or uploaded files)
    against one base (a registered base reference, or a structural signature)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(
        default=None,
        description="a registry reference: NAME, NAME@7, NAME@alias or sha256:<hex>",
        examples=["support@production"],
    )
    files: dict[str, str] | None = Field(
        default=None,
        description="instead of adapter: uploaded files, file name -> sha256 of the blob",
        examples=[{"adapter_config.json": "9f86d08...", "adapter_model.safetensors": "2c26b46..."}],
    )
    base: str | None = Field(
        default=None,
        description="a registered base: its name or sha256:<fingerprint>",
        examples=["tinyllama"],
    )
    signature: dict[str, Any] | None = Field(
        default=None,
        description="instead of base: the base's structural signature "
        "(the JSON `loradex inspect BASE --signature` prints)",
    )
    serving: str | None = Field(
        default=None,
        description="a serving profile: vllm, vllm:max_rank=N or lorax",
        examples=["vllm:max_rank=64"],
    )
    strict: bool = Field(default=False, description="warnings fail the check too")


class TokenIn(BaseModel):
    """A token to create (``loradex token create``): its secret is in the answer, once."""

    model_config = ConfigDict(extra="forbid")

    scope: StrictStr = Field(description="read, write, publish or admin")
    name: StrictStr | None = Field(
        default=None, max_length=200, description="recorded as the actor (default: yours)"
    )
    prefix: StrictStr | None = Field(
        default=None, max_length=200, description="only adapter names starting with it"
    )
    expires: StrictStr | None = Field(
        default=None, max_length=40, description="a lifetime: 90m, 12h, 30d, 2w (default: none)"
    )


class MetricDirectionIn(BaseModel):
    """Whether a higher or a lower value of the metric is better, registry-wide."""

    model_config = ConfigDict(extra="forbid")

    direction: StrictStr = Field(description="higher or lower")

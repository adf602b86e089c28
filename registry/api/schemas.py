"""Request bodies of the HTTP API (pydantic lives only in ``registry/api/``).

Responses are the registry's own records (``registry.records``) rendered as JSON, so the API and
``loradex ... --json`` print the same fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class EvalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(examples=["accuracy"])
    value: float = Field(examples=[0.91])
    dataset: str | None = None
    split: str | None = None


class RegisterIn(BaseModel):
    """A new version from uploaded blobs: file name -> sha256 of its bytes."""

    model_config = ConfigDict(extra="forbid")

    files: dict[str, str] = Field(
        examples=[{"adapter_config.json": "9f86d08...", "adapter_model.safetensors": "2c26b46..."}]
    )
    base: str | None = None
    evals: list[EvalIn] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    description: str = ""


class AliasIn(BaseModel):
    """Point an alias at ``version``; with ``expected_version``, only if it still points there
    (``null``: only if it is unset)."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    expected_version: int | None = Field(default=None, ge=1)


class EvalsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evals: list[EvalIn] = Field(min_length=1)


class TagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class YankIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1)


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

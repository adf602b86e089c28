"""Request bodies of the HTTP API (pydantic lives only in ``registry/api/``).

Responses are the registry's own records (``registry.records``) rendered as JSON, so the API and
``loradex ... --json`` print the same fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_INTEGER = 2**63 - 1
"""The largest integer a request may carry (the databases' 64-bit integers)."""


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

    reason: str = Field(min_length=1)


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

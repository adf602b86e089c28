"""Structural signatures of base checkpoints: what an adapter check needs, without the weights.

A signature is a small JSON document (DESIGN.md §4) built from ``config.json``, the shard index
and the safetensors headers only — no tensor data, no torch for safetensors checkpoints::

    {
      "format": "loradex.signature/1",
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": 32000,
      "tie_word_embeddings": false,
      "dtype": "bfloat16",
      "name_or_path": "TinyLlama/TinyLlama-1.1B",   # optional: the base's recorded identity
      "revision": "main",                           # optional
      "fingerprint": "<64 hex>",                    # optional: loradex inspect --signature --fingerprint
      "tensors": {"model.embed_tokens.weight": ["BF16", [32000, 2048]], ...}
    }

``loradex inspect BASE --signature > base.signature.json`` writes one; ``loradex check
--base-signature`` reads it with :func:`load_signature`. :class:`BaseSignature` is also the common
view of a base that :mod:`mergetools.check` works on, whether it came from a folder or a file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mergetools.checkpoint import (
    OUTPUT_EMBEDDING_NAMES,
    Checkpoint,
    find_input_embedding,
    open_checkpoint,
)
from mergetools.errors import CorruptFileError, InvalidInputError
from mergetools.fingerprint import is_fingerprint
from mergetools.safetensors_io import DTYPE_SIZES

logger = logging.getLogger(__name__)

SIGNATURE_FORMAT = "loradex.signature/1"
MAX_SIGNATURE_SIZE = 64 << 20
"""A signature file larger than this is refused before it is parsed."""

_HF_CACHE_RE = re.compile(r"models--(?P<org>[^/]+?)--(?P<repo>[^/]+)/snapshots/(?P<rev>[^/]+)/?\Z")


@dataclass(frozen=True)
class BaseSignature:
    """The structure of a base model: names, dtypes and shapes of its tensors, and its config facts."""

    source: str
    architectures: list[str]
    model_type: str | None
    vocab_size: int | None
    tie_word_embeddings: bool
    dtype: str | None
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    """Stored tensor name -> (safetensors dtype, shape)."""
    name_or_path: str | None = None
    revision: str | None = None
    fingerprint: str | None = None
    path: Path | None = field(default=None, compare=False)
    """The checkpoint folder when the signature was read from one (None for a signature file)."""

    def input_embedding_name(self) -> str | None:
        """The input embedding tensor, found by its conventional suffix."""
        return find_input_embedding(self.tensors)

    def output_embedding_name(self) -> str | None:
        for name in OUTPUT_EMBEDDING_NAMES:
            if name in self.tensors:
                return name
        return None

    def embedding_rows(self) -> int | None:
        """Rows of the input embedding (the vocabulary the weights hold), else ``vocab_size``."""
        name = self.input_embedding_name()
        if name is not None and self.tensors[name][1]:
            return self.tensors[name][1][0]
        return self.vocab_size

    def to_dict(self) -> dict[str, object]:
        """The JSON document (format ``loradex.signature/1``)."""
        data: dict[str, object] = {
            "format": SIGNATURE_FORMAT,
            "architectures": list(self.architectures),
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "dtype": self.dtype,
        }
        for key in ("name_or_path", "revision", "fingerprint"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data["tensors"] = {n: [d, list(s)] for n, (d, s) in sorted(self.tensors.items())}
        return data


def base_identity(path: Path, config: Mapping[str, object]) -> tuple[str | None, str | None]:
    """The base's recorded ``(name_or_path, revision)``: config ``_name_or_path``, or the Hub cache
    layout ``models--ORG--REPO/snapshots/REV`` of the folder; ``(None, None)`` when unknown."""
    name = config.get("_name_or_path")
    name = name if isinstance(name, str) and name else None
    revision = None
    match = _HF_CACHE_RE.search(path.resolve().as_posix())
    if match:
        name = name or f"{match['org']}/{match['repo']}"
        revision = match["rev"]
    return name, revision


def signature_of_checkpoint(
    checkpoint: Checkpoint, *, fingerprint: str | None = None
) -> BaseSignature:
    """The signature of an opened checkpoint (no tensor data read)."""
    config = checkpoint.config
    name, revision = base_identity(checkpoint.path, config)
    model_type = config.get("model_type")
    return BaseSignature(
        source=str(checkpoint.path),
        architectures=checkpoint.architectures,
        model_type=str(model_type) if model_type is not None else None,
        vocab_size=checkpoint.vocab_size,
        tie_word_embeddings=checkpoint.tie_word_embeddings,
        dtype=checkpoint.dtype,
        tensors={n: (t.dtype, t.shape) for n, t in checkpoint.tensors.items()},
        name_or_path=name,
        revision=revision,
        fingerprint=fingerprint,
        path=checkpoint.path,
    )


def read_signature(path: Path, *, fingerprint: str | None = None) -> dict[str, object]:
    """The JSON-able signature of the checkpoint folder at ``path`` (headers only)."""
    return signature_of_checkpoint(open_checkpoint(path), fingerprint=fingerprint).to_dict()


def _opt_str(data: Mapping[str, object], key: str, *, source: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise CorruptFileError(f"{source}: {key!r} must be a string or null, got {value!r}"[:300])
    return value


def parse_signature(data: object, *, source: str = "<signature>") -> BaseSignature:
    """Validate a signature document (as parsed from JSON) into a :class:`BaseSignature`."""
    if not isinstance(data, dict):
        raise CorruptFileError(f"{source}: a signature must be a JSON object")
    if data.get("format") != SIGNATURE_FORMAT:
        raise CorruptFileError(
            f"{source}: format is {data.get('format')!r}, expected {SIGNATURE_FORMAT!r}"[:300],
            fields={"file": source, "expected": SIGNATURE_FORMAT, "got": str(data.get("format"))[:100]},
            hint="write a signature file from the base folder",
            hint_action="write_signature",
        )
    architectures = data.get("architectures", [])
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise CorruptFileError(f"{source}: 'architectures' must be a list of strings")
    vocab_size = data.get("vocab_size")
    if vocab_size is not None and (
        not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 0
    ):
        raise CorruptFileError(f"{source}: 'vocab_size' must be a non-negative integer or null")
    tie = data.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise CorruptFileError(f"{source}: 'tie_word_embeddings' must be true or false")
    fingerprint = _opt_str(data, "fingerprint", source=source)
    if fingerprint is not None and not is_fingerprint(fingerprint):
        raise CorruptFileError(f"{source}: 'fingerprint' must be 64 lowercase hex digits")
    raw_tensors = data.get("tensors")
    if not isinstance(raw_tensors, dict) or not raw_tensors:
        raise CorruptFileError(f"{source}: 'tensors' must map tensor names to [dtype, shape]")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in raw_tensors.items():
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or entry[0] not in DTYPE_SIZES
            or not isinstance(entry[1], list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry[1])
        ):
            raise CorruptFileError(
                f"{source}: tensor {name!r} must be [dtype, [dim, ...]] with a known dtype, got {entry!r}"[
                    :300
                ]
            )
        if math.prod(entry[1]) > 1 << 62:
            raise CorruptFileError(f"{source}: tensor {name!r} has an impossible shape {entry[1]}")
        tensors[name] = (entry[0], tuple(entry[1]))
    return BaseSignature(
        source=source,
        architectures=list(architectures),
        model_type=_opt_str(data, "model_type", source=source),
        vocab_size=vocab_size,
        tie_word_embeddings=tie,
        dtype=_opt_str(data, "dtype", source=source),
        tensors=tensors,
        name_or_path=_opt_str(data, "name_or_path", source=source),
        revision=_opt_str(data, "revision", source=source),
        fingerprint=fingerprint,
    )


def load_signature(file: Path | str | os.PathLike[str]) -> BaseSignature:
    """Read and validate a signature file written by ``loradex inspect --signature``."""
    file = Path(file)
    try:
        size = file.stat().st_size
        if size > MAX_SIGNATURE_SIZE:
            raise CorruptFileError(
                f"{file}: {size} bytes is too large for a signature (limit {MAX_SIGNATURE_SIZE})"
            )
        data = json.loads(file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{file}: signature file not found") from None
    except IsADirectoryError:
        raise InvalidInputError(
            f"{file}: is a folder, expected a signature file",
            fields={"file": str(file)},
            hint="name a signature file, or give the folder as the base itself",
            hint_action="base_folder",
        ) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{file}: not a valid signature file ({exc})"[:400]) from None
    return parse_signature(data, source=str(file))

"""Type and range checks of the config fields loradex reads.

:func:`config_problems` checks ``adapter_config.json`` against what PEFT's ``LoraConfig`` accepts
(peft 0.21 ``tuners/lora/config.py``); :func:`base_config_problems` checks the fields of a base
``config.json`` that loradex uses. Each problem is a :class:`ConfigProblem` with the field, the
expected type or range and the value found; ``check`` reports each one as an
``invalid_config_field`` finding, the other commands refuse the first one with a one-line error.
Numbers too large for a float (JSON allows any number of digits) and NaN / Infinity are problems,
never crashes.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MAX_DIM = 2**62
"""The largest rank, layer index or token id accepted (tensor sizes are int64)."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One field whose type or value the loader refuses."""

    field: str
    expected: str
    actual: str

    @property
    def message(self) -> str:
        return f"{self.field} must be {self.expected}, got {self.actual}"


def _show(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: object) -> bool:
    return _is_int(value) and 0 < value <= MAX_DIM  # type: ignore[operator]


def _index(value: object) -> bool:
    return _is_int(value) and 0 <= value <= MAX_DIM  # type: ignore[operator]


def _finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _str_or_str_list(value: object) -> bool:
    return isinstance(value, str) or _str_list(value)


def _int_or_int_list(value: object) -> bool:
    return _index(value) or (isinstance(value, list) and all(_index(v) for v in value))


def _token_indices(value: object) -> bool:
    if isinstance(value, list):
        return all(_index(v) for v in value)
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(_index(i) for i in v)
        for k, v in value.items()
    )


def _bool(value: object) -> bool:
    return isinstance(value, bool)


def _str(value: object) -> bool:
    return isinstance(value, str)


_Check = tuple[Callable[[object], bool], str]

ADAPTER_FIELDS: dict[str, _Check] = {
    "peft_type": (_str, "a string"),
    "task_type": (_str, "a string"),
    "base_model_name_or_path": (_str, "a string"),
    "revision": (_str, "a string"),
    "r": (_positive_int, "a positive integer"),
    "lora_alpha": (_finite_number, "a finite number"),
    "lora_dropout": (_finite_number, "a finite number"),
    "target_modules": (_str_or_str_list, "a list of module names or a regex string"),
    "exclude_modules": (_str_or_str_list, "a list of module names or a regex string"),
    "modules_to_save": (_str_list, "a list of module names"),
    "layers_to_transform": (_int_or_int_list, "a layer index or a list of layer indices"),
    "layers_pattern": (_str_or_str_list, "a string or a list of strings"),
    "fan_in_fan_out": (_bool, "true or false"),
    "use_rslora": (_bool, "true or false"),
    "use_dora": (_bool, "true or false"),
    "lora_bias": (_bool, "true or false"),
    "inference_mode": (_bool, "true or false"),
    "init_lora_weights": (
        lambda v: isinstance(v, bool | str),
        "true, false or an initialisation name",
    ),
    "trainable_token_indices": (
        _token_indices,
        "a list of token ids or an object mapping module names to lists of token ids",
    ),
    "auto_mapping": (lambda v: isinstance(v, dict), "an object"),
    "loradex_base_fingerprint": (_str, "a string"),
}
"""Field -> (accepts, what is expected). ``null`` is accepted for every field but
:data:`NOT_NULL` (a missing field takes PEFT's default; an explicit ``null`` is kept as None)."""

NOT_NULL = ("r", "lora_alpha")
"""Fields PEFT computes the scale from: an explicit ``null`` breaks ``lora_alpha / r`` at load."""

REGEX_FIELDS = ("target_modules", "exclude_modules")
"""Fields PEFT matches with ``re.fullmatch`` when they are a string."""

BIAS_VALUES = ("none", "all", "lora_only")


def config_problems(config: Mapping[str, object]) -> list[ConfigProblem]:
    """Every field of ``adapter_config.json`` whose type or range PEFT's LoraConfig refuses."""
    problems: list[ConfigProblem] = []
    for name, (accepts, expected) in ADAPTER_FIELDS.items():
        value = config.get(name)
        if value is None and name in NOT_NULL and name in config:
            problems.append(ConfigProblem(name, expected, "null"))
        elif value is not None and not accepts(value):
            problems.append(ConfigProblem(name, expected, _show(value)))
        elif name in REGEX_FIELDS and isinstance(value, str):
            try:
                re.compile(value)
            except (re.error, RecursionError, OverflowError) as exc:
                problems.append(
                    ConfigProblem(name, "a list of module names or a valid regex", f"{_show(value)} ({exc})")
                )
    bias = config.get("bias")
    if bias is not None and bias not in BIAS_VALUES:
        problems.append(
            ConfigProblem("bias", "one of " + ", ".join(map(repr, BIAS_VALUES)), _show(bias))
        )
    for name, accepts, expected in (
        ("rank_pattern", _positive_int, "a positive integer"),
        ("alpha_pattern", _finite_number, "a finite number"),
    ):
        patterns = config.get(name)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            problems.append(
                ConfigProblem(name, "an object mapping module patterns to values", _show(patterns))
            )
            continue
        for key, value in patterns.items():
            if not accepts(value):
                problems.append(ConfigProblem(f"{name}[{key!r}]", expected, _show(value)))
    return problems


BASE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_labels",
    "max_position_embeddings",
    "n_embd",
    "n_layer",
    "n_head",
)
"""Numeric fields of a base ``config.json``: positive integers when present."""


def base_config_problems(config: Mapping[str, object]) -> list[ConfigProblem]:
    """Fields of a base ``config.json`` (and its ``text_config``) with a type loradex cannot use."""
    problems: list[ConfigProblem] = []
    sections: list[tuple[str, Mapping[str, object]]] = [("", config)]
    text_config = config.get("text_config")
    if text_config is not None:
        if isinstance(text_config, dict):
            sections.append(("text_config.", text_config))
        else:
            problems.append(ConfigProblem("text_config", "an object", _show(text_config)))
    for prefix, section in sections:
        for name in BASE_INT_FIELDS:
            value = section.get(name)
            if value is not None and not _positive_int(value):
                problems.append(ConfigProblem(prefix + name, "a positive integer", _show(value)))
        tie = section.get("tie_word_embeddings")
        if tie is not None and not _bool(tie):
            problems.append(
                ConfigProblem(prefix + "tie_word_embeddings", "true or false", _show(tie))
            )
    architectures = config.get("architectures")
    if architectures is not None and not _str_list(architectures):
        problems.append(
            ConfigProblem("architectures", "a list of class names", _show(architectures))
        )
    for name in ("model_type", "dtype", "torch_dtype", "_name_or_path"):
        value = config.get(name)
        if value is not None and not _str(value):
            problems.append(ConfigProblem(name, "a string", _show(value)))
    return problems

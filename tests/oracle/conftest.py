"""Fixtures of the PEFT differential suite.

Session-scoped base checkpoints are read-only inputs shared by many tests (loradex must never write
into a base folder; ``test_refusals`` checks that). Every test writes its adapters and outputs to
its own ``tmp_path``, so no test depends on another's files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tests import factories as F


@pytest.fixture(autouse=True)
def _quiet_libraries():
    """transformers/peft warn about tiny configs and missing hub access; not the subject here."""
    F._quiet_transformers()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(peft|transformers)(\..*)?")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*(peft|PEFT|adapter).*")
        yield


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny fp32 Llama (untied), ``model.safetensors`` as transformers writes it."""
    return F.save_checkpoint(F.tiny_llama(), tmp_path_factory.mktemp("llama") / "base")


@pytest.fixture(scope="session")
def gpt2_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny fp32 GPT-2 (tied ``lm_head``), names with the ``transformer.`` prefix."""
    return F.save_checkpoint(F.tiny_gpt2(), tmp_path_factory.mktemp("gpt2") / "base")


@pytest.fixture(scope="session")
def bert_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny fp32 ``BertModel`` (no task head; names without the ``bert.`` prefix)."""
    return F.save_checkpoint(F.tiny_bert(), tmp_path_factory.mktemp("bert") / "base")

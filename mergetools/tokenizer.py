"""Which tokenizer files a folder ships, and whether they form a usable tokenizer.

The rule for a merge (docs/merge.md): an adapter's tokenizer files are used only when every
one of them parses — JSON files as JSON objects, sentencepiece models non-empty, ``vocab.txt``
and ``merges.txt`` as UTF-8 text, chat templates as UTF-8 text. When the adapter ships a
vocabulary file (:data:`~mergetools.checkpoint.CORE_TOKENIZER_FILES`), its files replace the
base's tokenizer whole and must be complete on their own: ``tokenizer.json``, or a sentencepiece
model, or ``vocab.json`` + ``merges.txt``, or ``vocab.txt``. Without one (only
``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json`` or a chat template)
they are an overlay laid over the base's tokenizer. Anything else is refused: an adapter's
partial tokenizer is never mixed with the base's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mergetools.checkpoint import CORE_TOKENIZER_FILES, TOKENIZER_FILES
from mergetools.errors import LoradexError
from mergetools.files import read_json_object, read_limited, read_text_limited
from mergetools.folder import Folder

logger = logging.getLogger(__name__)

SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "spm.model")
JSON_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "chat_template.json",
)
TEXT_TOKENIZER_FILES = ("vocab.txt", "merges.txt", "chat_template.jinja")

COMPLETE_SETS: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    *((name,) for name in SENTENCEPIECE_FILES),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
)
"""Sets of files any one of which makes a complete tokenizer."""


@dataclass(frozen=True)
class TokenizerFiles:
    """The tokenizer files of one folder."""

    folder: Path
    files: dict[str, Path]

    @property
    def core(self) -> bool:
        """Whether it ships a vocabulary (and so replaces a base's tokenizer whole)."""
        return any(name in self.files for name in CORE_TOKENIZER_FILES)

    @property
    def complete(self) -> bool:
        return any(all(name in self.files for name in group) for group in COMPLETE_SETS)


def find_tokenizer_files(folder: Folder) -> TokenizerFiles:
    """The tokenizer files present in ``folder`` (links leaving it are refused)."""
    files = {name: path for name in TOKENIZER_FILES if (path := folder.file(name)) is not None}
    return TokenizerFiles(folder.path, files)


def tokenizer_problems(tokenizer: TokenizerFiles) -> list[str]:
    """Why ``tokenizer`` cannot be used (empty when it can): unparsable files, incompleteness."""
    problems: list[str] = []
    for name, path in sorted(tokenizer.files.items()):
        try:
            if name in JSON_TOKENIZER_FILES:
                read_json_object(path, what=name, kind="tokenizer")
            elif name in TEXT_TOKENIZER_FILES:
                read_text_limited(path, what=name, kind="tokenizer")
            elif name in SENTENCEPIECE_FILES and not read_limited(
                path, what=name, kind="tokenizer"
            ):
                problems.append(f"{path}: {name} is empty, expected a sentencepiece model")
        except LoradexError as exc:
            problems.append(exc.message)
    if tokenizer.core and not tokenizer.complete:
        have = ", ".join(sorted(n for n in tokenizer.files if n in CORE_TOKENIZER_FILES))
        problems.append(
            f"{tokenizer.folder}: the tokenizer files ({have}) do not form a complete tokenizer; "
            "expected tokenizer.json, a sentencepiece tokenizer.model, vocab.json with merges.txt, or vocab.txt"
        )
    return problems


def check_tokenizer(folder: Folder, *, error: type[LoradexError]) -> TokenizerFiles:
    """The folder's tokenizer files; raise ``error`` (one line) when they are not usable."""
    tokenizer = find_tokenizer_files(folder)
    problems = tokenizer_problems(tokenizer)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise error(
            f"{problems[0]}{more}; an adapter's tokenizer files are used only when all of them parse "
            "and form a complete tokenizer — fix or remove them"
        )
    return tokenizer

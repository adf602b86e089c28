"""The one core object the shells call: :class:`Registry`, a facade over the use cases.

A :class:`Registry` is built from a :class:`~registry.settings.Settings` (made at the edge) and
holds the engine and the blob store. Its use cases live in modules by aggregate, one transaction
each, the journal event in the same transaction:

- :mod:`registry.adapters`: adapters and versions (register, list, show, search);
- :mod:`registry.evals`: eval scores and tags of a version;
- :mod:`registry.aliases`: aliases, moved with compare-and-swap, and their history;
- :mod:`registry.policies`: alias policies (publish gates) and protection;
- :mod:`registry.publish`: publish and rollback through the gates;
- :mod:`registry.bases`: base models (signatures, fingerprints, stored files);
- :mod:`registry.lineage`: lineage edges and merged checkpoints;
- :mod:`registry.folders`: export and materialise versions as folders;
- :mod:`registry.maintenance`: yank, delete, verify, gc;
- :mod:`registry.metrics`: metric directions;
- :mod:`registry.tokens`: API tokens;
- :mod:`registry.uploads`: register from uploaded blobs;
- :mod:`registry.events`: reading the journal;
- :mod:`registry.core`: transactions, reference resolution, the journal writer.

Records are in :mod:`registry.records`, input parsing in :mod:`registry.inputs`.
"""

from __future__ import annotations

from registry.adapters import AdaptersMixin
from registry.aliases import AliasesMixin
from registry.bases import BasesMixin
from registry.evals import EvalsMixin
from registry.events import EventsMixin
from registry.folders import FoldersMixin
from registry.lineage import LineageMixin
from registry.maintenance import MaintenanceMixin
from registry.metrics import MetricsMixin
from registry.policies import PoliciesMixin
from registry.tokens import TokensMixin
from registry.uploads import UploadsMixin

__all__ = ["Registry"]


class Registry(
    AdaptersMixin,
    EvalsMixin,
    AliasesMixin,
    PoliciesMixin,
    BasesMixin,
    LineageMixin,
    FoldersMixin,
    MaintenanceMixin,
    MetricsMixin,
    TokensMixin,
    UploadsMixin,
    EventsMixin,
):
    """The registry's use cases over one database and one blob store."""

"""Full retrieval: scan with the tuned profile (building a resumable index), answer from the index.

:func:`run_retrieval` is what ``autotune retrieve`` runs (defaults, the profile to use, outputs);
:func:`retrieve` the search itself for a given configuration; :func:`write_outputs` the results folder.
"""

from __future__ import annotations

from autotune.retrieval._outputs import contact_sheet, write_outputs, write_skipped
from autotune.retrieval._result import Hit, NoReadableImages, RetrievalResult
from autotune.retrieval._run import RetrievalOptions, choose_config, choose_profile, profile_rate, run_retrieval
from autotune.retrieval._search import node_profile, node_sizer, retrieve, scan_engine
from autotune.retrieval._sync import (
    embedding_recipe,
    existing_index,
    index_folder,
    safe_default_config,
    update_index,
)

__all__ = [
    "Hit",
    "NoReadableImages",
    "RetrievalOptions",
    "RetrievalResult",
    "choose_config",
    "choose_profile",
    "contact_sheet",
    "embedding_recipe",
    "existing_index",
    "index_folder",
    "node_profile",
    "node_sizer",
    "profile_rate",
    "retrieve",
    "run_retrieval",
    "safe_default_config",
    "scan_engine",
    "update_index",
    "write_outputs",
    "write_skipped",
]

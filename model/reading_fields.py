"""The reading fields a model needs: one answer for the gateway and the API.

Both validate incoming readings against these (a reading missing one is rejected),
so a model that computes its inputs from readings (rolling stream features, the
time-aware detector) asks for the reading fields it reads, never its input columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from model.artifact import ModelError

if TYPE_CHECKING:
    from model.scorer import Scorer


def required_fields(scorer: Scorer, known: Iterable[str] | None = None) -> tuple[str, ...]:
    """Fields every reading must carry for ``scorer``; ModelError if ``known`` (the
    fields the caller can validate) lacks one."""
    needed = scorer.raw_fields
    if known is not None:
        have = set(known)
        unknown = [f for f in needed if f not in have]
        if unknown:
            raise ModelError(
                f"model {scorer.version} needs fields {unknown} that the wire contract "
                "does not define"
            )
    return needed

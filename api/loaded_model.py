"""What an API worker serves: a scorer with the request limits derived from it.

The model itself is held by :class:`model.holder.ModelHolder` (shared with the
gateway): loaded once per worker in ``create_app``, swapped atomically when
``current`` moves.  Each request takes one :class:`LoadedModel` reference
(``holder.current``) and scores with it, so a request never mixes two models.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from contract import DEFAULT_FIELDS, DecodeLimits
from model.reading_fields import required_fields
from model.scorer import Scorer

# /predict scores on demand: a record's ts is only checked for being a valid time,
# not for being recent (clients score historical data too).
_NO_AGE_LIMIT = float("inf")


@dataclass(frozen=True)
class LoadedModel:
    scorer: Scorer
    # Validation limits for this model's features (built once per model).
    limits: DecodeLimits
    loaded_at: float
    # Reading fields in the order the model reads them (Scorer.raw_fields).
    fields: tuple[str, ...] = ()
    # A reading's score depends on its device's earlier readings (api.series).
    stateful: bool = False

    @property
    def version(self) -> str:
        return self.scorer.version


def decode_limits(scorer: Scorer, max_payload_bytes: int) -> DecodeLimits:
    # The gateway's rule (model.reading_fields): the reading fields the model reads,
    # not its input columns, so stream-feature and dynamics models are served too.
    required = required_fields(scorer, (f.name for f in DEFAULT_FIELDS))
    return DecodeLimits(
        fields=DEFAULT_FIELDS,
        required=required,
        max_payload_bytes=max_payload_bytes,
        max_future_s=_NO_AGE_LIMIT,
        max_age_s=_NO_AGE_LIMIT,
    )


def model_loader(
    factory: Callable[[str], Scorer], max_payload_bytes: int
) -> Callable[[str], LoadedModel]:
    """The holder's ``load``: the scorer at a path, with its limits built before the swap."""

    def load(path: str) -> LoadedModel:
        scorer = factory(path)
        limits = decode_limits(scorer, max_payload_bytes)
        return LoadedModel(
            scorer, limits, time.time(), tuple(limits.required or ()), scorer.stateful
        )

    return load

"""API keys in the ``X-API-Key`` header, compared in constant time.

Keys are never logged: a failed attempt is logged with the client address only and
counted in ``api_auth_failures_total``.
"""

from __future__ import annotations

import hmac
import logging

from api.errors import ApiError

log = logging.getLogger(__name__)

HEADER = "X-API-Key"


class KeyCheck:
    def __init__(self, keys: tuple[str, ...]):
        self._keys = tuple(k.encode("utf-8") for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def accepts(self, presented: str | None) -> bool:
        """True if ``presented`` is one of the keys (False when keys are off)."""
        if not presented or not self._keys:
            return False
        given = presented.encode("utf-8", errors="replace")
        # Compare against every key so the time does not depend on which one matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched

    def check(self, presented: str | None) -> None:
        """Raise ApiError(401) unless ``presented`` is one of the keys (or keys are off)."""
        if not self._keys:
            return
        if not presented:
            raise ApiError(
                401,
                "unauthorized",
                f"this endpoint needs an API key in the {HEADER} header",
                headers={"WWW-Authenticate": HEADER},
            )
        if not self.accepts(presented):
            raise ApiError(
                401,
                "unauthorized",
                f"the API key in {HEADER} is not valid",
                headers={"WWW-Authenticate": HEADER},
            )

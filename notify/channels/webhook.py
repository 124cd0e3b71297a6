"""Generic webhook (Slack, Mattermost, Teams incoming webhooks, ntfy, your own).

POST of the JSON body documented in docs/notifications.md, or of the message text alone
(``body = "text"``), with ``Idempotency-Key``.
2xx = delivered; 408, 429, 5xx, a timeout or a connection error = try again later;
any other status = permanent failure (a wrong URL or a refused payload does not
get better by retrying).
"""

from __future__ import annotations

import logging

import orjson
import urllib3

from notify.channels.base import Outcome, SendResult
from notify.config import WebhookChannel, secret_from_file
from notify.render import Rendered

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 425, 429})


def classify_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in _RETRY_STATUSES or status >= 500:
        return Outcome.RETRY
    return Outcome.PERMANENT


class WebhookSender:
    def __init__(self, cfg: WebhookChannel):
        self.name = cfg.name
        self.timeout_s = cfg.timeout_s
        self._url = cfg.resolved_url()
        self._as_text = cfg.body == "text"
        content_type = "text/plain; charset=utf-8" if self._as_text else "application/json"
        self._headers = {"Content-Type": content_type, **cfg.headers}
        token = secret_from_file(cfg.token_file, f"webhook {cfg.name} token_file")
        if token:
            self._headers[cfg.token_header] = f"{cfg.token_prefix}{token}"
        # retries=False: the outbox does the retrying (with backoff, durably).
        self._http = urllib3.PoolManager(
            retries=False,
            timeout=urllib3.Timeout(total=cfg.timeout_s),
            ca_certs=cfg.ca_file or None,
        )

    def send(self, message: Rendered, recipient: str, from_addr: str) -> SendResult:
        headers = {**self._headers, "Idempotency-Key": message.key}
        if self._as_text:
            # Header values must be Latin-1; a device name may not be.
            title = message.subject.encode("latin-1", "replace").decode("latin-1")
            headers = {"Title": title, **headers}
            body = message.text.encode("utf-8")
        else:
            body = orjson.dumps(message.webhook_body)
        try:
            resp = self._http.request(
                "POST",
                self._url,
                body=body,
                headers=headers,
                preload_content=True,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # Never log the URL: Slack/Teams URLs carry their secret.
            return SendResult(Outcome.RETRY, f"{type(exc).__name__}: {_short(exc)}")
        outcome = classify_status(resp.status)
        detail = "" if outcome is Outcome.DELIVERED else f"HTTP {resp.status}: {_body(resp.data)}"
        return SendResult(outcome, detail)

    def close(self) -> None:
        self._http.clear()


def _short(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 puts the pool (host) and the request path in its messages; keep the reason.
    return text.rsplit(": ", 1)[-1][:200]


def _body(data: bytes) -> str:
    return data[:200].decode("utf-8", "replace").replace("\n", " ")

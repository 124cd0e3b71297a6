"""E-mail over SMTP: STARTTLS (required by default), login, one message per recipient.

The Message-ID is derived from the notification's idempotency key and recipient, so
a message sent again after a crash is recognisably the same message.  Resolutions and
acknowledgements are marked low priority.
"""

from __future__ import annotations

import hashlib
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from notify.channels.base import Outcome, SendResult
from notify.config import EmailChannel, secret_from_file
from notify.render import Rendered

log = logging.getLogger(__name__)


def message_id(key: str, recipient: str, domain: str) -> str:
    digest = hashlib.blake2b(f"{key}\0{recipient}".encode(), digest_size=16).hexdigest()
    return f"<{digest}@{domain}>"


def build_message(message: Rendered, recipient: str, from_addr: str, domain: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = from_addr
    msg["To"] = recipient
    msg["Subject"] = message.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id(message.key, recipient, domain)
    msg["X-Idempotency-Key"] = message.key
    msg["X-Factory-Event"] = message.event
    if message.quiet:
        # Understood by Outlook (Importance), most others (X-Priority) and RFC 2156.
        msg["Importance"] = "low"
        msg["X-Priority"] = "5"
        msg["Priority"] = "non-urgent"
    msg.set_content(message.text + "\n")
    return msg


def _smtp_outcome(code: int) -> Outcome:
    # 4xx: the server asks us to come back later; 5xx: it will not take this message.
    return Outcome.RETRY if 400 <= code < 500 else Outcome.PERMANENT


class EmailSender:
    def __init__(self, cfg: EmailChannel):
        self.name = cfg.name
        self.timeout_s = cfg.timeout_s
        self._cfg = cfg
        self._password = (
            secret_from_file(cfg.password_file, f"email {cfg.name} password_file")
            if cfg.username
            else ""
        )
        self._tls = ssl.create_default_context(cafile=cfg.ca_file or None)

    def send(self, message: Rendered, recipient: str, from_addr: str) -> SendResult:
        cfg = self._cfg
        sender = from_addr or cfg.from_addr
        msg = build_message(message, recipient, sender, cfg.message_id_domain)
        try:
            with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s) as smtp:
                smtp.ehlo()
                if cfg.starttls:
                    smtp.starttls(context=self._tls)
                    smtp.ehlo()
                if cfg.username:
                    smtp.login(cfg.username, self._password)
                smtp.send_message(msg, from_addr=sender, to_addrs=[recipient])
        except smtplib.SMTPRecipientsRefused as exc:
            code = next(iter(exc.recipients.values()))[0]
            return SendResult(_smtp_outcome(code), f"recipient refused: {code}")
        except smtplib.SMTPAuthenticationError as exc:
            # A configuration problem: keep it queued (and loud) until it is fixed.
            log.error("email %s: login as %s refused (%d)", self.name, cfg.username, exc.smtp_code)
            return SendResult(Outcome.RETRY, f"login refused: {exc.smtp_code}")
        except smtplib.SMTPNotSupportedError as exc:
            log.error("email %s: %s (STARTTLS or AUTH not offered)", self.name, exc)
            return SendResult(Outcome.RETRY, f"not supported: {exc}")
        except smtplib.SMTPResponseException as exc:
            return SendResult(_smtp_outcome(exc.smtp_code), f"SMTP {exc.smtp_code}")
        except (smtplib.SMTPException, OSError) as exc:
            # Connection refused/reset, timeout, TLS failure: the server may come back.
            return SendResult(Outcome.RETRY, f"{type(exc).__name__}: {str(exc)[:200]}")
        return SendResult(Outcome.DELIVERED)

    def close(self) -> None:
        """Nothing held open: one SMTP connection per message (alerts are rare)."""

"""Delivery channels: each sends one rendered notification and says how it went."""

from __future__ import annotations

from notify.channels.base import Channel, Outcome, SendResult
from notify.channels.email import EmailSender
from notify.channels.webhook import WebhookSender
from notify.config import EmailChannel, NotifierConfig, WebhookChannel

__all__ = ["Channel", "EmailSender", "Outcome", "SendResult", "WebhookSender", "make_channels"]


def make_channels(cfg: NotifierConfig) -> dict[str, Channel]:
    """The enabled channels by name (secrets are read here, once)."""
    out: dict[str, Channel] = {}
    for channel in cfg.enabled_channels():
        if isinstance(channel, WebhookChannel):
            out[channel.name] = WebhookSender(channel)
        elif isinstance(channel, EmailChannel):
            out[channel.name] = EmailSender(channel)
    return out

"""The notification service: alert messages (MQTT) -> messages for people.

Subscribes to ``factory/alerts/#`` and delivers each alert transition through the
routes' channels (webhook, e-mail), durably and at least once, with rate limits and
digests.  See docs/notifications.md.
"""

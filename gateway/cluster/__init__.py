"""Scale-out: several gateways share the reading stream with per-device state intact.

See ``coordinator.py`` for the design.  Disabled by default (``[cluster] enabled``);
a single gateway subscribes to the readings directly.
"""

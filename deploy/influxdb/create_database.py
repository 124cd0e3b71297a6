#!/usr/bin/env python3
"""Create the gateway's InfluxDB 1.x database with a retention policy (idempotent).

    python3 deploy/influxdb/create_database.py --url http://localhost:8086 \\
        --database factory --retention 90d

Makes ``--database`` if missing and gives it a default retention policy ``--policy``
(``keep``) of ``--retention``: created if missing, altered if its duration differs,
left alone otherwise.  Points older than the retention are deleted by InfluxDB, a
shard group (a day, for 90d) at a time.  Uses only the standard library (it runs
before the gateway's virtualenv exists) and the v1 ``/query`` API.
Exit status: 0 done, 1 InfluxDB error or unreachable, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

log = logging.getLogger("create_database")

_UNITS = {"ns": 1e-9, "u": 1e-6, "µ": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
_UNITS["w"] = 7 * 86400
_PART = re.compile(r"(\d+)(ns|u|µ|ms|s|m|h|d|w)")


class InfluxError(RuntimeError):
    pass


def duration_seconds(text: str) -> float:
    """InfluxQL durations ("90d", "2160h0m0s"; "INF" and "0s" mean keep forever)."""
    if text.upper() == "INF":
        return 0.0
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (e.g. 90d, 12w, 720h, INF)")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Client:
    def __init__(self, url: str, username: str = "", password: str = "", timeout_s: float = 10):
        self.url = url.rstrip("/")
        self.auth = {"u": username, "p": password} if username else {}
        self.timeout_s = timeout_s

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as resp:
                return resp.status == 204
        except (urllib.error.URLError, OSError):
            return False

    def query(self, q: str) -> list[dict]:
        data = urllib.parse.urlencode({"q": q, **self.auth}).encode()
        req = urllib.request.Request(f"{self.url}/query", data=data, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise InfluxError(f"{q}: HTTP {exc.code} {exc.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise InfluxError(f"{q}: {exc}") from None
        result = body.get("results", [{}])[0]
        if "error" in body or "error" in result:
            raise InfluxError(f"{q}: {body.get('error') or result.get('error')}")
        return result.get("series", [])


def ensure(client: Client, database: str, policy: str, retention: str) -> str:
    """Make it so; return what was done."""
    want = duration_seconds(retention)
    client.query(f"CREATE DATABASE {quote(database)}")  # no-op when it exists
    series = client.query(f"SHOW RETENTION POLICIES ON {quote(database)}")
    rows = [dict(zip(s["columns"], v, strict=True)) for s in series for v in s["values"]]
    current = next((r for r in rows if r["name"] == policy), None)
    target = f"{quote(policy)} ON {quote(database)} DURATION {retention}"
    if current is None:
        client.query(f"CREATE RETENTION POLICY {target} REPLICATION 1 DEFAULT")
        return f"created retention policy {policy} ({retention}) on {database}"
    if duration_seconds(current["duration"]) != want or not current["default"]:
        client.query(f"ALTER RETENTION POLICY {target} DEFAULT")
        return (
            f"changed retention policy {policy} on {database}: {current['duration']} -> {retention}"
        )
    return f"retention policy {policy} ({retention}) on {database} already in place"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8086")
    parser.add_argument("--database", default="factory")
    parser.add_argument("--policy", default="keep", help="retention policy name")
    parser.add_argument("--retention", default="90d", help="e.g. 90d, 12w, 720h, INF")
    parser.add_argument("--username", default="", help="an admin user, if auth is on")
    parser.add_argument("--password-file", default="", help="that user's password")
    parser.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for InfluxDB to answer"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="create_database: %(message)s")
    try:
        duration_seconds(args.retention)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    password = Path(args.password_file).read_text().strip() if args.password_file else ""
    client = Client(args.url, args.username, password)
    deadline = time.monotonic() + args.wait
    while not client.ping():
        if time.monotonic() >= deadline:
            log.error("InfluxDB at %s does not answer /ping", args.url)
            return 1
        time.sleep(0.5)  # polling a just-started service, not synchronising
    try:
        log.info("%s", ensure(client, args.database, args.policy, args.retention))
    except InfluxError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

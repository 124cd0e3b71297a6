"""A webhook endpoint for the demo: what the notification service would post to a chat
or a phone, written one line per message to a file (``tail -f`` it).

    python -m devstack.webhook_inbox --port 8099 --out var/log/notifications.log
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from common.logs import setup_logging

log = logging.getLogger("webhook-inbox")
MAX_BODY = 1024 * 1024


def make_handler(out: Path, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Inbox(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self.send_error(400, "a JSON body of at most 1 MiB")
                return
            try:
                text = str(json.loads(self.rfile.read(length)).get("text", ""))
            except (ValueError, AttributeError):
                self.send_error(400, "not a JSON object")
                return
            stamp = datetime.now(tz=UTC).isoformat(timespec="seconds")
            with lock, out.open("a", encoding="utf-8") as f:
                f.write(f"{stamp}  {text}\n\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug(fmt, *args)

    return Inbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.webhook_inbox", description=__doc__)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--out", type=Path, default=Path("var/log/notifications.log"))
    args = parser.parse_args(argv)
    setup_logging()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.out, threading.Lock()))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("webhook inbox on http://127.0.0.1:%d/, writing to %s", args.port, args.out)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real Mosquitto broker in a directory of its own."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from devstack.process import ManagedProcess, port_open


@dataclass
class Mosquitto:
    run_dir: Path
    port: int
    host: str = "127.0.0.1"
    persistence: bool = True
    extra_config: str = ""
    # Replace the default (anonymous) listener block, e.g. for the secured config.
    listener_config: str | None = None
    process: ManagedProcess | None = field(default=None, init=False)

    def write_config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        listener = self.listener_config or (
            f"listener {self.port} {self.host}\nallow_anonymous true\n"
        )
        lines = [
            listener,
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.run_dir}/",
            # Keep queued QoS 1 messages for an offline or slow gateway instead of
            # dropping past the default 1000 (the gateway bounds its own memory).
            "max_queued_messages 0",
            "max_inflight_messages 0",
            # Forward each message at once (no Nagle delay): alert latency.
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        # Started as root, mosquitto drops to the `mosquitto` user and could not
        # write persistence into our directory.
        if os.geteuid() == 0:
            lines.append("user root")
        lines.append(self.extra_config)
        conf = self.run_dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout_s: float = 20.0) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.write_config()
        self.process = ManagedProcess(
            "mosquitto",
            [binary, "-c", str(conf)],
            self.run_dir / "mosquitto.log",
            ready=lambda: port_open(self.host, self.port),
        ).start(timeout_s)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

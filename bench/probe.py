"""Latency probe: publish → alert time, measured in one process with one clock.

    probe = LatencyProbe(ProbeSpec(host, port, duration_s=60, anomalous=..., normal=...))
    probe.start()                # connected and subscribed to factory/alerts/<line>/#
    result = probe.join()        # ProbeResult: latency samples, missing / wrong alerts

The probe devices alternate an anomalous and a normal reading.  With the gateway's
``[alerts] fire_after = 1, resolve_after = 1`` every anomalous reading fires a new
``process_anomaly`` alert and every normal one resolves it, so each probe reading is
answered by exactly one such alert.  The alert echoes the reading's ``device`` and
``seq``; the probe keeps the send time of each (device, seq) and takes latency =
receive time - send time, both from ``time.perf_counter_ns`` in this process (the
alert's ``ts`` only has ms).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract import encode_reading, reading_topic
from contract.topics import alert_topic

PROCESS_ANOMALY = "process_anomaly"
FIRING = "firing"
RESOLVED = "resolved"


@dataclass(frozen=True)
class ProbeSpec:
    host: str
    port: int
    duration_s: float
    anomalous: dict[str, float]
    normal: dict[str, float]
    # Probe readings per second (half anomalous); each one is a latency sample.
    rate: float = 10.0
    line: str = "probe"
    devices: int = 4
    # After the last send, wait this long for the alerts still on their way.
    settle_timeout_s: float = 10.0


@dataclass
class ProbeResult:
    sent: int = 0
    # Acknowledged by the broker: what the gateway must store.
    acked: int = 0
    alerts: int = 0
    # Probe readings never answered by an alert, and alerts of the wrong state.
    missing: int = 0
    wrong_state: int = 0
    firing_ms: list[float] = field(default_factory=list)
    resolved_ms: list[float] = field(default_factory=list)

    @property
    def latencies_ms(self) -> list[float]:
        return self.firing_ms + self.resolved_ms

    def summary(self) -> dict:
        def stats(values: list[float]) -> dict:
            if not values:
                return {"n": 0}
            arr = np.asarray(values)
            return {
                "n": len(values),
                "p50_ms": round(float(np.percentile(arr, 50)), 2),
                "p90_ms": round(float(np.percentile(arr, 90)), 2),
                "p99_ms": round(float(np.percentile(arr, 99)), 2),
                "max_ms": round(float(arr.max()), 2),
                "mean_ms": round(float(arr.mean()), 2),
            }

        return {
            "sent": self.sent,
            "acked": self.acked,
            "alerts": self.alerts,
            "missing": self.missing,
            "wrong_state": self.wrong_state,
            "all": stats(self.latencies_ms),
            "firing": stats(self.firing_ms),
            "resolved": stats(self.resolved_ms),
        }


class _Probe:
    def __init__(self, spec: ProbeSpec, client_id: str):
        self.spec = spec
        self.devices = [f"{spec.line}-p{i:02d}" for i in range(spec.devices)]
        self.sent_at: dict[tuple[str, int], int] = {}
        self.result = ProbeResult()
        self._subscribed = False
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def connect(self, timeout_s: float = 20.0) -> None:
        self.client.connect(self.spec.host, self.spec.port, keepalive=60, clean_start=True)
        deadline = time.monotonic() + timeout_s
        while not self._subscribed:
            if time.monotonic() > deadline:
                raise RuntimeError("probe could not subscribe to the alerts topic")
            self.client.loop(0.1)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        # The measuring client must not add Nagle delays of its own.
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(alert_topic(self.spec.line, "+"), qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subscribed = True

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self.result.acked += 1

    def _on_message(self, client, userdata, msg) -> None:
        received = time.perf_counter_ns()
        body = orjson.loads(msg.payload)
        if body.get("kind") != PROCESS_ANOMALY:
            return  # e.g. the sensor-fault checks may flag the probe's jumps too
        key = (body.get("device"), body.get("seq"))
        sent = self.sent_at.pop(key, None)
        if sent is None:
            return  # not one of ours (or a repeat)
        self.result.alerts += 1
        expected = FIRING if key[1] % 2 == 0 else RESOLVED
        if body.get("state") != expected:
            self.result.wrong_state += 1
            return
        target = self.result.firing_ms if expected == FIRING else self.result.resolved_ms
        target.append((received - sent) / 1e6)

    def _loop(self, timeout_s: float) -> None:
        rc = self.client.loop(timeout_s)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"probe lost the broker: {mqtt.error_string(rc)}")

    def run(self) -> ProbeResult:
        spec = self.spec
        topics = [reading_topic(spec.line, d) for d in self.devices]
        start = time.perf_counter()
        end = start + spec.duration_s
        i = 0
        while True:
            due = start + i / spec.rate
            now = time.perf_counter()
            if due >= end:
                break
            if now < due:
                self._loop(min(due - now, 0.01))
                continue
            d = i % len(self.devices)
            seq = i // len(self.devices)
            values = spec.anomalous if seq % 2 == 0 else spec.normal
            payload = encode_reading(values, time.time_ns() // 1000 / 1e6, seq)
            self.sent_at[(self.devices[d], seq)] = time.perf_counter_ns()
            self.client.publish(topics[d], payload, qos=1)
            self.result.sent += 1
            i += 1
        settle_end = time.perf_counter() + spec.settle_timeout_s
        while (self.sent_at or self.result.acked < self.result.sent) and (
            time.perf_counter() < settle_end
        ):
            self._loop(0.05)
        self.result.missing = len(self.sent_at)
        self.client.disconnect()
        return self.result


def _run(spec: ProbeSpec, client_id: str, ready, go, results) -> None:
    probe = _Probe(spec, client_id)
    try:
        probe.connect()
    except Exception as exc:
        ready.put(f"{type(exc).__name__}: {exc}")
        return
    ready.put("")
    go.wait()
    try:
        results.put(probe.run().__dict__)
    except Exception as exc:  # report it to the harness instead of dying silently
        results.put({"error": f"{type(exc).__name__}: {exc}"})


class LatencyProbe:
    """The probe in a process of its own, so the harness's threads cannot delay it."""

    def __init__(self, spec: ProbeSpec, name: str = "latency-probe"):
        self.spec = spec
        ctx = mp.get_context("spawn")
        self._ready = ctx.Queue()
        self._results = ctx.Queue()
        self._go = ctx.Event()
        self._proc = ctx.Process(
            target=_run,
            args=(spec, name, self._ready, self._go, self._results),
            name=name,
            daemon=True,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def start(self, timeout_s: float = 60.0) -> LatencyProbe:
        """Returns once subscribed; sending starts with :meth:`go`."""
        self._proc.start()
        try:
            error = self._ready.get(timeout=timeout_s)
        except queue.Empty:
            self._proc.terminate()
            raise RuntimeError("latency probe did not start") from None
        if error:
            raise RuntimeError(f"latency probe failed: {error}")
        return self

    def go(self) -> None:
        self._go.set()

    def join(self) -> ProbeResult:
        timeout = self.spec.duration_s + self.spec.settle_timeout_s + 60
        try:
            out = self._results.get(timeout=timeout)
        except queue.Empty:
            self._proc.terminate()
            raise RuntimeError("latency probe did not finish") from None
        self._proc.join(10)
        if "error" in out:
            raise RuntimeError(f"latency probe failed: {out['error']}")
        return ProbeResult(**out)

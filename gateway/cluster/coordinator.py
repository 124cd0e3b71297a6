"""Cluster coordination: who routes, who owns which partition, who rescues whom.

Design (measured on Mosquitto 2.0.11, see README "Scale out"):

1. Every gateway is a member of the shared subscription
   ``$share/<group>/factory/+/+/reading`` (its ingest session, persistent).  The
   broker spreads readings over the members round-robin, without device affinity.
2. The member that receives a reading republishes it to
   ``factory/_part/<p>/<line>/<device>``, p = crc32(line/device) mod P, and
   acknowledges the original once the broker acknowledged the copy.
3. Partition p is consumed through the persistent session ``<group>-part-<p>`` by
   its owner, chosen by rendezvous hashing over the gateways whose retained status
   is ``online``.  Connecting with a session's client id takes it over, queue and
   unacknowledged messages included, so one process at a time scores a device and
   a dead owner's partitions continue, without loss, wherever they move.
4. Mosquitto does not hand a dead member's unacknowledged or queued shared messages
   to the others; it keeps them, and keeps queueing that member's round-robin
   share, in the dead member's session.  So a survivor (rendezvous-chosen) connects
   as the dead gateway's ingest session, forwards everything in it, and ends the
   session, which also removes the dead member from the group.
"""

from __future__ import annotations

import logging
import threading
import time

from common.mqtt import MqttSettings
from contract import (
    STATUS_SUBSCRIPTION,
    parse_partition_ready_topic,
    parse_status_topic,
    partition_ready_subscription,
)
from gateway.cluster.assignment import owned_partitions, owner
from gateway.cluster.broker_version import VERSION_TOPIC, stall_warning
from gateway.cluster.sessions import ConsumerSession, RoutingSession
from gateway.config import ClusterConfig
from gateway.flow import HeldLimit
from gateway.inbox import Inbox
from gateway.intake import Message
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


def ingest_client_id(group: str, gateway_id: str) -> str:
    return f"{group}-ingest-{gateway_id}"


class Coordinator:
    def __init__(
        self,
        cfg: ClusterConfig,
        mqtt_settings: MqttSettings,
        gateway_id: str,
        inbox: Inbox[Message],
        metrics: GatewayMetrics,
        gate: HeldLimit | None = None,
    ):
        self._gate = gate
        self._cfg = cfg
        self._settings = mqtt_settings
        self._me = gateway_id
        self._inbox = inbox
        self._metrics = metrics
        self._lock = threading.Lock()
        self._status: dict[str, bool] = {}
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._partitions: dict[int, ConsumerSession] = {}
        self._backoff_until: dict[int, float] = {}
        self._rescues: dict[str, RoutingSession] = {}
        self._rescued: set[str] = set()
        self._ready: set[int] = set()
        self._warned_version = False  # once per process, not on every reconnect
        self._thread = threading.Thread(target=self._run, name="cluster", daemon=True)
        self.router = RoutingSession(
            mqtt_settings,
            ingest_client_id(cfg.group, gateway_id),
            cfg.group,
            cfg.partitions,
            subscribe=True,
            on_routed=metrics.routed.inc,
            is_ready=self._is_ready,
        )

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """What the gateway's main session must subscribe to for the coordinator."""
        return (STATUS_SUBSCRIPTION, partition_ready_subscription(self._cfg.group), VERSION_TOPIC)

    def _is_ready(self, partition: int) -> bool:
        return partition in self._ready

    # -- membership, fed by the main session's subscription to the status topics
    def handle_status(self, topic: str, payload: bytes) -> bool:
        if topic == VERSION_TOPIC:
            warning = stall_warning(payload)
            if warning is not None and not self._warned_version:
                self._warned_version = True
                log.warning("%s", warning)
            return True
        partition = parse_partition_ready_topic(topic, self._cfg.group)
        if partition is not None:
            if payload == b"ready":
                self._ready.add(partition)
                self._changed.set()  # the coordinator thread forwards held readings
            return True
        member = parse_status_topic(topic)
        if member is None:
            return False
        online = payload == b"online"
        with self._lock:
            if self._status.get(member) != online:
                self._status[member] = online
                self._changed.set()
        return True

    def members(self) -> set[str]:
        with self._lock:
            return {m for m, up in self._status.items() if up} | {self._me}

    def owned(self) -> set[int]:
        return set(self._partitions)

    def start(self) -> None:
        self.router.start()
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._changed.wait(1.0)
            self._changed.clear()
            if self._stopping.is_set():
                return
            try:
                self._reconcile()
                self.router.flush_held()
                for rescue in list(self._rescues.values()):
                    rescue.flush_held()
            except Exception:
                # Keep coordinating: the next pass (within a second) tries again.
                log.exception("cluster reconcile failed")

    def _reconcile(self) -> None:
        members = self.members()
        want = owned_partitions(self._me, members, self._cfg.partitions)
        now = time.monotonic()
        for p, session in list(self._partitions.items()):
            if session.taken_over.is_set() or p not in want:
                if p not in want:
                    log.info("partition %d moves to %s", p, owner(members, f"partition-{p}"))
                    session.close()
                else:  # our view and another gateway's differ for a moment
                    self._backoff_until[p] = now + 2.0
                del self._partitions[p]
        for p in sorted(want - set(self._partitions)):
            if self._backoff_until.get(p, 0) > now:
                continue
            session = ConsumerSession(self._settings, self._cfg.group, p, self._inbox, self._gate)
            session.start()
            self._partitions[p] = session
        self._metrics.partitions_owned.set(len(self._partitions))
        self._rescue(members)

    def _rescue(self, members: set[str]) -> None:
        with self._lock:
            dead = {m for m, up in self._status.items() if not up and m != self._me}
        self._rescued -= members  # back online: rescue again if it dies again
        for gone in sorted(dead - self._rescued):
            if gone in self._rescues or owner(members, f"rescue-{gone}") != self._me:
                continue
            log.info("rescuing the ingest session of %s", gone)
            session = RoutingSession(
                self._settings,
                ingest_client_id(self._cfg.group, gone),
                self._cfg.group,
                self._cfg.partitions,
                subscribe=False,
                on_routed=self._metrics.rescued.inc,
                is_ready=self._is_ready,
            )
            session.start()
            self._rescues[gone] = session
        for gone, session in list(self._rescues.items()):
            quiet = time.monotonic() - session.last_message > self._cfg.rescue_idle_s
            if session.taken_over.is_set() or (session.ready.is_set() and quiet and session.idle):
                # Ending the session removes the dead member from the shared group.
                session.close(expire=not session.taken_over.is_set())
                del self._rescues[gone]
                self._rescued.add(gone)
                log.info("rescue of %s done", gone)

    def stop_routing(self) -> None:
        """First step of shutdown: leave the shared group, forwarding what we hold."""
        self.router.leave()

    def stop_accepting(self) -> None:
        for session in self._partitions.values():
            session.accepting = False

    def close(self) -> None:
        """Last step: release partitions (their sessions stay for the next owner)."""
        self._stopping.set()
        self._changed.set()
        self._thread.join(5)
        for session in self._partitions.values():
            session.close()
        for session in self._rescues.values():
            session.close()
        self._partitions.clear()

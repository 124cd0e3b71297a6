"""The systemd units in deploy/systemd/: verified, rated, and their hardening tried.

* ``systemd-analyze verify`` on the units as install.sh installs them, in a root made
  by ``install.sh --prefix`` (plus systemd's own units, /bin/kill and a real venv
  interpreter, which verify checks for).
* ``systemd-analyze security --offline=true``: exposure <= 3.0 for every unit.
* MemoryDenyWriteExecute=yes: the real gateway (numpy, scikit-learn, orjson) and the
  real API (gunicorn, Flask) run end to end under the kernel's equivalent,
  prctl(PR_SET_MDWE), which refuses the same writable+executable mappings systemd's
  seccomp filter refuses.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import urllib3

from devstack.process import ManagedProcess, free_port, port_open
from tests.conftest import TEST_DB, GatewayProcess
from tests.helpers import ROOT, Collector, mosquitto_pub, unique, wait_for_points

UNIT_DIR = ROOT / "deploy" / "systemd"
UNITS = sorted(p.name for p in UNIT_DIR.glob("*.service"))
# Template units are checked through an instance, as systemd runs them.
INSTANCES = [u.replace("@.service", "@ttyUSB0.service") for u in UNITS]
MAX_EXPOSURE = 3.0


def systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is not installed; run `make test` (it installs systemd)")
    return binary


def test_every_expected_unit_is_shipped():
    assert set(UNITS) == {
        "factory-gateway.service",
        "factory-api.service",
        "factory-serial@.service",
        "factory-simulator.service",
        "factory-notifier.service",
    }


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory) -> Path:
    """A root with the units installed by install.sh, as verify --root needs it."""
    root = tmp_path_factory.mktemp("systemd") / "root"
    result = subprocess.run(
        [
            "bash",
            str(ROOT / "deploy/install.sh"),
            *("--prefix", str(root), "--no-start", "--skip-packages", "--skip-venv"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # What the installer's venv step makes: a real interpreter (copied, not a symlink
    # out of the root, which verify would not follow).
    venv = root / "opt/factory-gateway/venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--copies", str(venv)], check=True
    )
    # What the OS provides: systemd's own units (targets) and /bin/kill for ExecReload.
    system_units = Path("/usr/lib/systemd/system")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(shutil.which("kill") or "/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", "--man=no", "--generators=no", *units],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_units_pass_systemd_analyze_verify(unit_root):
    for unit in INSTANCES:
        result = verify(unit_root, unit)
        assert result.returncode == 0, f"{unit}:\n{result.stdout}{result.stderr}"
        assert unit.split("@")[0] not in result.stderr, f"{unit}:\n{result.stderr}"


def test_verify_catches_a_broken_unit(unit_root):
    """Control: the same set-up fails a unit with a typo and a missing binary."""
    good = (unit_root / "etc/systemd/system/factory-gateway.service").read_text()
    broken = good.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes").replace(
        "/opt/factory-gateway/venv/bin/python", "/opt/factory-gateway/venv/bin/pyhton"
    )
    (unit_root / "etc/systemd/system/factory-broken.service").write_text(broken)
    try:
        result = verify(unit_root, "factory-broken.service")
    finally:
        (unit_root / "etc/systemd/system/factory-broken.service").unlink()
    assert result.returncode != 0
    assert "NoNewPrivilege" in result.stderr and "pyhton" in result.stderr


def exposure(unit_file: Path) -> tuple[float, str]:
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=true",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            "--no-pager",
            str(unit_file),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    value = float(match.group(1))
    # --threshold makes the command itself fail above the limit.
    assert (result.returncode == 0) == (value <= MAX_EXPOSURE), result.stdout
    return value, result.stdout


def test_security_exposure_at_most_3(tmp_path):
    for unit, instance in zip(UNITS, INSTANCES, strict=True):
        path = tmp_path / instance
        path.write_text((UNIT_DIR / unit).read_text())
        value, report = exposure(path)
        assert value <= MAX_EXPOSURE, f"{instance}: exposure {value}\n{report}"


def test_security_rating_is_not_vacuous(tmp_path):
    """Control: without its hardening section the gateway unit rates far above 3."""
    text = (UNIT_DIR / "factory-gateway.service").read_text()
    bare = text.split("# Hardening")[0] + "\n[Install]\nWantedBy=multi-user.target\n"
    path = tmp_path / "factory-bare.service"
    path.write_text(bare)
    value, _ = exposure(path)
    assert value > 5.0


def test_units_share_the_installed_layout():
    """Paths in the units are the ones install.sh creates."""
    for unit in UNITS:
        text = (UNIT_DIR / unit).read_text()
        assert "ExecStart=/opt/factory-gateway/venv/bin/python -m " in text, unit
        assert "Environment=PYTHONPATH=/opt/factory-gateway/app " in text, unit
        assert "User=factory-gw" in text and "NoNewPrivileges=yes" in text, unit
        assert "MemoryDenyWriteExecute=yes" in text and "CapabilityBoundingSet=\n" in text, unit
        for credential in re.findall(r"LoadCredential=[^:]+:(\S+)", text):
            assert credential.startswith("/etc/factory-gateway/credentials/"), unit
    gateway = (UNIT_DIR / "factory-gateway.service").read_text()
    assert "Type=notify" in gateway and "WatchdogSec=" in gateway
    assert "ExecReload=/bin/kill -HUP $MAINPID" in gateway
    assert "StateDirectory=factory-gateway" in gateway
    serial = (UNIT_DIR / "factory-serial@.service").read_text()
    assert "DeviceAllow=char-ttyUSB rw" in serial and "SupplementaryGroups=dialout" in serial
    assert "\nBindsTo=" not in serial  # the bridge reopens a replugged port itself
    assert "PrivateDevices=yes" not in serial


def test_notifier_unit_layout():
    """The notifier: its own unit, the shared state directory, optional secrets."""
    text = (UNIT_DIR / "factory-notifier.service").read_text()
    assert "ExecStart=/opt/factory-gateway/venv/bin/python -m notify --config " in text
    assert "/etc/factory-gateway/notifier.toml" in text
    assert "Type=notify" in text and "WatchdogSec=" in text
    assert "StateDirectory=factory-gateway" in text
    assert "RestartPreventExitStatus=2" in text
    credentials = dict(re.findall(r"LoadCredential=([^:]+):(\S+)", text))
    assert set(credentials) == {"mqtt-password", "smtp-password", "webhook-token", "webhook-url"}
    # The read-only broker role that reads alerts; no password in the unit itself.
    assert credentials["mqtt-password"].endswith("/dashboard.mqtt-password")
    assert "NOTIFIER_MQTT_PASSWORD_FILE=%d/mqtt-password" in text
    install = (ROOT / "deploy/install.sh").read_text()
    assert "factory-notifier.service" in install and " notify " in install


def test_install_creates_the_notifier_credentials_empty(unit_root):
    creds = unit_root / "etc/factory-gateway/credentials"
    for name in ("smtp-password", "webhook-token", "webhook-url"):
        path = creds / f"notifier.{name}"
        assert path.exists() and path.read_text() == "", name
        assert path.stat().st_mode & 0o777 == 0o600, name
    assert (unit_root / "opt/factory-gateway/app/notify/__main__.py").exists()


# --- MemoryDenyWriteExecute -----------------------------------------------------------

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

# Run first in the child: turn MDWE on, prove it is on (a W+X mapping is refused),
# then run the module as `python -m` would.
MDWE_PRELUDE = """
import ctypes, mmap, runpy, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    raise SystemExit(f"prctl(PR_SET_MDWE) failed: errno {ctypes.get_errno()}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("MDWE active: W+X mapping refused", flush=True)
else:
    raise SystemExit("MDWE is not enforced")
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def mdwe_supported() -> bool:
    """PR_SET_MDWE exists from Linux 6.3; probe it in a throw-away child."""
    code = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        f"raise SystemExit(libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0))"
    )
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


class MdweGateway(GatewayProcess):
    """``python -m gateway`` with memory-deny-write-execute switched on first."""

    def start(self, timeout_s: float = 60) -> MdweGateway:
        status = Collector(self.mosquitto.port, [f"factory/gateway/{self.id}/status"])
        try:
            self.process = ManagedProcess(
                self.id,
                [sys.executable, "-c", MDWE_PRELUDE, "gateway", "--config", str(self.config)],
                self.log,
                ready=lambda: bool(status.matching(lambda m: m.payload == b"online")),
                env=self._env,
                cwd=ROOT,
            ).start(timeout_s)
        finally:
            status.close()
        return self


@pytest.mark.integration
def test_gateway_scores_and_stores_under_memory_deny_write_execute(
    tmp_path, mosquitto, influxdb, models_dir
):
    if not mdwe_supported():
        pytest.skip(f"kernel {os.uname().release} has no PR_SET_MDWE (Linux >= 6.3)")
    gw = MdweGateway(tmp_path, mosquitto, influxdb.url, models_dir).start()
    try:
        device = unique("press")
        alerts = Collector(mosquitto.port, [f"factory/alerts/line1/{device}"])
        try:
            for body in ('{"temperature_c": 62.0, "humidity_pct": 44.0, "sound_db": 76.0}',) * 3:
                mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", body)
            anomalous = '{"temperature_c": 95, "humidity_pct": 12, "sound_db": 104}'
            mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", anomalous)
            stored = wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 4)
            # The model's own verdict (not a rule-based sensor_fault alert).
            alerts.wait_for(lambda m: m.json()["kind"] == "process_anomaly")
        finally:
            alerts.close()
        assert stored == 4
        assert gw.process is not None and gw.process.running, gw.process.tail()
        assert "MDWE active" in gw.log.read_text()
    finally:
        assert gw.stop() == 0


def test_mdwe_probe_really_restricts():
    """Control for the test above: under MDWE a JIT-style W+X mapping fails."""
    if not mdwe_supported():
        pytest.skip("no PR_SET_MDWE")
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PRELUDE, "json.tool", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "MDWE active: W+X mapping refused" in result.stdout
    # And the parent (this pytest process) is unaffected.
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(66, 0, 0, 0, 0) == 0  # PR_GET_MDWE: 0 = off here


@pytest.mark.integration
def test_notifier_delivers_under_memory_deny_write_execute(tmp_path, mosquitto):
    """The notifier unit has MemoryDenyWriteExecute=yes: sqlite3, ssl, urllib3, orjson."""
    if not mdwe_supported():
        pytest.skip(f"kernel {os.uname().release} has no PR_SET_MDWE (Linux >= 6.3)")
    from tests.notify_servers import (
        AlertPublisher,
        NotifierProcess,
        WebhookServer,
        alert_message,
        route,
        webhook_channel,
    )

    line = unique("line")
    webhook = WebhookServer()
    publisher = AlertPublisher(mosquitto.port)
    notifier = NotifierProcess(
        tmp_path,
        mosquitto.port,
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], line=line),
    )
    notifier.process = ManagedProcess(
        notifier.name,
        [sys.executable, "-c", MDWE_PRELUDE, "notify", "--config", str(notifier.config)],
        notifier.log,
        ready=lambda: notifier.metric("notifier_ready") == 1,
        cwd=ROOT,
    )
    try:
        notifier.process.start(60)
        payload, _ = alert_message(line, "press-01")
        publisher.publish(payload, line, "press-01")
        webhook.wait_for(lambda p: p.status == 200)
        assert "MDWE active" in notifier.log.read_text()
    finally:
        assert notifier.stop() == 0
        publisher.close()
        webhook.stop()


@pytest.mark.integration
def test_api_serves_predictions_under_memory_deny_write_execute(tmp_path, models_dir):
    """The API unit has MemoryDenyWriteExecute=yes too: gunicorn, Flask and the model."""
    if not mdwe_supported():
        pytest.skip(f"kernel {os.uname().release} has no PR_SET_MDWE (Linux >= 6.3)")
    port = free_port()
    api = ManagedProcess(
        "api-mdwe",
        [sys.executable, "-c", MDWE_PRELUDE, "api", "--host", "127.0.0.1", "--port", str(port)],
        tmp_path / "api.log",
        ready=lambda: port_open("127.0.0.1", port),
        env={**os.environ, "API_MODEL_PATH": str(models_dir / "current")},
        cwd=ROOT,
    ).start(60)
    try:
        http = urllib3.PoolManager(retries=False, timeout=10.0)
        reading = {"temperature_c": 95, "humidity_pct": 12, "sound_db": 104}
        resp = http.request("POST", f"http://127.0.0.1:{port}/predict", json=reading)
        assert resp.status == 200, resp.data
        body = json.loads(resp.data)
        assert 0.0 <= body["score"] <= 1.0, body
        assert "MDWE active" in (tmp_path / "api.log").read_text()
    finally:
        assert api.stop() == 0

"""deploy/install.sh into a temporary root (--prefix), checked file by file.

apt, the virtualenv and systemctl are skipped (--skip-packages --skip-venv --no-start);
everything else runs for real: users via systemd-sysusers --root, broker users via
mosquitto_passwd, certificates via openssl, the InfluxDB database step against the
real influxd fixture.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from common.config import load_config
from devstack.influxdb import query
from gateway.config import GatewayConfig
from tests.helpers import ROOT, unique

FAST = ["--no-start", "--skip-packages", "--skip-venv"]
UNITS = [
    "factory-gateway.service",
    "factory-api.service",
    "factory-serial@.service",
    "factory-simulator.service",
]
AS_ROOT = os.geteuid() == 0


# What install.sh copies or reads, frozen for the module: the test compares against it
# even if someone edits the work tree meanwhile.
SOURCE_PARTS = [
    "api",
    "backtest",
    "common",
    "contract",
    "gateway",
    "model",
    "sensors",
    "config",
    "docs",
    "deploy",
    "requirements.txt",
    "pyproject.toml",
    "README.md",
]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in SOURCE_PARTS:
        path = ROOT / part
        if path.is_dir():
            shutil.copytree(path, out / part, ignore=ignore, symlinks=True)
        elif path.exists():
            shutil.copy2(path, out / part)
    return out


def install(src: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", str(src / "deploy/install.sh"), "--prefix", str(root), *FAST, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mode, owner and content hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, digest)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ids(root: Path, name: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"{name} not in {root}/etc/passwd")


@pytest.fixture(scope="module")
def installed(tmp_path_factory, src) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("install") / "root"
    first = install(src, root, "--tls", "--grafana", "--with-simulator")
    return root, first


@pytest.fixture
def root(tmp_path, installed) -> Path:
    """A private copy of the installed tree (owners and modes kept) to change."""
    copy = tmp_path / "root"
    subprocess.run(["cp", "-a", str(installed[0]), str(copy)], check=True)
    return copy


def test_application_is_copied_without_dev_files(installed, src):
    root, _ = installed
    app = root / "opt/factory-gateway/app"
    for package in (
        "common",
        "contract",
        "gateway",
        "model",
        "sensors",
        "api",
        "backtest",
        "config",
    ):
        assert (app / package).is_dir(), package
    assert (app / "gateway/__main__.py").read_bytes() == (src / "gateway/__main__.py").read_bytes()
    assert (app / "requirements.txt").read_bytes() == (src / "requirements.txt").read_bytes()
    for dev_only in ("tests", "bench", "devstack", "deploy", ".git", "var"):
        assert not (app / dev_only).exists(), dev_only
    assert not list(app.rglob("__pycache__")) and not list(app.rglob("*.pyc"))
    # The services may read the code but not change it.
    for path in [app, *app.rglob("*")]:
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path
        if AS_ROOT:
            assert path.stat().st_uid == 0


def test_user_and_state_directories(installed, src):
    root, _ = installed
    uid, gid = ids(root, "factory-gw")
    entry = next(
        ln for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("factory-gw:")
    )
    assert entry.endswith(":/var/lib/factory-gateway:/usr/sbin/nologin")
    assert (root / "etc/sysusers.d/factory-gateway.conf").read_bytes() == (
        src / "deploy/systemd/factory-gateway.sysusers"
    ).read_bytes()
    for sub in ("", "models", "spool"):
        path = root / "var/lib/factory-gateway" / sub
        assert mode(path) == 0o750, path
        if AS_ROOT:
            assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid)


def test_configs_point_at_the_state_directory(installed, src):
    root, _ = installed
    etc = root / "etc/factory-gateway"
    gateway_toml = etc / "gateway.toml"
    cfg = load_config(GatewayConfig, gateway_toml, "NO_ENV_OVERRIDES", env={})
    assert cfg.model.path == "/var/lib/factory-gateway/models/current"
    assert cfg.spool.path.startswith("/var/lib/factory-gateway/spool/")
    assert cfg.influx.database == "factory"
    for toml in etc.glob("*.toml"):
        assert '"var/' not in toml.read_text(), f"{toml.name} keeps a relative var/ path"
        assert mode(toml) == 0o640
    assert {t.name for t in etc.glob("*.toml")} == {t.name for t in (src / "config").glob("*.toml")}
    assert (etc / "gateway.env").read_text().count("GATEWAY_MQTT_USERNAME=gateway") == 1
    assert (etc / "serial/ttyUSB0.env.example").exists()
    if AS_ROOT:
        _, gid = ids(root, "factory-gw")
        assert gateway_toml.stat().st_gid == gid, "the service group may read its config"


def test_broker_config_users_and_secrets(installed, src):
    root, _ = installed
    mq = root / "etc/mosquitto"
    shipped = src / "deploy/mosquitto"
    assert (mq / "conf.d/factory.conf").read_bytes() == (shipped / "factory.conf").read_bytes()
    assert (mq / "conf.d/factory-tls.conf").read_bytes() == (
        shipped / "factory-tls.conf"
    ).read_bytes()
    users = {line.split(":")[0] for line in (mq / "factory.passwd").read_text().splitlines()}
    assert users == {"gateway", "dashboard", "api", "simulator"}
    acl = (mq / "factory.acl").read_text()
    assert "user gateway\ntopic read factory/+/+/reading\n" in acl
    assert "user dashboard\ntopic read factory/alerts/#\n" in acl
    assert not [ln for ln in acl.splitlines() if ln.startswith("pattern")]
    assert mode(mq / "factory.passwd") == 0o640 and mode(mq / "factory.acl") == 0o640
    creds = root / "etc/factory-gateway/credentials"
    assert mode(creds) == 0o700
    for user in users:
        secret = creds / f"{user}.mqtt-password"
        assert mode(secret) == 0o600 and len(secret.read_text().strip()) >= 32
    helper = root / "usr/local/sbin/factory-mqtt-user"
    assert helper.read_bytes() == (shipped / "factory-mqtt-user").read_bytes()
    assert mode(helper) == 0o755
    certs = mq / "certs/factory"
    assert mode(certs / "server.key") == 0o640 and mode(certs / "ca.key") == 0o600
    assert (root / "etc/factory-gateway/ca.crt").read_bytes() == (certs / "ca.crt").read_bytes()
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "server.crt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr


def test_units_and_grafana_files(installed, src):
    root, _ = installed
    for unit in UNITS:
        path = root / "etc/systemd/system" / unit
        assert path.read_bytes() == (src / "deploy/systemd" / unit).read_bytes()
        assert mode(path) == 0o644
    prov = root / "etc/grafana/provisioning"
    assert (prov / "dashboards/factory.yaml").exists()
    assert "dbName: factory\n" in (prov / "datasources/factory-influxdb.yaml").read_text()
    shipped = sorted(p.name for p in (src / "deploy/grafana/dashboards").glob("*.json"))
    dashboards = root / "var/lib/grafana/dashboards/factory"
    assert sorted(p.name for p in dashboards.iterdir()) == shipped


def test_second_run_changes_nothing(installed, src, root):
    _, first = installed
    assert "changes" in first.stdout and "no changes" not in first.stdout
    before = snapshot(root)
    again = install(src, root, "--tls", "--grafana", "--with-simulator")
    assert "install: done: no changes" in again.stdout, again.stdout
    assert snapshot(root) == before


def test_venv_step_compiles_and_trains_a_starter_model(src, tmp_path):
    """The venv step with this test's interpreter and packages standing in for the
    venv (its requirements stamp matches, so pip is not run): bytecode, a real model."""
    root = tmp_path / "root"
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    venv_bin = root / "opt/factory-gateway/venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    digest = hashlib.sha256((src / "requirements.txt").read_bytes()).hexdigest()
    (root / "opt/factory-gateway/venv/.requirements.sha256").write_text(digest + "\n")
    command = ["bash", str(src / "deploy/install.sh"), "--prefix", str(root), "--no-start"]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=600, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installed requirements.txt" not in result.stdout
    assert "trained a starter model" in result.stdout
    assert list((root / "opt/factory-gateway/app/gateway/__pycache__").glob("*.pyc"))
    models = root / "var/lib/factory-gateway/models"
    assert (models / "current").is_symlink() and (models / "current/metadata.json").exists()
    assert not (root / "var/lib/factory-gateway/starter-data.csv").exists()
    if AS_ROOT:
        assert (models / "current").resolve().stat().st_uid == ids(root, "factory-gw")[0]
    # The gateway accepts the installed config with that model.
    config = root / "etc/factory-gateway/gateway.toml"
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=root / "opt/factory-gateway/app",
        env={**os.environ, "GATEWAY_MODEL_PATH": str(models / "current")},
    )
    assert check.returncode == 0, check.stderr
    again = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=600, env=env
    )
    assert "install: done: no changes" in again.stdout, again.stdout


def test_existing_config_is_never_overwritten(src, root):
    gateway_toml = root / "etc/factory-gateway/gateway.toml"
    edited = gateway_toml.read_text().replace('log_level = "INFO"', 'log_level = "DEBUG"')
    assert edited != gateway_toml.read_text()
    gateway_toml.write_text(edited)
    password = (root / "etc/factory-gateway/credentials/gateway.mqtt-password").read_text()
    result = install(src, root)
    assert gateway_toml.read_text() == edited
    dist = root / "etc/factory-gateway/gateway.toml.dist"
    assert 'log_level = "INFO"' in dist.read_text()
    assert "gateway.toml.dist" in result.stdout
    assert (root / "etc/factory-gateway/credentials/gateway.mqtt-password").read_text() == password
    assert "no changes" in install(src, root).stdout


def test_lost_credential_is_reissued(src, root):
    secret = root / "etc/factory-gateway/credentials/gateway.mqtt-password"
    passwd = root / "etc/mosquitto/factory.passwd"
    old_hash = next(ln for ln in passwd.read_text().splitlines() if ln.startswith("gateway:"))
    secret.unlink()
    install(src, root)
    assert secret.read_text().strip()
    new_hash = next(ln for ln in passwd.read_text().splitlines() if ln.startswith("gateway:"))
    assert new_hash != old_hash


def test_upgrade_removes_files_gone_from_the_project(src, root):
    stale = root / "opt/factory-gateway/app/gateway/removed_module.py"
    stale.write_text("raise SystemExit('stale code')\n")
    result = install(src, root)
    assert not stale.exists()
    assert "removed /opt/factory-gateway/app/gateway/removed_module.py" in result.stdout


def test_uninstall_keeps_data_and_config_then_purge_removes_them(src, root):
    spool = root / "var/lib/factory-gateway/spool/gateway.sqlite"
    spool.write_bytes(b"spooled readings")
    # What `systemctl enable factory-serial@ttyUSB0` leaves behind.
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "factory-serial@ttyUSB0.service").symlink_to(
        "/etc/systemd/system/factory-serial@.service"
    )
    (wants / "other.service").symlink_to("/usr/lib/systemd/system/other.service")
    install(src, root, "--uninstall")
    assert not (wants / "factory-serial@ttyUSB0.service").is_symlink()
    assert (wants / "other.service").is_symlink(), "only our links go"
    assert not (root / "opt/factory-gateway").exists()
    assert not any((root / "etc/systemd/system" / unit).exists() for unit in UNITS)
    assert not (root / "usr/local/sbin/factory-mqtt-user").exists()
    assert spool.read_bytes() == b"spooled readings"
    assert (root / "etc/factory-gateway/gateway.toml").exists()
    assert (root / "etc/mosquitto/factory.passwd").exists()
    install(src, root, "--uninstall", "--purge")
    for gone in (
        "etc/factory-gateway",
        "var/lib/factory-gateway",
        "etc/mosquitto/conf.d/factory.conf",
        "etc/mosquitto/conf.d/factory-tls.conf",
        "etc/mosquitto/factory.passwd",
        "etc/mosquitto/factory.acl",
        "etc/mosquitto/certs/factory",
        "etc/grafana/provisioning/datasources/factory-influxdb.yaml",
        "var/lib/grafana/dashboards/factory",
    ):
        assert not (root / gone).exists(), gone


def retention(url: str, database: str) -> dict:
    series = query(url, f'SHOW RETENTION POLICIES ON "{database}"')
    rows = [dict(zip(series[0]["columns"], v, strict=True)) for v in series[0]["values"]]
    return next(r for r in rows if r["name"] == "keep")


def test_database_with_retention_on_real_influxdb(src, tmp_path, influxdb):
    database = unique("installdb").replace("-", "_")
    root = tmp_path / "fresh"
    install(src, root, "--influx-url", influxdb.url, "--database", database, "--retention", "30d")
    keep = retention(influxdb.url, database)
    assert keep["duration"] == "720h0m0s" and keep["default"] is True
    cfg = load_config(GatewayConfig, root / "etc/factory-gateway/gateway.toml", "NONE", env={})
    assert cfg.influx.database == database
    # A changed retention alters the policy; the same one again is a no-op.
    helper = [sys.executable, str(src / "deploy/influxdb/create_database.py")]
    helper += ["--url", influxdb.url, "--database", database]
    changed = subprocess.run(
        [*helper, "--retention", "12w"], capture_output=True, text=True, check=False
    )
    assert changed.returncode == 0 and "720h0m0s -> 12w" in changed.stderr, changed.stderr
    assert retention(influxdb.url, database)["duration"] == "2016h0m0s"
    same = subprocess.run(
        [*helper, "--retention", "12w"], capture_output=True, text=True, check=False
    )
    assert same.returncode == 0 and "already in place" in same.stderr, same.stderr
    bad = subprocess.run([*helper, "--retention", "soon"], capture_output=True, check=False)
    assert bad.returncode == 2
    gone = subprocess.run(
        [*helper, "--url", "http://127.0.0.1:9", "--wait", "0"], capture_output=True, check=False
    )
    assert gone.returncode == 1


def test_bad_arguments_are_refused(src, tmp_path):
    for args in (["--purge"], ["--database", "a;b"], ["--no-such-option"]):
        result = subprocess.run(
            ["bash", str(src / "deploy/install.sh"), "--prefix", str(tmp_path / "r"), *FAST, *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode != 0, args
        assert result.stderr.strip(), args
        assert not (tmp_path / "r").exists(), args


def test_shell_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed; run `make test` (it installs it)")
    scripts = [
        ROOT / "deploy/install.sh",
        ROOT / "deploy/mosquitto/make-certs.sh",
        ROOT / "deploy/mosquitto/factory-mqtt-user",
    ]
    result = subprocess.run(
        ["shellcheck", "--severity=warning", *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout

"""The Grafana provisioning and dashboards in deploy/grafana/.

Grafana cannot run here, so the test does what Grafana would do with the queries:
substitute its macros and template variables, send the InfluxQL to a real InfluxDB
that the real gateway filled from a simulator run, and require data back from every
panel query, template variable query and annotation query.  The JSON is also checked
for structure (unique ids, data source references, variables used but not defined).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.influxdb import query, scalar
from devstack.process import wait_until
from tests.conftest import TEST_DB
from tests.helpers import ROOT, mosquitto_pub, python_module, unique, wait_for_points

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
BUILTIN_DATASOURCES = {"-- Grafana --"}
# What Grafana computes for "last hour" on a typical panel is a few seconds; 10s keeps
# enough health points (written every second by the test gateway) per interval.
INTERVAL_S = 10
ANOMALOUS = '{"temperature_c": 95, "humidity_pct": 12, "sound_db": 104}'


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panel_targets(dash: dict) -> Iterator[tuple[str, dict]]:
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield f"{dash['uid']} / {panel['title']} / {target['refId']}", target


# --- structure ----------------------------------------------------------------------


def test_dashboards_are_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text(encoding="utf-8") == rendered[path.name], (
            f"{path.name} differs from build_dashboards.py: run python3 "
            "deploy/grafana/build_dashboards.py"
        )


def test_provisioning_files():
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/influxdb.yaml").read_text())
    (ds,) = sources["datasources"]
    assert ds["type"] == "influxdb" and ds["uid"] == "factory-influxdb"
    assert ds["jsonData"]["version"] == "InfluxQL" and ds["jsonData"]["dbName"] == "factory"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/factory.yaml").read_text())
    (provider,) = providers["providers"]
    # Where install.sh --grafana copies the JSON files.
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/factory"
    assert (
        "GRAFANA_DASH=/var/lib/grafana/dashboards/factory"
        in (ROOT / "deploy/install.sh").read_text()
    )


def _datasource_uids() -> set[str]:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/influxdb.yaml").read_text())
    return {ds["uid"] for ds in sources["datasources"]} | BUILTIN_DATASOURCES


def _walk_datasources(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from _walk_datasources(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_datasources(value)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    dash = load(path)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] and len(dash["uid"]) <= 40
    known = _datasource_uids()
    refs = list(_walk_datasources(dash))
    assert refs and all(ref["uid"] in known for ref in refs), refs
    defined = {v["name"] for v in dash["templating"]["list"]}
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        refids = [t["refId"] for t in panel.get("targets", [])]
        assert refids and len(refids) == len(set(refids)), panel["title"]
        for transform in panel.get("transformations", []):
            if transform["id"] == "configFromData":
                assert transform["options"]["configRefId"] in refids, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        own = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not own & cells, f"{panel['title']} overlaps another panel"
        cells |= own
    queries = [t["query"] for _, t in panel_targets(dash)]
    queries += [v["query"] for v in dash["templating"]["list"]]
    queries += [a["query"] for a in dash["annotations"]["list"] if "query" in a]
    builtin = {"timeFilter", "__interval", "__interval_ms"}
    for q in queries:
        used = set(re.findall(r"\$(\w+)", q)) - builtin - {"tag_line", "tag_gateway"}
        assert used <= defined, f"undefined variables {used - defined} in {q}"


# --- queries against real data ------------------------------------------------------


def _regex_value(values: list[str]) -> str:
    """Grafana's InfluxDB regex formatting of a variable: escaped, (a|b) for several."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}/])", r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(q: str, variables: dict[str, list[str]]) -> str:
    q = q.replace("$timeFilter", "time > now() - 1h")
    q = q.replace("$__interval_ms", str(INTERVAL_S * 1000))
    q = q.replace("$__interval", f"{INTERVAL_S}s")
    for name, values in variables.items():
        # Every variable use in these dashboards is a regex match: /^$name$/.
        q = q.replace(f"/^${name}$/", f"/^{_regex_value(values)}$/")
    leftover = set(re.findall(r"\$\w+", q)) - {"$tag_line", "$tag_gateway"}
    assert not leftover, f"unsubstituted {leftover} in {q}"
    return q


def tag_values(series: list[dict]) -> list[str]:
    return [row[1] for s in series for row in s["values"]]


@pytest.fixture(scope="module")
def filled(tmp_path_factory, mosquitto, influxdb, models_dir):
    """A simulator run through the real gateway, plus fresh anomalies, in InfluxDB."""
    from tests.conftest import GatewayProcess

    prefix = unique("gline")
    gw = GatewayProcess(
        tmp_path_factory.mktemp("grafana-gw"), mosquitto, influxdb.url, models_dir
    ).start()
    try:
        result = python_module(
            "sensors.simulate",
            *("--broker-port", str(mosquitto.port), "--speed", "0", "--count", "3000"),
            *("--lines", "2", "--devices", "3", "--interval", "1", "--seed", "11"),
            *("--faults", "all", "--fault-rate", "30", "--line-prefix", prefix),
        )
        assert result.returncode == 0, result.stderr
        published = int(re.search(r"published=(\d+)", result.stdout).group(1))
        # A few anomalies stamped "now", so "the last 5 minutes" panels have some too.
        for _ in range(3):
            mosquitto_pub(mosquitto.port, f"factory/{prefix}1/press-01/reading", ANOMALOUS)
        expected = published + 3
        where = f"line =~ /^{prefix}/"
        wait_for_points(influxdb.url, TEST_DB, where, expected, timeout_s=60)

        def health_covers_intervals() -> bool:
            stored = scalar(
                influxdb.url, f"SELECT last(stored) FROM gateway WHERE gateway = '{gw.id}'", TEST_DB
            )
            buckets = query(
                influxdb.url,
                f"SELECT count(stored) FROM gateway WHERE gateway = '{gw.id}' "
                f"AND time > now() - 1h GROUP BY time({INTERVAL_S}s) fill(none)",
                TEST_DB,
            )
            n = len(buckets[0]["values"]) if buckets else 0
            return stored is not None and stored >= expected and n >= 3

        # Counters are cumulative: rates need health points from several intervals.
        wait_until(health_covers_intervals, 60, "gateway health points", interval_s=0.5)
    finally:
        gw.stop()
    return {"prefix": prefix, "gateway": gw.id, "expected": expected}


def _variables_for(dash: dict, url: str, filled: dict) -> dict[str, list[str]]:
    """Run each variable query in order (later ones may use earlier ones) and pick ours."""
    chosen: dict[str, list[str]] = {}
    for var in dash["templating"]["list"]:
        values = tag_values(query(url, interpolate(var["query"], chosen), TEST_DB))
        assert values, f"variable {var['name']}: no values"
        if var["name"] == "line":
            ours = sorted(v for v in values if v.startswith(filled["prefix"]))
            assert len(ours) == 2, values
            # "All"-style multi value where the variable allows it.
            chosen["line"] = ours if var["multi"] else ours[:1]
        elif var["name"] == "device":
            assert "press-01" in values, values
            chosen["device"] = ["press-01"]
        elif var["name"] == "gateway":
            assert filled["gateway"] in values
            chosen["gateway"] = [filled["gateway"]]
        else:
            pytest.fail(f"no test value for variable {var['name']}")
    return chosen


def _has_data(series: list[dict]) -> bool:
    return any(any(v is not None for v in row[1:]) for s in series for row in s["values"])


@pytest.mark.integration
@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_returns_data(path, filled, influxdb):
    dash = load(path)
    variables = _variables_for(dash, influxdb.url, filled)
    checked = 0
    for where, target in panel_targets(dash):
        q = interpolate(target["query"], variables)
        series = query(influxdb.url, q, TEST_DB)
        assert _has_data(series), f"{where}: no data for\n{q}"
        checked += 1
    for annotation in dash["annotations"]["list"]:
        if "query" not in annotation:
            continue  # Grafana's built-in annotations
        q = interpolate(annotation["query"], variables)
        assert _has_data(query(influxdb.url, q, TEST_DB)), f"annotation {annotation['name']}: {q}"
        checked += 1
    assert checked >= len(dash["panels"])


@pytest.mark.integration
def test_per_line_queries_see_only_the_chosen_lines(filled, influxdb):
    """The variable substitution filters: the overview's rate query splits by line."""
    dash = load(GRAFANA / "dashboards/plant-overview.json")
    variables = _variables_for(dash, influxdb.url, filled)
    target = dash["panels"][0]["targets"][0]
    series = query(influxdb.url, interpolate(target["query"], variables), TEST_DB)
    assert sorted(s["tags"]["line"] for s in series) == variables["line"]
    total = sum(v[1] for s in series for v in s["values"]) * INTERVAL_S
    # Readings per second summed over the hour's intervals = every stored reading.
    assert round(total) == filled["expected"]

"""The web page in real headless Chromium (Debian ``chromium`` + ``chromium-driver``),
driven by Selenium: the form scores a reading; after a simulator run through the real
gateway into the real InfluxDB, the page draws per-device charts with alerts marked
and keeps them up to date; an alert is acknowledged (MQTT) and labelled (InfluxDB)
with the alerts panel's buttons."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import orjson
import pytest
import urllib3

from contract.alerting import FALSE_ALARM, FIRING, ack_payload, alert_id
from contract.lineprotocol import encode_point
from contract.schema import (
    ALERT_EVENT,
    ALERT_ID,
    ALERT_LABEL,
    DEVICE,
    EVENT,
    KIND,
    LINE,
    SCORE,
    STARTED_NS,
)
from contract.topics import ack_topic
from devstack.influxdb import query
from tests.conftest import TEST_DB
from tests.helpers import (
    Collector,
    mosquitto_pub,
    python_module,
    summary,
    unique,
    wait_for_points,
)
from tests.test_api_server import ApiServer

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ANOMALOUS = {"temperature_c": 95.0, "humidity_pct": 12.0, "sound_db": 104.0}
# Set to keep the screenshots for a person to look at (they are always in tmp_path).
SCREENSHOT_ENV = "API_SCREENSHOT_DIR"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            "chromium / chromium-driver are not installed; run `make test` (it installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium never tries to download one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, models_dir, influxdb):
    server = ApiServer(
        tmp_path_factory.mktemp("api-page"),
        models_dir,
        f'page_refresh_s = 1.0\n[influx]\nurl = "{influxdb.url}"\ndatabase = "{TEST_DB}"\n',
    ).start()
    yield server
    server.stop()


def _wait(driver, condition, timeout_s: float = 20, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition, message)


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    keep = os.environ.get(SCREENSHOT_ENV)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def _fill(driver, values: dict[str, float]) -> None:
    from selenium.webdriver.common.by import By

    for name, value in values.items():
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))
    driver.find_element(By.ID, "predict-button").click()


def test_form_shows_score_decision_and_drivers(browser, page_server, tmp_path):
    from selenium.webdriver.common.by import By

    expected = page_server.request("POST", "/predict", ANOMALOUS).json()
    browser.get(page_server.url + "/")
    _fill(browser, ANOMALOUS)
    result = browser.find_element(By.ID, "result")
    _wait(browser, lambda d: result.get_attribute("data-state") == "anomaly", message="result")
    assert browser.find_element(By.ID, "result-anomaly").text == "Anomaly: yes"
    assert browser.find_element(By.ID, "result-score").text == f"{expected['score']:.3f}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#result-drivers tr")
    assert [r.get_attribute("data-feature") for r in rows] == [
        d["feature"] for d in expected["drivers"]
    ]
    assert rows[0].find_element(By.TAG_NAME, "td").text == "humidity %"
    _screenshot(browser, tmp_path, "page-form.png")

    _fill(browser, {"temperature_c": 62, "humidity_pct": 44, "sound_db": 76})
    _wait(browser, lambda d: result.get_attribute("data-state") == "normal", message="normal")
    assert browser.find_element(By.ID, "result-anomaly").text == "Anomaly: no"

    _fill(browser, {"temperature_c": 62, "humidity_pct": 400, "sound_db": 76})
    error = browser.find_element(By.ID, "predict-error")
    _wait(browser, lambda d: error.is_displayed(), message="validation error")
    assert "humidity_pct" in error.text and "range" in error.text


def _influx_points(url: str, line: str) -> dict[str, int]:
    series = query(
        url, f"SELECT count(score) FROM reading WHERE line='{line}' GROUP BY device", TEST_DB
    )
    return {s["tags"]["device"]: int(s["values"][0][1]) for s in series}


def test_charts_show_simulated_readings_and_alerts_live(
    browser, page_server, start_gateway, mosquitto, influxdb, tmp_path
):
    from selenium.webdriver.common.by import By

    start_gateway()
    prefix = unique("web")
    line = f"{prefix}1"
    result = python_module(
        "sensors.simulate", "--broker-port", str(mosquitto.port), "--lines", "1",
        "--devices", "3", "--count", "300", "--speed", "0", "--seed", "5",
        "--faults", "all", "--fault-rate", "30", "--line-prefix", prefix,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    published = int(summary(result.stdout)["published"])
    assert published > 250  # dropout faults skip a few samples by design
    wait_for_points(influxdb.url, TEST_DB, f"line='{line}'", published)
    device = sorted(_influx_points(influxdb.url, line))[0]
    mosquitto_pub(mosquitto.port, f"factory/{line}/{device}/reading", orjson.dumps(ANOMALOUS))
    wait_for_points(influxdb.url, TEST_DB, f"line='{line}'", published + 1)
    stored = _influx_points(influxdb.url, line)
    assert sum(stored.values()) == published + 1

    browser.get(f"{page_server.url}/?line={line}&minutes=60")

    def card(name: str):
        found = browser.find_elements(By.CSS_SELECTOR, f'article.device[data-key="{line}/{name}"]')
        return found[0] if found else None

    def rendered(name: str) -> int:
        element = card(name)
        return int(element.get_attribute("data-points") or 0) if element else 0

    _wait(
        browser,
        lambda d: all(rendered(name) == n for name, n in stored.items()),
        message=f"cards for {stored}",
    )
    assert browser.find_element(By.ID, "devices").get_attribute("data-devices") == "3"
    hit = card(device)
    assert int(hit.get_attribute("data-anomalies")) >= 1
    assert len(hit.find_elements(By.TAG_NAME, "canvas")) == 2
    # The canvas really has pixels drawn: a blank one would be a single colour.
    colours = browser.execute_script(
        """const c = arguments[0].querySelector('.readings canvas');
           const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           const seen = new Set();
           for (let i = 0; i < px.length; i += 64) seen.add(px[i] + ',' + px[i+1] + ',' + px[i+2]);
           return seen.size;""",
        hit,
    )
    assert colours > 5
    _screenshot(browser, tmp_path, "page-charts.png")

    # Live: a new reading shows up without reloading the page.
    before = rendered(device)
    mosquitto_pub(
        mosquitto.port,
        f"factory/{line}/{device}/reading",
        '{"temperature_c": 61.0, "humidity_pct": 44.0, "sound_db": 75.0}',
    )
    _wait(browser, lambda d: rendered(device) == before + 1, message="live update")


def test_page_asks_for_the_api_key_and_keeps_it_for_the_tab(browser, models_dir, tmp_path):
    from selenium.webdriver.common.by import By

    key = "page-key-31c9"
    server = ApiServer(tmp_path, models_dir, env={"API_KEYS": key}).start()
    try:
        browser.get(server.url + "/")
        panel = browser.find_element(By.ID, "key-panel")
        _wait(browser, lambda d: panel.is_displayed(), message="key prompt")
        browser.find_element(By.ID, "api-key").send_keys("wrong-key")
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        message = browser.find_element(By.ID, "key-message")
        _wait(browser, lambda d: "not accepted" in message.text, message="key refused")

        browser.find_element(By.ID, "api-key").send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        _wait(browser, lambda d: not panel.is_displayed(), message="key accepted")
        _fill(browser, ANOMALOUS)
        result = browser.find_element(By.ID, "result")
        _wait(browser, lambda d: result.get_attribute("data-state") == "anomaly", message="result")
        stored = browser.execute_script("return sessionStorage.getItem('factory-api-key')")
        assert stored == key
    finally:
        browser.execute_script("sessionStorage.clear()")
        server.stop()


def _click_in_row(driver, alert: str, action: str) -> bool:
    """Click a row's button; the table is redrawn on every poll, so a stale row is
    found again (the wait retries)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    selector = f'#alerts-body tr[data-alert-id="{alert}"] button[data-action="{action}"]'
    try:
        found = driver.find_elements(By.CSS_SELECTOR, selector)
        if not found:
            return False
        found[0].click()
        return True
    except StaleElementReferenceException:
        return False


def _row_attribute(driver, alert: str, name: str) -> str | None:
    return driver.execute_script(
        "const r = document.querySelector(`#alerts-body tr[data-alert-id='${arguments[0]}']`);"
        "return r ? (r.dataset[arguments[1]] || '') : null;",
        alert,
        name,
    )


def test_alerts_panel_acknowledges_and_labels(browser, models_dir, influxdb, mosquitto, tmp_path):
    from selenium.webdriver.common.by import By

    line, device, kind = unique("alerts"), "press-01", "process_anomaly"
    started = time.time_ns() - 600 * 10**9
    ident = alert_id(line, device, kind, started)
    point = encode_point(
        ALERT_EVENT,
        {LINE: line, DEVICE: device, KIND: kind, EVENT: FIRING},
        {ALERT_ID: ident, STARTED_NS: started, SCORE: 0.93},
        started,
    )
    resp = urllib3.request("POST", f"{influxdb.url}/write?db={TEST_DB}", body=point.encode())
    assert resp.status == 204, resp.data
    server = ApiServer(
        tmp_path,
        models_dir,
        f'page_refresh_s = 1.0\n[influx]\nurl = "{influxdb.url}"\ndatabase = "{TEST_DB}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n',
    ).start()
    acks = Collector(mosquitto.port, [ack_topic(line, device)])
    try:
        browser.get(f"{server.url}/?line={line}")
        _wait(browser, lambda d: _row_attribute(d, ident, "state") == FIRING, message="alert row")

        _wait(browser, lambda d: _click_in_row(d, ident, "ack"), message="Acknowledge button")
        dialog = browser.find_element(By.ID, "alert-dialog")
        _wait(browser, lambda d: dialog.is_displayed(), message="acknowledge dialog")
        browser.find_element(By.ID, "alert-by").send_keys("Olga")
        browser.find_element(By.ID, "alert-note").send_keys("checking the bearing")
        browser.find_element(By.ID, "alert-confirm").click()
        (message,) = acks.wait_for(lambda m: True)
        assert message.payload == ack_payload(ident, "Olga", "checking the bearing")
        # No gateway here to record it: the page shows it as sent, not yet acknowledged.
        _wait(browser, lambda d: _row_attribute(d, ident, "ack") == "sent", message="ack sent")
        assert not dialog.is_displayed()

        _wait(browser, lambda d: _click_in_row(d, ident, FALSE_ALARM), message="False alarm")
        _wait(browser, lambda d: dialog.is_displayed(), message="label dialog")
        # The name is remembered from the acknowledgement.
        assert browser.find_element(By.ID, "alert-by").get_attribute("value") == "Olga"
        assert not browser.find_element(By.ID, "alert-fault-type").is_displayed()
        browser.find_element(By.ID, "alert-confirm").click()
        _wait(
            browser,
            lambda d: _row_attribute(d, ident, "label") == FALSE_ALARM,
            message="label shown",
        )
        stored = query(
            influxdb.url,
            f'SELECT "label", "by" FROM {ALERT_LABEL} WHERE {ALERT_ID} = \'{ident}\'',
            TEST_DB,
        )
        assert [row[1:] for row in stored[0]["values"]] == [[FALSE_ALARM, "Olga"]]
        _screenshot(browser, tmp_path, "page-alerts.png")
    finally:
        acks.close()
        browser.execute_script("sessionStorage.clear(); localStorage.clear()")
        server.stop()

"""Any CSV, as it comes: the one timestamp parser, device-less files, train-on-the-start.

The CLI tests run ``model.cli.main`` in-process.  Those that use ``--timezone``,
``--epoch-unit``, ``--train-rows`` or ``--train-until`` need model/cli.py to register
them (``add_csv_time_options``/``add_train_part_options`` from model.cli_support) and
are skipped, saying so, until it does.
"""

from __future__ import annotations

import argparse
import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from contract.timestamps import (
    CsvTimeRules,
    EpochUnitError,
    TimestampError,
    ns_to_rfc3339,
    parse_csv_ns,
    parse_wire_ns,
    timezone_named,
)
from model import cli
from model.cli_support import device_columns_arg, features_arg

NAB_CSV = (
    Path(__file__).resolve().parents[2] / "shared/data/nab/machine_temperature_system_failure.csv"
)
BERLIN = timezone_named("Europe/Berlin")


def ns(text: str) -> int:
    """Expected value, computed independently of the parser under test."""
    moment = datetime.fromisoformat(text)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def _cli_has(command: str, option: str) -> bool:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return option in sub.choices[command]._option_string_actions


CLI_WIRED = _cli_has("train", "--train-rows") and _cli_has("score", "--timezone")
needs_wiring = pytest.mark.skipif(
    not CLI_WIRED,
    reason="model/cli.py does not register --timezone/--epoch-unit/--train-rows/--train-until "
    "yet (call cli_support.add_csv_time_options and add_train_part_options there)",
)


# --- the one parser: wire rules -------------------------------------------------------------


def test_wire_accepts_offsets_and_epoch_seconds_exactly() -> None:
    assert parse_wire_ns("2026-11-22T06:00:00.250Z") == ns("2026-11-22T06:00:00.250+00:00")
    assert parse_wire_ns("2026-11-22T07:00:00.000001+01:00") == ns("2026-11-22T06:00:00.000001Z")
    assert parse_wire_ns(1795327200) == 1795327200 * 10**9
    assert parse_wire_ns(1795327200.5) == 1795327200_500_000_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2026-11-22T06:00:00", "needs a UTC offset"),  # naive: the wire never guesses
        (1795327200000, "looks like milliseconds"),
        (float("nan"), "not finite"),
        ("1795327200", "not RFC 3339"),  # an epoch is a JSON number, not a string
        (True, "RFC 3339 string or epoch seconds"),
        (None, "RFC 3339 string or epoch seconds"),
    ],
)
def test_wire_refusals(raw: object, message: str) -> None:
    with pytest.raises(TimestampError, match=message):
        parse_wire_ns(raw)


# --- the one parser: CSV options ------------------------------------------------------------


def test_csv_naive_times_default_to_utc() -> None:
    assert parse_csv_ns("2020-03-09 10:14:33") == ns("2020-03-09T10:14:33Z")
    assert parse_csv_ns("2013-12-02 21:15:00.000000") == ns("2013-12-02T21:15:00Z")
    assert parse_csv_ns(" 2024-03-01T10:00:00.250 ") == ns("2024-03-01T10:00:00.250Z")


def test_csv_naive_times_in_a_dst_zone() -> None:
    rules = CsvTimeRules(timezone=BERLIN)
    assert parse_csv_ns("2024-01-15 10:00:00", rules) == ns("2024-01-15T09:00:00Z")  # CET
    assert parse_csv_ns("2024-07-15 10:00:00", rules) == ns("2024-07-15T08:00:00Z")  # CEST
    # 02:30 happens twice on 27 Oct 2024: the first (summer-time) one.
    assert parse_csv_ns("2024-10-27 02:30:00", rules) == ns("2024-10-27T00:30:00Z")
    # 02:30 does not exist on 31 Mar 2024: read with the offset before the gap (+01:00).
    assert parse_csv_ns("2024-03-31 02:30:00", rules) == ns("2024-03-31T01:30:00Z")
    # An explicit offset wins over the zone.
    assert parse_csv_ns("2024-07-15T10:00:00Z", rules) == ns("2024-07-15T10:00:00Z")


def test_csv_without_a_zone_refuses_naive_times_like_the_wire() -> None:
    with pytest.raises(TimestampError, match="no UTC offset"):
        parse_csv_ns("2024-07-15 10:00:00", CsvTimeRules(timezone=None))


def test_csv_epochs_are_seconds_and_milliseconds_are_never_guessed() -> None:
    assert parse_csv_ns("1709287200") == 1709287200 * 10**9
    assert parse_csv_ns("1709287200.25") == 1709287200_250_000_000
    with pytest.raises(EpochUnitError, match="--epoch-unit ms"):
        parse_csv_ns("1709287200500")
    with pytest.raises(EpochUnitError, match="--epoch-unit us"):
        parse_csv_ns("1709287200500000")
    with pytest.raises(EpochUnitError, match="--epoch-unit ns"):
        parse_csv_ns("1709287200500000123")
    assert parse_csv_ns("1709287200500", CsvTimeRules(epoch_unit="ms")) == 1709287200_500_000_000
    assert parse_csv_ns("1709287200.5", CsvTimeRules(epoch_unit="ms")) == 1709287200_500_000
    # Integers stay exact down to the nanosecond.
    assert parse_csv_ns("1709287200500000123", CsvTimeRules(epoch_unit="ns")) == (
        1709287200500000123
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "is empty"), ("nan", "not a finite"), ("inf", "not a finite"), ("soon", "neither")],
)
def test_csv_refusals(text: str, message: str) -> None:
    with pytest.raises(TimestampError, match=message):
        parse_csv_ns(text)


def test_zone_names_and_units_are_checked() -> None:
    assert timezone_named("UTC") is UTC
    assert timezone_named("Europe/Berlin") == BERLIN
    with pytest.raises(TimestampError, match="Europe/Berlin"):
        timezone_named("Mars/Olympus")
    with pytest.raises(ValueError, match="epoch_unit"):
        CsvTimeRules(epoch_unit="minutes")
    assert ns_to_rfc3339(ns("2013-12-09T00:00:00.250Z")) == "2013-12-09T00:00:00.250000Z"


# --- argument types: errors name the right flag ---------------------------------------------


def test_empty_lists_name_their_own_flag(tmp_path: Path, capsys) -> None:
    assert device_columns_arg("") == [] and device_columns_arg(" a, b ") == ["a", "b"]
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        features_arg(" , ")
    assert "--features" not in str(caught.value)  # argparse adds the flag in use
    path = _plant_csv(tmp_path / "plant.csv")
    with pytest.raises(SystemExit):
        cli.main(["train", "--csv", str(path), "--features", ""])
    assert "argument --features: needs at least one column name" in capsys.readouterr().err


# --- device-less files, end to end through the CLI ------------------------------------------


def _plant_csv(path: Path, rows: int = 400, *, stamp=None) -> Path:
    """No device column, naive local times one minute apart: a plant historian export."""
    rng = np.random.default_rng(3)
    start = datetime(2024, 3, 30, 12, 0)
    stamp = stamp or (lambda t: t.strftime("%Y-%m-%d %H:%M:%S"))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Time", "pressure_bar", "flow_l_min", "is_anomaly"])
        for i in range(rows):
            pressure, flow = rng.normal([5.0, 120.0], [0.1, 3.0])
            label = 1 if i % 97 == 50 else 0
            if label:
                pressure += 3.0
            writer.writerow([stamp(start + timedelta(minutes=i)), f"{pressure:.4f}", f"{flow:.3f}",
                             label])  # fmt: skip
    return path


@pytest.fixture
def quiet(monkeypatch) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda level=None: None)


def _meta(models: Path) -> dict:
    return json.loads((models / "current" / "metadata.json").read_text())


def test_device_less_csv_trains_and_scores_with_stream_features(tmp_path: Path, quiet) -> None:
    path = _plant_csv(tmp_path / "plant.csv")
    models = tmp_path / "models"
    features = "pressure_bar,flow_l_min,pressure_bar__std_5"
    assert cli.main(["train", "--csv", str(path), "--features", features,
                     "--detector", "isolation_forest",
                     "--models-dir", str(models)]) == 0  # fmt: skip
    meta = _meta(models)
    assert [f["name"] for f in meta["features"]] == features.split(",")
    assert [f["unit"] for f in meta["features"]] == ["", "", ""]  # not contract fields
    assert meta["training"]["rows_warmup"] == 4  # one device, window 5
    scored = tmp_path / "scored.csv"
    assert cli.main(["score", "--csv", str(path), "--out", str(scored),
                     "--models-dir", str(models)]) == 0  # fmt: skip
    with open(scored, newline="") as fh:
        out = list(csv.DictReader(fh))
    assert len(out) == 400
    assert [r["score"] == "" for r in out[:5]] == [True] * 4 + [False]


@needs_wiring
def test_empty_device_columns_mean_one_device(tmp_path: Path, quiet) -> None:
    path = tmp_path / "with_device.csv"
    path.write_text(
        "ts,device,v\n"
        + "".join(f"2024-01-01T00:00:{i:02d}Z,d{i % 2},{i % 5}\n" for i in range(60)),
        encoding="utf-8",
    )
    models = tmp_path / "models"
    base = ["train", "--csv", str(path), "--features", "v,v__mean_3", "--models-dir", str(models),
            "--detector", "isolation_forest"]  # fmt: skip
    assert cli.main(base) == 0
    assert _meta(models)["training"]["rows_warmup"] == 4  # two devices
    assert cli.main([*base, "--device-columns", ""]) == 0
    assert _meta(models)["training"]["rows_warmup"] == 2  # the file as one device


def test_missing_time_column_and_ms_epochs_name_their_flags(tmp_path: Path, quiet, capsys) -> None:
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("v\n" + "".join(f"{i % 7}\n" for i in range(50)), encoding="utf-8")
    assert cli.main(["train", "--csv", str(no_time), "--features", "v,v__std_3",
                     "--detector", "isolation_forest",
                     "--models-dir", str(tmp_path / "m")]) == 2  # fmt: skip
    assert "name it with --timestamp-column" in capsys.readouterr().err
    ms = tmp_path / "ms.csv"
    ms.write_text(
        "time,v\n" + "".join(f"{1709287200000 + 1000 * i},{i % 7}\n" for i in range(50)),
        encoding="utf-8",
    )
    args = ["train", "--csv", str(ms), "--features", "v,v__std_3", "--models-dir", str(tmp_path),
            "--detector", "isolation_forest"]  # fmt: skip
    assert cli.main(args) == 2
    assert "pass --epoch-unit ms" in capsys.readouterr().err
    if CLI_WIRED:
        assert cli.main([*args, "--epoch-unit", "ms"]) == 0


# --- training on the beginning, testing on the rest -----------------------------------------


@needs_wiring
def test_train_rows_fits_on_the_first_rows_and_tests_the_rest(tmp_path: Path, quiet) -> None:
    path = _plant_csv(tmp_path / "plant.csv")
    models = tmp_path / "models"
    assert cli.main(["train", "--csv", str(path), "--features", "pressure_bar,flow_l_min",
                     "--detector", "isolation_forest",
                     "--train-rows", "150", "--models-dir", str(models)]) == 0  # fmt: skip
    training = _meta(models)["training"]
    split = training["split"]
    assert split["train_part"] == {"first_rows": 150, "rows": 150, "evaluated_rows": 250}
    assert split["train"] + split["validation"] == 150 and split["test"] == 250
    assert training["rows"] == 150 and training["fit_on"] == "all"  # no labels given
    test = _meta(models)["metrics"]["test"]
    assert test["rows"] == 250 and "f1" not in test
    # With labels: fitted on the normal rows of the part, metrics on the other 250.
    assert cli.main(["train", "--csv", str(path), "--features", "pressure_bar,flow_l_min",
                     "--detector", "isolation_forest",
                     "--train-rows", "150", "--label-column", "is_anomaly",
                     "--models-dir", str(models)]) == 0  # fmt: skip
    meta = _meta(models)
    assert meta["metrics"]["test"]["support"]["rows"] == 250
    assert meta["metrics"]["test"]["support"]["anomalies"] == 2  # rows 244 and 341
    assert meta["metrics"]["test"]["recall"] == 1.0


@needs_wiring
def test_train_until_reads_naive_times_in_the_given_zone(tmp_path: Path, quiet, capsys) -> None:
    path = _plant_csv(tmp_path / "plant.csv")  # 2024-03-30 12:00 onwards, one a minute
    models = tmp_path / "models"
    base = ["train", "--csv", str(path), "--features", "pressure_bar,flow_l_min",
            "--detector", "isolation_forest", "--models-dir", str(models)]  # fmt: skip
    # CSV and TIME both naive, both in Berlin: the split is at the 180th row.
    assert cli.main([*base, "--timezone", "Europe/Berlin",
                     "--train-until", "2024-03-30 15:00:00"]) == 0  # fmt: skip
    part = _meta(models)["training"]["split"]["train_part"]
    assert part == {"until": "2024-03-30T14:00:00Z", "rows": 180, "evaluated_rows": 220}
    assert "trained on the rows before 2024-03-30T14:00:00Z (180 rows)" in capsys.readouterr().out
    # An offset in TIME is absolute: 15:00Z is 16:00 in Berlin, 240 rows.
    assert cli.main([*base, "--timezone", "Europe/Berlin",
                     "--train-until", "2024-03-30T15:00:00Z"]) == 0  # fmt: skip
    assert _meta(models)["training"]["split"]["train_part"]["rows"] == 240


@needs_wiring
def test_train_part_usage_errors(tmp_path: Path, quiet, capsys) -> None:
    path = _plant_csv(tmp_path / "plant.csv")
    base = ["train", "--csv", str(path), "--features", "pressure_bar",
            "--models-dir", str(tmp_path / "m")]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main([*base, "--train-rows", "10", "--train-until", "2024-03-30 13:00:00"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*base, "--train-rows", "0"])
    assert "argument --train-rows: must be >= 1" in capsys.readouterr().err
    assert cli.main([*base, "--train-until", "2024-03-30 11:00:00"]) == 2
    assert "no rows before --train-until 2024-03-30T11:00:00Z" in capsys.readouterr().err
    assert cli.main([*base, "--train-until", "lunchtime"]) == 2
    assert "--train-until 'lunchtime' is neither" in capsys.readouterr().err
    assert cli.main([*base, "--train-rows", "100", "--test-fraction", "0.2"]) == 2
    assert "--test-fraction does not apply" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*base, "--timezone", "Mars/Olympus"])
    assert "argument --timezone: unknown time zone 'Mars/Olympus'" in capsys.readouterr().err


# --- the real NAB file, as it is ------------------------------------------------------------


@pytest.mark.skipif(not NAB_CSV.is_file(), reason=f"NAB data not present at {NAB_CSV}")
def test_nab_machine_temperature_as_it_is(tmp_path: Path, quiet) -> None:
    with open(NAB_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["timestamp", "value"]  # no offset, no device, no label
    models = tmp_path / "models"
    if CLI_WIRED:
        before = sum(1 for r in rows if r["timestamp"] < "2013-12-09 00:00:00")
        assert cli.main(["train", "--csv", str(NAB_CSV), "--features", "value",
                         "--train-until", "2013-12-09 00:00:00",
                         "--models-dir", str(models)]) == 0  # fmt: skip
        part = _meta(models)["training"]["split"]["train_part"]
        assert part == {"until": "2013-12-09T00:00:00Z", "rows": before,
                        "evaluated_rows": len(rows) - before}  # fmt: skip
    else:
        assert cli.main(["train", "--csv", str(NAB_CSV), "--features", "value",
                         "--models-dir", str(models)]) == 0  # fmt: skip
    meta = _meta(models)  # the default, time-aware detector, on the one column
    assert meta["detector"] == "dynamics" and meta["dynamics"]["params"]["fields"] == ["value"]
    scored = tmp_path / "scored.csv"
    assert cli.main(["score", "--csv", str(NAB_CSV), "--out", str(scored),
                     "--models-dir", str(models)]) == 0  # fmt: skip
    with open(scored, newline="") as fh:
        out = list(csv.DictReader(fh))
    assert len(out) == len(rows)
    # The file steps back an hour on 2014-01-07 (02:00-02:55 twice): those 12 readings are
    # not later than ones already seen, so the per-device model leaves them unscored, as
    # the gateway would.  Every other row has a score.
    newest, late = "", set()
    for i, row in enumerate(rows):
        if row["timestamp"] <= newest:
            late.add(i)
        newest = max(newest, row["timestamp"])
    assert len(late) == 12
    assert {i for i, r in enumerate(out) if not r["score"]} == late
    assert out[0]["timestamp"] == rows[0]["timestamp"]  # the input's own cells, untouched

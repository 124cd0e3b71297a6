"""Decode micro-benchmark: ``json`` vs ``orjson`` vs ``msgspec`` on contract payloads.

    python -m bench.decode_bench [--messages 20000] [--rounds 7]

Payloads are real contract readings (``contract.encode_reading`` with simulator
values, epoch-seconds ``ts`` and ``seq``, ~100 bytes).  Each decoder parses the whole
list ``rounds`` times; the figure is the median µs per message over the rounds.

Rows:
* ``json.loads``, ``orjson.loads``, ``msgspec.json.decode``: bytes → dict only.
* ``msgspec typed``: bytes → a Struct with typed fields (type checks included, but no
  alias mapping, ranges or timestamps: a fast path would still need the contract's
  rules behind it for anything it does not match).
* ``contract.decode_reading``: the gateway's whole per-message path today (topic
  parse, orjson, alias mapping, range and timestamp checks, ``Reading``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import msgspec
import orjson

from contract import decode_reading, encode_reading, reading_topic
from sensors.simulator import Simulator


class _ReadingStruct(msgspec.Struct):
    temperature_c: float
    humidity_pct: float
    sound_db: float
    ts: float | str | None = None
    seq: int | None = None


def contract_payloads(n: int, seed: int = 3) -> list[bytes]:
    sim = Simulator(lines=2, devices_per_line=5, seed=seed)
    now = time.time()
    out = []
    for i, reading in enumerate(sim.run(start_ts=now - n, max_steps=n // 10 + 100)):
        if i == n:
            break
        out.append(encode_reading(reading.values, round(now - n + i * 1e-3, 6), reading.seq))
    return out


def _per_message_us(fn: Callable[[bytes], object], payloads: list[bytes], rounds: int) -> float:
    for p in payloads[:100]:
        fn(p)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for p in payloads:
            fn(p)
        times.append((time.perf_counter_ns() - start) / 1e3 / len(payloads))
    return statistics.median(times)


def run(messages: int = 20_000, rounds: int = 7) -> dict:
    payloads = contract_payloads(messages)
    typed = msgspec.json.Decoder(_ReadingStruct)
    topic = reading_topic("line1", "press-01")
    now_ns = time.time_ns()
    decoders: dict[str, Callable[[bytes], object]] = {
        "json.loads": json.loads,
        "orjson.loads": orjson.loads,
        "msgspec.json.decode": msgspec.json.decode,
        "msgspec typed (Struct)": typed.decode,
        "contract.decode_reading": lambda p: decode_reading(topic, p, now_ns),
    }
    # Check every decoder sees the same values before timing any of them.
    sample = payloads[0]
    reference = json.loads(sample)
    agree = (
        orjson.loads(sample) == reference == msgspec.json.decode(sample)
        and typed.decode(sample).temperature_c == reference["temperature_c"]
        and decode_reading(topic, sample, now_ns).values["sound_db"] == reference["sound_db"]
    )
    if not agree:
        raise RuntimeError(f"decoders disagree on {sample!r}")
    results = {name: _per_message_us(fn, payloads, rounds) for name, fn in decoders.items()}
    base = results["json.loads"]
    return {
        "messages": len(payloads),
        "rounds": rounds,
        "payload_bytes_mean": round(sum(map(len, payloads)) / len(payloads), 1),
        "versions": {"orjson": orjson.__version__, "msgspec": msgspec.__version__},
        "us_per_message": {k: round(v, 3) for k, v in results.items()},
        "speedup_vs_json": {k: round(base / v, 2) for k, v in results.items()},
    }


def format_table(result: dict) -> str:
    lines = [
        f"decode ({result['messages']} contract payloads, "
        f"~{result['payload_bytes_mean']:.0f} bytes, median of {result['rounds']} rounds)",
        f"  {'decoder':<26} {'us/msg':>8} {'vs json':>8}",
    ]
    for name, us in result["us_per_message"].items():
        lines.append(f"  {name:<26} {us:>8.2f} {result['speedup_vs_json'][name]:>7.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_bench", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print(format_table(run(args.messages, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

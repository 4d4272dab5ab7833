"""`make bench`'s results as the tables of docs/performance.md.

    python -m bench.report                      # bench-results.json -> docs/performance.md
    python -m bench.report --results other.json --doc docs/performance.md

Replaces what lies between BEGIN and END in the doc, so the page shows the figures of one
run, as `make bench` wrote them, never a hand-kept log. A run cut short wrote the workloads
it finished (bench/__main__.py writes the file after each one): those are rendered, and
the sections it did not reach are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN = "<!-- bench-results:begin (python -m bench.report writes this part) -->"
END = "<!-- bench-results:end -->"

# make bench's names for its configurations (bench/__main__.py); a name not listed is shown as it is.
LABELS = {
    "raw_consume_defaults": "raw consume, librdkafka's defaults, one consumer",
    "raw_consume": "**raw consume, best of the sweep: the ceiling**",
    "polars": "polars NDJSON decode + group-by in memory",
    "textbook_bytewax": "textbook bytewax (fold_window per movieId:userId, stock clock; a prefix-sized topic)",
    "ours_1_worker": "**ours, 1 worker** (defaults: the native reader where built)",
    "ours_1_worker_0.1%_invalid": "ours, 1 worker, one record in 1,000 invalid",
    "ours_1_worker_steady": "ours, 1 worker, steady state",
    "ours_1_worker_confluent": "ours, 1 worker, confluent-kafka's reader (`KAFKA_READER=confluent`)",
    "ours_1_worker_confluent_steady": "ours, 1 worker, confluent-kafka's reader, steady state",
    "ours_2_workers": "ours, 2 workers (1 process)",
    "ours_2_processes": "ours, 2 processes",
}
# bench/breakdown.py's parts, in the table's order.
BREAKDOWN_ROWS = {
    "read": "read: the job's read loop, a reader per partition",
    "step": "step: decode, lateness, pre-aggregation, window fold",
    "close": "close: closing windows into rows",
    "sink": "sink: Parquet encoding, manifests, PUTs into the local S3",
    "startup": "start-up and shut-down (a 1,000-event run)",
    "parts": "sum of the parts",
    "job": "**the job, end to end**",
    "other": "engine/other: the job minus the parts",
}
READERS = {"confluent": "confluent-kafka", "native": "native reader"}
BOOKING_SIDES = {
    "exactly_once_outputs": "exactly-once outputs (this checkout)",
    "flush_per_batch_outputs": "flush after every batch, at-least-once (`FLUSH_PER_BATCH` commit)",
}


class ReportError(ValueError):
    """The doc or the results cannot be rendered; the message says which file and what to do."""


def _rate(value: float | None) -> str:
    return "not measurable" if value is None else f"{value:,.0f}"


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _workload(name: str, figures: dict[str, Any], runs: int) -> list[str]:
    ceiling = figures.get("raw_consume", {}).get("events_per_s")
    lines = [f"### Workload `{name}`", ""]
    raw = figures.get("raw_consume", {})
    if "fetch_settings" in raw:
        lines += [f"Ceiling: raw consume with {raw['fetch_settings']}.", ""]
    if "beside_the_job" in raw:
        lines[-1:-1] = [
            f"That reader again, by turns with `ours, 1 worker` ({runs} runs each): {_rate(raw['beside_the_job'])} "
            "events/s; the ceiling is the higher of its two medians."
        ]
    lines += ["| configuration | events/s | x ceiling | job CPU s | peak MB |", "|---|---:|---:|---:|---:|"]
    for config, m in figures.items():
        if not isinstance(m, dict) or "events_per_s" not in m:
            continue
        rate = m["events_per_s"]
        ratio = _num(rate / ceiling, 2) if rate is not None and ceiling else ""
        cpu, peak = _num(m.get("cpu_seconds"), 1), _num(m.get("peak_mb"), 0)
        lines.append(f"| {LABELS.get(config, config)} | {_rate(rate)} | {ratio} | {cpu} | {peak} |")
    textbook = figures.get("textbook_bytewax", {}).get("events_per_s")
    ours = figures.get("ours_1_worker", {}).get("events_per_s")
    if textbook and ours:
        lines += ["", f"Ours, 1 worker: {ours / textbook:,.0f} x the textbook design."]
    steady = figures.get("ours_1_worker_steady", {}).get("from")
    if steady:
        lines += ["", f"Steady state from {steady}."]
    if "breakdown" in figures:
        lines += ["", *breakdown_section(figures["breakdown"])]
    sweep = figures.get("raw_consume", {}).get("sweep")
    if sweep:
        lines += ["", "| raw consume sweep (fetch settings, messages per call, layout) | events/s |", "|---|---:|"]
        lines += [f"| {setting} | {_rate(rate)} |" for setting, rate in sweep.items()]
    return [*lines, ""]


def breakdown_section(b: dict[str, Any]) -> list[str]:
    """bench/breakdown.py's figures: µs per event by part, for each reader measured."""
    readers = list(b["readers"])
    lines = [
        f"Per event, µs, over {b['events']:,} events, 1 worker (`python -m bench.breakdown`); wall: the part run "
        "alone; CPU: all of the process's threads, as job CPU s (it adds up across threads: in the job the parts "
        "overlap in wall time, so there the remainder can be negative).",
        "",
        "| part | " + " | ".join(f"{READERS.get(r, r)}, wall | CPU" for r in readers) + " |",
        "|---|" + "---:|---:|" * len(readers),
    ]
    for part, label in BREAKDOWN_ROWS.items():
        cells = " | ".join(
            f"{_num(b['readers'][r][part]['wall_us'], 2)} | {_num(b['readers'][r][part]['cpu_us'], 2)}" for r in readers
        )
        lines.append(f"| {label} | {cells} |")
    return lines


def _kinesis(k: dict[str, Any]) -> list[str]:
    ceiling, ours = k["raw_get_records"]["events_per_s"], k["ours_1_worker"]
    return [
        "### Kinesis (local server, 2 shards)",
        "",
        "| configuration | events/s | x ceiling | job CPU s | peak MB |",
        "|---|---:|---:|---:|---:|",
        f"| plain GetRecords loop: the ceiling | {_rate(ceiling)} | 1.00 |  |  |",
        f"| ours, 1 worker | {_rate(ours['events_per_s'])} | {_num(ours['events_per_s'] / ceiling, 2)} "
        f"| {_num(ours.get('cpu_seconds'), 1)} | {_num(ours.get('peak_mb'), 0)} |",
        "",
    ]


def _latency(lat: dict[str, Any]) -> list[str]:
    return [
        "### Latency (window end to its object in S3, 1,000 events/s)",
        "",
        "| objects | median s | max s | budget s (bound + snapshot interval + 5) |",
        "|---:|---:|---:|---:|",
        f"| {lat['objects']} | {_num(lat['median_s'], 1)} | {_num(lat['max_s'], 1)} | {lat['budget_s']} |",
        "",
    ]


def _bookings(b: dict[str, Any]) -> list[str]:
    lines = [
        f"### Booking correlation ({b['input_messages']:,} input records, 1 worker)",
        "",
        "| outputs | events/s | job CPU s | peak MB |",
        "|---|---:|---:|---:|",
    ]
    for side, label in BOOKING_SIDES.items():
        if side in b:
            r = b[side]
            lines.append(
                f"| {label} | {_rate(r['events_per_s'])} | {_num(r['cpu_seconds'], 1)} | {_num(r['peak_mb'], 0)} |"
            )
    if "waiting_keys" in b:
        w = b["waiting_keys"]
        lines += [
            "",
            f"Holding {w['keys']:,} bookings that wait for their counterparts, with no input (`-s "
            f"{w['epoch_s']}`): {w['cpu_share'] * 100:.0f} % of a core, what waiting keys cost by themselves "
            "(their wakes and snapshots; `bench/bookings.py: waiting_keys`).",
        ]
    return [*lines, ""]


def _resume(r: dict[str, Any]) -> list[str]:
    return [
        "### Object sink resume",
        "",
        "| writes past the snapshot | objects | resume s | units fenced | resume with nothing past it, s |",
        "|---:|---:|---:|---:|---:|",
        f"| {r['writes']} | {r['objects']:,} | {_num(r['seconds'], 2)} | {r['fenced_units']:,.0f} "
        f"| {_num(r['floor_seconds'], 2)} |",
        "",
    ]


def backups_section(b: dict[str, Any]) -> list[str]:
    """bench/backups.py's figures: the job with the recovery store's S3 backups off and on."""
    off = b["off"]
    lines = [
        f"### Recovery store backups (`{b['topic']}`, 1 worker, medians of {b['runs']} runs)",
        "",
        "The same job with backups off and every N s, runs interleaved; x off: the median of each run's pair "
        "(job CPU s is the steadier figure on a shared machine). "
        "A round's size is its objects in S3 (the largest round of all runs; uncompressed in brackets), its seconds "
        "the copy, gzip and upload as its manifest records (median; the slowest round of all runs); of interval: "
        "the median seconds over the interval.",
        "",
        "| backups | events/s | x off | job CPU s | x off | rounds | KB per round (raw) | s per round (max) "
        "| of interval |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| off | {_rate(off['events_per_s'])} | 1.00 | {_num(off.get('cpu_seconds'), 1)} | 1.00 |  |  |  |  |",
    ]
    for interval, f in b["intervals"].items():
        size = "" if f["bytes_per_round"] is None else f"{f['bytes_per_round'] / 1024:,.0f}"
        if f["raw_bytes_per_round"] is not None:
            size += f" ({f['raw_bytes_per_round'] / 1024:,.0f})"
        spent = _num(f["seconds_per_round"], 2)
        if f["max_seconds_per_round"] is not None:
            spent += f" ({f['max_seconds_per_round']:.2f})"
        share = "" if f["share_of_interval"] is None else f"{f['share_of_interval']:.1%}"
        lines.append(
            f"| every {interval} s | {_rate(f['events_per_s'])} | {_num(f['vs_off'], 2)} "
            f"| {_num(f.get('cpu_seconds'), 1)} | {_num(f['cpu_vs_off'], 2)} | {f['rounds']:.0f} | {size} | {spent} "
            f"| {share} |"
        )
    same = "the same" if b["same_output"] else "**not the same**"
    return [*lines, "", f"The output (impressions summed) was {same} in every run, backups on or off.", ""]


def render(results: dict[str, Any]) -> str:
    """The markdown for one `bench-results.json`."""
    try:
        headline = results.get("headline_runs", results["runs"])
        medians = f"medians of {results['runs']} runs"
        if headline != results["runs"]:
            medians += f" ({headline} for `ours, 1 worker`)"
        lines = [f"Measured {results['date']} on {results['machine']}; {medians}.", ""]
        for name, figures in results.get("workloads", {}).items():
            lines += _workload(name, figures, headline)
        sections = (("kinesis", _kinesis), ("latency", _latency), ("bookings", _bookings))
        for key, section in (*sections, ("object_sink_resume", _resume), ("backups", backups_section)):
            if key in results:
                lines += section(results[key])
    except (KeyError, TypeError) as exc:
        msg = f"the results lack {exc}: render a bench-results.json written by `make bench` (bench/__main__.py)"
        raise ReportError(msg) from None
    return "\n".join(lines).rstrip("\n") + "\n"


def replace_results(doc: str, table: str) -> str:
    """`doc` with the part between BEGIN and END replaced by `table`; the rest kept as it is."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        msg = f"the doc has no {BEGIN} ... {END} part: put both markers where the results go"
        raise ReportError(msg)
    return f"{doc[: start + len(BEGIN)]}\n{table}{doc[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--results", default="bench-results.json")
    parser.add_argument("--doc", default=str(DOC))
    args = parser.parse_args(argv)
    results, doc = Path(args.results), Path(args.doc)
    if not results.exists():
        print(f"bench.report: {results} does not exist: run `make bench` first, or pass --results", file=sys.stderr)
        return 1
    try:
        figures = json.loads(results.read_text())
    except json.JSONDecodeError as exc:
        print(f"bench.report: {results} is not JSON ({exc}): run `make bench` again", file=sys.stderr)
        return 1
    try:
        doc.write_text(replace_results(doc.read_text(), render(figures)))
    except ReportError as exc:
        print(f"bench.report: {doc}: {exc}", file=sys.stderr)
        return 1
    print(f"{doc}: the results of {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plot the SMTP benchmark: messages/s and CPU against concurrent sessions.

Reads the numbers ``bench/bench_smtp.py`` produced and draws, for each
message size and connection mode, one line per contender (slimta,
python-slimta, aiosmtpd, Postfix's smtp-sink) over 1, 10 and 100 concurrent
sessions::

    .venv/bin/python bench/plot_results.py                  # newest full run, else RESULTS.md
    .venv/bin/python bench/plot_results.py --source results # the published bench/RESULTS.md

Sources, by ``--source``:

``json``
    The newest ``bench/out/smtp-*.json`` written by a full run (``runs`` of
    more than one round; ``--quick`` runs are skipped), or the file given
    with ``--json``.  Its ``summary`` holds the medians.
``results``
    The median tables of ``bench/RESULTS.md`` (the published numbers).
``auto`` (default)
    ``json`` when such a file exists, else ``results``.

Writes ``bench-smtp-throughput.png`` and ``bench-smtp-cpu.png`` into
``--out`` (default ``docs/_static``, where the manual shows them) and
prints which source it used.  Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"

CONTENDERS = ["slimta", "python-slimta", "aiosmtpd", "smtp-sink"]
STYLE = {
    "slimta": {"color": "#1565c0", "marker": "o", "linewidth": 2.4},
    "python-slimta": {"color": "#ef6c00", "marker": "s", "linewidth": 1.6},
    "aiosmtpd": {"color": "#2e7d32", "marker": "^", "linewidth": 1.6},
    "smtp-sink": {"color": "#757575", "marker": "D", "linewidth": 1.2, "linestyle": "--"},
}
SCENARIO = re.compile(r"^(?P<size>[\d.]+ KiB), (?P<sessions>\d+) sess, (?P<mode>persistent|1 msg/conn)$")

#: {metric: {scenario: {contender: value}}}, metric "rate" (msg/s) or "cpu" (s per 1,000 messages).
Numbers = dict[str, dict[str, dict[str, float]]]


def newest_full_json() -> Path | None:
    """The newest ``bench/out/smtp-*.json`` of a run with more than one round."""
    for path in sorted(OUT.glob("smtp-*.json"), reverse=True):
        try:
            load = json.loads(path.read_text())["summary"]["load"]
        except (OSError, ValueError, KeyError):
            continue
        runs = [entry.get("runs", 0) for per in load.values() for entry in per.values()]
        if runs and min(runs) > 1:
            return path
    return None


def from_json(path: Path) -> Numbers:
    """Medians from a bench_smtp.py JSON file."""
    load = json.loads(path.read_text())["summary"]["load"]
    numbers: Numbers = {"rate": {}, "cpu": {}}
    for scenario, per in load.items():
        for name, entry in per.items():
            if entry.get("rate") is not None:
                numbers["rate"].setdefault(scenario, {})[name] = float(entry["rate"])
            if entry.get("cpu_per_1k") is not None:
                numbers["cpu"].setdefault(scenario, {})[name] = float(entry["cpu_per_1k"])
    return numbers


def _table_after(lines: list[str], heading: str) -> dict[str, dict[str, float]]:
    """Parse the markdown table under the first heading starting with ``heading``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    table_lines = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table_lines.append(line)
        elif table_lines:
            break
    head = [cell.strip() for cell in table_lines[0].strip("|").split("|")]
    out: dict[str, dict[str, float]] = {}
    for line in table_lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        row = dict(zip(head, cells, strict=False))
        values = {}
        for name in CONTENDERS:
            try:
                values[name] = float(row[name])
            except (KeyError, ValueError):
                continue  # contender missing from this run
        out[row["scenario"]] = values
    return out


def from_results(path: Path) -> Numbers:
    """Medians from the tables of bench/RESULTS.md."""
    lines = path.read_text().splitlines()
    return {
        "rate": _table_after(lines, "### Messages/s"),
        "cpu": _table_after(lines, "### Server CPU seconds per 1,000 messages"),
    }


def plot(numbers: dict[str, dict[str, float]], ylabel: str, title: str, source: str, path: Path) -> None:
    """One figure: a panel per (size, mode), sessions on a log x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = {}
    for scenario, per in numbers.items():
        match = SCENARIO.match(scenario)
        if match is None:
            continue
        panel = panels.setdefault((match["size"], match["mode"]), {})
        for name, value in per.items():
            panel.setdefault(name, []).append((int(match["sessions"]), value))
    keys = sorted(panels, key=lambda k: (float(k[0].split()[0]), k[1] != "persistent"))
    columns = 2
    rows = (len(keys) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(10, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for name in CONTENDERS:
            points = sorted(panels[key].get(name, []))
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=name, **STYLE[name])
        ax.set_xscale("log")
        ax.set_xticks([1, 10, 100], ["1", "10", "100"])
        ax.set_title(
            f"{key[0]} messages, {'persistent sessions' if key[1] == 'persistent' else 'one message per connection'}",
            fontsize=10,
        )
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(title, y=0.995, fontsize=12)
    fig.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.965), ncol=len(labels), frameon=False
    )
    fig.text(0.99, 0.005, f"source: {source}", ha="right", va="bottom", fontsize=7, color="#757575")
    fig.tight_layout(rect=(0, 0.02, 1, 0.92))
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    """Pick the source, draw both figures, say what was done."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["auto", "json", "results"], default="auto")
    parser.add_argument("--json", type=Path, help="a bench_smtp.py JSON file (implies --source json)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to read")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_static", help="directory for the PNGs")
    args = parser.parse_args()
    path: Path | None = args.json
    if path is None and args.source in ("auto", "json"):
        path = newest_full_json()
        if path is None and args.source == "json":
            sys.exit(f"no full-run smtp-*.json in {OUT}: run bench/bench_smtp.py (without --quick)")
    if path is not None:
        numbers, source = from_json(path), f"bench/out/{path.name}"
    else:
        numbers, source = from_results(args.results), "bench/RESULTS.md"
    args.out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str, str, Any]] = [
        ("rate", "messages/s (median)", "SMTP throughput: higher is better", "bench-smtp-throughput.png"),
        (
            "cpu",
            "server CPU s / 1,000 messages",
            "Server CPU per message: lower is better",
            "bench-smtp-cpu.png",
        ),
    ]
    for metric, ylabel, title, name in figures:
        plot(numbers[metric], ylabel, title, source, args.out / name)
        sys.stdout.write(f"wrote {args.out / name} from {source}\n")


if __name__ == "__main__":
    main()

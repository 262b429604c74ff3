"""Draw the bench's JSON output as an SVG chart (no plotting dependency).

Run: python bench/chart.py results.json docs/assets/bench.svg

Two panels: the median latency of each method (microseconds per call, one bar per
interpreter), and the collision run's "Address already in use" count per method.
"""

from __future__ import annotations

import json
import sys
from html import escape

# (figure key, name of its absolute series, label in the chart)
LATENCY = [
    ("default_vs_fup", "find_unused_port()", "CPython find_unused_port()"),
    ("default_vs_portpicker", "portpicker.pick_unused_port()", "portpicker.pick_unused_port()"),
    ("default_vs_fup", "reserve_port()+release()", "portsafe reserve_port()+release()"),
    ("range300_vs_default", "ports=range(30000, 30300)", "portsafe ports=range(30000, 30300)"),
    ("range10000_vs_default", "ports=range(20000, 30000)", "portsafe ports=range(20000, 30000)"),
    ("unspec_vs_fup", "AF_UNSPEC, socktype=0", "portsafe AF_UNSPEC, socktype=0"),
    ("three_vs_fup", "reserve_ports(3)+release()", "portsafe reserve_ports(3)+release()"),
]
COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948"]
LABEL_W, BAR_H, GAP, WIDTH = 300, 12, 10, 820


def _latency_rows(runs: list[dict]) -> list[tuple[str, list[float | None]]]:
    rows = []
    for key, series, label in LATENCY:
        values: list[float | None] = []
        for run in runs:
            found = next((f for f in run["figures"] if f["key"] == key), None)
            stats = found["absolute"].get(series) if found else None
            values.append(stats["median"] if stats else None)
        if any(v is not None for v in values):
            rows.append((label, values))
    return rows


def _collision_rows(runs: list[dict]) -> list[tuple[str, list[float | None]]]:
    names: list[str] = []
    for run in runs:
        for name in run.get("collisions", {}).get("methods", {}):
            if name not in names:
                names.append(name)
    return [(name, [run.get("collisions", {}).get("methods", {}).get(name, {})
                    .get("collisions") for run in runs]) for name in names]


def _panel(title: str, unit: str, rows: list[tuple[str, list[float | None]]],
           pythons: list[str], top: int) -> tuple[list[str], int]:
    out = [(f'<text x="10" y="{top + 16}" font-size="15" font-weight="bold">'
            f'{escape(title)}</text>')]
    y = top + 30
    biggest = max((v for _, values in rows for v in values if v is not None), default=1) or 1
    scale = (WIDTH - LABEL_W - 80) / biggest
    for label, values in rows:
        out.append(f'<text x="{LABEL_W - 8}" y="{y + BAR_H * len(values) / 2 + 4}" '
                   f'text-anchor="end" font-size="12">{escape(label)}</text>')
        for index, value in enumerate(values):
            if value is None:
                continue
            colour = COLOURS[index % len(COLOURS)]
            width = max(1.0, value * scale)
            out.append(f'<rect x="{LABEL_W}" y="{y}" width="{width:.1f}" height="{BAR_H - 2}" '
                       f'fill="{colour}"><title>{escape(pythons[index])}: {value:g} {unit}'
                       f'</title></rect>')
            out.append(f'<text x="{LABEL_W + width + 4:.1f}" y="{y + BAR_H - 3}" '
                       f'font-size="10">{value:.1f}</text>' if isinstance(value, float)
                       else f'<text x="{LABEL_W + width + 4:.1f}" y="{y + BAR_H - 3}" '
                       f'font-size="10">{value}</text>')
            y += BAR_H
        y += GAP
    out.append(f'<text x="{LABEL_W}" y="{y + 4}" font-size="11" fill="#555">{escape(unit)}'
               f'</text>')
    return out, y + 20


def render(report: dict) -> str:
    """The SVG text for a bench report (the JSON written by ``--json``)."""
    runs = report["runs"]
    pythons = [f"python {run['python']}" for run in runs]
    body: list[str] = []
    legend_y = 24
    for index, name in enumerate(pythons):
        x = LABEL_W + index * 110
        body.append(f'<rect x="{x}" y="{legend_y - 10}" width="10" height="10" '
                    f'fill="{COLOURS[index % len(COLOURS)]}"/>')
        body.append(f'<text x="{x + 14}" y="{legend_y}" font-size="12">{escape(name)}</text>')
    part, y = _panel("Latency per call (median of 3 repeats)", "microseconds per call",
                     _latency_rows(runs), pythons, 40)
    body += part
    collisions = _collision_rows(runs)
    if collisions:
        procs = next((run["collisions"]["processes"] for run in runs if "collisions" in run), 0)
        part, y = _panel(f"Collision run: {procs} processes pick, wait 0-50 ms, bind+listen "
                         f"(loopback load)", "binds that failed with EADDRINUSE",
                         collisions, pythons, y)
        body += part
    command = escape(report.get("command", ""))
    body.append(f'<text x="10" y="{y + 4}" font-size="10" fill="#555">{command}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y + 16}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    with open(sys.argv[1]) as file:
        report = json.load(file)
    with open(sys.argv[2], "w") as file:
        file.write(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

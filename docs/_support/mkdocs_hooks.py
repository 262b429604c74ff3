"""MkDocs hooks for the site: the benchmark chart appears once the bench has drawn it.

``bench/chart.py`` (run by ``nox -s bench``) writes ``docs/assets/bench.svg`` from the
benchmark's own output. Until that file exists, the page says how to make it instead of
linking a missing image, which the strict build would reject.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLACEHOLDER = "<!-- bench-chart -->"
CHART = "assets/bench.svg"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the chart placeholder with the image, or with how to draw it."""
    if PLACEHOLDER not in markdown:
        return markdown
    if (Path(config["docs_dir"]) / CHART).is_file():
        figure = (f"![Collisions and latency per method, from bench/bench_reserve.py]"
                  f"({CHART})")
    else:
        figure = ("*The chart is drawn by `nox -s bench` into `docs/assets/bench.svg`; "
                  "this build ran before it was drawn.*")
    return markdown.replace(PLACEHOLDER, figure)

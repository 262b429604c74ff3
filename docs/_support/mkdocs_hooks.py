"""MkDocs hooks for the site: the API reference's layout, and the benchmark chart.

The API reference (``docs/reference.md``) holds placeholders, ``<!-- api: MODULE -->``,
that ``api_layout.py`` (next to this file) expands into the module's reference,
functions first and errors last.

``bench/chart.py`` (run by ``nox -s bench``) writes ``docs/assets/bench.svg`` from the
benchmark's own output. Until that file exists, the page says how to make it instead of
linking a missing image, which the strict build would reject.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

PLACEHOLDER = "<!-- bench-chart -->"
CHART = "assets/bench.svg"
API_MARKER = "<!-- api: "


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Expand the reference's placeholders; show the chart or say how to draw it."""
    if API_MARKER in markdown:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import api_layout  # needs griffe, which only the docs build has

        markdown = api_layout.expand(markdown)
    if PLACEHOLDER not in markdown:
        return markdown
    if (Path(config["docs_dir"]) / CHART).is_file():
        figure = (f"![Collisions and latency per method, from bench/bench_reserve.py]"
                  f"({CHART})")
    else:
        figure = ("*The chart is drawn by `nox -s bench` into `docs/assets/bench.svg`; "
                  "this build ran before it was drawn.*")
    return markdown.replace(PLACEHOLDER, figure)

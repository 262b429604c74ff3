"""G1 across processes: many processes reserving at once never share a port."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent("""
    import json, socket, sys, time, portsafe
    start_at, rounds, reuse = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    while time.time() < start_at:
        time.sleep(0.001)
    held = [portsafe.reserve_port() for _ in range(50)]  # live together, across processes
    intervals, errors = [], 0
    for _ in range(rounds):  # the pattern tests use: reserve, bind, serve a while, release
        with portsafe.reserve_port() as r:
            begin = time.monotonic()
            try:
                with socket.socket() as server:
                    if reuse:
                        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    server.bind(r.address)
                    server.listen()
                    time.sleep(0.002)
            except OSError:
                errors += 1
            intervals.append((r.port, begin, time.monotonic()))
    print(json.dumps({"held": [r.port for r in held], "intervals": intervals,
                      "errors": errors}))
""")


@pytest.mark.parametrize("reuse", [False, True])
def test_sixteen_processes_never_share(reuse):
    """16 processes: 50 held each plus 60 reserve-bind-release rounds; no overlap, no error."""
    import time

    start_at = time.time() + 1.5  # all start together, after interpreter start-up
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(start_at), "60",
                               "1" if reuse else "0"], stdout=subprocess.PIPE, text=True)
             for _ in range(16)]
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        reports.append(json.loads(out))
    held = [port for report in reports for port in report["held"]]
    assert len(held) == 16 * 50
    assert len(set(held)) == len(held), "two live reservations shared a port"
    assert sum(report["errors"] for report in reports) == 0, "a bind failed"
    # monotonic clocks are system-wide on Linux, so intervals compare across processes
    by_port: dict[int, list[tuple[float, float]]] = {}
    for index, report in enumerate(reports):
        for port, begin, end in report["intervals"]:
            by_port.setdefault(port, []).append((begin, end, index))
    for port, spans in by_port.items():
        spans.sort()
        for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
            assert begin >= end or first == second, f"port {port} held twice at once"

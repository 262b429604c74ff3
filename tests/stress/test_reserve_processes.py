"""G1 across processes: many processes reserving at once never share a port."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import time

import pytest
from tests.support.kernel import kernel_holders

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
                      "errors": errors}), flush=True)
    sys.stdin.read()  # keep the 50 held until every process has reported its own
""")


def run_workers(reuse: bool) -> list[dict]:
    """Start 16 workers together; once all have reported, check their held ports against
    the kernel's lock table while every one of them still holds them."""
    start_at = time.time() + 1.5  # all start together, after interpreter start-up
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(start_at), "60",
                               "1" if reuse else "0"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
             for _ in range(16)]
    try:
        reports = []
        for proc in procs:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"worker {proc.pid} died: rc {proc.wait(timeout=60)}"
            reports.append(dict(json.loads(line), pid=proc.pid))
        if sys.platform.startswith("linux"):  # every process is alive and holding: ask
            claims = [(report["pid"], port) for report in reports for port in report["held"]]
            holders = kernel_holders([port for _, port in claims])
            wrong = [(pid, port, holder) for (pid, port), holder in zip(claims, holders,
                                                                       strict=True)
                     if holder != pid]
            assert not wrong, ("reported held, but the kernel says otherwise (pid, port, "
                               f"holder; 0 for nobody): {wrong[:5]}")
    finally:
        for proc in procs:
            proc.stdin.close()  # type: ignore[union-attr]: the workers may exit now
        for proc in procs:
            proc.wait(timeout=60)
            proc.stdout.close()  # type: ignore[union-attr]
    assert all(proc.returncode == 0 for proc in procs)
    return reports


@pytest.mark.parametrize("reuse", [False, True])
def test_sixteen_processes_never_share(reuse: bool) -> None:
    """16 processes: 50 held each plus 60 reserve-bind-release rounds; no overlap, no error.

    The 50 are held until every process has reported: a process that exited early has
    released its ports, and another may rightly get them then.
    """
    reports = run_workers(reuse)
    held = [port for report in reports for port in report["held"]]
    assert len(held) == 16 * 50
    assert len(set(held)) == len(held), "two live reservations shared a port"
    assert sum(report["errors"] for report in reports) == 0, "a bind failed"
    # monotonic clocks are system-wide on Linux, so intervals compare across processes
    by_port: dict[int, list[tuple[float, float, int]]] = {}
    for index, report in enumerate(reports):
        for port, begin, end in report["intervals"]:
            by_port.setdefault(port, []).append((begin, end, index))
    for port, spans in by_port.items():
        spans.sort()
        for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
            assert begin >= end or first == second, f"port {port} held twice at once"

"""No two pytest-xdist workers, nor two pytest runs, hold the same port at the same time.

A generated suite of tests each takes a port from the plugin's fixtures, waits a
moment with only the reservation protecting it (the window a bind-and-close helper
leaves open), binds it without SO_REUSEADDR, holds it, and records
``(port, pid, parent pid, start, end)``. Half the tests take ``reserved_tcp_port``; the
other half draw from a pool of a few ports so that workers really contend for the
same numbers (with the default range of ~25,000 ports, a broken lock would almost
never show). The checks:

* every test passed (a collision would also surface as EADDRINUSE in ``bind``);
* no two intervals on the same port overlap, across all workers and runs;
* the pool was contended: some port served several processes (and both runs), so
  the absence of overlaps means something.

A control run with a check-then-use fixture on the same pool shows the harness does
catch collisions. Timestamps are ``time.monotonic_ns()``, which is one clock for the
whole machine on Linux and macOS; nothing asserts how long anything took.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

import portsafe
from portsafe._platform import NAMES

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

pytest.importorskip("xdist")

pytestmark = [pytest.mark.timeout(240)]

POOL_SIZE = 6  # > the 4 holders at a time below, < what makes contention rare

CONFTEST = """
import os, random, socket, time, pytest

POOL = range(int(os.environ["STRESS_POOL_START"]),
             int(os.environ["STRESS_POOL_START"]) + int(os.environ["STRESS_POOL_SIZE"]))

@pytest.fixture
def naive_port():
    # The race the plugin exists to remove: check that a port is free, close, hand out.
    while True:
        port = random.choice(POOL)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
"""

TESTS = """
import os, socket, time, pytest

RECORDS = os.environ["STRESS_RECORDS"]
POOL = range(int(os.environ["STRESS_POOL_START"]),
             int(os.environ["STRESS_POOL_START"]) + int(os.environ["STRESS_POOL_SIZE"]))
KIND = os.environ.get("STRESS_KIND", "portsafe")

def hold(port):
    start = time.monotonic_ns()
    time.sleep(0.002)  # reserved but not yet bound: only the lock protects the port here
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
            s.listen()
            time.sleep(0.003)
    finally:
        end = time.monotonic_ns()
        path = os.path.join(RECORDS, f"{os.getpid()}.txt")
        with open(path, "a") as f:
            f.write(f"{port} {os.getpid()} {os.getppid()} {start} {end}\\n")

@pytest.mark.parametrize("i", range(int(os.environ["STRESS_TESTS"])))
def test_hold(i, request):
    if KIND == "naive":
        port = request.getfixturevalue("naive_port")
    elif i % 2:
        port = request.getfixturevalue("reserved_port_factory")(ports=POOL)
    else:
        port = request.getfixturevalue("reserved_tcp_port")
    hold(port)
"""


@dataclass(frozen=True)
class Interval:
    port: int
    pid: int
    ppid: int
    start: int
    end: int


def read_records(directory: Path) -> list[Interval]:
    records = []
    for path in directory.iterdir():
        for line in path.read_text().splitlines():
            port, pid, ppid, start, end = (int(word) for word in line.split())
            records.append(Interval(port, pid, ppid, start, end))
    return records


def overlaps(records: Iterable[Interval]) -> list[tuple[Interval, Interval]]:
    """Pairs of intervals on the same port that overlap in time (touching is fine)."""
    by_port: dict[int, list[Interval]] = defaultdict(list)
    for record in records:
        by_port[record.port].append(record)
    found = []
    for intervals in by_port.values():
        intervals.sort(key=lambda r: r.start)
        latest = intervals[0]
        for current in intervals[1:]:
            if current.start < latest.end:
                found.append((latest, current))
            if current.end > latest.end:
                latest = current
    return found


def pick_pool() -> int:
    """A block of POOL_SIZE ports outside the ephemeral range that nobody holds now."""
    with portsafe.reserve_ports(POOL_SIZE, contiguous=True) as group:
        return group.ports[0]


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write the generated suite; return the directory the tests record into.

    The runs share a private lock directory: the proof is about the processes of these
    runs, and the machine's shared one may meanwhile hold thousands of ports for other
    test runs (a benchmark holding 10,000), which would exhaust the 6-port pool.
    """
    records = pytester.path / "records"
    records.mkdir()
    if not NAMES:  # names have no lock directory
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(pytester.path / "locks"))
    monkeypatch.setenv("STRESS_RECORDS", str(records))
    monkeypatch.setenv("STRESS_POOL_START", str(pick_pool()))
    monkeypatch.setenv("STRESS_POOL_SIZE", str(POOL_SIZE))
    monkeypatch.delenv("STRESS_KIND", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_hold=TESTS)
    return records


def pytest_args(workers: int) -> list[str]:
    args = ["-p", "no:cacheprovider", "-q", "-n", str(workers)]
    if "pytest_asyncio" in sys.modules:
        args += ["-o", "asyncio_default_fixture_loop_scope=function"]
    return args


class TestAnalyzer:
    def test_overlaps_finds_shared_ports_in_overlapping_time(self) -> None:
        """The checker itself can fail: overlapping intervals on one port are reported."""
        a = Interval(5000, 1, 0, 0, 10)
        b = Interval(5000, 2, 0, 5, 15)  # overlaps a
        c = Interval(5000, 3, 0, 15, 20)  # touches b's end: fine
        d = Interval(5001, 4, 0, 0, 10)  # same time, other port: fine
        e = Interval(5000, 5, 0, 1, 2)  # inside a, after a's start
        assert overlaps([c, b, a, d]) == [(a, b)]
        assert len(overlaps([a, b, c, d, e])) == 2
        assert overlaps([a, c, d]) == []


class TestXdistCollisions:
    def test_300_tests_on_4_workers_never_share_a_port(
        self, pytester: pytest.Pytester, suite: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """300 tests under -n 4: all pass, no overlapping holds, the pool was contended."""
        monkeypatch.setenv("STRESS_TESTS", "300")
        result = pytester.runpytest_subprocess(*pytest_args(4), timeout=180)
        result.assert_outcomes(passed=300)
        records = read_records(suite)
        assert len(records) == 300
        assert len({r.pid for r in records}) == 4
        assert overlaps(records) == []
        pool_users: dict[int, set[int]] = defaultdict(set)
        pool = range(int(os.environ["STRESS_POOL_START"]), int(os.environ["STRESS_POOL_START"])
                     + POOL_SIZE)
        for r in records:
            if r.port in pool:
                pool_users[r.port].add(r.pid)
        assert any(len(pids) > 1 for pids in pool_users.values())

    def test_two_concurrent_runs_never_share_a_port(
        self, pytester: pytest.Pytester, suite: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two separate pytest runs (-n 2 each) at the same time: no overlapping holds."""
        monkeypatch.setenv("STRESS_TESTS", "150")
        runs = []
        for name in ("one", "two"):
            out = (pytester.path / f"{name}.out").open("w")
            runs.append((out, pytester.popen(
                [sys.executable, "-m", "pytest", *pytest_args(2)],
                stdout=out, stderr=subprocess.STDOUT,
            )))
        for out, run in runs:
            try:
                run.wait(timeout=180)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
                out.close()
        outputs = [(pytester.path / f"{n}.out").read_text() for n in ("one", "two")]
        for (_, run), output in zip(runs, outputs, strict=True):
            assert run.returncode == 0, output
            assert "150 passed" in output, output
        records = read_records(suite)
        assert len(records) == 300
        controllers = {r.ppid for r in records}
        assert controllers == {run.pid for _, run in runs}
        assert overlaps(records) == []
        runs_per_port: dict[int, set[int]] = defaultdict(set)
        for r in records:
            runs_per_port[r.port].add(r.ppid)
        assert any(len(ppids) == 2 for ppids in runs_per_port.values())

    def test_control_check_then_use_does_collide(
        self, pytester: pytest.Pytester, suite: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The same harness with a check-then-use fixture sees collisions (so it can fail)."""
        monkeypatch.setenv("STRESS_TESTS", "200")
        monkeypatch.setenv("STRESS_KIND", "naive")
        result = pytester.runpytest_subprocess(*pytest_args(4), timeout=180)
        outcomes = result.parseoutcomes()
        collisions = overlaps(read_records(suite))
        assert collisions or outcomes.get("failed", 0) > 0, outcomes

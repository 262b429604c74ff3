"""Auto mode's proof under load: scanners that try explicit ports stop colliding.

The inner suite has tests that each pick a port the way dev servers and many test helpers
do: try ``bind(("127.0.0.1", p))`` from a start port shared by every test, and return the
first ``p`` that binds (closing the probe). Each test then waits a random 0-30 ms, binds
and listens on ``p`` without ``SO_REUSEADDR`` and talks to its own server: the client
sends, reads the echo and closes first, so the server side leaves no TIME_WAIT behind.
It runs twice at the same time, each under ``pytest -n 4``, in a private network
namespace (``test_auto_stress``'s harness).

* Without auto mode the harness must see failures ("Address already in use"): two
  workers' scanners return the same first free port (up to three tries).
* With ``PORTSAFE_AUTO=1`` there must be none: a probe leases its port to its family
  (``portsafe._auto.explicit``), so the other scanners move on.

Linux only; skipped with the reason where a network namespace cannot be made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.stress.test_auto_stress import assert_harness_sees_collisions, run_suite_twice

pytest.importorskip("xdist")

pytestmark = [pytest.mark.timeout(300)]

TESTS = 120

INNER = '''
import os
import random
import socket
import time

import pytest

START = 20000


def scan() -> int:
    """The first port from START that binds (the probe is closed before returning)."""
    for port in range(START, START + 1000):
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise RuntimeError("no free port")


@pytest.mark.parametrize("i", range(int(os.environ["AUTO_STRESS_TESTS"])))
def test_scan_wait_serve(i: int) -> None:
    port = scan()
    time.sleep(random.uniform(0, 0.030))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            served, _ = server.accept()
            with served:
                client.sendall(b"ping")
                served.sendall(served.recv(4))
                assert client.recv(4) == b"ping"
                time.sleep(0.020)
                client.close()  # the client first: no TIME_WAIT on the server's port
                served.recv(1)
'''


def run_twice(tmp_path: Path, *, auto: bool) -> tuple[int, int]:
    """Both inner runs of the scanners at once in one fresh namespace; (failed, run)."""
    return run_suite_twice(tmp_path, {"test_scan.py": INNER}, TESTS, auto=auto)


class TestAutoScanStress:
    def test_harness_sees_collisions_without_auto_mode(self, tmp_path: Path) -> None:
        """Plain scanners collide under this load (up to three tries)."""
        assert_harness_sees_collisions(run_twice, tmp_path, TESTS, "scanners")

    def test_no_collision_with_auto_mode(self, tmp_path: Path) -> None:
        """PORTSAFE_AUTO=1: every scanner gets a port no other family's scanner gets."""
        failed, run = run_twice(tmp_path, auto=True)
        print(f"scanners with auto mode: {failed} failed of {run}")
        assert run == 2 * TESTS
        assert failed == 0


"""Auto mode's proof under load: bind-close pickers stop colliding.

The inner suite (``auto_inner/``: a conftest with a bind-close ``unused_port`` fixture and
300 tests that pick, wait 0-30 ms, then bind and listen without SO_REUSEADDR and serve
for 20 ms) runs twice at the same time, each under ``pytest -n 4``, inside a private
network namespace whose ephemeral range is cut to 100 ports, so that eight processes
fight over the numbers the kernel hands to ``bind(0)``.

* Without auto mode the harness must see failures ("Address already in use"): the
  kernel hands a just-picked number to another worker's ``bind(0)``. This is what
  shows the harness can see collisions at all (it is retried up to three times, since
  a collision is likely, not certain).
* With ``PORTSAFE_AUTO=1`` (children patched by the start-up hook) there must be none,
  also with ``PORTSAFE_AUTO_MAX_LEASES=4``, where leases end within a few tests and most
  picks reuse a pooled reservation (auto mode's fast path).

Linux only; skipped with the reason where a network namespace cannot be made.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.auto_env import hook_env

pytest.importorskip("xdist")

pytestmark = [pytest.mark.timeout(300)]

INNER = Path(__file__).with_name("auto_inner")
TESTS = 300
RANGE = "40000 40099"  # about 100 ephemeral ports

NAMESPACE = f"""
set -e
ip link set lo up
sysctl -q -w net.ipv4.ip_local_port_range="{RANGE}"
"$@" --junitxml="$AUTO_STRESS_DIR/a.xml" > "$AUTO_STRESS_DIR/a.log" 2>&1 &
first=$!
"$@" --junitxml="$AUTO_STRESS_DIR/b.xml" > "$AUTO_STRESS_DIR/b.log" 2>&1 || true
wait $first || true
"""


def namespace_prefix() -> list[str]:
    """How to enter a fresh network namespace here, or skip saying why not."""
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux-only")
    if not all(shutil.which(tool) for tool in ("unshare", "ip", "sysctl")):
        pytest.skip("needs unshare, ip and sysctl (iproute2, procps)")
    prefix = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    probe = subprocess.run([*prefix, "sh", "-c", (f"ip link set lo up && sysctl -q -w "
                            f"net.ipv4.ip_local_port_range='{RANGE}'")],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.strip()}")
    return prefix


def failures(directory: Path) -> tuple[int, int]:
    """(failed, run) summed over both runs' JUnit reports."""
    failed = run = 0
    for name in ("a", "b"):
        report = directory / f"{name}.xml"
        if not report.exists():
            log = (directory / f"{name}.log").read_text()
            pytest.fail(f"inner run {name} wrote no report:\n{log[-3000:]}")
        text = report.read_text()
        match = re.search(r'<testsuite [^>]*errors="(\d+)" failures="(\d+)" skipped="\d+" '
                          r'tests="(\d+)"', text)
        assert match, text[:500]
        errors, failed_here, tests = (int(group) for group in match.groups())
        failed += errors + failed_here
        run += tests
    return failed, run


def run_suite_twice(tmp_path: Path, files: dict[str, str], tests: int, *, auto: bool,
                    **settings: str) -> tuple[int, int]:
    """Write an inner suite of *files* (name -> text) and run it twice at once, with
    ``-n 4``, in one fresh private network namespace; (failed, run)."""
    prefix = namespace_prefix()
    tmp_path.mkdir(parents=True, exist_ok=True)
    suite = tmp_path / f"suite-{'auto' if auto else 'plain'}"
    suite.mkdir()
    for name, text in {**files, "pytest.ini": "[pytest]\n"}.items():
        (suite / name).write_text(text)
    env = hook_env(tmp_path, AUTO_STRESS_DIR=str(suite), AUTO_STRESS_TESTS=str(tests))
    if auto:
        env["PORTSAFE_AUTO"] = "1"
    env.update(settings)
    for name in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PORTSERVER_ADDRESS",
                 "PORTSAFE_LOCK_DIR"):
        env.pop(name, None)
    pytest_args = [sys.executable, "-m", "pytest", "-q", "-n", "4", "-p", "no:cacheprovider",
                   "-p", "no:portsafe", "-p", "no:asyncio", "-p", "no:anyio", "-p",
                   "no:randomly", "-c", str(suite / "pytest.ini"), "--rootdir", str(suite),
                   str(suite)]
    subprocess.run([*prefix, "sh", "-c", NAMESPACE, "sh", *pytest_args], env=env,
                   cwd=suite, check=True, timeout=240)
    return failures(suite)


def run_twice(tmp_path: Path, *, auto: bool, **settings: str) -> tuple[int, int]:
    """The bind-close suite, both inner runs at once in one fresh namespace."""
    files = {"conftest.py": (INNER / "inner_conftest_helper.py").read_text(),
             "test_ports.py": (INNER / "inner_ports.py").read_text()}
    return run_suite_twice(tmp_path, files, TESTS, auto=auto, **settings)


def assert_harness_sees_collisions(run: Callable[..., tuple[int, int]], tmp_path: Path,
                                   tests: int, what: str) -> None:
    """A harness without auto mode must see collisions (up to three tries), or it could
    not show that auto mode prevents them."""
    seen = []
    for attempt in range(3):
        failed, ran = run(tmp_path / str(attempt), auto=False)
        assert ran == 2 * tests
        seen.append(failed)
        if failed:
            break
    print(f"{what} without auto mode: {seen} failed of {2 * tests} per attempt")
    assert seen[-1] > 0, f"no collision in {len(seen)} attempts: the harness is blind"


class TestAutoStress:
    def test_harness_sees_collisions_without_auto_mode(self, tmp_path: Path) -> None:
        """Plain bind-close picking collides under this load (up to three tries)."""
        assert_harness_sees_collisions(run_twice, tmp_path, TESTS, "bind-close")

    @pytest.mark.parametrize("max_leases", ["256", "4"])
    def test_no_collision_with_auto_mode(self, tmp_path: Path, max_leases: str) -> None:
        """PORTSAFE_AUTO=1: the same harness passes every test; also with leases capped
        at 4, so that most picks reuse pooled reservations (the fast path)."""
        failed, run = run_twice(tmp_path, auto=True, PORTSAFE_AUTO_MAX_LEASES=max_leases)
        print(f"with auto mode (at most {max_leases} leases): {failed} failed of {run}")
        assert run == 2 * TESTS
        assert failed == 0

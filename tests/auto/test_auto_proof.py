"""The proof of auto mode with real processes: every picker's port is reserved and usable.

A child process in auto mode picks ports with each helper (a conftest fixture as
uvicorn's, a hand-written module-level helper, every known picker) and then waits. While
it waits (its leases running), the parent checks each port: outside the ephemeral
range, impossible to reserve from another process, and bindable by a plain server in a
third process that has no portsafe at all.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.support.auto_env import hook_env

import portsafe

pytest.importorskip("anyio")
pytest.importorskip("aiohttp")
pytest.importorskip("pytest_asyncio")
pytest.importorskip("portpicker")
pytest.importorskip("ephemeral_port_reserve")
pytest.importorskip("port_for")

PROGRAM = textwrap.dedent("""
    import json, socket, sys
    import ephemeral_port_reserve, port_for, portpicker
    from aiohttp.test_utils import unused_port

    def find_free_port():  # the hand-written helper of countless test suites
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    found = {
        "module helper": [find_free_port(), "tcp"],
        "portpicker.pick_unused_port": [portpicker.pick_unused_port(), "tcp"],
        "ephemeral_port_reserve.reserve": [ephemeral_port_reserve.reserve(), "tcp"],
        "port_for.select_random": [port_for.select_random(), "tcp"],
        "port_for.get_port": [port_for.get_port(None), "tcp"],
        "aiohttp unused_port": [unused_port(), "tcp"],
    }
    print(json.dumps(found), flush=True)
    sys.stdin.readline()
""")

CONFTEST = textwrap.dedent("""
    import json, os, socket, subprocess, sys, time
    import pytest

    FOUND = {}

    @pytest.fixture
    def unused_port_helper():  # as uvicorn's conftest has it
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    @pytest.fixture
    def record():
        def record(name, port, kind="tcp"):
            FOUND[name] = [port, kind]
            # while the test runs, another process must not get the port either
            done = subprocess.run([sys.executable, "-c", os.environ["PROOF_CHECK"],
                                   json.dumps({name: [port, kind]})], capture_output=True,
                                  text=True, check=True)
            assert json.loads(done.stdout) == {name: False}, name
        return record

    def pytest_sessionfinish(session):
        out, go = os.environ["PROOF_OUT"], os.environ["PROOF_GO"]
        with open(out + ".tmp", "w") as f:
            json.dump(FOUND, f)
        os.rename(out + ".tmp", out)
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.05)
""")

INNER = textwrap.dedent("""
    def test_conftest_helper(unused_port_helper, record):
        record("conftest helper", unused_port_helper)

    def test_asyncio_tcp(unused_tcp_port, record):
        record("pytest-asyncio unused_tcp_port", unused_tcp_port)

    def test_asyncio_udp(unused_udp_port, record):
        record("pytest-asyncio unused_udp_port", unused_udp_port, "udp")

    def test_asyncio_tcp_factory(unused_tcp_port_factory, record):
        record("pytest-asyncio unused_tcp_port_factory", unused_tcp_port_factory())

    def test_asyncio_udp_factory(unused_udp_port_factory, record):
        record("pytest-asyncio unused_udp_port_factory", unused_udp_port_factory(), "udp")

    def test_anyio_tcp(free_tcp_port, record):
        record("anyio free_tcp_port", free_tcp_port)

    def test_anyio_udp(free_udp_port, record):
        record("anyio free_udp_port", free_udp_port, "udp")

    def test_anyio_tcp_factory(free_tcp_port_factory, record):
        record("anyio free_tcp_port_factory", free_tcp_port_factory())

    def test_anyio_udp_factory(free_udp_port_factory, record):
        record("anyio free_udp_port_factory", free_udp_port_factory(), "udp")

    def test_anyio_contract(free_tcp_port, free_tcp_port_factory):
        more = [free_tcp_port_factory() for _ in range(20)]
        assert len(set(more)) == 20 and free_tcp_port not in more
""")

CHECK = textwrap.dedent("""
    import json, socket, sys
    import portsafe
    kinds = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
    taken = {}
    for name, (port, kind) in json.loads(sys.argv[1]).items():
        try:
            portsafe.reserve_port(ports=[port], socktype=kinds[kind]).release()
            taken[name] = True
        except portsafe.NoFreePortError:
            taken[name] = False
    print(json.dumps(taken))
""")

SERVER = textwrap.dedent("""
    import json, socket, sys
    assert "portsafe" not in sys.modules
    kinds = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
    bound = {}
    for name, (port, kind) in json.loads(sys.argv[1]).items():
        with socket.socket(socket.AF_INET, kinds[kind]) as server:  # no SO_REUSEADDR
            try:
                server.bind(("127.0.0.1", port))
                if kind == "tcp":
                    server.listen()
                bound[name] = True
            except OSError as exc:
                bound[name] = str(exc)
    print(json.dumps(bound))
""")


@functools.cache
def plugin_has_switch() -> bool:
    done = subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True,
                          text=True, check=False)
    return "--portsafe-auto" in done.stdout


def check_ports(found: dict[str, list[object]], env: dict[str, str],
                held_until_teardown: frozenset[str] = frozenset()) -> None:
    """Each port: outside the ephemeral range, not reservable, bindable without portsafe.

    Ports in *held_until_teardown* come from fixtures that hold a reservation for the
    test's duration instead of leasing it (checked during the test, by the inner run).
    """
    low, high = portsafe.ephemeral_port_range()
    inside = {name: port for name, (port, _) in found.items()
              if low <= int(port) <= high}  # type: ignore[call-overload]
    assert not inside, f"ports in the ephemeral range {low}-{high}: {inside}"
    leased = {name: value for name, value in found.items() if name not in held_until_teardown}
    taken = subprocess.run([sys.executable, "-c", CHECK, json.dumps(leased)], env=env,
                           capture_output=True, text=True, check=True)
    reservable = [name for name, ok in json.loads(taken.stdout).items() if ok]
    assert not reservable, f"another process could reserve: {reservable}"
    plain = {key: value for key, value in os.environ.items()
             if not key.startswith("PORTSAFE") and key != "PYTHONPATH"}
    served = subprocess.run([sys.executable, "-I", "-S", "-c", SERVER, json.dumps(found)],
                            env=plain, capture_output=True, text=True, check=True)
    failed = {name: why for name, why in json.loads(served.stdout).items() if why is not True}
    assert not failed, f"a plain server could not bind: {failed}"


class TestProof:
    def test_program_under_the_variable(self, tmp_path: Path) -> None:
        """PORTSAFE_AUTO=1 python program.py: the module helper and every known picker;
        `portsafe list` names the program as the holder of each port."""
        env = hook_env(tmp_path, PORTSAFE_AUTO="1", PORTSAFE_LOCK_DIR=str(tmp_path / "locks"))
        env.pop("PORTSERVER_ADDRESS", None)
        child = subprocess.Popen([sys.executable, "-c", PROGRAM], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None
            found = json.loads(child.stdout.readline())
            assert len(found) == 6
            check_ports(found, env)
            listed = subprocess.run([sys.executable, "-m", "portsafe", "list"], env=env,
                                    capture_output=True, text=True, check=True).stdout
            rows = {tuple(line.split()[:2]) for line in listed.splitlines()[1:]}
            for port, _ in found.values():
                assert (str(port), str(child.pid)) in rows, listed
        finally:
            child.communicate("go\n", timeout=30)
        assert child.returncode == 0

    @pytest.mark.parametrize("switch", ["variable", "--portsafe-auto"])
    def test_pytest_fixtures(self, tmp_path: Path, switch: str) -> None:
        """A pytest run: a conftest helper, pytest-asyncio's and anyio's fixtures."""
        if switch != "variable" and not plugin_has_switch():
            pytest.skip("this portsafe's pytest plugin has no --portsafe-auto yet")
        suite = tmp_path / "suite"
        suite.mkdir()
        (suite / "conftest.py").write_text(CONFTEST)
        (suite / "test_inner.py").write_text(INNER)
        out, go = tmp_path / "found.json", tmp_path / "go"
        lock_dir = str(tmp_path / "locks")
        extra = {"PORTSAFE_LOCK_DIR": lock_dir, "PROOF_OUT": str(out), "PROOF_GO": str(go),
                 "PROOF_CHECK": CHECK}
        if switch == "variable":
            env = hook_env(tmp_path, PORTSAFE_AUTO="1", **extra)
            args = ["-p", "no:portsafe"]  # the variable alone, no plugin
        else:
            env = hook_env(tmp_path, **extra)
            args = ["--portsafe-auto"]
        env.pop("PYTEST_ADDOPTS", None)
        env.pop("PYTEST_XDIST_WORKER", None)
        run = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "anyio",
             "-o", "asyncio_default_fixture_loop_scope=function", *args, str(suite)],
            env=env, cwd=suite, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while not out.exists():
                assert run.poll() is None, run.communicate()[0]
                assert time.monotonic() < deadline, "the inner run never finished"
                time.sleep(0.05)
            found = json.loads(out.read_text())
            assert len(found) == 9
            # the plugin's own pytest-asyncio fixtures hold until teardown, not by lease
            check_ports(found, env, frozenset() if switch == "variable" else frozenset(
                name for name in found if name.startswith("pytest-asyncio")))
        finally:
            go.write_text("")
            output = run.communicate(timeout=60)[0]
        assert run.returncode == 0, output
        assert "10 passed" in output

"""Auto mode and explicit ports: a probe leases its port to its family (Linux names).

A scanner's probe (an explicit bind closed unused) keeps its port from the scanners of
other families (other xdist workers, other runs) for a few seconds, while the servers of
its own family (the same process, children, grandchildren, a double-forked daemon, any
process started with the family in its environment) bind it as the kernel lets them.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.auto_env import hook_env

import portsafe
from portsafe._auto import explicit as _explicit
from portsafe._auto import switch as _auto
from portsafe._platform import NAMES

linux_names = pytest.mark.skipif(not NAMES, reason="explicit probes are covered on Linux names")

CHILD = r'''
import os, socket, subprocess, sys, time

port, mode, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def serve():
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", port))
    except OSError as exc:
        return f"errno {exc.errno}"
    server.listen()
    server.close()
    return "ok"


def say(text):
    with open(out + ".tmp", "w") as file:
        file.write(text)
    os.replace(out + ".tmp", out)


if mode == "serve":
    say(serve())
elif mode == "grandchild":
    subprocess.run([sys.executable, __file__, str(port), "serve", out], check=True)
elif mode == "daemon":
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            say(serve())
        os._exit(0)
    os.wait()
elif mode == "probe":
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", port))
    except OSError as exc:
        say(f"errno {exc.errno}")
    else:
        probe.close()
        say("ok")
'''


@pytest.fixture
def auto(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Auto mode on, with a family of its own for this test."""
    monkeypatch.delenv("PORTSAFE_AUTO_FAMILY", raising=False)
    _auto.enable()
    try:
        yield
    finally:
        _auto.disable()


@pytest.fixture
def port() -> int:
    """A port nobody uses right now (reserved, then released)."""
    with portsafe.reserve_port() as reservation:
        return reservation.port


def probe(port: int) -> None:
    """A scanner's probe: bind the explicit port, close it unused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def child(tmp_path: Path, port: int, mode: str, **env: str) -> str:
    """Run the child script with auto mode on (this family unless *env* says otherwise)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / f"out-{mode}"
    variables = {"PORTSAFE_AUTO": "1", "PORTSAFE_AUTO_FAMILY": _explicit.family(), **env}
    subprocess.run([sys.executable, str(script), str(port), mode, str(out)],
                   env=hook_env(tmp_path, **variables), check=True, timeout=60)
    for _ in range(600):
        if out.exists():
            return out.read_text()
        subprocess.run(["sleep", "0.05"], check=True)
    raise AssertionError(f"{mode}: no answer")


@linux_names
@pytest.mark.usefixtures("auto")
class TestOwnFamily:
    def test_same_process(self, port: int) -> None:
        probe(port)
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()

    @pytest.mark.parametrize("mode", ["serve", "grandchild", "daemon"])
    def test_descendants(self, tmp_path: Path, port: int, mode: str) -> None:
        """A child, a grandchild, a double-forked daemon: the family's own servers."""
        probe(port)
        assert child(tmp_path, port, mode) == "ok"

    def test_child_with_the_parents_environment(self, tmp_path: Path, port: int) -> None:
        """A child given a copy of os.environ (PORTSAFE_AUTO and the family in it)."""
        probe(port)
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        env = {**hook_env(tmp_path), **os.environ}
        out = tmp_path / "out"
        subprocess.run([sys.executable, str(script), str(port), "serve", str(out)], env=env,
                       check=True, timeout=60)
        assert out.read_text() == "ok"


@linux_names
@pytest.mark.usefixtures("auto")
class TestOtherFamily:
    def test_probe_lease_refuses_another_family(self, tmp_path: Path, port: int) -> None:
        """Another family's scanner is told the port is in use, so it moves on."""
        probe(port)
        assert child(tmp_path, port, "probe", PORTSAFE_AUTO_FAMILY="other") == (
            f"errno {errno.EADDRINUSE}")
        assert _auto.stats()["probes_leased"] == 1

    def test_listen_drops_the_lease(self, tmp_path: Path, port: int) -> None:
        """Once this family's server listened and closed, another family may bind."""
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()
        assert child(tmp_path, port, "serve", PORTSAFE_AUTO_FAMILY="other") == "ok"

    def test_the_lease_runs_out(self, tmp_path: Path, port: int,
                                monkeypatch: pytest.MonkeyPatch) -> None:
        """A closed probe's lease is ignored from twice LEASE_SECONDS after its close on
        (this process's clock set back by that much: no waiting)."""
        monkeypatch.setattr(_explicit, "_clock",
                            lambda: time.time() - 2 * _explicit.LEASE_SECONDS)
        probe(port)
        assert child(tmp_path, port, "serve", PORTSAFE_AUTO_FAMILY="other") == "ok"

    def test_plain_reservation_goes_to_the_kernel(self, tmp_path: Path, port: int) -> None:
        """A port held by reserve_port() is bound by whoever the kernel lets bind it."""
        with portsafe.reserve_port(ports=[port]):
            assert child(tmp_path, port, "serve", PORTSAFE_AUTO_FAMILY="other") == "ok"

    def test_a_failed_bind_leaves_no_lease(self, port: int) -> None:
        """The kernel's EADDRINUSE: the reservation attempt is undone."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            with socket.socket() as sock, pytest.raises(OSError):
                sock.bind(("127.0.0.1", port))
        assert not _explicit._leases


def test_off_nothing_changes(port: int) -> None:
    """Auto mode off: an explicit bind is the C bind, nothing is held."""
    assert socket.socket.bind is socket._socket.socket.bind  # type: ignore[attr-defined]
    probe(port)
    assert not _explicit._leases


@pytest.mark.usefixtures("auto")
class TestNamed:
    def test_a_readiness_poll_is_not_named(self, port: int) -> None:
        """A refused connect_ex to a port this process never binds: nothing named."""
        with socket.socket() as poll:
            assert poll.connect_ex(("127.0.0.1", port)) != 0
        assert _auto.stats()["uncovered"] == []

    def test_a_connect_probe_is_named_with_its_line(self, port: int) -> None:
        with socket.socket() as poll:
            poll.connect_ex(("127.0.0.1", port)); line = sys._getframe().f_lineno  # noqa: E702
        probe(port)
        [seen] = [item for item in _auto.stats()["uncovered"]  # type: ignore[attr-defined]
                  if item["what"].startswith("connect probe")]
        assert seen["where"].endswith(f"test_auto_explicit.py:{line}")

    def test_without_names_an_unused_explicit_bind_is_named(self) -> None:
        """Where reservations are lock files, a probe closed unused is named, not leased."""
        sock = socket.socket()
        _explicit.unnamed(sock, 1); line = sys._getframe().f_lineno  # noqa: E702
        _explicit.closed(sock)
        sock.close()
        [seen] = _auto.stats()["uncovered"]  # type: ignore[misc]
        assert seen["where"].endswith(f"test_auto_explicit.py:{line}")
        assert "explicit probe not covered" in seen["what"]


@linux_names
@pytest.mark.usefixtures("auto")
def test_a_probe_collected_without_close_ends_like_a_closed_one(tmp_path: Path, port: int,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """``s.bind((h, p)); return p`` without close: the collected socket starts the lease's
    last seconds, so the port is not refused to other families for the process's life."""
    monkeypatch.setattr(_explicit, "_clock", lambda: time.time() - 2 * _explicit.LEASE_SECONDS)
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del sock  # collected unclosed: the descriptor closes with the object
        gc.collect()
    assert not _explicit.BOUND
    assert child(tmp_path, port, "serve", PORTSAFE_AUTO_FAMILY="other") == "ok"

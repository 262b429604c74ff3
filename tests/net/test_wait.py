"""wait_for_port(): ready as soon as the server is, informative when it never is."""

from __future__ import annotations

import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest

import portsafe
from portsafe import PortNotReadyError
from portsafe._net.handoff import listen
from portsafe._net.wait import wait_for_port

if TYPE_CHECKING:
    from collections.abc import Iterator

needs_proc_net = pytest.mark.skipif(
    not os.path.exists("/proc/net/tcp"), reason="passive mode reads Linux's /proc/net/tcp"
)

# A server that binds the port it is given only after a delay, then serves until killed.
LATE_SERVER = """
import socket, sys, time
time.sleep(float(sys.argv[2]))
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.close()
"""


def _closed_port() -> int:
    """A port nothing listens on right now (bound, then closed)."""
    with listen() as sock:
        port: int = sock.getsockname()[1]
    return port


class _LateListener:
    """Binds ``port`` in a thread after ``delay`` seconds; closes on exit."""

    def __init__(self, port: int, delay: float) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self._timer = threading.Timer(delay, self._bind)

    def _bind(self) -> None:
        self.sock = listen(port=self.port)

    def __enter__(self) -> _LateListener:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._timer.join()
        if self.sock is not None:
            self.sock.close()


@pytest.fixture
def reservation() -> Iterator[portsafe.Reservation]:
    with portsafe.reserve_port() as r:
        yield r


class TestReady:
    def test_already_listening(self) -> None:
        """Returns at once for a socket that already listens."""
        with listen() as sock:
            wait_for_port(sock.getsockname()[1], timeout=10)

    def test_server_thread_starts_late(self, reservation: portsafe.Reservation) -> None:
        """Returns once a listener appears after a delay."""
        with _LateListener(reservation.port, 0.2):
            wait_for_port(reservation, timeout=30)

    def test_server_process_starts_late(self, reservation: portsafe.Reservation) -> None:
        """A real child that binds its --port after a delay: the reserve-and-wait pattern."""
        proc = subprocess.Popen(
            [sys.executable, "-c", LATE_SERVER, str(reservation.port), "0.3"],
            stdout=subprocess.PIPE,
        )
        try:
            wait_for_port(reservation.port, timeout=30, process=proc)
            with socket.create_connection(reservation.address, timeout=10):
                pass
        finally:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()

    @needs_proc_net
    def test_passive_sees_late_listener(self, reservation: portsafe.Reservation) -> None:
        """Passive mode finds the listener in the OS table."""
        with _LateListener(reservation.port, 0.2):
            wait_for_port(reservation.port, timeout=30, passive=True)

    @needs_proc_net
    def test_passive_makes_no_connection(self) -> None:
        """Passive mode leaves nothing in the server's backlog; active mode does."""
        with listen() as sock:
            sock.setblocking(False)
            port = sock.getsockname()[1]
            wait_for_port(port, timeout=10, passive=True)
            with pytest.raises(BlockingIOError):
                sock.accept()
            wait_for_port(port, timeout=10)
            sock.setblocking(True)
            sock.settimeout(10)
            conn, _ = sock.accept()  # the probe connection
            conn.close()

    @needs_proc_net
    def test_passive_counts_wildcard_listener(self) -> None:
        """A listener on 0.0.0.0 serves 127.0.0.1, so passive mode accepts it."""
        with listen("0.0.0.0") as sock:
            wait_for_port(sock.getsockname()[1], "127.0.0.1", timeout=10, passive=True)


class TestNotReady:
    def test_timeout_says_what_it_saw(self) -> None:
        """Nothing ever listens: PortNotReadyError, a TimeoutError, saying 'refused'."""
        port = _closed_port()
        with pytest.raises(PortNotReadyError) as info:
            wait_for_port(port, timeout=0.3)
        exc = info.value
        assert isinstance(exc, TimeoutError)
        assert isinstance(exc, portsafe.PortsafeError)
        assert exc.port == port
        assert exc.host == "127.0.0.1"
        assert exc.seen.get("connection refused", 0) >= 1
        assert "connection refused" in str(exc)
        assert "0.3 s" in str(exc)
        assert exc.returncode is None

    def test_zero_timeout_checks_once(self) -> None:
        """timeout=0 makes exactly one attempt."""
        with pytest.raises(PortNotReadyError) as info:
            wait_for_port(_closed_port(), timeout=0)
        assert sum(info.value.seen.values()) == 1

    @needs_proc_net
    def test_passive_timeout(self) -> None:
        """Passive mode's timeout says the port was not in the listening table."""
        with pytest.raises(PortNotReadyError, match="listening table"):
            wait_for_port(_closed_port(), timeout=0.2, passive=True)

    def test_child_exits_first(self) -> None:
        """A child that exits before listening fails the wait at once, with its code."""
        proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        try:
            with pytest.raises(PortNotReadyError) as info:
                wait_for_port(_closed_port(), timeout=600, process=proc)
        finally:
            proc.wait()
        assert info.value.returncode == 3
        assert f"process {proc.pid} exited with code 3" in str(info.value)

    @pytest.mark.skipif(os.name != "posix", reason="kill -9 is POSIX")
    def test_child_killed_first(self) -> None:
        """A child killed by SIGKILL is reported by signal name."""
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        try:
            os.kill(proc.pid, signal.SIGKILL)
            with pytest.raises(PortNotReadyError, match="killed by SIGKILL") as info:
                wait_for_port(_closed_port(), timeout=600, process=proc)
        finally:
            proc.wait()
        assert info.value.returncode == -signal.SIGKILL

    def test_pickles(self) -> None:
        """The error survives pickling (pytest-xdist sends errors between processes)."""
        with pytest.raises(PortNotReadyError) as info:
            wait_for_port(_closed_port(), timeout=0)
        copy = pickle.loads(pickle.dumps(info.value))
        assert (copy.port, copy.seen, str(copy)) == (
            info.value.port, info.value.seen, str(info.value)
        )


class TestArguments:
    def test_bad_types(self) -> None:
        """Wrong types raise TypeError naming what was given."""
        with pytest.raises(TypeError, match="'80'"):
            wait_for_port("80")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="timeout"):
            wait_for_port(80, timeout="1")  # type: ignore[arg-type]

    def test_bad_values(self) -> None:
        """Out-of-range values raise InvalidSettingError."""
        with pytest.raises(portsafe.InvalidSettingError, match="70000"):
            wait_for_port(70000)
        with pytest.raises(portsafe.InvalidSettingError, match="timeout"):
            wait_for_port(80, timeout=-1)

    def test_backs_off_instead_of_spinning(self) -> None:
        """Attempts grow apart: a handful in half a second, where a busy loop makes 1000s."""
        with pytest.raises(PortNotReadyError) as info:
            wait_for_port(_closed_port(), timeout=0.5)
        # Sleeps of 5 ms growing by 1.5x to 100 ms sum past 0.5 s after 11 of them, and
        # each sleep lasts at least that long, so at most 12 attempts fit, however fast
        # or slow the machine is.
        assert 1 <= sum(info.value.seen.values()) <= 12


class TestBadInput:
    @pytest.mark.timeout(30)
    @pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -float("inf"), -1e-9,
                                         10**400],
                             ids=["nan", "inf", "-inf", "-1e-9", "10**400"])
    def test_timeouts_that_could_never_end_are_refused(self, timeout: float) -> None:
        """nan (every comparison with it is false: a deadline never reached),
        infinities, negatives and ints too big for a float raise InvalidSettingError at
        once."""
        with pytest.raises(portsafe.InvalidSettingError, match="finite number of seconds"):
            wait_for_port(1, timeout=timeout)

    @pytest.mark.parametrize("timeout", ["1", None, b"1", [1], True])
    def test_timeout_of_the_wrong_type(self, timeout: object) -> None:
        """A timeout that is not an int or float (bools too) is a TypeError."""
        with pytest.raises(TypeError, match="timeout"):
            wait_for_port(1, timeout=timeout)  # type: ignore[arg-type]

    @pytest.mark.parametrize("host", ["a" * 300, "a\0b", "a..b"])
    def test_malformed_host_names(self, host: str) -> None:
        """Host names no resolver could take (too long, a NUL, an empty label) are an
        InvalidSettingError saying what to pass instead, not a UnicodeError."""
        with pytest.raises(portsafe.InvalidSettingError, match=r"127\.0\.0\.1"):
            wait_for_port(1, host, timeout=0)

    def test_process_without_poll(self) -> None:
        """process= must look like a Popen."""
        with pytest.raises(TypeError, match="process"):
            wait_for_port(1, timeout=0, process=42)  # type: ignore[arg-type]

    def test_huge_port_message(self) -> None:
        """A port beyond Python's 4300-digit str() limit still gets a readable error."""
        with pytest.raises(portsafe.InvalidSettingError, match="bits"):
            wait_for_port(10**5000, timeout=0)


class TestTracebacks:
    def test_failures_point_at_the_test(self, pytester: pytest.Pytester) -> None:
        """pytest shows the test's failing call and the message, not wait_for_port's
        insides."""
        pytester.makepyfile(test_inner=f"""
            import portsafe

            def test_nothing_listens():
                portsafe.wait_for_port({_closed_port()}, timeout=0.05)

            def test_bad_port():
                portsafe.wait_for_port("80", timeout=0)
        """)
        result = pytester.runpytest("-p", "no:cacheprovider", "--tb=short")
        result.assert_outcomes(failed=2)
        text = result.stdout.str()
        assert "nothing accepted connections" in text
        assert "port must be an int" in text
        # pytest ends each frame it shows with "file.py:line: ..."
        frames = re.findall(r"^(\S+\.py):\d+: ", text, re.MULTILINE)
        assert len(frames) == 2
        assert set(frames) == {"test_inner.py"}

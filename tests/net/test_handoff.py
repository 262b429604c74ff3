"""listen(), spawn() and listen_fds(): bind in the test, hand the socket to the server."""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import portsafe
from portsafe import AddressInUseError
from portsafe import _platform as backend
from portsafe._core.probe import ipv6_available
from portsafe._locking import names
from portsafe._net import bindreserved as _bindreserved
from portsafe._net.handoff import listen, listen_fds, spawn
from portsafe._net.who import who_holds

# What a child reports about what it inherited.
REPORT = textwrap.dedent(
    """
    import json, os, socket
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2)
    env = {k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}
    names = []
    for fd in range(3, 3 + int(env["LISTEN_FDS"] or 0)):
        s = socket.socket(fileno=os.dup(fd))
        names.append(list(s.getsockname()[:2]))
        s.close()
    print(json.dumps({"pid": os.getpid(), "fds": fds, "env": env, "names": names}))
    """
)

needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to list a child's fds"
)
needs_posix = pytest.mark.skipif(os.name != "posix", reason="fd inheritance is POSIX only")
#: Whether who_holds() can name processes here (the lock-file backend reads no /proc).
SEES_HOLDERS = os.path.exists("/proc/net/tcp") and backend.PROC
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="reads the ephemeral range from /proc")
needs_names = pytest.mark.skipif(not backend.NAMES,
                                 reason="reservations are abstract names only on Linux")
needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")


def _report(sockets: list[socket.socket], **kwargs: Any) -> dict[str, object]:
    proc = spawn([sys.executable, "-c", REPORT], sockets, stdout=subprocess.PIPE,
                 text=True, **kwargs)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    report: dict[str, object] = json.loads(out)
    report["popen_pid"] = proc.pid
    return report


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(port: int, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class TestListen:
    def test_default_is_loopback_and_listening(self) -> None:
        """listen() binds 127.0.0.1 on a kernel-chosen port and accepts connections."""
        with listen() as server:
            host, port = server.getsockname()
            assert host == "127.0.0.1"
            assert port > 0
            with socket.create_connection((host, port), timeout=10):
                conn, _ = server.accept()
                conn.close()

    @needs_ipv6
    def test_ipv6_from_host(self) -> None:
        """An IPv6 host gives an AF_INET6 socket."""
        with listen("::1") as server:
            assert server.family == socket.AF_INET6
            assert server.getsockname()[0] == "::1"

    @needs_ipv6
    def test_ipv6_from_family(self) -> None:
        """family=AF_INET6 with no host binds ::1."""
        with listen(family=socket.AF_INET6) as server:
            assert server.getsockname()[0] == "::1"

    @needs_ipv6
    @pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no dual-stack sockets")
    def test_dual_stack_accepts_both_families(self) -> None:
        """dual_stack=True accepts on 127.0.0.1 and ::1 with one socket."""
        with listen(dual_stack=True) as server:
            port = server.getsockname()[1]
            for address in (("127.0.0.1", port), ("::1", port)):
                with socket.create_connection(address, timeout=10):
                    conn, _ = server.accept()
                    conn.close()

    def test_dual_stack_needs_ipv6_host(self) -> None:
        """dual_stack with an IPv4 host is refused with advice."""
        with pytest.raises(portsafe.InvalidSettingError, match="IPv6 host"):
            listen("127.0.0.1", dual_stack=True)

    def test_reservation_port(self) -> None:
        """A held reservation is bound on its own port and host."""
        with portsafe.reserve_port() as reservation, listen(port=reservation) as server:
            assert server.getsockname() == reservation.address

    def test_released_reservation_refused(self) -> None:
        """Binding a released reservation is refused: someone else may hold it now."""
        reservation = portsafe.reserve_port()
        reservation.release()
        with pytest.raises(portsafe.InvalidSettingError, match="released"):
            listen(port=reservation)

    def test_port_types(self) -> None:
        """Wrong types raise TypeError naming the value; out-of-range raises ValueError."""
        with pytest.raises(TypeError, match="'80'"):
            listen(port="80")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="True"):
            listen(port=True)
        with pytest.raises(portsafe.InvalidSettingError, match="70000"):
            listen(port=70000)

    def test_address_in_use_names_holder(self) -> None:
        """A taken port raises AddressInUseError naming this process."""
        with listen() as held:
            port = held.getsockname()[1]
            with pytest.raises(AddressInUseError) as info:
                listen(port=port)
        assert isinstance(info.value, OSError)
        if SEES_HOLDERS:
            assert f"pid {os.getpid()}" in str(info.value)


@needs_posix
@needs_proc
class TestSpawn:
    def test_sockets_at_3_4_with_listen_env(self) -> None:
        """The child finds the sockets at 3, 4 with LISTEN_FDS/PID/FDNAMES, nothing else."""
        # Push the parent's copies above 9 to prove any fd number can be moved.
        filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
        try:
            with listen() as first, listen() as second:
                report = _report([first, second], names=["http", "admin"])
                expected = [list(first.getsockname()), list(second.getsockname())]
        finally:
            for fd in filler:
                os.close(fd)
        env = report["env"]
        assert isinstance(env, dict)
        assert env["LISTEN_FDS"] == "2"
        assert env["LISTEN_PID"] == str(report["pid"]) == str(report["popen_pid"])
        assert env["LISTEN_FDNAMES"] == "http:admin"
        assert report["names"] == expected
        # 3 and 4, plus the one fd listdir itself opens: no other fd leaked.
        fds = report["fds"]
        assert isinstance(fds, list)
        assert fds[:2] == [3, 4]
        assert len(fds) <= 3

    def test_default_names_and_single_socket(self) -> None:
        """A lone socket is accepted and named 'unknown', as sd_listen_fds_with_names says."""
        with listen() as sock:
            report = _report(sock)  # type: ignore[arg-type]
        env = report["env"]
        assert isinstance(env, dict)
        assert env["LISTEN_FDNAMES"] == "unknown"

    def test_fd_numbers_passed_as_ints(self) -> None:
        """Plain fd numbers work like sockets."""
        with listen() as sock:
            report = _report([sock.fileno()])  # type: ignore[list-item]
            assert report["names"] == [list(sock.getsockname())]

    def test_environment_untouched_by_wrapper(self) -> None:
        """The wrapper's Python start-up does not leak LC_CTYPE into the server."""
        env = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_CTYPE")}
        env["LANG"] = "C"  # a C locale: Python's start-up would set LC_CTYPE=C.UTF-8
        env["LISTEN_PID"] = "1"  # stale value from a parent: replaced
        with listen() as sock:
            # A non-Python server: a Python one would coerce LC_CTYPE itself.
            proc = spawn(["sh", "-c", "echo $$; env"], [sock], env=env,
                         stdout=subprocess.PIPE, text=True)
            out, _ = proc.communicate(timeout=60)
        pid, *lines = out.splitlines()
        assert not [line for line in lines if line.startswith("LC_CTYPE=")]
        assert f"LISTEN_PID={pid}" in lines
        assert pid == str(proc.pid)

    def test_signals_restored_for_non_python_server(self) -> None:
        """SIGPIPE is not left ignored by the wrapper (Python ignores it at start-up)."""
        with listen() as sock:
            proc = spawn(["sh", "-c", "grep SigIgn /proc/$$/status"], [sock],
                         stdout=subprocess.PIPE, text=True)
            out, _ = proc.communicate(timeout=60)
        ignored = int(out.split()[1], 16)
        assert not ignored & (1 << (signal.SIGPIPE - 1))

    def test_fd_placeholder(self) -> None:
        """{fd} and {fdN} in args become the child's fd numbers."""
        with listen() as first, listen() as second:
            proc = spawn(["echo", "--fd={fd}", "{fd0}", "{fd1}"], [first, second],
                         stdout=subprocess.PIPE, text=True)
            out, _ = proc.communicate(timeout=60)
        assert out.split() == ["--fd=3", "3", "4"]

    def test_executable_option(self) -> None:
        """executable= runs that program with args as its argv, like Popen."""
        with listen() as sock:
            proc = spawn(["any-name", "-c", "import sys; print(sys.argv[0])"], [sock],
                         executable=sys.executable, stdout=subprocess.PIPE, text=True)
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert out.strip() == "-c"

    def test_missing_program_raises_like_popen(self) -> None:
        """A program that does not exist raises FileNotFoundError naming it."""
        with listen() as sock, pytest.raises(FileNotFoundError, match="no-such-program"):
            spawn(["no-such-program-portsafe"], [sock], stdout=subprocess.PIPE)

    def test_parent_may_close_its_copy(self) -> None:
        """After spawn the parent closes its socket; the child still serves it."""
        code = textwrap.dedent(
            """
            import portsafe
            (server,) = portsafe.listen_fds()
            conn, _ = server.accept()
            conn.sendall(b"hello")
            conn.close()
            """
        )
        sock = listen()
        address = sock.getsockname()
        proc = spawn([sys.executable, "-c", code], [sock])
        sock.close()
        try:
            with socket.create_connection(address, timeout=60) as client:
                assert client.recv(5) == b"hello"
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == 0

    def test_refused_options(self) -> None:
        """shell=True, close_fds=False and clashing pass_fds are refused with advice."""
        with listen() as sock:
            with pytest.raises(portsafe.InvalidSettingError, match="shell"):
                spawn("true", [sock], shell=True)
            with pytest.raises(portsafe.InvalidSettingError, match="close_fds"):
                spawn(["true"], [sock], close_fds=False)
            with pytest.raises(portsafe.InvalidSettingError, match=r"pass_fds \[3\]"):
                spawn(["true"], [sock], pass_fds=[3])
            with pytest.raises(portsafe.InvalidSettingError, match="at least one"):
                spawn(["true"], [])

    def test_bad_names(self) -> None:
        """Names must be one valid LISTEN_FDNAMES entry per socket."""
        with listen() as sock:
            with pytest.raises(portsafe.InvalidSettingError, match="one name per socket"):
                spawn(["true"], [sock], names=["a", "b"])
            with pytest.raises(portsafe.InvalidSettingError, match="':'"):
                spawn(["true"], [sock], names=["a:b"])
            with pytest.raises(TypeError, match="str"):
                spawn(["true"], [sock], names="http")

    def test_bad_sockets(self) -> None:
        """Something that is not a socket raises TypeError; a closed one is refused."""
        with pytest.raises(TypeError, match="'x'"):
            spawn(["true"], ["x"])  # type: ignore[list-item]
        sock = listen()
        sock.close()
        with pytest.raises(portsafe.InvalidSettingError, match="closed"):
            spawn(["true"], [sock])


@needs_posix
class TestListenFds:
    def test_ignores_other_pid(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Variables meant for another process are ignored (and unset)."""
        monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
        monkeypatch.setenv("LISTEN_FDS", "1")
        assert listen_fds() == []
        assert "LISTEN_FDS" not in os.environ

    def test_nothing_passed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the variables there are no sockets."""
        monkeypatch.delenv("LISTEN_PID", raising=False)
        monkeypatch.delenv("LISTEN_FDS", raising=False)
        assert listen_fds() == []

    def test_garbage_is_reported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Non-numeric values raise InvalidSettingError naming them."""
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        monkeypatch.setenv("LISTEN_FDS", "two")
        with pytest.raises(portsafe.InvalidSettingError, match="'two'"):
            listen_fds(unset_environment=False)
        assert os.environ["LISTEN_FDS"] == "two"

    def test_child_reads_its_sockets(self) -> None:
        """A spawned Python child gets socket objects, close-on-exec, env unset."""
        code = textwrap.dedent(
            """
            import os, portsafe
            socks = portsafe.listen_fds()
            print(len(socks), socks[0].getsockname()[1], os.get_inheritable(3),
                  "LISTEN_FDS" in os.environ)
            """
        )
        with listen() as sock:
            proc = spawn([sys.executable, "-c", code], [sock], stdout=subprocess.PIPE,
                         text=True)
            out, _ = proc.communicate(timeout=60)
            assert out.split() == ["1", str(sock.getsockname()[1]), "False", "False"]


@needs_posix
@pytest.mark.timeout(120)
class TestRealServers:
    def test_gunicorn_serves_inherited_socket(self, tmp_path: os.PathLike[str]) -> None:
        """gunicorn reads LISTEN_FDS and answers on the socket the test bound."""
        pytest.importorskip("gunicorn")
        app = os.path.join(tmp_path, "portsafe_wsgi_app.py")
        with open(app, "w", encoding="utf-8") as f:
            f.write(
                "def app(environ, start_response):\n"
                "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
                "    return [b'hello from gunicorn']\n"
            )
        with listen() as sock:
            port = sock.getsockname()[1]
            proc = spawn(
                [sys.executable, "-m", "gunicorn", "--workers", "1", "--chdir",
                 os.fspath(tmp_path), "portsafe_wsgi_app:app"],
                [sock], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            try:
                # No waiting: the request sits in the backlog until gunicorn accepts it.
                status, body = _get(port)
                assert (status, body) == (200, b"hello from gunicorn")
                if SEES_HOLDERS:
                    pids = {h.pid for h in who_holds(port) if h.state == "LISTEN"}
                    assert {os.getpid(), proc.pid} <= pids
            finally:
                _stop(proc)
                assert proc.stderr is not None
                log = proc.stderr.read().decode(errors="replace")
                proc.stderr.close()
        assert "Listening at" in log or "Booting worker" in log, log

    def test_uvicorn_with_fd_argument(self, tmp_path: os.PathLike[str]) -> None:
        """uvicorn --fd {fd} serves the inherited socket."""
        pytest.importorskip("uvicorn")
        app = os.path.join(tmp_path, "portsafe_asgi_app.py")
        with open(app, "w", encoding="utf-8") as f:
            f.write(
                "async def app(scope, receive, send):\n"
                "    assert scope['type'] == 'http'\n"
                "    await send({'type': 'http.response.start', 'status': 200,\n"
                "                'headers': [(b'content-type', b'text/plain')]})\n"
                "    await send({'type': 'http.response.body', 'body': b'hello from uvicorn'})\n"
            )
        with listen() as sock:
            port = sock.getsockname()[1]
            proc = spawn(
                [sys.executable, "-m", "uvicorn", "--fd", "{fd}", "--app-dir",
                 os.fspath(tmp_path), "--lifespan", "off", "portsafe_asgi_app:app"],
                [sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                assert _get(port) == (200, b"hello from uvicorn")
            finally:
                _stop(proc)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()


class TestListenBadInput:
    @pytest.mark.parametrize("host", ["8.8.8.8", "192.0.2.1", "0.0.0.1"])
    def test_address_of_another_machine(self, host: str) -> None:
        """Binding an address this machine does not have (no traffic is sent) raises
        AddressNotAvailableError naming local addresses, and leaves no socket open."""
        before = _open_fds()
        with pytest.raises(portsafe.AddressNotAvailableError, match=r"127\.0\.0\.1") as info:
            listen(host)
        assert info.value.errno == errno.EADDRNOTAVAIL
        assert _open_fds() <= before

    @pytest.mark.parametrize(("host", "family"), [("::1", socket.AF_INET),
                                                  ("127.0.0.1", socket.AF_INET6),
                                                  ("::", socket.AF_INET)])
    def test_host_of_the_other_family(self, host: str, family: int) -> None:
        """A numeric host of the other family is AddressNotAvailableError, not gaierror."""
        with pytest.raises(portsafe.AddressNotAvailableError, match="for AF_INET"):
            listen(host, family=family)  # type: ignore[arg-type]

    @pytest.mark.parametrize("host", ["a" * 300, "a\0b", "a..b"])
    def test_malformed_host(self, host: str) -> None:
        """Malformed host names raise InvalidSettingError (not UnicodeError)."""
        before = _open_fds()
        with pytest.raises(portsafe.InvalidSettingError, match="host"):
            listen(host)
        assert _open_fds() <= before

    @pytest.mark.parametrize("backlog", [2**40, -1, 10**5000], ids=["2**40", "-1", "10**5000"])
    def test_backlog_out_of_range(self, backlog: int) -> None:
        """A backlog outside a C int is InvalidSettingError, not OverflowError."""
        before = _open_fds()
        with pytest.raises(portsafe.InvalidSettingError, match="backlog"):
            listen(backlog=backlog)
        assert _open_fds() <= before

    @pytest.mark.parametrize(("kwargs", "error"), [
        ({"backlog": 1.5}, TypeError), ({"backlog": True}, TypeError),
        ({"family": 2.0}, TypeError), ({"family": "AF_INET"}, TypeError),
        ({"family": 999}, portsafe.InvalidSettingError),
        ({"family": socket.AF_UNIX}, portsafe.InvalidSettingError),
        ({"host": b"127.0.0.1"}, TypeError), ({"port": 10**5000}, portsafe.InvalidSettingError),
    ], ids=lambda value: repr(value)[:30] if not isinstance(value, dict) or "port" not in value
        else "port=10**5000")
    def test_wrong_types_and_values(self, kwargs: dict[str, object], error: type) -> None:
        """Each bad argument gets its documented error."""
        with pytest.raises(error):
            listen(**kwargs)  # type: ignore[arg-type]

    def test_privileged_port_says_so(self) -> None:
        """A port below 1024 without the privilege: a PermissionError that says why."""
        if os.getuid() == 0:
            code = textwrap.dedent("""
                import os, portsafe
                listen = portsafe.listen  # import everything while still root
                listen().close()
                os.setgid(65534); os.setuid(65534)
                try:
                    listen(port=1)
                except PermissionError as exc:
                    print(exc)
            """)
            done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  text=True, timeout=60, check=False)
            if done.returncode != 0:
                pytest.skip(f"cannot run as uid 65534 here: {done.stderr[-200:]}")
            message = done.stdout
        else:
            try:
                listen(port=1).close()
            except PermissionError as exc:
                message = str(exc)
            else:
                pytest.skip("this user may bind ports below 1024")
        if not message:
            pytest.skip("unprivileged users may bind port 1 here (ip_unprivileged_port_start)")
        assert "below 1024" in message


# -- listen()'s own port: reserved by portsafe, outside the kernel's ephemeral range -------

RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def _kernel_range() -> tuple[int, int]:
    """The ephemeral range as the kernel states it now, read without portsafe."""
    with open(RANGE_FILE, encoding="ascii") as f:
        low, high = (int(field) for field in f.read().split())
    return low, high


def _names_held() -> set[int]:
    """The ports whose reservation names someone holds, as /proc/net/unix lists them."""
    with open("/proc/net/unix", encoding="ascii", errors="replace") as f:
        paths = [fields[7] for fields in map(str.split, f.readlines()[1:]) if len(fields) > 7]
    return {port for port in map(names.port_of, paths) if port is not None}


def _echo(server: socket.socket) -> bytes:
    """Connect to *server*, have it send b"ping" on the accepted connection; what came."""
    with socket.create_connection(server.getsockname()[:2], timeout=10) as client:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"ping")
        return client.recv(4)


@pytest.fixture
def default_candidates(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """portsafe's default candidates (no PORTSAFE_RANGE); the kernel's range, read now."""
    monkeypatch.delenv("PORTSAFE_RANGE", raising=False)
    monkeypatch.delenv("PORTSAFE_PORTSERVER", raising=False)
    monkeypatch.delenv("PORTSERVER_ADDRESS", raising=False)
    low, high = _kernel_range()
    if 64512 - (high - low + 1) < 2000:
        pytest.skip(f"the ephemeral range {low}-{high} leaves portsafe too few ports "
                    "outside it, so it picks inside it too")
    return low, high


@needs_linux
class TestListenPort:
    def test_default_port_is_outside_the_ephemeral_range(
            self, default_candidates: tuple[int, int]) -> None:
        """Each listen() port is outside the range the kernel picks port 0 from, and
        a connection to it is accepted."""
        low, high = default_candidates
        with listen() as a, listen() as b, listen() as c:
            ports = [sock.getsockname()[1] for sock in (a, b, c)]
            assert [_echo(sock) for sock in (a, b, c)] == [b"ping"] * 3
        assert not [port for port in ports if low <= port <= high], (ports, low, high)
        assert len(set(ports)) == 3

    def test_explicit_zero_is_the_kernels_choice(self) -> None:
        """port=0 still asks the kernel, which picks from its ephemeral range."""
        low, high = _kernel_range()
        with listen(port=0) as server:
            assert low <= server.getsockname()[1] <= high
            assert _echo(server) == b"ping"

    @needs_ipv6
    @pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no dual-stack sockets")
    def test_dual_stack_reserves_for_both_families(
            self, default_candidates: tuple[int, int],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """A dual-stack socket's port is reserved free for IPv4 and IPv6 on the wildcard
        address, and the socket accepts both."""
        from portsafe._core import reserve as _reserve

        made: list[portsafe.Reservation] = []
        real = _reserve.reserve_port

        def spy(**kwargs: object) -> portsafe.Reservation:
            made.append(real(**kwargs))  # type: ignore[arg-type]
            return made[-1]

        monkeypatch.setattr(_reserve, "reserve_port", spy)
        with listen(dual_stack=True) as server:
            port = server.getsockname()[1]
            for address in (("127.0.0.1", port), ("::1", port)):
                with socket.create_connection(address, timeout=10):
                    server.accept()[0].close()
        assert [(r.port, r.host, r.family) for r in made] == [(port, "", socket.AF_UNSPEC)]
        assert not default_candidates[0] <= port <= default_candidates[1]

    @needs_names
    def test_reservation_is_held_until_bound_then_released(
            self, default_candidates: tuple[int, int]) -> None:
        """While the socket holds the port, its reservation name is no longer bound (the
        kernel's list of names says so); a held reservation does show there."""
        with portsafe.reserve_port() as control:
            assert control.port in _names_held()
        with listen() as server:
            port = server.getsockname()[1]
            assert port not in _names_held()
            assert _echo(server) == b"ping"

    @needs_names
    def test_a_reserved_port_taken_by_an_outsider_is_skipped(
            self, default_candidates: tuple[int, int],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """A program outside portsafe binds the reserved port before listen() does: the
        next reservation is bound, and both are released."""
        real = _bindreserved.reserve_for
        racers: list[socket.socket] = []

        def raced(address: str, family: int, dual_stack: bool) -> portsafe.Reservation:
            reservation = real(address, family, dual_stack)
            if not racers:
                racer = socket.socket()  # binds without SO_REUSEADDR and listens
                racer.bind(("127.0.0.1", reservation.port))
                racer.listen()
                racers.append(racer)
            return reservation

        monkeypatch.setattr(_bindreserved, "reserve_for", raced)
        try:
            with listen() as server:
                port = server.getsockname()[1]
                taken = racers[0].getsockname()[1]
                assert port != taken
                assert _echo(server) == b"ping"
                assert not {port, taken} & _names_held()
        finally:
            for racer in racers:
                racer.close()

    @needs_names
    def test_every_reserved_port_taken_is_reported(
            self, default_candidates: tuple[int, int],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """When outsiders take every port reserved for it, listen() stops after a few
        and says so: which ports, who took them, what to do; never "call listen()"."""
        real = _bindreserved.reserve_for
        racers: list[socket.socket] = []

        def raced(address: str, family: int, dual_stack: bool) -> portsafe.Reservation:
            reservation = real(address, family, dual_stack)
            racer = socket.socket()
            racer.bind(("127.0.0.1", reservation.port))
            racer.listen()
            racers.append(racer)
            return reservation

        monkeypatch.setattr(_bindreserved, "reserve_for", raced)
        before = _open_fds()
        try:
            with pytest.raises(AddressInUseError) as info:
                listen()
            ports = [racer.getsockname()[1] for racer in racers]
        finally:
            for racer in racers:
                racer.close()
        message = str(info.value)
        assert len(ports) == _bindreserved.ATTEMPTS
        assert info.value.errno == errno.EADDRINUSE
        assert all(str(port) in message for port in ports), message
        assert f"pid {os.getpid()}" in message
        assert "listen(" not in message
        assert "reserve_port()" in message
        assert not set(ports) & _names_held()
        assert _open_fds() <= before

    @pytest.mark.parametrize("error", [
        portsafe.NoFreePortError("no free port, for the test"),
        portsafe.LockDirError(errno.EACCES, "unusable lock directory, for the test"),
    ], ids=["NoFreePortError", "LockDirError"])
    def test_kernel_picks_when_portsafe_cannot_reserve(
            self, error: OSError, monkeypatch: pytest.MonkeyPatch) -> None:
        """No free candidate, or an unusable lock directory: the kernel picks, as
        before listen() took portsafe's ports."""

        def refuse(address: str, family: int, dual_stack: bool) -> portsafe.Reservation:
            raise error

        monkeypatch.setattr(_bindreserved, "reserve_for", refuse)
        low, high = _kernel_range()
        with listen() as server:
            assert low <= server.getsockname()[1] <= high
            assert _echo(server) == b"ping"


# Run by the tests below, in a network namespace of its own: narrows the ephemeral range
# to a few ports and fills it (argv[1]: "bound", each port bound, or "time_wait", each the
# local end of a connection in TIME_WAIT), then reports on listen() there. Exit 77: this
# host cannot do that (no way to bring up lo, the range cannot be set).
FULL_RANGE = textwrap.dedent(r"""
    import errno, fcntl, json, os, shutil, socket, struct, subprocess, sys
    RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
    if shutil.which("ip") is not None:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # (/sys is the host's)
        flags = fcntl.ioctl(sock, 0x8913, struct.pack("16sh", b"lo", 0))  # SIOCGIFFLAGS
    if not struct.unpack("16sh", flags)[1] & 1:  # IFF_UP
        sys.exit(77)
    try:
        with open(RANGE, "w") as f:
            f.write("40000 40007")
    except OSError:
        sys.exit(77)
    with open(RANGE) as f:
        low, high = map(int, f.read().split())
    report = {"low": low, "high": high}
    import portsafe

    with portsafe.listen(port=0) as sock:  # before the range is full: the kernel's pick
        report["zero_port"] = sock.getsockname()[1]

    keep = []
    if sys.argv[1] == "bound":
        for port in range(low, high + 1):
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            keep.append(sock)
    else:
        server = socket.socket()
        server.bind(("127.0.0.1", 20000))
        server.listen()
        for _ in range(high - low + 3):
            client = socket.socket()
            try:
                client.connect(("127.0.0.1", 20000))
            except OSError:
                client.close()
                break
            conn, _ = server.accept()
            client.close()  # the side that closes first keeps the TIME_WAIT
            conn.close()
        server.close()

    probe = socket.socket()  # what listen(port=0) binds, asked without portsafe
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", 0))
        report["kernel"] = probe.getsockname()[1]
    except OSError as exc:
        report["kernel"] = exc.errno
    probe.close()

    with portsafe.listen() as server:
        report["port"] = server.getsockname()[1]
        client = socket.socket()  # a source port of our own: the kernel has none left
        source = 20001
        while True:
            try:
                client.bind(("127.0.0.1", source))
                break
            except OSError:
                source += 1
        client.connect(server.getsockname())
        conn, _ = server.accept()
        conn.sendall(b"ping")
        report["echo"] = client.recv(4).decode()
        conn.close()
        client.close()

    try:
        portsafe.listen(port=0).close()
    except OSError as exc:
        report["error"] = [type(exc).__name__, exc.errno, str(exc)]
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def private_netns() -> list[str]:
    """The command prefix that runs a program in a network namespace of its own."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        pytest.skip("needs unshare (Linux network namespaces)")
    done = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        pytest.skip(f"unshare --net is not permitted here: {done.stderr.strip()[:200]}")
    return ["unshare", "--net"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fill", ["bound", "time_wait"])
def test_listen_with_a_full_ephemeral_range(private_netns: list[str], fill: str) -> None:
    """In a namespace whose ephemeral range is full, listen() binds a port outside it and
    accepts; listen(port=0) fails, naming the full range, and does not advise listen()."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("PORTSAFE") and name != "PORTSERVER_ADDRESS"}
    done = subprocess.run([*private_netns, sys.executable, "-c", FULL_RANGE, fill],
                          capture_output=True, text=True, timeout=100, env=env, check=False)
    if done.returncode == 77:
        pytest.skip("cannot bring up lo or set the ephemeral range in a network namespace")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    low, high = report["low"], report["high"]
    assert (low, high) == (40000, 40007)
    assert low <= report["zero_port"] <= high
    if report["kernel"] != errno.EADDRINUSE:
        assert fill == "time_wait", report
        pytest.skip(f"this kernel still binds port 0 with its range in TIME_WAIT: {report}")
    assert not low <= report["port"] <= high
    assert report["echo"] == "ping"
    kind, code, message = report["error"]
    assert (kind, code) == ("AddressInUseError", errno.EADDRINUSE)
    assert "40000-40007" in message, message
    assert RANGE_FILE in message, message
    assert "listen(" not in message, message
    assert "did not say by whom" not in message, message

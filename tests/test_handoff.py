"""listen(), spawn() and listen_fds(): bind in the test, hand the socket to the server."""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import portsafe
from portsafe._handoff import listen, listen_fds, spawn
from portsafe._probe import ipv6_available
from portsafe._who import AddressInUseError, who_holds

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




needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")


def _report(sockets: list[socket.socket], **kwargs: object) -> dict[str, object]:
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
        if os.path.exists("/proc/net/tcp"):
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
                if os.path.exists("/proc/net/tcp"):
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

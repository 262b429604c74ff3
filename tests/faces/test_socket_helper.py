"""portsafe.socket_helper: CPython's socket_helper API, with reserved ports.

Real sockets on loopback only; transient_internet is exercised by raising the errors
inside it, never by touching the network.
"""

from __future__ import annotations

import doctest
import errno
import inspect
import io
import os
import socket
import stat
import subprocess
import sys
import textwrap
import types
import unittest
import urllib.error

import pytest

import portsafe
from portsafe import socket_helper

IPV6 = socket_helper._is_ipv6_enabled()
needs_ipv6 = pytest.mark.skipif(not IPV6, reason="IPv6 loopback is not available here")
needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX")


def cpython_socket_helper() -> types.ModuleType:
    try:
        from test.support import socket_helper as stock
    except ImportError:
        pytest.skip("this interpreter has no test.support.socket_helper installed")
    return stock


def held_elsewhere(port: int) -> bool:
    """Ask another process to reserve exactly `port`: True if portsafe refuses."""
    code = textwrap.dedent(f"""
        import portsafe
        try:
            portsafe.reserve_port(ports=[{port}]).release()
        except portsafe.NoFreePortError:
            print("held")
        else:
            print("free")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60).stdout.strip()
    return out == "held"


@pytest.fixture
def fresh_held(monkeypatch):
    """An empty find_unused_port() hold list for the test, released afterwards."""
    held: list = []
    monkeypatch.setattr(socket_helper, "_held", held)
    yield held
    for _, reservation in held:
        reservation.release()


class TestNamesAndConstants:
    def test_constants(self):
        """HOST, HOSTv4, HOSTv6 and has_gethostname have CPython's values."""
        assert socket_helper.HOST == "localhost"
        assert socket_helper.HOSTv4 == "127.0.0.1"
        assert socket_helper.HOSTv6 == "::1"
        assert socket_helper.has_gethostname is True

    def test_ipv6_enabled_is_a_bool(self):
        """IPV6_ENABLED reads as a bool matching a real bind on ::1."""
        assert socket_helper.IPV6_ENABLED is IPV6

    def test_every_cpython_public_name_exists_with_same_signature(self):
        """Every public name of the installed CPython socket_helper exists, same signature."""
        stock = cpython_socket_helper()
        for name, value in vars(stock).items():
            if name.startswith("_") or isinstance(value, types.ModuleType):
                continue
            if name in {"contextlib", "errno", "socket", "sys", "subprocess", "tempfile"}:
                continue
            assert hasattr(socket_helper, name), name
            ours = getattr(socket_helper, name)
            if inspect.isfunction(value):
                theirs_sig = inspect.signature(value)
                ours_sig = inspect.signature(ours)
                assert list(theirs_sig.parameters) == list(ours_sig.parameters), name
                for p in theirs_sig.parameters.values():
                    q = ours_sig.parameters[p.name]
                    assert p.kind == q.kind, name
                    if p.default is not inspect.Parameter.empty and name != "transient_internet":
                        assert p.default == q.default, (name, p.name)
            elif not callable(value):
                assert ours == value, name

    def test_import_does_no_work(self):
        """Importing opens no socket, runs no probe and loads no reservation machinery."""
        code = textwrap.dedent("""
            import socket, sys
            made = []
            class Spy(socket.socket):
                def __init__(self, *a, **k):
                    made.append(a)
                    super().__init__(*a, **k)
            socket.socket = Spy
            import portsafe.socket_helper as m
            print(len(made), "IPV6_ENABLED" in vars(m), "portsafe._core.reserve" in sys.modules)
        """)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True, timeout=60).stdout.split()
        assert out == ["0", "False", "False"]

    def test_docstring_examples_run(self):
        """The Example: blocks in the module's docstrings pass as doctests."""
        result = doctest.testmod(socket_helper, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0
        assert result.attempted > 10


class TestExceptions:
    def test_testfailed_is_plain_exception(self):
        """TestFailed is an Exception but not an AssertionError, as in CPython."""
        assert issubclass(socket_helper.TestFailed, Exception)
        assert not issubclass(socket_helper.TestFailed, AssertionError)

    def test_resource_denied_is_skiptest(self):
        """ResourceDenied is a unittest.SkipTest, so every runner counts a skip."""
        assert issubclass(socket_helper.ResourceDenied, unittest.SkipTest)

    def test_adopts_cpython_classes_when_test_support_is_loaded(self):
        """With test.support already imported, the classes are CPython's own."""
        cpython_socket_helper()
        code = textwrap.dedent("""
            from test import support
            from portsafe import socket_helper as m
            print(m.TestFailed is support.TestFailed,
                  m.ResourceDenied is support.ResourceDenied)
        """)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True, timeout=60).stdout.split()
        assert out == ["True", "True"]


class TestFindUnusedPort:
    def test_returns_reserved_port_outside_ephemeral_range(self, fresh_held):
        """The port is an int, outside the ephemeral range, and held against others."""
        port = socket_helper.find_unused_port()
        assert isinstance(port, int)
        low, high = portsafe.ephemeral_port_range()
        assert not low <= port <= high
        assert held_elsewhere(port)

    def test_caller_can_bind_without_reuseaddr(self, fresh_held):
        """The caller binds the port with a plain socket (no SO_REUSEADDR)."""
        port = socket_helper.find_unused_port()
        with socket.socket() as s:
            s.bind((socket_helper.HOSTv4, port))
            s.listen()

    def test_caller_can_bind_with_reuseaddr(self, fresh_held):
        """The caller binds the port with SO_REUSEADDR, as servers usually do."""
        port = socket_helper.find_unused_port()
        with socket.create_server((socket_helper.HOST, port)) as s:
            assert s.getsockname()[1] == port

    def test_udp(self, fresh_held):
        """SOCK_DGRAM gives a port a UDP socket binds."""
        port = socket_helper.find_unused_port(socket.AF_INET, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((socket_helper.HOSTv4, port))

    @needs_ipv6
    def test_ipv6(self, fresh_held):
        """AF_INET6 gives a port free on ::1."""
        port = socket_helper.find_unused_port(socket.AF_INET6)
        with socket.socket(socket.AF_INET6) as s:
            s.bind((socket_helper.HOSTv6, port))

    def test_distinct_ports_while_held(self, fresh_held):
        """Ports handed out while held are all different."""
        ports = [socket_helper.find_unused_port() for _ in range(50)]
        assert len(set(ports)) == 50

    def test_expired_reservations_are_released_lazily(self, fresh_held, monkeypatch):
        """After the hold period, the next call releases the older reservations."""
        monkeypatch.setattr(socket_helper, "FIND_UNUSED_PORT_HOLD", 0.0)
        socket_helper.find_unused_port()
        first = fresh_held[0][1]
        socket_helper.find_unused_port()
        assert first.released
        assert len(fresh_held) == 1

    def test_kept_within_hold_period(self, fresh_held):
        """Within the hold period the reservation stays held."""
        socket_helper.find_unused_port()
        socket_helper.find_unused_port()
        assert len(fresh_held) == 2
        assert not fresh_held[0][1].released

    def test_thousands_of_calls_keep_working(self, fresh_held, monkeypatch):
        """Thousands of calls in one process neither fail nor leak descriptors: at most
        the lease budget (a quarter of the descriptor limit) stays held."""
        from portsafe._locking import nametable

        monkeypatch.setattr(nametable, "lease_budget", lambda: 100)
        fds_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
        ports = [socket_helper.find_unused_port() for _ in range(2000)]
        assert len(set(ports[-100:])) == 100
        assert len(fresh_held) == 100
        if fds_before:
            assert len(os.listdir("/proc/self/fd")) <= fds_before + 100 + 70

    def test_exhaustion_gives_back_oldest_half(self, fresh_held, monkeypatch):
        """When no candidate is left, the older half is released and the call succeeds."""
        from portsafe._core import reserve as _reserve

        real = _reserve.reserve_port
        calls = []

        def flaky(**kwargs):
            calls.append(kwargs)
            if len(calls) == 5:
                raise portsafe.NoFreePortError("none left", attempts=1, candidates=1)
            return real(**kwargs)

        monkeypatch.setattr(_reserve, "reserve_port", flaky)
        for _ in range(4):
            socket_helper.find_unused_port()
        oldest = [r for _, r in fresh_held[:2]]
        socket_helper.find_unused_port()
        assert all(r.released for r in oldest)
        assert len(fresh_held) == 3

    @pytest.mark.parametrize(("family", "socktype", "exc"), [
        (socket.AF_UNIX, socket.SOCK_STREAM, ValueError),
        (12345, socket.SOCK_STREAM, ValueError),
        (socket.AF_INET, socket.SOCK_RAW, ValueError),
        ("AF_INET", socket.SOCK_STREAM, TypeError),
        (socket.AF_INET, None, TypeError),
        (True, socket.SOCK_STREAM, TypeError),
    ])
    def test_bad_family_or_socktype(self, fresh_held, family, socktype, exc):
        """Unknown family/socktype: TypeError or ValueError naming it, nothing reserved."""
        with pytest.raises(exc, match=r"family|socktype"):
            socket_helper.find_unused_port(family, socktype)
        assert fresh_held == []

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
    def test_fork_child_does_not_release_parent_reservations(self, fresh_held, monkeypatch):
        """A fork child's later call never releases what the parent holds."""
        port = socket_helper.find_unused_port()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                socket_helper.FIND_UNUSED_PORT_HOLD = 0.0
                fresh_held[0] = (0.0, fresh_held[0][1])
                socket_helper.find_unused_port()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert held_elsewhere(port)


class TestBindPort:
    def test_binds_and_returns_port(self):
        """bind_port binds to HOST and returns the port the socket has."""
        with socket.socket() as s:
            port = socket_helper.bind_port(s)
            assert s.getsockname() == ("127.0.0.1", port)

    def test_host_argument(self):
        """host= chooses the address."""
        with socket.socket() as s:
            port = socket_helper.bind_port(s, host=socket_helper.HOSTv4)
            assert s.getsockname() == (socket_helper.HOSTv4, port)

    @needs_ipv6
    def test_ipv6(self):
        """An AF_INET6 socket binds on HOSTv6."""
        with socket.socket(socket.AF_INET6) as s:
            port = socket_helper.bind_port(s, socket_helper.HOSTv6)
            assert s.getsockname()[1] == port

    def test_reuseaddr_refused_with_cpython_message(self):
        """SO_REUSEADDR on a TCP/IPv4 socket raises TestFailed with CPython's text."""
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(socket_helper.TestFailed) as info:
                socket_helper.bind_port(s)
            assert str(info.value) == ("tests should never set the SO_REUSEADDR socket "
                                       "option on TCP/IP sockets!")
            assert s.getsockname()[1] == 0

    @pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
    def test_reuseport_refused_with_cpython_message(self):
        """SO_REUSEPORT on a TCP/IPv4 socket raises TestFailed with CPython's text."""
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(socket_helper.TestFailed, match="SO_REUSEPORT socket option"):
                socket_helper.bind_port(s)

    def test_udp_may_set_reuseaddr(self):
        """UDP sockets (multicast tests) may set SO_REUSEADDR."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            assert socket_helper.bind_port(s) > 0

    @pytest.mark.parametrize("bad", [None, 3, "localhost", io.BytesIO()])
    def test_not_a_socket(self, bad):
        """A non-socket gives a TypeError naming what was given."""
        with pytest.raises(TypeError, match=r"socket\.socket"):
            socket_helper.bind_port(bad)


@needs_unix
class TestUnixSockets:
    def test_bind_unix_socket(self, tmp_path):
        """bind_unix_socket binds the path."""
        path = str(tmp_path / "s")
        with socket.socket(socket.AF_UNIX) as s:
            socket_helper.bind_unix_socket(s, path)
            assert s.getsockname() == path
        assert stat.S_ISSOCK(os.stat(path).st_mode)

    def test_bind_unix_socket_rejects_ip_socket(self, tmp_path):
        """A non-AF_UNIX socket gives ValueError and is left unbound."""
        with socket.socket() as s:
            with pytest.raises(ValueError, match="AF_UNIX"):
                socket_helper.bind_unix_socket(s, str(tmp_path / "s"))
            assert s.getsockname() == ("0.0.0.0", 0)

    def test_bind_unix_socket_rejects_non_socket(self, tmp_path):
        """A non-socket gives TypeError."""
        with pytest.raises(TypeError, match=r"socket\.socket"):
            socket_helper.bind_unix_socket(object(), str(tmp_path / "s"))

    def test_permission_error_becomes_skip_and_closes(self, tmp_path):
        """PermissionError from bind() becomes SkipTest, and the socket is closed."""
        class Denied(socket.socket):
            def bind(self, addr):
                raise PermissionError(errno.EACCES, "denied")

        s = Denied(socket.AF_UNIX)
        with pytest.raises(unittest.SkipTest, match="cannot bind AF_UNIX sockets"):
            socket_helper.bind_unix_socket(s, str(tmp_path / "s"))
        assert s.fileno() == -1

    def test_skip_unless_bind_unix_socket_when_it_works(self, monkeypatch, tmp_path):
        """When bind works the decorator returns the test unchanged, leaving no files."""
        monkeypatch.setattr(socket_helper, "_bind_nix_socket_error", None)
        monkeypatch.chdir(tmp_path)

        def test():
            pass

        assert socket_helper.skip_unless_bind_unix_socket(test) is test
        assert socket_helper._bind_nix_socket_error is False
        assert os.listdir(tmp_path) == []

    def test_skip_unless_bind_unix_socket_when_it_fails(self, monkeypatch):
        """A cached bind failure turns the test into a skip that names the error."""
        monkeypatch.setattr(socket_helper, "_bind_nix_socket_error",
                            OSError(errno.EPERM, "nope"))
        wrapped = socket_helper.skip_unless_bind_unix_socket(lambda: None)
        with pytest.raises(unittest.SkipTest, match="Requires a functional unix bind"):
            wrapped()

    def test_skip_without_af_unix(self, monkeypatch):
        """Without AF_UNIX the test is skipped with CPython's reason."""
        monkeypatch.delattr(socket, "AF_UNIX")
        wrapped = socket_helper.skip_unless_bind_unix_socket(lambda: None)
        with pytest.raises(unittest.SkipTest, match="No UNIX Sockets"):
            wrapped()

    def test_create_unix_domain_name(self, monkeypatch, tmp_path):
        """The name is short, relative to the current directory, unused and bindable."""
        monkeypatch.chdir(tmp_path)
        name = socket_helper.create_unix_domain_name()
        assert name.startswith(os.path.join(os.curdir, "test_python_"))
        assert name.endswith(".sock")
        assert len(name) < 40
        assert not os.path.exists(name)
        with socket.socket(socket.AF_UNIX) as s:
            socket_helper.bind_unix_socket(s, name)


class TestConnRefusedErrs:
    def test_contents(self, monkeypatch):
        """ECONNREFUSED first; EAFNOSUPPORT only when IPv6 is disabled."""
        monkeypatch.setattr(socket_helper, "IPV6_ENABLED", True, raising=False)
        errs = socket_helper.get_socket_conn_refused_errs()
        assert errs[0] == errno.ECONNREFUSED
        assert errno.EADDRNOTAVAIL in errs
        assert errno.EAFNOSUPPORT not in errs
        monkeypatch.setattr(socket_helper, "IPV6_ENABLED", False, raising=False)
        assert errno.EAFNOSUPPORT in socket_helper.get_socket_conn_refused_errs()

    def test_refused_connection_errno_is_listed(self):
        """Connecting to a reserved, unbound port fails with a listed errno."""
        with portsafe.reserve_port() as r, socket.socket() as s:
            err = s.connect_ex((r.host, r.port))
        assert err in socket_helper.get_socket_conn_refused_errs()


class TestTcpBlackhole:
    def test_false_off_freebsd(self):
        """Not FreeBSD: False, and no sysctl is run."""
        if sys.platform.startswith("freebsd"):
            pytest.skip("FreeBSD")
        assert socket_helper.tcp_blackhole() is False

    @pytest.mark.parametrize(("value", "expected"), [(0, False), (1, True), (2, True),
                                                      (None, False)])
    def test_freebsd_values(self, monkeypatch, value, expected):
        """On FreeBSD the sysctl value decides; an unreadable one means no skip."""
        monkeypatch.setattr(sys, "platform", "freebsd14")
        monkeypatch.setattr(socket_helper, "_sysctl_cache",
                            {"net.inet.tcp.blackhole": value})
        assert socket_helper.tcp_blackhole() is expected

    def _fake_sysctl(self, tmp_path, monkeypatch, body):
        script = tmp_path / "sysctl"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setattr(socket_helper, "_sysctl_cache", {})

    def test_get_sysctl_reads_and_caches(self, tmp_path, monkeypatch):
        """_get_sysctl parses `sysctl -n` output and caches it."""
        self._fake_sysctl(tmp_path, monkeypatch, 'echo 1')
        assert socket_helper._get_sysctl("net.inet.tcp.blackhole") == 1
        (tmp_path / "sysctl").unlink()
        assert socket_helper._get_sysctl("net.inet.tcp.blackhole") == 1

    def test_get_sysctl_failure_warns_once(self, tmp_path, monkeypatch, capfd):
        """A failing sysctl gives None with CPython's warning line."""
        self._fake_sysctl(tmp_path, monkeypatch, 'exit 3')
        assert socket_helper._get_sysctl("x.y") is None
        err = capfd.readouterr().err
        assert "Warning -- 'sysctl -n x.y' command failed with exit code 3" in err
        assert socket_helper._get_sysctl("x.y") is None
        assert capfd.readouterr().err == ""

    def test_get_sysctl_unparsable(self, tmp_path, monkeypatch, capfd):
        """Output that is not an integer gives None and a warning."""
        self._fake_sysctl(tmp_path, monkeypatch, 'echo nope')
        assert socket_helper._get_sysctl("x.y") is None
        assert "Failed to parse 'sysctl -n x.y' command output" in capfd.readouterr().err

    def test_skip_if_tcp_blackhole(self, monkeypatch):
        """The decorator skips only when the blackhole is on."""
        monkeypatch.setattr(socket_helper, "tcp_blackhole", lambda: True)
        with pytest.raises(unittest.SkipTest, match="TCP blackhole is enabled"):
            socket_helper.skip_if_tcp_blackhole(lambda: None)()
        monkeypatch.setattr(socket_helper, "tcp_blackhole", lambda: False)
        assert socket_helper.skip_if_tcp_blackhole(lambda: 7)() == 7


def denied_by(exc: BaseException, **kwargs) -> BaseException | None:
    """Raise exc inside transient_internet; return the ResourceDenied's cause, or None."""
    with pytest.raises(BaseException) as info, \
            socket_helper.transient_internet("res", **kwargs):
        raise exc
    if isinstance(info.value, socket_helper.ResourceDenied):
        assert str(info.value) == "Resource 'res' is not available"
        return info.value.__cause__
    assert info.value is exc
    return None


class TestTransientInternet:
    @pytest.mark.parametrize("code", ["ECONNREFUSED", "ECONNRESET", "EHOSTUNREACH",
                                      "ENETUNREACH", "ETIMEDOUT", "EADDRNOTAVAIL"])
    def test_default_errnos(self, code):
        """Each default errno becomes a skip chained to the original error."""
        err = OSError(getattr(errno, code), code)
        assert denied_by(err) is err

    def test_timeout(self):
        """A TimeoutError (socket.timeout) becomes a skip."""
        err = TimeoutError("timed out")
        assert denied_by(err) is err

    @pytest.mark.parametrize("code", ["EAI_AGAIN", "EAI_FAIL", "EAI_NONAME"])
    def test_resolver_errors(self, code):
        """Resolver failures become a skip."""
        err = socket.gaierror(getattr(socket, code), code)
        assert denied_by(err) is err

    def test_other_oserror_propagates(self):
        """An errno not in the list propagates unchanged."""
        assert denied_by(OSError(errno.EPIPE, "pipe")) is None

    def test_non_oserror_propagates(self):
        """Non-network exceptions propagate unchanged."""
        assert denied_by(KeyError("x")) is None

    def test_http_5xx(self):
        """An HTTPError 5xx is a skip; a 4xx propagates."""
        e503 = urllib.error.HTTPError("http://x", 503, "busy", None, None)  # type: ignore[arg-type]
        e404 = urllib.error.HTTPError("http://x", 404, "gone", None, None)  # type: ignore[arg-type]
        assert denied_by(e503) is e503
        assert denied_by(e404) is None

    @pytest.mark.parametrize("reason", ["ConnectionRefusedError(111)", "TimeoutError()",
                                        "EOFError occurred"])
    def test_urlerror_string_reason(self, reason):
        """A URLError whose reason names a refused connection, timeout or EOF is a skip."""
        err = urllib.error.URLError(reason)
        assert denied_by(err) is err

    def test_urlerror_non_string_reason_does_not_crash(self):
        """A URLError with an exception reason is judged by its repr, never crashes."""
        eof = urllib.error.URLError(EOFError("eof"))
        assert denied_by(eof) is eof
        other = urllib.error.URLError(ValueError("bad"))
        assert denied_by(other) is None

    def test_unwraps_args0_and_args1(self):
        """urllib's wrapping in args[0] and args[1] is unwrapped to the socket error."""
        inner = ConnectionResetError(errno.ECONNRESET, "reset")
        assert denied_by(OSError(inner)) is inner
        assert denied_by(urllib.error.URLError(inner)) is inner
        assert denied_by(OSError("socket error", inner)) is inner

    def test_unwraps_urlerror_cause(self):
        """A URLError raised `from` a socket error is unwrapped via __cause__ (3.14)."""
        inner = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        outer = urllib.error.URLError("ftp error: something")
        outer.__cause__ = inner
        assert denied_by(outer) is inner

    def test_custom_errnos_replace_defaults(self):
        """errnos= replaces the errno list and turns the resolver list off."""
        pipe = OSError(errno.EPIPE, "pipe")
        assert denied_by(pipe, errnos=[errno.EPIPE]) is pipe
        assert denied_by(OSError(errno.ECONNREFUSED, "x"), errnos=[errno.EPIPE]) is None
        gai = socket.gaierror(socket.EAI_NONAME, "x")
        assert denied_by(gai, errnos=[errno.EPIPE]) is None

    def test_timeout_set_inside_and_restored(self):
        """The default socket timeout is set inside the block and restored after."""
        before = socket.getdefaulttimeout()
        with socket_helper.transient_internet("res", timeout=3.5):
            assert socket.getdefaulttimeout() == 3.5
        assert socket.getdefaulttimeout() == before
        with pytest.raises(socket_helper.ResourceDenied), \
                socket_helper.transient_internet("res", timeout=2.0):
            raise TimeoutError
        assert socket.getdefaulttimeout() == before

    def test_timeout_none_leaves_default(self):
        """timeout=None leaves the default socket timeout alone."""
        socket.setdefaulttimeout(9.0)
        try:
            with socket_helper.transient_internet("res", timeout=None):
                assert socket.getdefaulttimeout() == 9.0
        finally:
            socket.setdefaulttimeout(None)

    def test_default_timeout_follows_test_support(self, monkeypatch):
        """The default timeout is 60 s, or test.support.INTERNET_TIMEOUT when loaded."""
        monkeypatch.delitem(sys.modules, "test.support", raising=False)
        with socket_helper.transient_internet("res"):
            assert socket.getdefaulttimeout() == 60.0
        fake = types.SimpleNamespace(INTERNET_TIMEOUT=7.0, verbose=1)
        monkeypatch.setitem(sys.modules, "test.support", fake)
        with socket_helper.transient_internet("res"):
            assert socket.getdefaulttimeout() == 7.0

    def test_quiet_regrtest_writes_message(self, monkeypatch, capsys):
        """Under regrtest's non-verbose mode the skip reason is written to stderr."""
        monkeypatch.setitem(sys.modules, "test.support",
                            types.SimpleNamespace(INTERNET_TIMEOUT=5.0, verbose=0))
        denied_by(TimeoutError())
        assert "Resource 'res' is not available" in capsys.readouterr().err

    def test_nntplib_temporary_error(self, monkeypatch):
        """nntplib's NNTPTemporaryError (3.12 and older) is a skip."""
        class NNTPTemporaryError(Exception):
            pass

        monkeypatch.setitem(sys.modules, "nntplib",
                            types.SimpleNamespace(NNTPTemporaryError=NNTPTemporaryError))
        err = NNTPTemporaryError("400 busy")
        assert denied_by(err) is err

    def test_counted_as_skip_by_unittest(self):
        """unittest reports a test denied by transient_internet as skipped."""
        class Case(unittest.TestCase):
            def test_it(self):
                with socket_helper.transient_internet("example"):
                    raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

        result = unittest.TestResult()
        unittest.defaultTestLoader.loadTestsFromTestCase(Case).run(result)
        assert result.testsRun == 1
        assert len(result.skipped) == 1
        assert not result.errors
        assert not result.failures

    def test_counted_as_skip_by_pytest(self, pytester):
        """pytest reports it as skipped, for plain functions and unittest classes."""
        pytester.makepyfile(textwrap.dedent("""
            import errno, unittest
            from portsafe import socket_helper

            def test_function():
                with socket_helper.transient_internet("example"):
                    raise TimeoutError("timed out")

            class Case(unittest.TestCase):
                def test_method(self):
                    with socket_helper.transient_internet("example"):
                        raise ConnectionResetError(errno.ECONNRESET, "reset")
        """))
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
        result.assert_outcomes(skipped=2)


def load_runner() -> types.ModuleType:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "cpython_suite.py"
    spec = importlib.util.spec_from_file_location("cpython_suite", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cpython_suite"] = module
    spec.loader.exec_module(module)
    return module


class TestCpythonSuiteRunner:
    """The parts of tools/cpython_suite.py that decide the verdict."""

    def test_parse_junit_counts_per_module(self, tmp_path):
        """Counts come per module from regrtest's XML, incl. errors outside test cases."""
        runner = load_runner()
        xml = tmp_path / "r.xml"
        xml.write_text(textwrap.dedent("""\
            <testsuites>
              <testsuite tests="4" errors="2" failures="1">
                <testcase name="test.test_a.T.test_ok" status="run" />
                <testcase name="test.test_a.T.test_skip"><skipped>no</skipped></testcase>
                <testcase name="test.test_a.T.test_err"><error type="X" /></testcase>
                <testcase name="test.test_a.T.test_fail"><failure type="Y" /></testcase>
                <testcase />
              </testsuite>
              <testsuite tests="1" errors="0" failures="0">
                <testcase name="test.test_pkg.test_sub.T.test_ok" />
              </testsuite>
              <testsuite tests="0" errors="0" failures="0" />
            </testsuites>
        """))
        counts = runner.parse_junit(xml, ["test_a", "test_pkg.test_sub", "test_pkg"])
        assert counts["test_a"].row() == (4, 1, 1, 1, 2)
        assert counts["test_pkg.test_sub"].row() == (1, 1, 0, 0, 0)
        assert "test_pkg" not in counts

    def test_status_lines(self):
        """Durations are dropped from regrtest's per-module status; env changed is kept."""
        runner = load_runner()
        line = "0:00:30 load avg: 1.37 [7/8] test_socket passed (30.5 sec)"
        m = runner.STATUS_RE.search(line)
        assert m.group("name") == "test_socket"
        assert runner.normalise_status(m.group("status")) == "passed"
        assert runner.normalise_status("failed (env changed)") == "failed (env changed)"

    def test_interpreter_without_test_package_is_skipped(self, tmp_path, capsys):
        """An interpreter without `test` is reported plainly and the exit status is 0."""
        runner = load_runner()
        fake = tmp_path / "python"
        fake.write_text("#!/bin/sh\necho 3.12\necho NO No module named test\n")
        fake.chmod(0o755)
        assert runner.main(["--python", str(fake), "--smoke"]) == 0
        out = capsys.readouterr().out
        assert "has no `test` package" in out
        assert "nothing to compare" in out

    def test_network_resource_is_refused(self):
        """Enabling regrtest's network resource is a usage error."""
        runner = load_runner()
        for value in ("network", "all", "cpu,network"):
            with pytest.raises(SystemExit) as info:
                runner.main(["--resources", value])
            assert info.value.code == 2

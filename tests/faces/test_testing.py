"""portsafe.testing: PortFactory, the unittest mixin, skip decorators and probes."""

from __future__ import annotations

import ast
import errno
import importlib
import re
import socket
import types
import unittest

import pytest

import portsafe
from portsafe import testing
from portsafe._testing import probes
from portsafe.testing import (
    PortFactory,
    ReservedPortsMixin,
    requires_internet,
    requires_ipv6,
    requires_unix_socket,
)


def is_held(port: int, socktype: int = socket.SOCK_STREAM) -> bool:
    try:
        portsafe.reserve_port(ports=[port], socktype=socktype).release()
    except portsafe.NoFreePortError:
        return True
    return False


def run_case(case_class: type[unittest.TestCase], *names: str) -> unittest.TestResult:
    """Run the named tests (all of the class if none) and return the result."""
    loader = unittest.TestLoader()
    if names:
        suite = unittest.TestSuite(case_class(name) for name in names)
    else:
        suite = loader.loadTestsFromTestCase(case_class)
    result = unittest.TestResult()
    suite.run(result)
    return result


@pytest.fixture
def no_internet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(testing.INTERNET_ENV, raising=False)


class TestPortFactory:
    def test_hands_out_distinct_held_ports_and_releases_them(self) -> None:
        """Each call reserves a new port; release_all frees every one."""
        factory = PortFactory()
        ports = [factory() for _ in range(5)]
        assert len(set(ports)) == 5
        assert all(is_held(port) for port in ports)
        factory.release_all()
        assert not any(is_held(port) for port in ports)
        assert all(r.released for r in factory.reservations)

    def test_forwards_options(self) -> None:
        """Keyword options reach reserve_port (ports, socktype, exclude)."""
        with PortFactory() as take:
            port = take(ports=range(20000, 20100), socktype=socket.SOCK_DGRAM, exclude=[20000])
            assert 20001 <= port < 20100
            assert take.reservations[0].socktype == socket.SOCK_DGRAM
            assert is_held(port, socket.SOCK_DGRAM)
        assert not is_held(port, socket.SOCK_DGRAM)

    def test_use_after_release_is_an_error(self) -> None:
        """A released factory refuses new ports and says why; release_all is idempotent."""
        factory = PortFactory()
        factory.release_all()
        factory.release_all()
        with pytest.raises(RuntimeError, match="already released"):
            factory()

    def test_failed_call_records_nothing(self) -> None:
        """An invalid option raises and leaves no reservation behind."""
        with PortFactory() as take:
            with pytest.raises(portsafe.InvalidSettingError):
                take(ports=[0])
            assert take.reservations == ()


class TestFacade:
    def test_the_public_names_and_where_they_are_defined(self) -> None:
        """portsafe.testing exports these names, each defined in a module of
        portsafe._testing."""
        assert testing.__all__ == [
            "INTERNET_ENV", "PortFactory", "ReservedPortsMixin", "internet_enabled",
            "internet_options", "ipv6_available", "open_tcp_listener", "requires_internet",
            "requires_ipv6", "requires_unix_socket", "unix_sockets_available",
        ]
        for name in testing.__all__:
            value = getattr(testing, name)
            if name != "INTERNET_ENV":
                assert value.__module__.startswith("portsafe._testing."), name

    def test_the_skip_reasons_the_plugin_reads(self) -> None:
        """The pytest plugin reads the reasons through portsafe.testing."""
        for name in ("INTERNET_SKIP_REASON", "IPV6_SKIP_REASON", "UNIX_SKIP_REASON"):
            assert isinstance(getattr(testing, name), str)
            assert name not in testing.__all__

    @pytest.mark.parametrize(
        "module", ["factory", "internet", "listener", "mixin", "probes", "skips"]
    )
    def test_each_module_lists_only_what_it_defines(self, module: str) -> None:
        """Every name in a module's __all__ is defined there, not imported."""
        loaded = importlib.import_module(f"portsafe._testing.{module}")
        for name in loaded.__all__:
            value = getattr(loaded, name)
            if callable(value):
                assert value.__module__ == loaded.__name__, name
            else:
                assert name in ast_assigned_names(loaded), name


def ast_assigned_names(module: types.ModuleType) -> set[str]:
    """The names a module's own top-level statements assign."""
    assert module.__file__ is not None
    with open(module.__file__, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    return {target.id for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


class TestProbes:
    def test_ipv6_available_matches_a_direct_bind_and_is_cached(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The answer equals binding ::1 directly; the second call does not probe again."""
        monkeypatch.setattr(probes, "_ipv6_cache", None)
        expected = True
        try:
            with socket.socket(socket.AF_INET6) as sock:
                sock.bind(("::1", 0))
        except OSError:
            expected = False
        assert testing.ipv6_available() is expected
        monkeypatch.setattr(probes, "_probe_ipv6", lambda: not expected)
        assert testing.ipv6_available() is expected

    def test_ipv6_unavailable_when_the_bind_fails(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A host that cannot bind ::1 (Docker's default network) reports False."""
        monkeypatch.setattr(probes, "_ipv6_cache", None)
        monkeypatch.setattr("portsafe._core.probe._ipv6", None)  # the core probes for everyone
        monkeypatch.setattr(socket, "has_ipv6", False)
        assert testing.ipv6_available() is False

    def test_unix_sockets_available(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Where AF_UNIX exists and binds, the probe says so; without AF_UNIX it says no."""
        monkeypatch.setattr(probes, "_unix_cache", None)
        assert testing.unix_sockets_available() is hasattr(socket, "AF_UNIX")
        monkeypatch.setattr(probes, "_unix_cache", None)
        monkeypatch.delattr(socket, "AF_UNIX", raising=False)
        assert testing.unix_sockets_available() is False

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
         ("", False), ("0", False), ("False", False), ("no", False), ("off", False)],
    )
    def test_internet_enabled_values(self, value: str, expected: bool) -> None:
        """Common spellings of yes and no are understood, case-insensitively."""
        assert testing.internet_enabled({testing.INTERNET_ENV: value}) is expected

    def test_internet_enabled_reads_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without an explicit mapping it reads os.environ; unset means off."""
        monkeypatch.delenv(testing.INTERNET_ENV, raising=False)
        assert testing.internet_enabled() is False
        monkeypatch.setenv(testing.INTERNET_ENV, "1")
        assert testing.internet_enabled() is True

    def test_internet_enabled_rejects_other_values(self) -> None:
        """Anything else is an InvalidSettingError that names the value and the fix."""
        with pytest.raises(portsafe.InvalidSettingError, match=r"'maybe'.*set it to 1"):
            testing.internet_enabled({testing.INTERNET_ENV: "maybe"})


class TestOpenTcpListener:
    def test_listens_on_loopback(self) -> None:
        """The socket is bound to 127.0.0.1 and accepts a connection at once."""
        with testing.open_tcp_listener() as listener:
            host, port = listener.getsockname()
            assert host == "127.0.0.1"
            with socket.create_connection((host, port), timeout=5):
                conn, _ = listener.accept()
                conn.close()

    def test_ipv6(self) -> None:
        """An IPv6 host gives an AF_INET6 listener (skipped without IPv6)."""
        if not testing.ipv6_available():
            pytest.skip("IPv6 is not available on this host")
        with testing.open_tcp_listener("::1") as listener:
            assert listener.family == socket.AF_INET6

    @pytest.mark.parametrize(
        ("args", "kwargs", "match"),
        [((b"127.0.0.1",), {}, "host must be a str"), ((), {"backlog": "5"}, "backlog")],
    )
    def test_wrong_types(self, args: tuple[object, ...], kwargs: dict[str, object],
                         match: str) -> None:
        """Wrong types raise TypeError naming what was given."""
        with pytest.raises(TypeError, match=match):
            testing.open_tcp_listener(*args, **kwargs)  # type: ignore[arg-type]

    def test_unbindable_address_closes_the_socket(self) -> None:
        """A failed bind raises OSError and leaks no socket (ResourceWarning is an error)."""
        with pytest.raises(OSError):
            testing.open_tcp_listener("192.0.2.1")  # TEST-NET-1: never on this host


class TestMixin:
    def test_ports_held_during_the_test_and_released_after(self) -> None:
        """free_tcp_port/free_udp_port/free_port are held in the test, released by cleanup."""
        seen: list[tuple[int, int]] = []

        class Case(ReservedPortsMixin, unittest.TestCase):
            def test_it(self) -> None:
                tcp, udp = self.free_tcp_port(), self.free_udp_port()
                both = self.free_port(socktype=0, ports=range(20000, 20100))
                seen.extend([(tcp, socket.SOCK_STREAM), (udp, socket.SOCK_DGRAM), (both, 0)])
                for port, socktype in seen:
                    assert is_held(port, socktype)

        result = run_case(Case, "test_it")
        assert result.wasSuccessful(), result.failures + result.errors
        assert len(seen) == 3
        assert not any(is_held(port, socktype) for port, socktype in seen)

    def test_failing_test_releases_everything(self) -> None:
        """A failing test still releases its ports and closes its listener."""
        seen: list[int] = []
        sockets: list[socket.socket] = []

        class Case(ReservedPortsMixin, unittest.TestCase):
            def test_fails(self) -> None:
                seen.append(self.free_tcp_port())
                sockets.append(self.tcp_listener())
                self.fail("boom")

        result = run_case(Case, "test_fails")
        assert len(result.failures) == 1
        assert not is_held(seen[0])
        assert sockets[0].fileno() == -1

    def test_tcp_listener_accepts(self) -> None:
        """tcp_listener gives a listening loopback socket inside the test."""

        class Case(ReservedPortsMixin, unittest.TestCase):
            def test_it(self) -> None:
                listener = self.tcp_listener()
                with socket.create_connection(listener.getsockname(), timeout=5):
                    conn, _ = listener.accept()
                    conn.close()

        result = run_case(Case, "test_it")
        assert result.wasSuccessful(), result.errors

    def test_class_port_held_across_tests_and_released_after_the_class(self) -> None:
        """free_port_for_class in setUpClass holds one port for every test of the class."""
        seen: list[int] = []

        class Case(ReservedPortsMixin, unittest.TestCase):
            port: int

            @classmethod
            def setUpClass(cls) -> None:
                cls.port = cls.free_port_for_class()

            def test_a(self) -> None:
                seen.append(self.port)
                assert is_held(self.port)

            def test_b(self) -> None:
                seen.append(self.port)
                assert is_held(self.port)

        result = run_case(Case)
        assert result.wasSuccessful(), result.failures + result.errors
        assert len(seen) == 2
        assert seen[0] == seen[1]
        assert not is_held(seen[0])

    def test_needs_a_test_case(self) -> None:
        """Used outside a TestCase, the mixin says how to use it."""

        class NotATest(ReservedPortsMixin):
            pass

        with pytest.raises(TypeError, match="mix ReservedPortsMixin into a TestCase"):
            NotATest().free_tcp_port()
        with pytest.raises(TypeError, match="mix ReservedPortsMixin into a TestCase"):
            NotATest().tcp_listener()
        with pytest.raises(TypeError, match="got NotATest"):
            NotATest.free_port_for_class()


class TestSkipDecorators:
    def test_requires_ipv6_on_a_method(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The decision is made when the test runs, not at decoration time."""

        class Case(unittest.TestCase):
            @requires_ipv6
            def test_it(self) -> None:
                pass

        monkeypatch.setattr(probes, "_ipv6_cache", False)
        result = run_case(Case, "test_it")
        assert [reason for _, reason in result.skipped] == [testing.IPV6_SKIP_REASON]
        monkeypatch.setattr(probes, "_ipv6_cache", True)
        result = run_case(Case, "test_it")
        assert result.wasSuccessful()
        assert not result.skipped

    def test_requires_unix_socket_on_a_class(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a class, the skip happens in setUpClass; the class's own setUpClass still runs."""
        calls: list[str] = []

        @requires_unix_socket
        class Case(unittest.TestCase):
            @classmethod
            def setUpClass(cls) -> None:
                calls.append("setUpClass")

            def test_it(self) -> None:
                calls.append("test")

        monkeypatch.setattr(probes, "_unix_cache", False)
        result = run_case(Case)
        assert result.testsRun <= 1
        assert calls == []
        assert [reason for _, reason in result.skipped] == [testing.UNIX_SKIP_REASON]
        monkeypatch.setattr(probes, "_unix_cache", True)
        result = run_case(Case)
        assert result.wasSuccessful()
        assert calls == ["setUpClass", "test"]

    def test_class_without_own_set_up_class_calls_the_inherited_one(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A decorated subclass still runs its base class's setUpClass."""
        calls: list[str] = []

        class Base(unittest.TestCase):
            @classmethod
            def setUpClass(cls) -> None:
                calls.append(cls.__name__)

        @requires_ipv6
        class Case(Base):
            def test_it(self) -> None:
                pass

        monkeypatch.setattr(probes, "_ipv6_cache", True)
        assert run_case(Case).wasSuccessful()
        assert calls == ["Case"]

    def test_async_method(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Coroutine test methods (IsolatedAsyncioTestCase) stay coroutines and are guarded."""
        ran: list[bool] = []

        class Case(unittest.IsolatedAsyncioTestCase):
            @requires_ipv6
            async def test_it(self) -> None:
                ran.append(True)

        monkeypatch.setattr(probes, "_ipv6_cache", True)
        assert run_case(Case, "test_it").wasSuccessful()
        assert ran == [True]
        monkeypatch.setattr(probes, "_ipv6_cache", False)
        assert len(run_case(Case, "test_it").skipped) == 1
        assert ran == [True]

    def test_rejects_non_tests(self) -> None:
        """Decorating a non-TestCase class or a non-callable raises TypeError."""

        class Plain:
            pass

        with pytest.raises(TypeError, match="not Plain"):
            requires_ipv6(Plain)
        with pytest.raises(TypeError, match="not 42"):
            requires_unix_socket(42)
        with pytest.raises(TypeError, match="not Plain"):
            requires_internet()(Plain)


class TestRequiresInternet:
    def make_case(self, error: BaseException | None, **options: object) -> type[unittest.TestCase]:
        class Case(unittest.TestCase):
            @requires_internet("example.org", **options)  # type: ignore[arg-type]
            def test_it(self) -> None:
                if error is not None:
                    raise error

        return Case

    def test_skipped_unless_opted_in(self, no_internet_env: None) -> None:
        """Without PORTSAFE_INTERNET=1 the test is skipped and its body never runs."""
        result = run_case(self.make_case(AssertionError("must not run")), "test_it")
        assert [reason for _, reason in result.skipped] == [testing.INTERNET_SKIP_REASON]

    @pytest.mark.parametrize(
        "error",
        [
            ConnectionResetError(errno.ECONNRESET, "reset"),
            ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
            TimeoutError("timed out"),
            socket.gaierror(socket.EAI_AGAIN, "try again"),
        ],
        ids=["reset", "refused", "timeout", "gai-again"],
    )
    def test_transient_errors_become_skips(
        self, monkeypatch: pytest.MonkeyPatch, error: BaseException
    ) -> None:
        """Opted in, a transient network error (raised on purpose) skips the test."""
        monkeypatch.setenv(testing.INTERNET_ENV, "1")
        result = run_case(self.make_case(error), "test_it")
        assert [reason for _, reason in result.skipped] == [
            "Resource 'example.org' is not available"
        ]

    def test_other_errors_still_fail(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A real bug is not hidden: ValueError is reported as an error."""
        monkeypatch.setenv(testing.INTERNET_ENV, "1")
        result = run_case(self.make_case(ValueError("bug")), "test_it")
        assert len(result.errors) == 1
        assert not result.skipped

    def test_custom_errnos(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """errnos= names which errors are transient."""
        monkeypatch.setenv(testing.INTERNET_ENV, "1")
        case = self.make_case(BrokenPipeError(errno.EPIPE, "pipe"), errnos=[errno.EPIPE])
        assert len(run_case(case, "test_it").skipped) == 1

    def test_passing_test_passes_and_timeout_is_restored(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The timeout applies inside the test only; the default comes back afterwards."""
        monkeypatch.setenv(testing.INTERNET_ENV, "1")
        inside: list[float | None] = []

        class Case(unittest.TestCase):
            @requires_internet(timeout=7)
            def test_it(self) -> None:
                inside.append(socket.getdefaulttimeout())

        before = socket.getdefaulttimeout()
        assert run_case(Case, "test_it").wasSuccessful()
        assert inside == [7.0]
        assert socket.getdefaulttimeout() == before

    def test_on_a_class_wraps_every_test_method(
        self, monkeypatch: pytest.MonkeyPatch, no_internet_env: None
    ) -> None:
        """On a class: skipped as a whole unless opted in; opted in, each test is wrapped."""

        @requires_internet()
        class Case(unittest.TestCase):
            def test_reset(self) -> None:
                raise ConnectionResetError(errno.ECONNRESET, "reset")

            def test_ok(self) -> None:
                pass

        result = run_case(Case)
        assert result.skipped
        assert not result.errors
        monkeypatch.setenv(testing.INTERNET_ENV, "1")
        result = run_case(Case)
        assert len(result.skipped) == 1
        assert not result.errors
        assert result.testsRun == 2

    def test_async_method(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A coroutine test raising a transient error is skipped."""
        monkeypatch.setenv(testing.INTERNET_ENV, "1")

        class Case(unittest.IsolatedAsyncioTestCase):
            @requires_internet()
            async def test_it(self) -> None:
                raise ConnectionResetError(errno.ECONNRESET, "reset")

        assert len(run_case(Case, "test_it").skipped) == 1

    def test_without_parentheses_is_a_clear_error(self) -> None:
        """@requires_internet (no call) raises TypeError saying to add parentheses."""
        with pytest.raises(TypeError, match="with parentheses"):

            @requires_internet  # type: ignore[arg-type]
            def test_it() -> None:
                pass

    @pytest.mark.parametrize(
        ("options", "match"),
        [({"timeout": "5"}, "timeout"), ({"errnos": ["EPIPE"]}, "errnos")],
    )
    def test_bad_options(self, options: dict[str, object], match: str) -> None:
        """Wrongly typed options raise TypeError at decoration time."""
        with pytest.raises(TypeError, match=match):
            requires_internet(**options)  # type: ignore[arg-type]


class TestTracebacks:
    def test_failures_point_at_the_test(self, pytester: pytest.Pytester) -> None:
        """Errors raised on the caller's behalf show the test's line, not testing.py's."""
        pytester.makepyfile(test_inner="""
            from portsafe.testing import (
                PortFactory, ReservedPortsMixin, internet_enabled, open_tcp_listener,
                requires_internet, requires_ipv6,
            )

            def test_factory_after_release():
                take = PortFactory()
                take.release_all()
                take()

            def test_bad_setting():
                internet_enabled({"PORTSAFE_INTERNET": "maybe"})

            def test_bad_host():
                open_tcp_listener(1)

            def test_mixin_outside_a_test_case():
                ReservedPortsMixin().free_tcp_port()

            def test_decorating_a_non_test():
                requires_ipv6(42)

            def test_bad_internet_option():
                requires_internet(timeout="5")
        """)
        result = pytester.runpytest("-p", "no:cacheprovider", "--tb=short")
        result.assert_outcomes(failed=6)
        text = result.stdout.str()
        for message in ("already released", "is not understood", "host must be a str",
                        "needs a unittest.TestCase", "decorates test functions",
                        "timeout must be a number"):
            assert message in text
        # pytest ends each frame it shows with "file.py:line: ..."
        frames = re.findall(r"^(\S+\.py):\d+: ", text, re.MULTILINE)
        assert len(frames) == 6
        assert set(frames) == {"test_inner.py"}

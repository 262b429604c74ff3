"""The pytest plugin: fixtures, markers and the pytest-asyncio override, run with pytester.

Inner runs are in-process (fast), so "released at teardown" is checked directly: a
port is reservable again by this very process once the inner test is over, which
fails while any inner reservation is still held (the core keeps an in-process set).
"""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import sys

import pytest

import portsafe
from portsafe import pytest_plugin, testing
from portsafe._pytest.names import clashing_plugins
from portsafe._testing import probes


def read_ports(pytester: pytest.Pytester, name: str = "ports.txt") -> list[int]:
    text = (pytester.path / name).read_text()
    return [int(word) for word in text.split()]


def assert_reservable(port: int, socktype: int = socket.SOCK_STREAM) -> None:
    """No reservation of ``port`` is left in this process (or any other)."""
    with portsafe.reserve_port(ports=[port], socktype=socktype) as again:
        assert again.port == port


RECORD = """
def record(*ports):
    with open("ports.txt", "a") as f:
        f.write(" ".join(str(p) for p in ports) + "\\n")
"""


# "released after" is checked by reserving the port again: in a lock directory of the
# test's own (conftest.py), since in the shared one another run may take it first
pytestmark = pytest.mark.usefixtures("private_lock_dir")


@pytest.fixture
def no_internet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(testing.INTERNET_ENV, raising=False)


class TestFixtures:
    def test_reserved_tcp_port_is_held_during_the_test_and_released_after(
        self, pytester: pytest.Pytester
    ) -> None:
        """reserved_tcp_port is reserved (nobody can reserve it) and bindable; released after."""
        pytester.makepyfile(
            RECORD
            + """
import socket, pytest, portsafe

def test_it(reserved_tcp_port):
    record(reserved_tcp_port)
    with pytest.raises(portsafe.NoFreePortError):
        portsafe.reserve_port(ports=[reserved_tcp_port])
    with socket.create_server(("127.0.0.1", reserved_tcp_port)):
        pass
"""
        )
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
        (port,) = read_ports(pytester)
        low, high = portsafe.ephemeral_port_range()
        assert not low <= port <= high
        assert_reservable(port)

    def test_reserved_udp_port_is_a_held_udp_port(self, pytester: pytest.Pytester) -> None:
        """reserved_udp_port is reserved for UDP, bindable as UDP, and released after."""
        pytester.makepyfile(
            RECORD
            + """
import socket, pytest, portsafe

def test_it(reserved_udp_port):
    record(reserved_udp_port)
    with pytest.raises(portsafe.NoFreePortError):
        portsafe.reserve_port(ports=[reserved_udp_port], socktype=socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", reserved_udp_port))
"""
        )
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
        (port,) = read_ports(pytester)
        assert_reservable(port, socket.SOCK_DGRAM)

    def test_factory_takes_reserve_port_options_and_releases_all(
        self, pytester: pytest.Pytester
    ) -> None:
        """reserved_port_factory forwards keyword options and releases every port it gave."""
        pytester.makepyfile(
            RECORD
            + """
import socket

def test_it(reserved_port_factory):
    a = reserved_port_factory()
    b = reserved_port_factory(socktype=0)
    c = reserved_port_factory(ports=range(20000, 20200), exclude=[a, b])
    d = reserved_port_factory(socktype=socket.SOCK_DGRAM, host="127.0.0.1")
    assert len({a, b, c, d}) == 4 and 20000 <= c < 20200
    assert all(isinstance(p, int) for p in (a, b, c, d))
    record(a, b, c, d)
"""
        )
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
        ports = read_ports(pytester)
        assert len(ports) == 4
        for port in ports:
            assert_reservable(port, 0)

    def test_factory_bad_option_errors_and_keeps_nothing(self, pytester: pytest.Pytester) -> None:
        """An invalid option raises InvalidSettingError in the test; earlier ports are freed."""
        pytester.makepyfile(
            RECORD
            + """
import pytest, portsafe

def test_it(reserved_port_factory):
    record(reserved_port_factory())
    with pytest.raises(portsafe.InvalidSettingError):
        reserved_port_factory(ports=[70000])
"""
        )
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
        (port,) = read_ports(pytester)
        assert_reservable(port)

    def test_session_fixtures_hold_across_tests_and_release_at_session_end(
        self, pytester: pytest.Pytester
    ) -> None:
        """Session variants give the same ports to every test, held until the session ends."""
        pytester.makepyfile(
            RECORD
            + """
import socket, pytest, portsafe

@pytest.mark.parametrize("i", range(3))
def test_it(i, reserved_tcp_port_session, reserved_udp_port_session, reserved_port_factory_session):
    extra = reserved_port_factory_session(socktype=0)
    record(reserved_tcp_port_session, reserved_udp_port_session, extra)
    for port in (reserved_tcp_port_session, extra):
        with pytest.raises(portsafe.NoFreePortError):
            portsafe.reserve_port(ports=[port])
"""
        )
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
        rows = [line.split() for line in (pytester.path / "ports.txt").read_text().splitlines()]
        assert len({(tcp, udp) for tcp, udp, _ in rows}) == 1
        extras = [int(extra) for _, _, extra in rows]
        assert len(set(extras)) == 3  # the factory kept the earlier ones, so never repeats
        tcp, udp = int(rows[0][0]), int(rows[0][1])
        assert_reservable(tcp)
        assert_reservable(udp, socket.SOCK_DGRAM)
        for port in extras:
            assert_reservable(port, 0)

    def test_tcp_listener_listens_on_loopback_and_is_closed_after(
        self, pytester: pytest.Pytester
    ) -> None:
        """tcp_listener accepts connections on 127.0.0.1 and is closed at teardown."""
        pytester.makepyfile(
            """
import socket

held = []

def test_listen(tcp_listener):
    held.append(tcp_listener)
    host, port = tcp_listener.getsockname()
    assert host == "127.0.0.1"
    with socket.create_connection((host, port), timeout=5):
        conn, _ = tcp_listener.accept()
        conn.close()

def test_closed_after():
    assert held[0].fileno() == -1
"""
        )
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)

    def test_failing_test_leaves_nothing_behind(self, pytester: pytest.Pytester) -> None:
        """A test that fails after taking every kind of port leaves no reservation or socket."""
        pytester.makepyfile(
            RECORD
            + """
held = []

def test_fails(reserved_tcp_port, reserved_udp_port, reserved_port_factory, tcp_listener):
    held.append(tcp_listener)
    record(reserved_tcp_port, reserved_udp_port, reserved_port_factory(),
           reserved_port_factory(socktype=0))
    raise AssertionError("boom")

def test_listener_closed_after_failure():
    assert held[0].fileno() == -1
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1, failed=1)
        for port in read_ports(pytester):
            assert_reservable(port, 0)

    def test_error_in_setup_releases_earlier_fixtures(self, pytester: pytest.Pytester) -> None:
        """When a later fixture errors in setup, ports from earlier fixtures are released."""
        pytester.makepyfile(
            RECORD
            + """
import pytest

@pytest.fixture
def broken(reserved_tcp_port):
    record(reserved_tcp_port)
    raise RuntimeError("setup failed")

def test_it(broken):
    pass
"""
        )
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(errors=1)
        (port,) = read_ports(pytester)
        assert_reservable(port)

    def test_disabled_with_no_portsafe(self, pytester: pytest.Pytester) -> None:
        """-p no:portsafe removes the fixtures (the plugin is an ordinary pytest11 one)."""
        pytester.makepyfile("def test_it(reserved_tcp_port):\n    pass\n")
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:portsafe")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*fixture 'reserved_tcp_port' not found*"])

    @pytest.mark.parametrize("old", ["free_tcp_port", "free_udp_port", "free_port_factory",
                                     "free_tcp_port_session", "free_port_factory_session"])
    def test_old_names_are_gone(self, pytester: pytest.Pytester, old: str) -> None:
        """The 0.1 names are not aliases (anyio defines free_tcp_port/free_udp_port)."""
        pytester.makepyfile(f"def test_it({old}):\n    pass\n")
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:anyio")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([f"*fixture '{old}' not found*"])

    def test_fixtures_are_documented(self, pytester: pytest.Pytester) -> None:
        """pytest --fixtures lists every portsafe fixture with its docstring."""
        result = pytester.runpytest("-p", "no:cacheprovider", "--fixtures")
        for name in (
            "reserved_tcp_port",
            "reserved_udp_port",
            "reserved_port_factory",
            "reserved_tcp_port_session [[]session scope[]]",
            "reserved_udp_port_session [[]session scope[]]",
            "reserved_port_factory_session [[]session scope[]]",
            "tcp_listener",
        ):
            result.stdout.fnmatch_lines([f"{name} -- *pytest_plugin.py:*"])


FAKE_PLUGIN = """
import pytest

@pytest.fixture
def reserved_tcp_port():
    return 1

@pytest.fixture(name="tcp_listener")
def _listener():
    return None

@pytest.fixture
def free_tcp_port():  # anyio's name: no longer portsafe's, so no clash
    return 2
"""


class TestFixtureNameClash:
    def test_another_plugin_defining_a_portsafe_name_warns_once(
        self, pytester: pytest.Pytester
    ) -> None:
        """A plugin loaded with -p that defines reserved_tcp_port and tcp_listener: one warning."""
        pytester.makepyfile(fake_plugin=FAKE_PLUGIN)
        pytester.makepyfile("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
        pytester.syspathinsert()
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "fake_plugin")
        result.assert_outcomes(passed=2, warnings=1)
        out = result.stdout.str()
        assert out.count("portsafe: plugin 'fake_plugin' also defines fixture(s)") == 1
        expected = ("*PytestConfigWarning: portsafe: plugin 'fake_plugin' also defines "
                    "fixture(s) reserved_tcp_port, tcp_listener;*")
        result.stdout.fnmatch_lines([expected])
        assert "free_tcp_port" not in out

    def test_the_warning_is_one_under_xdist_too(self, pytester: pytest.Pytester) -> None:
        """Under -n 2 the controller warns; the workers, loading the same plugins, do not."""
        pytest.importorskip("xdist")
        pytester.makepyfile(fake_plugin=FAKE_PLUGIN)
        pytester.makepyfile("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
        pytester.syspathinsert()
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-p", "fake_plugin", "-n", "2"
        )
        result.assert_outcomes(passed=2)
        assert result.stdout.str().count("also defines fixture(s)") == 1

    def test_a_conftest_definition_is_the_users_choice_and_silent(
        self, pytester: pytest.Pytester
    ) -> None:
        """A conftest.py overriding reserved_tcp_port wins, with no warning."""
        pytester.makeconftest(
            "import pytest\n@pytest.fixture\ndef reserved_tcp_port():\n    return 7\n"
        )
        pytester.makepyfile(
            "def test_it(reserved_tcp_port):\n    assert reserved_tcp_port == 7\n"
        )
        result = pytester.runpytest(
            "-p", "no:cacheprovider", "-W", "error::pytest.PytestConfigWarning"
        )
        result.assert_outcomes(passed=1)
        result.stdout.no_fnmatch_line("*also defines fixture*")

    def test_a_plugin_reexporting_portsafes_fixtures_is_not_a_clash(
        self, pytester: pytest.Pytester
    ) -> None:
        """A plugin that imports portsafe's own fixture objects defines nothing new."""
        pytester.makepyfile(
            reexport="from portsafe.pytest_plugin import reserved_tcp_port, tcp_listener\n"
        )
        pytester.makepyfile(
            "def test_it(reserved_tcp_port):\n    assert reserved_tcp_port > 0\n"
        )
        pytester.syspathinsert()
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "reexport")
        result.assert_outcomes(passed=1)
        result.stdout.no_fnmatch_line("*also defines fixture*")

    def test_no_warning_in_a_plain_run(self, pytester: pytest.Pytester) -> None:
        """With only the plugins of this venv (anyio's names differ), nothing is reported."""
        pytester.makepyfile("def test_it():\n    pass\n")
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        result.stdout.no_fnmatch_line("*also defines fixture*")

    def test_coexists_with_the_real_anyio_plugin(self, pytester: pytest.Pytester) -> None:
        """With anyio installed, free_tcp_port is anyio's and reserved_tcp_port portsafe's."""
        pytest.importorskip("anyio.pytest_plugin")
        pytester.makepyfile(
            """
import portsafe, pytest

def test_both(free_tcp_port, reserved_tcp_port):
    assert free_tcp_port != reserved_tcp_port
    with pytest.raises(portsafe.NoFreePortError):
        portsafe.reserve_port(ports=[reserved_tcp_port])
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "anyio", "--fixtures")
        result.stdout.fnmatch_lines(["free_tcp_port* -- *anyio*", "reserved_tcp_port -- *"])
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "anyio")
        result.assert_outcomes(passed=1)
        result.stdout.no_fnmatch_line("*also defines fixture*")

    def test_plugin_objects_and_classes_are_scanned(self) -> None:
        """Fixtures on a plugin class instance count; conftests and blocked plugins do not."""
        import types

        class Plugin:
            @pytest.fixture
            def reserved_udp_port(self) -> int:
                return 1

        conftest = types.ModuleType("conftest")
        conftest.__file__ = "/somewhere/conftest.py"
        conftest.reserved_tcp_port = pytest.fixture(  # type: ignore[attr-defined]
            lambda: 1, name="reserved_tcp_port"
        )
        assert clashing_plugins([("obj", Plugin()), ("conftest", conftest), ("gone", None)]) == [
            ("obj", ["reserved_udp_port"])
        ]


class TestMarkers:
    def test_markers_are_registered_for_strict_markers(
        self, pytester: pytest.Pytester, no_internet_env: None
    ) -> None:
        """--strict-markers accepts all three markers and --markers documents them."""
        pytester.makepyfile(
            """
import pytest

@pytest.mark.requires_internet("pypi.org", timeout=5)
@pytest.mark.requires_unix_socket
@pytest.mark.requires_ipv6
def test_it():
    pass
"""
        )
        pytester.runpytest("-p", "no:cacheprovider", "--strict-markers").assert_outcomes(
            skipped=1
        )
        result = pytester.runpytest("-p", "no:cacheprovider", "--markers")
        result.stdout.fnmatch_lines(
            [
                "@pytest.mark.requires_internet(resource_name='network'*",
                "@pytest.mark.requires_unix_socket:*",
                "@pytest.mark.requires_ipv6:*",
            ]
        )

    def test_requires_ipv6_skips_with_a_reason_when_unavailable(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without IPv6 the test is skipped (reason names ::1), and no fixture is set up."""
        monkeypatch.setattr(probes, "_ipv6_cache", False)
        pytester.makepyfile(
            """
import pytest

@pytest.fixture
def never():
    raise AssertionError("fixtures must not run for a skipped test")

@pytest.mark.requires_ipv6
def test_v6(never):
    pass

def test_v4(reserved_tcp_port):
    pass
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_requires_ipv6_*.py:*IPv6*::1*"])

    def test_requires_ipv6_runs_when_available(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With IPv6 the marked test runs."""
        monkeypatch.setattr(probes, "_ipv6_cache", True)
        pytester.makepyfile(
            "import pytest\n@pytest.mark.requires_ipv6\ndef test_v6():\n    pass\n"
        )
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)

    def test_requires_ipv6_binds_ipv6_when_the_host_has_it(
        self, pytester: pytest.Pytester
    ) -> None:
        """On this host the probe's answer is right: the marked test really binds ::1."""
        pytester.makepyfile(
            """
import socket, pytest

@pytest.mark.requires_ipv6
def test_v6(reserved_port_factory):
    port = reserved_port_factory(family=socket.AF_INET6)
    with socket.create_server(("::1", port), family=socket.AF_INET6):
        pass
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        if testing.ipv6_available():
            result.assert_outcomes(passed=1)
        else:
            result.assert_outcomes(skipped=1)

    def test_requires_unix_socket(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """requires_unix_socket skips with a reason when unix sockets cannot be bound."""
        pytester.makepyfile(
            "import pytest\n@pytest.mark.requires_unix_socket\ndef test_u():\n    pass\n"
        )
        monkeypatch.setattr(probes, "_unix_cache", False)
        result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*AF_UNIX*"])
        monkeypatch.setattr(probes, "_unix_cache", True)
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)

    def test_requires_internet_skipped_unless_opted_in(
        self, pytester: pytest.Pytester, no_internet_env: None
    ) -> None:
        """Without --portsafe-internet or PORTSAFE_INTERNET the test is skipped, not run."""
        pytester.makepyfile(
            """
import pytest

@pytest.mark.requires_internet
def test_net():
    raise AssertionError("must not run")
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*--portsafe-internet*PORTSAFE_INTERNET=1*"])

    @pytest.mark.parametrize(
        ("args", "env"),
        [(["--portsafe-internet"], None), ([], "1"), ([], "yes")],
        ids=["flag", "env-1", "env-yes"],
    )
    def test_requires_internet_opt_in_runs_and_turns_transient_errors_into_skips(
        self,
        pytester: pytest.Pytester,
        monkeypatch: pytest.MonkeyPatch,
        args: list[str],
        env: str | None,
    ) -> None:
        """Opted in, tests run; transient errors (raised on purpose) skip, others fail."""
        monkeypatch.delenv(testing.INTERNET_ENV, raising=False)
        if env is not None:
            monkeypatch.setenv(testing.INTERNET_ENV, env)
        pytester.makepyfile(
            """
import errno, socket, pytest

pytestmark = pytest.mark.requires_internet

def test_passes():
    pass

def test_reset():
    raise ConnectionResetError(errno.ECONNRESET, "reset by peer")

def test_timeout():
    raise TimeoutError("timed out")

@pytest.mark.requires_internet("pypi.org")
def test_named_resource():
    raise socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution")

@pytest.mark.requires_internet(errnos=[errno.EPIPE])
def test_custom_errnos():
    raise BrokenPipeError(errno.EPIPE, "broken pipe")

def test_real_bug():
    raise ValueError("not a network problem")
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider", "-rs", *args)
        result.assert_outcomes(passed=1, skipped=4, failed=1)
        result.stdout.fnmatch_lines(["*Resource 'pypi.org' is not available*"])
        result.stdout.fnmatch_lines(["SKIPPED [[]*[]] test_requires_internet_*.py:*"])

    def test_requires_internet_async_test(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An asyncio test (pytest-asyncio) raising a transient error is skipped too."""
        pytest.importorskip("pytest_asyncio")
        monkeypatch.setenv(testing.INTERNET_ENV, "1")
        pytester.makepyfile(
            """
import pytest

@pytest.mark.asyncio
@pytest.mark.requires_internet
async def test_net():
    raise ConnectionRefusedError(111, "refused")
"""
        )
        result = pytester.runpytest(
            "-p", "no:cacheprovider"
        )
        result.assert_outcomes(skipped=1)

    def test_bad_env_value_is_an_error_naming_it(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """PORTSAFE_INTERNET=maybe errors the marked test and says what to set instead."""
        monkeypatch.setenv(testing.INTERNET_ENV, "maybe")
        pytester.makepyfile(
            "import pytest\n@pytest.mark.requires_internet\ndef test_net():\n    pass\n"
            "def test_other():\n    pass\n"
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*PORTSAFE_INTERNET='maybe' is not understood*"])

    def test_malformed_marker_is_an_error(
        self, pytester: pytest.Pytester, no_internet_env: None
    ) -> None:
        """A marker with arguments it does not take errors even when it would skip."""
        pytester.makepyfile(
            "import pytest\n@pytest.mark.requires_internet(42)\ndef test_net():\n    pass\n"
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*resource name must be a str, not 42*"])


class TestMarkerClash:
    def test_marker_declared_in_ini_is_left_alone_with_one_warning(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A project's own requires_ipv6 wins: portsafe does not skip it and warns once."""
        monkeypatch.setattr(probes, "_ipv6_cache", False)
        pytester.makeini("[pytest]\nmarkers =\n    requires_ipv6: the project's own meaning\n")
        pytester.makepyfile(
            """
import pytest

@pytest.mark.requires_ipv6
def test_a():
    pass

@pytest.mark.requires_ipv6
def test_b():
    pass

@pytest.mark.requires_unix_socket
def test_c():
    pass
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
        result.assert_outcomes(passed=3)
        assert result.stdout.str().count("portsafe: marker(s) requires_ipv6") == 1
        result = pytester.runpytest("-p", "no:cacheprovider", "--markers")
        result.stdout.fnmatch_lines(["*requires_ipv6: the project's own meaning*"])
        result.stdout.no_fnmatch_line("*requires_ipv6: skip when*")

    def test_marker_declared_by_a_conftest_plugin_is_left_alone(
        self, pytester: pytest.Pytester, no_internet_env: None
    ) -> None:
        """A marker another plugin adds in pytest_configure is detected too."""
        pytester.makeconftest(
            """
def pytest_configure(config):
    config.addinivalue_line("markers", "requires_internet: someone else's")
"""
        )
        pytester.makepyfile(
            "import pytest\n@pytest.mark.requires_internet\ndef test_net():\n    pass\n"
        )
        result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*portsafe: marker(s) requires_internet are already*"])

    def test_no_warning_without_a_clash(self, pytester: pytest.Pytester) -> None:
        """A project that does not declare these markers sees no portsafe warning."""
        pytester.makepyfile("def test_it():\n    pass\n")
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        result.stdout.no_fnmatch_line("*portsafe: marker*")
        result.stdout.no_fnmatch_line("*PytestConfigWarning*")


ASYNCIO_TESTS = (
    RECORD
    + """
import socket, pytest, portsafe

def held(port, socktype):
    try:
        portsafe.reserve_port(ports=[port], socktype=socktype).release()
    except portsafe.NoFreePortError:
        return True
    return False

def test_ports(unused_tcp_port, unused_udp_port):
    record(held(unused_tcp_port, socket.SOCK_STREAM), held(unused_udp_port, socket.SOCK_DGRAM))

@pytest.mark.parametrize("i", range(2))
def test_factories(i, unused_tcp_port_factory, unused_udp_port_factory):
    a, b = unused_tcp_port_factory(), unused_tcp_port_factory()
    u = unused_udp_port_factory()
    assert a != b
    record(held(a, socket.SOCK_STREAM), held(u, socket.SOCK_DGRAM))
"""
)


class TestAsyncioPatch:
    @pytest.fixture(autouse=True)
    def _needs_pytest_asyncio(self) -> None:
        pytest.importorskip("pytest_asyncio")

    def run(self, pytester: pytest.Pytester, *args: str) -> list[bool]:
        pytester.makepyfile(ASYNCIO_TESTS)
        result = pytester.runpytest(
            "-p", "no:cacheprovider", *args
        )
        result.assert_outcomes(passed=3)
        words = (pytester.path / "ports.txt").read_text().split()
        return [word == "True" for word in words]

    def test_off_by_default(self, pytester: pytest.Pytester) -> None:
        """Without the setting, pytest-asyncio's own fixtures are untouched (nothing held)."""
        assert self.run(pytester) == [False] * 6

    def test_command_line_flag(self, pytester: pytest.Pytester) -> None:
        """--portsafe-patch-asyncio makes every unused_* fixture hand out held ports."""
        assert self.run(pytester, "--portsafe-patch-asyncio") == [True] * 6

    def test_ini_option(self, pytester: pytest.Pytester) -> None:
        """portsafe_patch_asyncio = true in the ini file does the same."""
        pytester.makeini("[pytest]\nportsafe_patch_asyncio = true\n")
        assert self.run(pytester) == [True] * 6

    def test_same_scopes_as_pytest_asyncio(self, pytester: pytest.Pytester) -> None:
        """The overrides keep pytest-asyncio's scopes (function ports, session factories)."""
        result = pytester.runpytest(
            "-p", "no:cacheprovider", "--portsafe-patch-asyncio", "--fixtures",
        )
        result.stdout.fnmatch_lines(
            [
                "unused_tcp_port -- *portsafe*_pytest*pickers.py:*",
                "unused_udp_port -- *portsafe*_pytest*pickers.py:*",
                "unused_tcp_port_factory [[]session scope[]] -- *portsafe*_pytest*pickers.py:*",
                "unused_udp_port_factory [[]session scope[]] -- *portsafe*_pytest*pickers.py:*",
            ]
        )

    def test_conftest_definition_still_wins(self, pytester: pytest.Pytester) -> None:
        """A project's own unused_tcp_port in conftest.py is left alone."""
        pytester.makeconftest(
            "import pytest\n@pytest.fixture\ndef unused_tcp_port():\n    return 7\n"
        )
        pytester.makepyfile("def test_it(unused_tcp_port):\n    assert unused_tcp_port == 7\n")
        pytester.runpytest(
            "-p", "no:cacheprovider", "--portsafe-patch-asyncio",
        ).assert_outcomes(passed=1)

    def test_factory_ports_released_after_session(self, pytester: pytest.Pytester) -> None:
        """Ports from the session-scoped factory are released when the session ends."""
        pytester.makepyfile(
            RECORD
            + "def test_it(unused_tcp_port_factory):\n"
            "    record(unused_tcp_port_factory(), unused_tcp_port_factory())\n"
        )
        pytester.runpytest(
            "-p", "no:cacheprovider", "--portsafe-patch-asyncio",
        ).assert_outcomes(passed=1)
        for port in read_ports(pytester):
            assert_reservable(port)


NO_IPV6_NETNS = (
    "ip link set lo up && "
    "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1 && "
    'exec "$0" -m pytest -p no:cacheprovider -rs "$@"'
)


def no_ipv6_command() -> list[str]:
    """A command prefix running in a new network namespace without IPv6, or skip."""
    if not all(shutil.which(tool) for tool in ("unshare", "ip", "sysctl")):
        pytest.skip("needs unshare, ip and sysctl to build a host without IPv6")
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", NO_IPV6_NETNS.replace('exec "$0" -m pytest', "true")],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr!r}")
    return ["unshare", "-n", "sh", "-c", NO_IPV6_NETNS, sys.executable]


class TestWithoutIPv6:
    def test_everything_ipv4_works_on_a_host_without_ipv6(
        self, pytester: pytest.Pytester
    ) -> None:
        """In a network namespace with IPv6 disabled (Docker's default), IPv4 use works."""
        command = no_ipv6_command()
        pytester.makepyfile(
            """
import socket, pytest
from portsafe import testing

def test_ipv4(reserved_tcp_port, reserved_udp_port, reserved_port_factory, tcp_listener,
              reserved_tcp_port_session, reserved_port_factory_session):
    assert not testing.ipv6_available()
    with socket.create_server(("127.0.0.1", reserved_tcp_port)):
        pass
    both = reserved_port_factory(socktype=0)
    with socket.create_server(("127.0.0.1", both)):
        pass
    reserved_port_factory(family=socket.AF_UNSPEC)  # "both families" means IPv4 here
    reserved_port_factory_session(socktype=socket.SOCK_DGRAM)
    with socket.create_connection(tcp_listener.getsockname(), timeout=5):
        tcp_listener.accept()[0].close()

@pytest.mark.requires_ipv6
def test_v6():
    raise AssertionError("must be skipped")
"""
        )
        result = pytester.run(*command, timeout=120)
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        result.stdout.fnmatch_lines(["*IPv6 is not available*", "*1 passed, 1 skipped*"])


class TestPlainFunctions:
    def test_declared_marker_names(self) -> None:
        """Names are read from 'name(args): help' lines, ignoring blanks."""
        lines = ["slow: slow", "net(host): needs host", "  plain  ", ""]
        assert pytest_plugin.declared_marker_names(lines) == {"slow", "net", "plain"}

    def test_markers_to_register_splits_clashes(self) -> None:
        """Only undeclared markers are registered; clashes are listed, sorted."""
        owned, clashing = pytest_plugin.markers_to_register(
            {"requires_ipv6", "requires_internet", "other"}
        )
        assert list(owned) == ["requires_unix_socket"]
        assert clashing == ["requires_internet", "requires_ipv6"]

    @pytest.mark.parametrize(
        ("mark", "expected"),
        [
            (pytest.mark.requires_internet, ("network", {})),
            (pytest.mark.requires_internet("x", timeout=3), ("x", {"timeout": 3.0})),
            (
                pytest.mark.requires_internet(resource_name="y", errnos=[errno.EPIPE]),
                ("y", {"errnos": (errno.EPIPE,)}),
            ),
        ],
    )
    def test_internet_marker_options(
        self, mark: pytest.MarkDecorator, expected: tuple[str, dict[str, object]]
    ) -> None:
        """Marker arguments map onto transient_internet's, leaving defaults out."""
        assert pytest_plugin.internet_marker_options(mark.mark) == expected

    @pytest.mark.parametrize(
        "mark",
        [
            pytest.mark.requires_internet("a", "b"),
            pytest.mark.requires_internet(retries=3),
            pytest.mark.requires_internet(timeout="soon"),
            pytest.mark.requires_internet(errnos=["EPIPE"]),
        ],
    )
    def test_internet_marker_options_rejects_bad_arguments(
        self, mark: pytest.MarkDecorator
    ) -> None:
        """Unknown or wrongly typed marker arguments raise TypeError naming them."""
        with pytest.raises(TypeError):
            pytest_plugin.internet_marker_options(mark.mark)

    def test_skip_reason(
        self, monkeypatch: pytest.MonkeyPatch, no_internet_env: None
    ) -> None:
        """Each missing requirement gives its own reason; nothing missing gives None."""
        monkeypatch.setattr(probes, "_ipv6_cache", False)
        monkeypatch.setattr(probes, "_unix_cache", True)
        reason = pytest_plugin.skip_reason
        assert reason({"requires_internet"}, internet_opt_in=False) == (
            testing.INTERNET_SKIP_REASON
        )
        assert reason({"requires_internet"}, internet_opt_in=True) is None
        assert reason({"requires_ipv6"}, internet_opt_in=False) == testing.IPV6_SKIP_REASON
        assert reason({"requires_unix_socket"}, internet_opt_in=False) is None


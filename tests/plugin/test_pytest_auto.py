"""Auto mode's pytest switch: --portsafe-auto, its aliases, PORTSAFE_AUTO, and the summary.

Inner runs are in-process where they can be (auto mode is turned off again at the end
of each, which the ``auto_env`` fixture checks) and subprocesses under xdist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from tests.plugin.test_pytest_plugin import ASYNCIO_TESTS, assert_reservable
from tests.support import CHILDREN

# Imported at collection, before any pytester snapshot of sys.modules: pytester drops
# modules first imported during a test, and a later run would then find _auto's
# "portsafe._auto.sockets" missing from sys.modules and count nothing.
from portsafe._auto import switch as _auto
from portsafe._platform import NAMES
from portsafe._pytest import auto as _pytest_auto

if TYPE_CHECKING:
    from collections.abc import Iterator




PICKER_TEST = """
import os, socket, subprocess, sys, pytest, portsafe

def pick():
    # the hand-written bind-close picker the switch exists for
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def test_pick():
    port = pick()
    low, high = portsafe.ephemeral_port_range()
    with open("result.txt", "w") as f:
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ.get('PORTSAFE_AUTO'))"],
            capture_output=True, text=True, check=True).stdout.strip()
        try:
            portsafe.reserve_port(ports=[port]).release()
            held = False
        except portsafe.NoFreePortError:
            held = True
        f.write(f"{port} {not low <= port <= high} {held} {child}")
    with socket.create_server(("127.0.0.1", port)):  # the caller's own later bind works
        pass
"""


# "released after" is checked by reserving the port again: in a lock directory of the
# test's own (conftest.py), since in the shared one another run may take it first
pytestmark = pytest.mark.usefixtures("private_lock_dir")


@pytest.fixture
def auto_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PORTSAFE_AUTO from the outer run; auto mode off before and after."""

    monkeypatch.delenv("PORTSAFE_AUTO", raising=False)
    assert not _auto.enabled()
    yield
    assert not _auto.enabled(), "the inner run left auto mode on"


SECCOMP = str(CHILDREN / "seccomp.py")


def unusable_lock_system(monkeypatch: pytest.MonkeyPatch,
                         tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """What makes reservations impossible for a command: on Linux, a seccomp filter that
    refuses the unix sockets names need (the command prefix returned); elsewhere a
    lock directory that cannot be made."""
    if NAMES:
        if subprocess.run([sys.executable, SECCOMP, sys.executable, "-c", "pass"],
                          check=False).returncode:
            pytest.skip("seccomp filters cannot be installed here")
        return [sys.executable, SECCOMP]
    not_a_dir = tmp_path_factory.mktemp("locks") / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(not_a_dir))
    return []


def run_without_reservations(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                             tmp_path_factory: pytest.TempPathFactory,
                             *args: str) -> pytest.RunResult:
    """FALLBACK_TESTS with --portsafe-auto and *args*, where nothing can be reserved."""
    prefix = unusable_lock_system(monkeypatch, tmp_path_factory)
    pytester.makepyfile(FALLBACK_TESTS)
    return pytester.run(*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                        "--portsafe-auto", *args)


def read_result(pytester: pytest.Pytester) -> tuple[int, bool, bool, str]:
    port, outside, held, child = (pytester.path / "result.txt").read_text().split()
    return int(port), outside == "True", held == "True", child


class TestAutoSwitch:
    @pytest.mark.parametrize(
        ("args", "ini", "source"),
        [
            (["--portsafe-auto"], "", "--portsafe-auto"),
            ([], "portsafe_auto = true", "ini portsafe_auto"),
            (["--portsafe-patch-asyncio"], "", "--portsafe-patch-asyncio"),
            ([], "portsafe_patch_asyncio = true", "ini portsafe_patch_asyncio"),
        ],
        ids=["flag", "ini", "alias-flag", "alias-ini"],
    )
    def test_switch_reserves_binds_to_port_0_and_reaches_child_processes(
        self, pytester: pytest.Pytester, auto_env: None, args: list[str], ini: str, source: str
    ) -> None:
        """Each spelling: a bind-close picker gets a held port outside the ephemeral range,
        children see PORTSAFE_AUTO=1, the summary says so; afterwards nothing is left."""
        if ini:
            pytester.makeini(f"[pytest]\n{ini}\n")
        pytester.makepyfile(PICKER_TEST)
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        result.assert_outcomes(passed=1)
        port, outside, held, child = read_result(pytester)
        assert (outside, held, child) == (True, True, "1")
        result.stdout.fnmatch_lines([
            "*= portsafe auto mode =*",
            f"auto mode was on ({source}): 1 port reserved; 0 fallbacks",
        ])
        result.stdout.fnmatch_lines([f"portsafe: auto mode on ({source}): *"])
        assert "PORTSAFE_AUTO" not in os.environ
        assert_reservable(port)  # disable() at the end released the lease

    def test_environment_variable_turns_it_on(
        self, pytester: pytest.Pytester, auto_env: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """PORTSAFE_AUTO=1 alone turns auto mode on for the run."""
        monkeypatch.setenv("PORTSAFE_AUTO", "1")
        pytester.makepyfile(PICKER_TEST)
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        _, outside, held, child = read_result(pytester)
        assert (outside, held, child) == (True, True, "1")
        result.stdout.fnmatch_lines(["auto mode was on (PORTSAFE_AUTO=1): 1 port reserved*"])
        assert os.environ["PORTSAFE_AUTO"] == "1"

    def test_environment_zero_turns_it_off_over_flag_and_ini(
        self, pytester: pytest.Pytester, auto_env: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """PORTSAFE_AUTO=0 wins over --portsafe-auto and the ini setting (opt out of addopts)."""
        monkeypatch.setenv("PORTSAFE_AUTO", "0")
        pytester.makeini("[pytest]\nportsafe_auto = true\naddopts = --portsafe-auto\n")
        pytester.makepyfile(PICKER_TEST)
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        _, _, held, child = read_result(pytester)
        assert (held, child) == (False, "0")
        result.stdout.no_fnmatch_line("*portsafe auto mode*")
        result.stdout.fnmatch_lines(
            ["portsafe: auto mode off: PORTSAFE_AUTO=0 overrides --portsafe-auto"]
        )

    def test_off_by_default_changes_nothing(
        self, pytester: pytest.Pytester, auto_env: None
    ) -> None:
        """Without the switch: no patch, no variable for children, no summary section."""
        pytester.makepyfile(
            PICKER_TEST
            + "\ndef test_unpatched():\n    from portsafe._auto import switch as _auto\n"
            "    assert not _auto.enabled()\n"
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=2)
        _, _, held, child = read_result(pytester)
        assert (held, child) == (False, "None")
        result.stdout.no_fnmatch_line("*auto mode*")

    def test_bad_environment_value_is_a_usage_error(
        self, pytester: pytest.Pytester, auto_env: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """PORTSAFE_AUTO=maybe stops the run with the one setting-error message."""
        monkeypatch.setenv("PORTSAFE_AUTO", "maybe")
        pytester.makepyfile("def test_it():\n    pass\n")
        result = pytester.runpytest("-p", "no:cacheprovider")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*PORTSAFE_AUTO='maybe': not a boolean; use 1 or 0*"])

    def test_header_says_whether_child_processes_are_covered(
        self, pytester: pytest.Pytester, auto_env: None
    ) -> None:
        """Where the start-up hook is missing (editable install), the header says so."""
        from portsafe._auto import switch as _auto

        pytester.makepyfile("def test_it():\n    pass\n")
        result = pytester.runpytest("-p", "no:cacheprovider", "--portsafe-auto")
        result.assert_outcomes(passed=1)
        if _auto.hook_installed():
            result.stdout.no_fnmatch_line("*start-up hook*")
        else:
            result.stdout.fnmatch_lines(["portsafe: the start-up hook*is not installed*"])

    def test_conftest_picker_like_uvicorns_is_covered(
        self, pytester: pytest.Pytester, auto_env: None
    ) -> None:
        """A bind-close fixture copied into conftest.py (as uvicorn's) gets a held port."""
        pytester.makeconftest(
            """
import contextlib, socket, pytest

@pytest.fixture
def unused_tcp_port():
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
"""
        )
        pytester.makepyfile(
            """
import socket, pytest, portsafe

def test_it(unused_tcp_port):
    with pytest.raises(portsafe.NoFreePortError):
        portsafe.reserve_port(ports=[unused_tcp_port])
    with socket.create_server(("127.0.0.1", unused_tcp_port)):
        pass
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider", "--portsafe-auto")
        result.assert_outcomes(passed=1)


FALLBACK_TESTS = """
import socket, pytest

@pytest.mark.parametrize("i", range(4))
def test_bind(i):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))   # must never fail, even with reservations impossible
        s.listen()
"""


class TestAutoSummary:
    def test_fallbacks_are_reported_and_never_fail_a_bind_under_w_error(
        self,
        pytester: pytest.Pytester,
        auto_env: None,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        """With no way to reserve (names refused by a sandbox on Linux, an unusable lock
        directory elsewhere) every bind falls back (-W error or not): the tests pass and
        the summary counts the fallbacks and names the reason."""
        result = run_without_reservations(pytester, monkeypatch, tmp_path_factory,
                                          "-W", "error")
        result.assert_outcomes(passed=4)
        result.stdout.fnmatch_lines([
            "auto mode was on (--portsafe-auto): 0 ports reserved; 4 fallbacks",
            "4 binds to port 0 fell back to the kernel's pick*",
            "  - *",
        ])

    def test_xdist_workers_are_summed(
        self, pytester: pytest.Pytester, auto_env: None
    ) -> None:
        """Under -n 2 the controller's summary sums the ports reserved in both workers."""
        pytest.importorskip("xdist")
        pytester.makepyfile(FALLBACK_TESTS.replace("range(4)", "range(6)"))
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--portsafe-auto", "-n", "2"
        )
        result.assert_outcomes(passed=6)
        expected = ("auto mode was on (--portsafe-auto): 6 ports reserved, summed over 2 "
                    "xdist workers; 0 fallbacks")
        result.stdout.fnmatch_lines([expected])

    def test_xdist_fallbacks_are_summed(
        self,
        pytester: pytest.Pytester,
        auto_env: None,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        """Under -n 2, fallbacks in the workers reach the controller's summary."""
        pytest.importorskip("xdist")
        result = run_without_reservations(pytester, monkeypatch, tmp_path_factory,
                                          "-n", "2")
        result.assert_outcomes(passed=4)
        result.stdout.fnmatch_lines([
            "*0 ports reserved, summed over 2 xdist workers; 4 fallbacks",
            "4 binds to port 0 fell back*",
        ])

    def test_pytest_asyncio_fixture_ports_are_counted(
        self, pytester: pytest.Pytester, auto_env: None
    ) -> None:
        """Ports from the pytest-asyncio replacements count in the summary too."""
        pytest.importorskip("pytest_asyncio")
        pytester.makepyfile(ASYNCIO_TESTS)
        result = pytester.runpytest("-p", "no:cacheprovider", "--portsafe-auto")
        result.assert_outcomes(passed=3)
        # 2 function ports + 2 x (2 TCP + 1 UDP) factory ports, none by bind(0)
        expected = ("*: 8 ports reserved (0 by binds and known pickers, 8 by pytest-asyncio "
                    "fixtures); 0 fallbacks")
        result.stdout.fnmatch_lines([expected])


class TestPytestAsyncioUnderAuto:
    @pytest.fixture(autouse=True)
    def _needs_pytest_asyncio(self) -> None:
        pytest.importorskip("pytest_asyncio")

    def run(self, pytester: pytest.Pytester, *args: str) -> list[bool]:
        pytester.makepyfile(ASYNCIO_TESTS)
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        result.assert_outcomes(passed=3)
        return [word == "True" for word in (pytester.path / "ports.txt").read_text().split()]

    def test_switch_replaces_the_fixtures(self, pytester: pytest.Pytester, auto_env: None) -> None:
        """--portsafe-auto makes every unused_* fixture hand out held ports (replacements)."""
        assert self.run(pytester, "--portsafe-auto") == [True] * 6
        result = pytester.runpytest("-p", "no:cacheprovider", "--portsafe-auto", "--fixtures")
        result.stdout.fnmatch_lines(["unused_tcp_port -- *portsafe*_pytest*pickers.py:*"])

    def test_interception_alone_covers_the_originals(
        self, pytester: pytest.Pytester, auto_env: None
    ) -> None:
        """Without the replacements (-p no:portsafe-asyncio-ports), pytest-asyncio's own
        bind-and-close fixtures still get held ports: the bind(0) lease covers them. The
        replacements stay for their longer, exact hold (see _pytest_pickers)."""
        args = ("--portsafe-auto", "-p", "no:portsafe-asyncio-ports")
        assert self.run(pytester, *args) == [True] * 6
        result = pytester.runpytest("-p", "no:cacheprovider", *args, "--fixtures")
        result.stdout.fnmatch_lines(["unused_tcp_port -- *pytest_asyncio*"])


class TestAutoPlainFunctions:
    def test_decide_precedence(self) -> None:
        """0 in the environment wins; then flag, alias flag, ini, alias ini, environment."""
        def decide(**kw: object) -> tuple[bool, str]:
            args = {"flag": False, "alias_flag": False, "ini": False, "alias_ini": False,
                    "env": None, **kw}
            return _pytest_auto.decide(**args)  # type: ignore[arg-type]

        assert decide() == (False, "")
        assert decide(env=False, flag=True, ini=True) == (False, "PORTSAFE_AUTO=0")
        assert decide(env=True, flag=True) == (True, "--portsafe-auto")
        assert decide(alias_flag=True, ini=True) == (True, "--portsafe-patch-asyncio")
        assert decide(ini=True, env=True) == (True, "ini portsafe_auto")
        assert decide(alias_ini=True) == (True, "ini portsafe_patch_asyncio")
        assert decide(env=True) == (True, "PORTSAFE_AUTO=1")

    def test_merge_stats_sums_and_tolerates_missing_keys(self) -> None:
        """Counts add up over processes; missing or odd values count as zero."""
        merged = _pytest_auto.merge_stats([
            {"reserved": 3, "fallbacks": 1, "fallback_reasons": ["a"], "leases_held": 2},
            {"reserved": 4, "fixtures": 2, "fallback_reasons": ["a", "b"]},
            {"reserved": "x"},
        ])
        assert merged == {"reserved": 7, "fallbacks": 1, "leases_held": 2, "fixtures": 2,
                          "probes_leased": 0, "refused_by_lease": 0, "uncovered": [],
                          "fallback_reasons": ["a", "a", "b"], "processes": 3}

    def test_uncovered_pickers_are_summed_by_place_and_never_hidden(self) -> None:
        """The same place from two workers is one line with the counts summed; the first
        line says how many uncovered pickers ran even with 0 fallbacks."""
        seen = {"what": "connect probe", "where": "t.py:3", "count": 2}
        merged = _pytest_auto.merge_stats([
            {"reserved": 1, "probes_leased": 4, "refused_by_lease": 2, "uncovered": [seen]},
            {"uncovered": [seen, {"what": "explicit bind", "where": "u.py:9"}]},
        ])
        lines = _pytest_auto.summary_lines("--portsafe-auto", merged, workers=2)
        assert lines[0].endswith("0 fallbacks; 2 uncovered pickers (below)")
        assert lines[1] == ("explicit-port probes covered: 4 probes leased to its family, "
                            "2 binds refused because another family's probe held the port")
        assert lines[3:] == ["  - t.py:3: connect probe (4 times)",
                             "  - u.py:9: explicit bind (1 time)"]

    def test_summary_lists_distinct_reasons_capped(self) -> None:
        """Each distinct reason once, at most five, then how many more."""
        reasons = [f"r{i}" for i in range(7)] + ["r0"]
        merged = _pytest_auto.merge_stats([{"fallbacks": 9, "fallback_reasons": reasons}])
        lines = _pytest_auto.summary_lines("PORTSAFE_AUTO=1", merged, workers=0)
        assert lines[0] == "auto mode was on (PORTSAFE_AUTO=1): 0 ports reserved; 9 fallbacks"
        assert lines[2:] == [f"  - r{i}" for i in range(5)] + ["  ... and 2 other reasons"]

    def test_one_port_one_worker_is_singular(self) -> None:
        """Counts of one read as singular."""
        merged = _pytest_auto.merge_stats([{"reserved": 1, "fallbacks": 1}])
        lines = _pytest_auto.summary_lines("--portsafe-auto", merged, workers=1)
        assert lines[0].endswith("1 port reserved, summed over 1 xdist worker; 1 fallback")
        assert lines[1].startswith("1 bind to port 0 fell back")


CONNECT_SCANNER_TEST = """
import socket


def test_connect_scanner():
    for port in range(21000, 21100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                break  # refused: taken as free
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()


def test_bind_scanner():
    for port in range(21100, 21200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            break
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
"""


class TestSummaryNamesWhatItCannotCover:
    def test_connect_scanner_named_with_its_line_bind_scanner_counted(
        self, pytester: pytest.Pytester, auto_env: None
    ) -> None:
        """A connect_ex scanner is named with file:line; a bind scanner is covered."""
        pytester.makepyfile(test_scanners=CONNECT_SCANNER_TEST)
        result = pytester.runpytest("-p", "no:cacheprovider", "--portsafe-auto")
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines([
            "auto mode was on (--portsafe-auto): * 0 fallbacks; 1 uncovered picker (below)",
            "explicit-port probes covered: 1 probe leased to its family, *",
            "port pickers auto mode saw and could not cover (not race-free):",
            "  - test_scanners.py:7: connect probe (connect_ex refused, then bound): *",
        ])

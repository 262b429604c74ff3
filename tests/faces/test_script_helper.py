"""Tests for portsafe.script_helper: every helper runs real child interpreters."""

from __future__ import annotations

import os
import py_compile
import re
import shutil
import signal
import subprocess
import sys
import types
import unittest
import zipfile
from typing import ClassVar

import pytest

import portsafe
from portsafe import script_helper

pytestmark = pytest.mark.timeout(120)

_CACHE = "__cached_interp_requires_environment"
POSIX = os.name == "posix"


@pytest.fixture(autouse=True)
def _fresh_env_cache():
    """Each test starts and ends with CPython's cache of the -E probe cleared."""
    saved = script_helper.__dict__[_CACHE]
    script_helper.__dict__[_CACHE] = None
    yield
    script_helper.__dict__[_CACHE] = saved


@pytest.fixture
def no_env_needed(monkeypatch):
    """Pretend the interpreter starts fine with -E, whatever PYTHONHOME says here."""
    monkeypatch.setattr(script_helper, "interpreter_requires_environment", lambda: False)


class RecordingPopen(subprocess.Popen):  # type: ignore[type-arg]
    """A real Popen that remembers every command line it was given."""

    calls: ClassVar[list[list[object]]] = []

    def __init__(self, args, *a, **kw):
        RecordingPopen.calls.append(list(args))
        super().__init__(args, *a, **kw)


@pytest.fixture
def recorded(monkeypatch):
    """Swap subprocess.Popen for RecordingPopen and return its list of calls."""
    RecordingPopen.calls = []
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    return RecordingPopen.calls


class TestInterpreterRequiresEnvironment:
    def test_real_interpreter_needs_no_environment(self, monkeypatch):
        """This machine's interpreter starts with -E, so the answer is False."""
        monkeypatch.delenv("PYTHONHOME", raising=False)
        assert script_helper.interpreter_requires_environment() is False

    def test_result_is_cached_in_cpythons_global(self, monkeypatch):
        """The probe runs once; the answer lives in __cached_interp_requires_environment."""
        monkeypatch.delenv("PYTHONHOME", raising=False)
        calls = []
        real = subprocess.check_call

        def counting(*args, **kw):
            calls.append(args[0])
            return real(*args, **kw)

        monkeypatch.setattr(subprocess, "check_call", counting)
        assert script_helper.interpreter_requires_environment() is False
        assert script_helper.interpreter_requires_environment() is False
        assert len(calls) == 1
        assert calls[0][0] == sys.executable
        assert "-E" in calls[0]
        assert script_helper.__dict__[_CACHE] is False

    def test_failing_probe_means_required(self, monkeypatch):
        """A child that fails under -E makes the answer True (subprocess looked up late)."""
        monkeypatch.delenv("PYTHONHOME", raising=False)

        def failing(cmd, *a, **kw):
            raise subprocess.CalledProcessError(1, cmd)

        monkeypatch.setattr(subprocess, "check_call", failing)
        assert script_helper.interpreter_requires_environment() is True

    def test_pythonhome_counts_as_required_without_a_probe(self, monkeypatch):
        """PYTHONHOME set means True, and no child is started."""
        monkeypatch.setenv("PYTHONHOME", sys.prefix)

        def boom(*a, **kw):
            raise AssertionError("must not probe")

        monkeypatch.setattr(subprocess, "check_call", boom)
        assert script_helper.interpreter_requires_environment() is True

    def test_no_subprocess_platform_answers_false_and_skips(self, monkeypatch):
        """Where subprocesses don't exist the answer is False and runners raise SkipTest."""
        monkeypatch.delenv("PYTHONHOME", raising=False)
        monkeypatch.setattr(sys, "platform", "wasi")
        assert script_helper.interpreter_requires_environment() is False
        with pytest.raises(unittest.SkipTest):
            script_helper.run_python_until_end("-c", "pass")
        with pytest.raises(unittest.SkipTest):
            script_helper.run_python("-c", "pass")


class TestRunPythonUntilEnd:
    def test_returns_result_and_command_line(self, no_env_needed):
        """It returns ((rc, out, err), cmd_line) with -X faulthandler and -I by default."""
        res, cmd_line = script_helper.run_python_until_end("-c", "print('out')")
        assert res == (0, b"out\n", b"")
        assert cmd_line[:3] == [sys.executable, "-X", "faulthandler"]
        assert "-I" in cmd_line
        assert "-E" not in cmd_line
        assert res.cmd_line == cmd_line

    def test_env_vars_reach_child_and_drop_isolation(self, no_env_needed):
        """Keywords become environment variables; then neither -I nor -E is passed."""
        res, cmd_line = script_helper.run_python_until_end(
            "-c", "import os; print(os.environ['PORTSAFE_X'])", PORTSAFE_X="hello"
        )
        assert res.out == b"hello\n"
        assert "-I" not in cmd_line
        assert "-E" not in cmd_line

    def test_isolated_false_uses_e_flag(self, no_env_needed):
        """__isolated=False without env vars gives -E instead of -I."""
        _, cmd_line = script_helper.run_python_until_end("-c", "pass", __isolated=False)
        assert "-E" in cmd_line
        assert "-I" not in cmd_line

    def test_env_required_means_no_flags(self, monkeypatch):
        """When the interpreter needs its environment, neither -I nor -E is added."""
        monkeypatch.setattr(script_helper, "interpreter_requires_environment", lambda: True)
        _, cmd_line = script_helper.run_python_until_end("-c", "pass")
        assert "-I" not in cmd_line
        assert "-E" not in cmd_line

    def test_cwd(self, tmp_path, no_env_needed):
        """__cwd sets the child's working directory."""
        res, _ = script_helper.run_python_until_end(
            "-c", "import os; print(os.getcwd())", __cwd=str(tmp_path)
        )
        assert os.path.samefile(res.out.decode().strip(), tmp_path)

    def test_cleanenv_starts_from_nothing(self, monkeypatch, no_env_needed):
        """__cleanenv passes only the given variables (plus TERM), and no -E."""
        monkeypatch.setenv("PORTSAFE_LEAK", "1")
        res, cmd_line = script_helper.run_python_until_end(
            "-c", "import os; print(sorted(os.environ))", __cleanenv=True, PORTSAFE_ONLY="1"
        )
        names = eval(res.out)  # a list literal printed by the child
        assert "PORTSAFE_LEAK" not in names
        assert "PORTSAFE_ONLY" in names
        assert "TERM" in names
        assert "-E" not in cmd_line

    def test_term_is_blanked_unless_given(self, no_env_needed):
        """TERM is '' by default and kept when passed explicitly."""
        code = "import os; print(repr(os.environ['TERM']))"
        res, _ = script_helper.run_python_until_end("-c", code)
        assert res.out.strip() == b"''"
        res, _ = script_helper.run_python_until_end("-c", code, TERM="dumb")
        assert res.out.strip() == b"'dumb'"

    @pytest.mark.skipif(shutil.which("env") is None, reason="no 'env' command")
    def test_run_using_command_prefixes_the_interpreter(self, no_env_needed):
        """__run_using_command puts a wrapper command in front (CPython 3.13)."""
        env_cmd = shutil.which("env")
        res, cmd_line = script_helper.run_python_until_end(
            "-c",
            "import os; print(os.environ['PORTSAFE_WRAPPED'])",
            __run_using_command=[env_cmd, "PORTSAFE_WRAPPED=yes"],
        )
        assert res.out == b"yes\n"
        assert cmd_line[:3] == [env_cmd, "PORTSAFE_WRAPPED=yes", sys.executable]

    def test_popen_and_env_probe_are_looked_up_at_call_time(self, recorded, monkeypatch):
        """Patching subprocess.Popen and interpreter_requires_environment takes effect."""
        probes = []

        def fake_probe():
            probes.append(1)
            return True

        monkeypatch.setattr(script_helper, "interpreter_requires_environment", fake_probe)
        script_helper.run_python_until_end("-c", "pass")
        assert len(recorded) == 1
        assert probes == [1]
        assert "-I" not in recorded[0]

    def test_cached_probe_result_is_read_at_call_time(self, monkeypatch, recorded):
        """A value written to the cache global decides the flags of the next call."""
        monkeypatch.delenv("PYTHONHOME", raising=False)
        script_helper.__dict__[_CACHE] = True
        script_helper.run_python_until_end("-c", "pass")
        assert "-I" not in recorded[-1]
        script_helper.__dict__[_CACHE] = False
        script_helper.run_python_until_end("-c", "pass")
        assert "-I" in recorded[-1]


class TestTimeout:
    HANG = "import sys, time; print('started', flush=True); time.sleep(600)"

    def test_hung_child_is_stopped_and_reported(self, no_env_needed):
        """__timeout stops the child and raises ScriptTimeoutError with its output."""
        with pytest.raises(script_helper.ScriptTimeoutError) as info:
            script_helper.run_python_until_end("-c", self.HANG, __timeout=1)
        exc = info.value
        assert str(exc).startswith("Process did not exit within 1 second")
        assert "1 seconds" not in str(exc)
        assert "started" in str(exc)
        assert exc.timeout == 1
        assert exc.result is not None
        assert exc.result.out == b"started\n"
        assert exc.cmd_line[0] == sys.executable
        if POSIX:
            # SIGABRT after a stack dump; SIGKILL if it was still starting up
            assert exc.result.rc in (-signal.SIGABRT, -signal.SIGKILL)
            assert f"({signal.Signals(-exc.result.rc).name})" in str(exc)

    @pytest.mark.parametrize(
        ("seconds", "shown"),
        [
            (1, "1 second"),
            (1.0, "1 second"),
            (1.0001, "1 second"),
            (2, "2 seconds"),
            (0.5, "0.5 seconds"),
            (1 / 3, "0.333 seconds"),
            (90, "90 seconds"),
            (0.0001, "0.0001 seconds"),
        ],
    )
    def test_durations_read_as_english(self, seconds, shown):
        """'1 second', '0.5 seconds', never '1 seconds' or '0.333333 seconds'."""
        assert script_helper._seconds(seconds) == shown

    def test_timeout_error_is_assertion_timeout_and_portsafe_error(self, no_env_needed):
        """It fails a unittest test, and except TimeoutError / PortsafeError catch it."""
        with pytest.raises(script_helper.ScriptTimeoutError) as info:
            script_helper.assert_python_ok("-c", self.HANG, __timeout=0.5)
        assert isinstance(info.value, AssertionError)
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, portsafe.PortsafeError)

    def test_timeout_keyword_is_not_an_env_var(self, no_env_needed):
        """__timeout is consumed: the child still runs isolated and sees no such variable."""
        res, cmd_line = script_helper.run_python_until_end(
            "-c", "import os; print('__timeout' in os.environ)", __timeout=60
        )
        assert res.out == b"False\n"
        assert "-I" in cmd_line

    @pytest.mark.skipif(not POSIX, reason="grandchild bookkeeping uses POSIX signals")
    def test_grandchild_holding_the_pipes_does_not_hang(self, monkeypatch, no_env_needed):
        """A grandchild that keeps stdout open cannot stall the report after the kill."""
        monkeypatch.setattr(script_helper, "_DRAIN_SECONDS", 0.5)
        code = (
            "import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(600)\n"
        )
        with pytest.raises(script_helper.ScriptTimeoutError) as info:
            script_helper.run_python_until_end("-c", code, __timeout=3)
        result = info.value.result
        assert result is not None
        grandchild = int(result.out.split()[0])
        os.kill(grandchild, signal.SIGKILL)

    @pytest.mark.parametrize("bad", ["1", b"1", [1], True])
    def test_wrong_type_is_type_error(self, bad):
        """A timeout that is not a number raises TypeError naming it."""
        with pytest.raises(TypeError, match="timeout must be a number"):
            script_helper.run_python_until_end("-c", "pass", __timeout=bad)
        with pytest.raises(TypeError, match="timeout must be a number"):
            script_helper.run_python("-c", "pass", timeout=bad)

    @pytest.mark.parametrize("bad", [0, -1, float("nan")])
    def test_non_positive_is_invalid_setting(self, bad):
        """A zero, negative or NaN timeout raises InvalidSettingError (a ValueError)."""
        with pytest.raises(portsafe.InvalidSettingError, match="positive"):
            script_helper.run_python_until_end("-c", "pass", __timeout=bad)
        with pytest.raises(ValueError, match="positive"):
            script_helper.run_python("-c", "pass", timeout=bad)


# A child that hangs in two threads, after writing more to stderr than a pipe holds.
TWO_THREADS_HANG = """
import sys, threading, time
sys.stderr.write("noise\\n" * 20_000)
def worker_waits_here():
    time.sleep(600)
def main_waits_here():
    time.sleep(600)
threading.Thread(target=worker_waits_here, daemon=True).start()
print("started", flush=True)
main_waits_here()
"""

READY_THEN_HANG = "import time; print('started', flush=True); time.sleep(600)"


def spawn_ready(*args, **kw):
    """spawn_python(*args), returned once the child has printed its 'started' line."""
    p = script_helper.spawn_python(*args, **kw)
    assert p.stdout.readline() == b"started\n"
    return p


@pytest.mark.skipif(not POSIX, reason="a stack dump is asked for with SIGABRT")
class TestStackDumpOnTimeout:
    @pytest.mark.parametrize(
        ("isolated", "env", "flag"), [(None, None, "-I"), (None, {"PORTSAFE_X": "1"}, None)]
    )
    def test_every_threads_stack_is_in_the_report(self, no_env_needed, isolated, env, flag):
        """A hung child prints each thread's stack before it dies, with or without -I,
        and the whole of stderr is read: the dump at its end is in the report."""
        with pytest.raises(script_helper.ScriptTimeoutError) as info:
            script_helper.run_python("-c", TWO_THREADS_HANG, env=env, timeout=5)
        exc = info.value
        assert exc.result is not None
        assert (flag in exc.cmd_line) if flag else not {"-I", "-E"} & set(exc.cmd_line)
        assert exc.result.rc == -signal.SIGABRT
        assert exc.result.err.startswith(b"noise\n" * 20_000)
        dump = exc.result.err[len(b"noise\n" * 20_000):]
        assert dump.startswith(b"Fatal Python error: Aborted")
        assert b"in worker_waits_here" in dump
        assert b"in main_waits_here" in dump
        msg = str(exc)
        assert "printed the stack of every thread" in msg
        assert "in worker_waits_here" in msg
        assert "in main_waits_here" in msg

    def test_kill_python_asks_a_faulthandler_child_for_its_stacks(self):
        """kill_python(timeout=...) gets the stacks of a child run with -X faulthandler
        (stderr goes to stdout, so the dump is in the output kill_python collects)."""
        p = spawn_ready("-X", "faulthandler", "-c", READY_THEN_HANG)
        with pytest.raises(script_helper.ScriptTimeoutError) as info:
            script_helper.kill_python(p, timeout=0.5)
        assert p.returncode == -signal.SIGABRT
        assert info.value.result is not None
        assert b"Fatal Python error: Aborted" in info.value.result.out
        assert "line 1 in <module>" in str(info.value)

    def test_child_without_faulthandler_is_killed_and_told_how_to_get_one(self):
        """A child that would only die of SIGABRT is killed at once; the report says
        how to get a dump next time."""
        p = spawn_ready("-c", READY_THEN_HANG)
        with pytest.raises(script_helper.ScriptTimeoutError) as info:
            script_helper.kill_python(p, timeout=0.5)
        assert p.returncode == -signal.SIGKILL
        assert "without a stack dump" in str(info.value)
        assert "-X faulthandler" in str(info.value)

    @pytest.mark.skipif(shutil.which("sleep") is None, reason="no 'sleep' command")
    def test_non_python_child_is_killed(self):
        """A child that is not Python at all is killed, not crashed with SIGABRT."""
        p = subprocess.Popen(
            [shutil.which("sleep"), "600"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        with pytest.raises(script_helper.ScriptTimeoutError, match="without a stack dump"):
            script_helper.kill_python(p, timeout=0.5)
        assert p.returncode == -signal.SIGKILL

    @pytest.mark.parametrize(
        "handling",
        [
            "signal.signal(signal.SIGABRT, lambda *a: print('caught', flush=True))",
            "signal.signal(signal.SIGABRT, signal.SIG_IGN)",
        ],
    )
    def test_child_that_shrugs_off_sigabrt_is_killed_after_a_grace(
        self, monkeypatch, handling
    ):
        """A child that handles or ignores SIGABRT is still killed, and the report says
        no stacks were printed."""
        monkeypatch.setattr(script_helper, "_DUMP_SECONDS", 2.0)  # time to run its handler
        code = f"import signal, time\n{handling}\n{READY_THEN_HANG}"
        p = spawn_ready("-X", "faulthandler", "-c", code)
        with pytest.raises(script_helper.ScriptTimeoutError) as info:
            script_helper.kill_python(p, timeout=0.5)
        assert p.returncode == -signal.SIGKILL
        assert info.value.result is not None
        assert b"Fatal Python error" not in info.value.result.out
        msg = str(info.value)
        assert "was killed" in msg
        assert "printed the stack" not in msg
        if "print" in handling:  # it was asked, and said so
            assert b"caught" in info.value.result.out
            assert "sent SIGABRT for a stack dump but printed none" in msg

    def test_windows_falls_back_to_a_plain_kill(self, monkeypatch):
        """Where no signal can ask for a dump (Windows), the child is killed and the
        report says how a child can print its stacks itself."""
        p = spawn_ready("-X", "faulthandler", "-c", READY_THEN_HANG)
        monkeypatch.setattr(sys, "platform", "win32")
        with pytest.raises(script_helper.ScriptTimeoutError) as info:
            script_helper.kill_python(p, timeout=0.5)
        assert p.returncode == -signal.SIGKILL
        assert "Windows" in str(info.value)
        assert "faulthandler.dump_traceback_later" in str(info.value)

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
    def test_no_core_file_is_left_behind(self, tmp_path):
        """Dying of SIGABRT writes no core file, even where core files are enabled."""
        import resource

        with open("/proc/sys/kernel/core_pattern", encoding="ascii") as f:
            pattern = f.read().strip()
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        if pattern.startswith("|") or "/" in pattern or hard == 0:
            pytest.skip(f"core files do not land in the working directory here ({pattern})")

        def enable_core_files():
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))

        p = spawn_ready(
            "-X", "faulthandler", "-c", READY_THEN_HANG,
            cwd=tmp_path, preexec_fn=enable_core_files,
        )
        with pytest.raises(script_helper.ScriptTimeoutError):
            script_helper.kill_python(p, timeout=0.5)
        assert p.returncode == -signal.SIGABRT
        assert os.listdir(tmp_path) == []


class TestAssertPython:
    def test_ok_returns_unpackable_result(self):
        """assert_python_ok returns (rc, out, err) for a child that exits 0."""
        rc, out, err = script_helper.assert_python_ok("-c", "print('fine')")
        assert (rc, out, err) == (0, b"fine\n", b"")

    def test_ok_raises_with_cpythons_report(self):
        """A non-zero exit fails with the return code, command line and both streams."""
        with pytest.raises(AssertionError) as info:
            script_helper.assert_python_ok(
                "-c", "import sys; print('to out'); sys.exit('to err')"
            )
        msg = str(info.value)
        assert msg.startswith("Process return code is 1\ncommand line: [")
        assert "import sys; print('to out')" in msg
        assert "stdout:\n---\nto out\n---" in msg
        assert "stderr:\n---\nto err\n---" in msg

    def test_failure_returns_result(self):
        """assert_python_failure returns the result of a child that exits non-zero."""
        rc, _, err = script_helper.assert_python_failure("-c", "raise SystemExit(7)")
        assert rc == 7
        assert err == b""

    def test_failure_raises_when_child_succeeds(self):
        """An exit of 0 fails assert_python_failure with 'Process return code is 0'."""
        with pytest.raises(AssertionError, match="Process return code is 0\n"):
            script_helper.assert_python_failure("-c", "pass")

    @pytest.mark.skipif(not POSIX, reason="death by signal is POSIX")
    def test_report_names_the_signal(self):
        """A child killed by a signal is reported as '-9 (SIGKILL)' (CPython 3.14)."""
        with pytest.raises(AssertionError) as info:
            script_helper.assert_python_ok(
                "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
            )
        assert str(info.value).startswith("Process return code is -9 (SIGKILL)\n")

    def test_private_assert_python_keeps_cpythons_signature(self):
        """_assert_python(expected_success, *args) exists for CPython's own tests."""
        assert script_helper._assert_python(True, "-c", "pass").rc == 0
        assert script_helper._assert_python(False, "-c", "1/0").rc == 1


class TestImportHint:
    """An isolated child (-I) that cannot import a module the test process sees is
    told why: -I keeps the current directory and sys.path[0] off its sys.path."""

    @pytest.mark.parametrize(
        "args", [("-c", "import portsafe_hint_mod"), ("-m", "portsafe_hint_mod.cli")]
    )
    def test_module_in_the_current_directory(self, tmp_path, monkeypatch, no_env_needed, args):
        """The hint names the module and the directory and suggests __isolated=False,
        which then works."""
        script_helper.make_script(tmp_path, "portsafe_hint_mod", "")
        monkeypatch.chdir(tmp_path)
        with pytest.raises(AssertionError) as info:
            script_helper.assert_python_ok(*args)
        msg = str(info.value)
        assert "No module named" in msg  # the child's own error comes first
        hint = msg.split("\n\nhint: ", 1)[1]
        assert hint.startswith(f"'portsafe_hint_mod' is in the child's working directory "
                               f"({tmp_path})")
        assert "isolated (-I)" in hint
        assert "__isolated=False" in hint
        script_helper.assert_python_ok("-c", "import portsafe_hint_mod", __isolated=False)

    def test_module_in_the_childs_cwd(self, tmp_path, no_env_needed):
        """__cwd is the child's current directory, so that is where the hint looks."""
        script_helper.make_pkg(tmp_path / "portsafe_hint_pkg")
        with pytest.raises(AssertionError, match="hint: 'portsafe_hint_pkg' is in the child's"):
            script_helper.assert_python_ok(
                "-c", "import portsafe_hint_pkg", __cwd=str(tmp_path)
            )

    def test_module_first_on_this_processs_sys_path(self, tmp_path, monkeypatch, no_env_needed):
        """A module found through our sys.path[0] gets the PYTHONPATH advice, which works."""
        lib = tmp_path / "lib"
        lib.mkdir()
        script_helper.make_script(lib, "portsafe_hint_lib", "")
        monkeypatch.syspath_prepend(str(lib))
        monkeypatch.chdir(tmp_path)
        with pytest.raises(AssertionError) as info:
            script_helper.assert_python_ok("-c", "import portsafe_hint_lib")
        hint = str(info.value).split("\n\nhint: ", 1)[1]
        assert hint.startswith(f"'portsafe_hint_lib' is importable here from {lib}")
        assert "PYTHONPATH" in hint
        script_helper.assert_python_ok("-c", "import portsafe_hint_lib", PYTHONPATH=str(lib))

    def test_no_hint_for_a_module_that_is_nowhere(self, tmp_path, monkeypatch, no_env_needed):
        """A module missing everywhere gets the plain report."""
        monkeypatch.chdir(tmp_path)
        with pytest.raises(AssertionError) as info:
            script_helper.assert_python_ok("-c", "import portsafe_no_such_module")
        assert "No module named 'portsafe_no_such_module'" in str(info.value)
        assert "hint:" not in str(info.value)

    def test_no_hint_when_the_child_was_not_isolated(self, tmp_path, monkeypatch):
        """Without -I the hint's reason does not apply, so there is none."""
        script_helper.make_script(tmp_path, "portsafe_hint_mod", "")
        monkeypatch.chdir(tmp_path)
        with pytest.raises(AssertionError) as info:
            script_helper.assert_python_ok(
                "-c", "import sys; del sys.path[0]; import portsafe_hint_mod", PORTSAFE_X="1"
            )
        assert "No module named 'portsafe_hint_mod'" in str(info.value)
        assert "hint:" not in str(info.value)


# Inner tests that fail in portsafe's helpers on the user's behalf.
FAILING_HELPERS = """
import pytest
from portsafe import script_helper

def test_assert_python_ok():
    script_helper.assert_python_ok("-c", "raise SystemExit('child failed')")

def test_assert_python_failure():
    script_helper.assert_python_failure("-c", "pass")

def test_run_python_expect_success():
    script_helper.run_python("-c", "1/0", expect_success=True)

def test_timeout():
    script_helper.assert_python_ok("-c", "import time; time.sleep(600)", __timeout=0.5)

def test_kill_python_timeout():
    p = script_helper.spawn_python("-c", "import time; time.sleep(600)")
    script_helper.kill_python(p, timeout=0.5)

def test_bad_timeout():
    script_helper.run_python("-c", "pass", timeout="soon")

def test_make_script(tmp_path):
    script_helper.make_script(tmp_path, "x", 42)
"""


class TestTracebacks:
    @pytest.mark.parametrize("tb", ["auto", "short"])
    def test_failures_point_at_the_test_not_at_portsafe(self, pytester, tb):
        """pytest shows the test's line and the report, and none of portsafe's frames."""
        pytester.makepyfile(test_inner=FAILING_HELPERS)
        result = pytester.runpytest("-p", "no:cacheprovider", f"--tb={tb}")
        result.assert_outcomes(failed=7)
        text = result.stdout.str()
        assert "child failed" in text
        assert "did not exit within 0.5 seconds" in text
        # pytest ends each frame it shows with "file.py:line: ..."
        frames = re.findall(r"^(\S+\.py):\d+: ", text, re.MULTILINE)
        assert len(frames) >= 7
        assert set(frames) == {"test_inner.py"}
        assert "script_helper.py" not in text

    def test_unexpected_errors_keep_their_frames(self, pytester, tmp_path):
        """An error that is not a report (here Popen's, for a missing cwd) keeps the
        frame that made it, so a bug in portsafe stays visible."""
        missing = tmp_path / "missing"
        pytester.makepyfile(test_inner=f"""
            from portsafe import script_helper

            def test_missing_cwd():
                script_helper.run_python("-c", "pass", cwd={str(missing)!r})
        """)
        result = pytester.runpytest("-p", "no:cacheprovider", "--tb=short")
        result.assert_outcomes(failed=1)
        text = result.stdout.str()
        assert "FileNotFoundError" in text
        assert "script_helper.py" in text
        assert "in _run" in text


class TestPythonRunResult:
    def test_is_cpythons_named_tuple(self):
        """Fields rc, out, err; _PythonRunResult is the same type."""
        res = script_helper.PythonRunResult(3, b"o", b"e")
        assert res == (3, b"o", b"e")
        assert (res.rc, res.out, res.err) == (3, b"o", b"e")
        assert script_helper._PythonRunResult is script_helper.PythonRunResult

    @pytest.mark.parametrize(
        ("rc", "head"),
        [
            (0, "Process return code is 0\n"),
            (2, "Process return code is 2\n"),
            (-int(signal.SIGTERM), "Process return code is -15 (SIGTERM)\n"),
            (128 + int(signal.SIGINT), "Process return code is 130 (SIGINT)\n"),
            (0xC0000005, f"Process return code is {0xC0000005} (STATUS_ACCESS_VIOLATION)\n"),
        ],
    )
    def test_fail_headline(self, rc, head):
        """fail() names signals, shell signal codes and Windows statuses."""
        with pytest.raises(AssertionError) as info:
            script_helper.PythonRunResult(rc, b"", b"").fail(["prog"])
        assert str(info.value).startswith(head + "command line: ['prog']\n")

    def test_fail_truncates_to_the_tail_and_decodes_utf8(self):
        """Streams are cut to their last 30 000 bytes and decoded as UTF-8."""
        out = b"HEAD" + b"x" * 40_000 + "tail \u00e9".encode()
        with pytest.raises(AssertionError) as info:
            script_helper.PythonRunResult(1, out, b"\xff").fail([])
        msg = str(info.value)
        assert "(... truncated stdout ...)" in msg
        assert "HEAD" not in msg
        assert "tail \u00e9" in msg
        assert "stderr:\n---\n\ufffd\n---" in msg

    def test_fail_defaults_to_recorded_command_line(self):
        """A result from this module remembers its command line for fail()."""
        res = script_helper.run_python("-c", "raise SystemExit(4)")
        with pytest.raises(AssertionError) as info:
            res.fail()
        assert repr(res.cmd_line) in str(info.value)


class TestRunPython:
    def test_keyword_only_options(self):
        """Options after *args are keywords; positional strings are interpreter args."""
        res = script_helper.run_python("-c", "import sys; print(sys.argv[1:])", "a", "b")
        assert res.out == b"['a', 'b']\n"

    def test_env_sets_and_unsets(self, monkeypatch):
        """env adds variables, and a None value removes an inherited one."""
        monkeypatch.setenv("PORTSAFE_GONE", "1")
        code = "import os; print(os.environ.get('PORTSAFE_NEW'), 'PORTSAFE_GONE' in os.environ)"
        res = script_helper.run_python(
            "-c", code, env={"PORTSAFE_NEW": "v", "PORTSAFE_GONE": None}
        )
        assert res.out == b"v False\n"

    def test_clean_env(self, monkeypatch):
        """clean_env starts from an empty environment."""
        monkeypatch.setenv("PORTSAFE_LEAK", "1")
        res = script_helper.run_python(
            "-c", "import os; print('PORTSAFE_LEAK' in os.environ)", clean_env=True
        )
        assert res.out == b"False\n"

    def test_isolation_rules_follow_cpython(self, no_env_needed):
        """-I by default, nothing with env, -E with isolated=False, -I when forced."""
        assert "-I" in script_helper.run_python("-c", "pass").cmd_line
        with_env = script_helper.run_python("-c", "pass", env={"A": "1"}).cmd_line
        assert "-I" not in with_env
        assert "-E" not in with_env
        assert "-E" in script_helper.run_python("-c", "pass", isolated=False).cmd_line
        forced = script_helper.run_python("-c", "pass", env={"A": "1"}, isolated=True)
        assert "-I" in forced.cmd_line

    def test_pythonpath_in_env_is_honoured(self, tmp_path, no_env_needed):
        """Because env turns -I off by default, PYTHONPATH given in env takes effect."""
        script_helper.make_script(tmp_path, "portsafe_probe_mod", "VALUE = 42")
        res = script_helper.run_python(
            "-c",
            "import portsafe_probe_mod; print(portsafe_probe_mod.VALUE)",
            env={"PYTHONPATH": str(tmp_path)},
        )
        assert res.out == b"42\n"

    def test_cwd(self, tmp_path):
        """cwd sets the working directory (a Path works)."""
        res = script_helper.run_python("-c", "import os; print(os.getcwd())", cwd=tmp_path)
        assert os.path.samefile(res.out.decode().strip(), tmp_path)

    def test_expect_success(self):
        """expect_success=True/False asserts the exit code; None checks nothing."""
        assert script_helper.run_python("-c", "pass", expect_success=True).rc == 0
        assert script_helper.run_python("-c", "1/0", expect_success=False).rc == 1
        assert script_helper.run_python("-c", "1/0").rc == 1
        with pytest.raises(AssertionError, match="Process return code is 1"):
            script_helper.run_python("-c", "1/0", expect_success=True)
        with pytest.raises(AssertionError, match="Process return code is 0"):
            script_helper.run_python("-c", "pass", expect_success=False)

    def test_timeout(self):
        """timeout kills a hung child and raises ScriptTimeoutError."""
        with pytest.raises(script_helper.ScriptTimeoutError, match=r"within 0\.5 seconds"):
            script_helper.run_python("-c", "import time; time.sleep(600)", timeout=0.5)

    @pytest.mark.skipif(shutil.which("env") is None, reason="no 'env' command")
    def test_run_using_command(self):
        """run_using_command prefixes a wrapper."""
        res = script_helper.run_python(
            "-c",
            "import os; print(os.environ['W'])",
            run_using_command=[shutil.which("env"), "W=1"],
        )
        assert res.out == b"1\n"

    @pytest.mark.parametrize("env", [{"A": 1}, {1: "a"}, {"A": b"x"}])
    def test_env_type_errors(self, env):
        """Non-string names or values raise TypeError naming them."""
        with pytest.raises(TypeError, match="env must map str to str"):
            script_helper.run_python("-c", "pass", env=env)


class TestSpawnAndKillPython:
    def test_spawn_talks_over_pipes(self, no_env_needed):
        """spawn_python gives a live child with stdin, and stderr merged into stdout."""
        p = script_helper.spawn_python(
            "-c", "import sys; print(input()[::-1], flush=True); print('err', file=sys.stderr)"
        )
        assert p.args[:2] == [sys.executable, "-E"]
        p.stdin.write(b"olleh\n")
        out = script_helper.kill_python(p)
        assert out.splitlines() == [b"hello", b"err"]
        assert p.returncode == 0

    def test_term_is_vt100_and_env_kw_is_used(self):
        """TERM=vt100 is set in the given env mapping (or a copy of ours)."""
        env = dict(os.environ, PORTSAFE_SPAWN="1")
        p = script_helper.spawn_python(
            "-c", "import os; print(os.environ['TERM'], os.environ['PORTSAFE_SPAWN'])", env=env
        )
        assert script_helper.kill_python(p) == b"vt100 1\n"
        assert env["TERM"] == "vt100"

    def test_separate_stderr(self):
        """stdout/stderr arguments go to Popen."""
        p = script_helper.spawn_python(
            "-c", "import sys; sys.stderr.write('e')", stderr=subprocess.DEVNULL
        )
        assert script_helper.kill_python(p) == b""

    def test_env_required_means_no_e_flag(self, monkeypatch):
        """When the interpreter needs its environment, spawn_python leaves out -E."""
        monkeypatch.setattr(script_helper, "interpreter_requires_environment", lambda: True)
        p = script_helper.spawn_python("-c", "pass")
        script_helper.kill_python(p)
        assert "-E" not in p.args

    def test_kill_python_timeout_kills_a_hung_child(self):
        """kill_python(timeout=...) kills a child that never exits and says so."""
        p = script_helper.spawn_python(
            "-c", "import time; print('up', flush=True); time.sleep(600)"
        )
        with pytest.raises(script_helper.ScriptTimeoutError, match="was killed") as info:
            script_helper.kill_python(p, timeout=1)
        assert info.value.result is not None
        assert info.value.result.out == b"up\n"
        assert p.returncode is not None

    def test_kill_python_timeout_after_caller_closed_stdin(self):
        """kill_python(timeout=...) copes with a stdin the caller already closed."""
        p = script_helper.spawn_python("-c", "import sys; print(sys.stdin.read() == '')")
        p.stdin.close()
        assert script_helper.kill_python(p, timeout=60) == b"True\n"

    def test_kill_python_timeout_returns_output_when_in_time(self):
        """With a generous timeout kill_python just returns the output."""
        p = script_helper.spawn_python("-c", "print('quick')")
        assert script_helper.kill_python(p, timeout=60) == b"quick\n"


class TestMakeScript:
    def test_str_source_is_utf8(self, tmp_path):
        """str source is written as UTF-8 and runs."""
        path = script_helper.make_script(tmp_path, "s", "print('\u00e9'.encode())")
        assert path == os.path.join(tmp_path, "s.py")
        assert script_helper.assert_python_ok(path).out == b"b'\\xc3\\xa9'\n"

    def test_bytes_source_is_written_verbatim(self, tmp_path):
        """bytes source keeps its exact bytes, e.g. a latin-1 coding cookie."""
        source = b"# -*- coding: latin-1 -*-\nprint(ascii('\xe9'))\n"
        path = script_helper.make_script(tmp_path, "b", source)
        with open(path, "rb") as f:
            assert f.read() == source
        assert script_helper.assert_python_ok(path).out == b"'\\xe9'\n"

    def test_omit_suffix(self, tmp_path):
        """omit_suffix=True writes the name as given."""
        path = script_helper.make_script(tmp_path, "noext", "", omit_suffix=True)
        assert os.path.basename(path) == "noext"

    def test_new_module_is_importable_at_once(self, tmp_path, monkeypatch):
        """Import caches are invalidated, so the new module imports in this process."""
        monkeypatch.syspath_prepend(str(tmp_path))
        __import__("importlib").import_module("json")  # warm the path finder caches
        script_helper.make_script(tmp_path, "portsafe_fresh_mod", "ANSWER = 42")
        try:
            assert __import__("portsafe_fresh_mod").ANSWER == 42
        finally:
            sys.modules.pop("portsafe_fresh_mod", None)

    def test_wrong_source_type(self, tmp_path):
        """A source that is not str or bytes raises TypeError naming its type."""
        with pytest.raises(TypeError, match="not int"):
            script_helper.make_script(tmp_path, "x", 42)  # type: ignore[arg-type]


class TestMakeLegacyPyc:
    def test_moves_pyc_next_to_source(self, tmp_path):
        """The __pycache__ pyc becomes <name>.pyc and runs without its source."""
        src = script_helper.make_script(tmp_path, "legacy", "print('from pyc')")
        py_compile.compile(src, doraise=True)
        pyc = script_helper.make_legacy_pyc(src)
        assert pyc == os.path.join(tmp_path, "legacy.pyc")
        assert not os.listdir(tmp_path / "__pycache__")
        os.remove(src)
        assert script_helper.assert_python_ok(pyc).out == b"from pyc\n"

    def test_relative_source(self, tmp_path, monkeypatch):
        """A relative source path lands next to the source, not somewhere doubled."""
        monkeypatch.chdir(tmp_path)
        (tmp_path / "sub").mkdir()
        src = script_helper.make_script("sub", "rel", "")
        py_compile.compile(src, doraise=True)
        assert script_helper.make_legacy_pyc(src) == str(tmp_path / "sub" / "rel.pyc")

    def test_missing_pyc(self, tmp_path):
        """Without a compiled file it raises FileNotFoundError."""
        src = script_helper.make_script(tmp_path, "nopyc", "")
        with pytest.raises(FileNotFoundError):
            script_helper.make_legacy_pyc(src)


class TestMakeZipScript:
    def test_runs_zipped_main(self, tmp_path):
        """A zip with __main__.py runs; the second path points inside the zip."""
        main = script_helper.make_script(tmp_path, "__main__", "print('zipped')")
        zip_name, run_name = script_helper.make_zip_script(tmp_path, "app", main)
        assert zip_name == os.path.join(tmp_path, "app.zip")
        assert run_name == os.path.join(zip_name, "__main__.py")
        assert script_helper.assert_python_ok(zip_name).out == b"zipped\n"

    def test_name_in_zip(self, tmp_path):
        """name_in_zip renames the file inside the archive."""
        src = script_helper.make_script(tmp_path, "anything", "print('renamed')")
        zip_name, _ = script_helper.make_zip_script(tmp_path, "z", src, "__main__.py")
        with zipfile.ZipFile(zip_name) as zf:
            assert zf.namelist() == ["__main__.py"]
        assert script_helper.assert_python_ok(zip_name).out == b"renamed\n"

    def test_pycache_pyc_is_stored_as_legacy_pyc(self, tmp_path):
        """A pyc from __pycache__ is stored as __main__.pyc and still runs."""
        src = script_helper.make_script(tmp_path, "__main__", "print('compiled')")
        cached = py_compile.compile(src, doraise=True)
        zip_name, run_name = script_helper.make_zip_script(tmp_path, "c", cached)
        assert run_name.endswith("__main__.pyc")
        with zipfile.ZipFile(zip_name) as zf:
            assert zf.namelist() == ["__main__.pyc"]
        assert script_helper.assert_python_ok(zip_name).out == b"compiled\n"


class TestMakePkg:
    def test_makes_runnable_package(self, tmp_path):
        """make_pkg creates the directory and __init__.py; -m finds it."""
        pkg = tmp_path / "portsafe_pkg"
        script_helper.make_pkg(pkg, "print('init ran')")
        assert sorted(os.listdir(pkg)) == ["__init__.py"]
        res = script_helper.assert_python_ok(
            "-c", "import portsafe_pkg", __isolated=False, __cwd=str(tmp_path)
        )
        assert res.out == b"init ran\n"

    def test_existing_directory(self, tmp_path):
        """An existing directory raises FileExistsError."""
        with pytest.raises(FileExistsError):
            script_helper.make_pkg(tmp_path)


class TestMakeZipPkg:
    @pytest.mark.parametrize("compiled", [False, True])
    def test_nested_package_runs_and_temp_files_go(self, tmp_path, compiled):
        """A depth-2 package (source or compiled) runs with -m; helper files are removed."""
        zip_name, run_name = script_helper.make_zip_pkg(
            tmp_path, "zp", "pkg", "script", "print('deep', __name__)", 2, compiled
        )
        suffix = "pyc" if compiled else "py"
        assert run_name == os.path.join(zip_name, "pkg", "pkg", f"script.{suffix}")
        with zipfile.ZipFile(zip_name) as zf:
            assert sorted(zf.namelist()) == [
                f"pkg/__init__.{suffix}",
                f"pkg/pkg/__init__.{suffix}",
                f"pkg/pkg/script.{suffix}",
            ]
        assert [p for p in os.listdir(tmp_path) if p != "__pycache__"] == ["zp.zip"]
        res = script_helper.assert_python_ok("-m", "pkg.pkg.script", PYTHONPATH=zip_name)
        assert res.out == b"deep __main__\n"


PASSING = """\
import unittest
class T(unittest.TestCase):
    def test_ok(self):
        pass
unittest.main()
"""


class TestRunTestScript:
    def test_passing_script(self, tmp_path):
        """A passing unittest script returns None."""
        path = script_helper.make_script(tmp_path, "p", PASSING)
        assert script_helper.run_test_script(path) is None

    def test_failing_script(self, tmp_path, monkeypatch):
        """A failing script raises AssertionError with the child's report (-v output)."""
        # quiet mode, whatever an earlier test module did to test.support.verbose
        monkeypatch.delitem(sys.modules, "test.support", raising=False)
        path = script_helper.make_script(tmp_path, "f", PASSING.replace("pass", "1/0"))
        with pytest.raises(AssertionError, match="test_ok"):
            script_helper.run_test_script(path)

    def test_verbose_mode_streams_output(self, tmp_path, monkeypatch, capfd):
        """With test.support.verbose set the child writes to our fds, framed by titles."""
        fake = types.ModuleType("test.support")
        fake.verbose = 1  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "test.support", fake)
        script_helper.run_test_script(script_helper.make_script(tmp_path, "v", PASSING))
        failing = script_helper.make_script(tmp_path, "w", PASSING.replace("pass", "1/0"))
        with pytest.raises(AssertionError, match=r"script w\.py failed"):
            script_helper.run_test_script(failing)
        out, err = capfd.readouterr()
        assert "===== script v.py ======" in out
        assert "===== script v.py completed: exit code 0 ======" in out
        assert "test_ok" in err


class TestDocs:
    def test_pytest_cli_example_passes(self, pytester):
        """The pytest example in docs/script_helper.md runs and all its tests pass."""
        docs = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "docs",
                            "script_helper.md")
        with open(docs, encoding="utf-8") as f:
            blocks = f.read().split("```python\n")
        example = next(b.split("```")[0] for b in blocks if "# test_wordcount_cli.py" in b)
        pytester.makepyfile(test_wordcount_cli=example)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        result.assert_outcomes(passed=4)

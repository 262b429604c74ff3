"""CPython's ``test.support.script_helper`` as a public, typed module.

Run Python scripts in a child interpreter and assert on the outcome: the helpers
CPython's own test suite uses for its command-line tests, usable without
``test.support`` installed (many distributions strip the ``test`` package).

Two faces, one implementation:

* the CPython contract -- :func:`assert_python_ok`, :func:`assert_python_failure`,
  :func:`run_python_until_end`, :func:`spawn_python`, :func:`kill_python`,
  :func:`make_script` and friends -- with the same names, defaults and results
  (CPython 3.10-3.14; where versions differ the newest wins: 3.14's failure report names
  the signal that killed the child and decodes output as UTF-8, and 3.14's
  :func:`make_script` takes ``bytes``). Options travel as dunder keywords because plain
  keywords are environment variables: ``__cwd``, ``__isolated``, ``__cleanenv``,
  ``__run_using_command`` (3.13) and portsafe's ``__timeout``;
* :func:`run_python`, a keyword-only function for new code, where the environment is a
  mapping and nothing is spelled with underscores.

A child that outlives its timeout is first sent SIGABRT, on which the faulthandler
that ``-X faulthandler`` enables prints the stack of every thread; then it is killed and
:class:`ScriptTimeoutError` is raised with everything it printed, so a hung script fails
one test, showing where it hung, instead of hanging the run. Under pytest the helpers'
own frames are left out of tracebacks (``__tracebackhide__``; ``--full-trace`` shows
them), so a failure points at the test's line.

Compatibility notes, because CPython's own tests patch this module:

1. every function looks up ``subprocess.Popen``, ``subprocess.check_call`` and
   :func:`interpreter_requires_environment` through module globals at call time;
2. the cache of :func:`interpreter_requires_environment` is the module global
   ``__cached_interp_requires_environment`` (tests reset it through ``__dict__``);
3. ``_assert_python`` and ``_PythonRunResult`` keep their private CPython names.
"""

from __future__ import annotations

import collections
import importlib
import importlib.machinery
import importlib.util
import itertools
import os
import os.path
import subprocess
import sys

from portsafe._errors import InvalidSettingError, PortsafeError

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, NamedTuple, TypeAlias

    StrPath: TypeAlias = "str | os.PathLike[str]"
    Arg: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

    class _ResultBase(NamedTuple):
        rc: int
        out: bytes
        err: bytes
else:
    _ResultBase = collections.namedtuple("_PythonRunResult", ("rc", "out", "err"))

__all__ = [
    "PythonRunResult",
    "ScriptTimeoutError",
    "assert_python_failure",
    "assert_python_ok",
    "interpreter_requires_environment",
    "kill_python",
    "make_legacy_pyc",
    "make_pkg",
    "make_script",
    "make_zip_pkg",
    "make_zip_script",
    "run_python",
    "run_python_until_end",
    "run_test_script",
    "spawn_python",
]

# Cached result of interpreter_requires_environment(); the name is CPython's, and its
# own tests reset it with ``script_helper.__dict__[...] = None``.
__cached_interp_requires_environment: bool | None = None

# How much of each stream a failure report keeps (CPython 3.12+: 300 lines of 100).
_MAX_REPORT_BYTES = 300 * 100

# After killing a timed-out child, how long to keep reading its pipes: a grandchild
# that inherited them could otherwise keep us waiting for EOF forever.
_DRAIN_SECONDS = 5.0

# How long a timed-out child sent SIGABRT has to print its stacks and die before it is
# killed: faulthandler prints at once, so only a child that handles SIGABRT itself
# (or a very busy machine) takes this long.
_DUMP_SECONDS = 3.0

# The first line faulthandler prints when a signal makes it dump the stacks.
_FAULTHANDLER_MARK = b"Fatal Python error: Aborted"

# Windows exit statuses worth a name in a failure report (CPython 3.14's table).
_WINDOWS_STATUS = {
    0xC0000005: "STATUS_ACCESS_VIOLATION",
    0xC00000FD: "STATUS_STACK_OVERFLOW",
    0xC000013A: "STATUS_CONTROL_C_EXIT",
}


class ScriptTimeoutError(PortsafeError, AssertionError, TimeoutError):
    """Raised when a child interpreter did not exit within its timeout and was killed.

    It is an ``AssertionError`` so unittest counts it as a test failure like any other
    failed ``assert_python_*``, and a ``TimeoutError`` so ``except TimeoutError`` works.
    ``timeout`` is the limit in seconds, ``cmd_line`` the command that was run, and
    ``result`` the :class:`PythonRunResult` collected after the kill. Its ``out`` and
    ``err`` hold what the child printed, and, for a Python child started with
    ``-X faulthandler`` (as every child of :func:`run_python` and the
    ``assert_python_*`` helpers is), the stack of each of its threads, which faulthandler
    prints when the child is sent SIGABRT at the timeout (POSIX only).

    Example:
        >>> from portsafe import script_helper
        >>> try:
        ...     script_helper.run_python("-c", "import time; time.sleep(60)", timeout=0.5)
        ... except script_helper.ScriptTimeoutError as exc:
        ...     print(exc.timeout)
        0.5
    """

    def __init__(
        self,
        message: str,
        *,
        timeout: float | None = None,
        cmd_line: Sequence[Arg] = (),
        result: PythonRunResult | None = None,
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.cmd_line = list(cmd_line)
        self.result = result


def _has_subprocess_support() -> bool:
    # Same platforms as test.support.has_subprocess_support (3.13+).
    return sys.platform not in {"emscripten", "wasi", "ios", "tvos", "watchos", "android"}


def _require_subprocess() -> None:
    # CPython decorates these functions with @support.requires_subprocess(), which
    # raises SkipTest when called on a platform without subprocesses.
    if not _has_subprocess_support():
        import unittest

        raise unittest.SkipTest("requires subprocess support")


def _cleanup_zombies() -> None:
    # subprocess._cleanup() reaps children whose Popen objects were dropped; CPython
    # calls it so regrtest -R does not report leaked processes.
    cleanup = getattr(subprocess, "_cleanup", None)
    if cleanup is not None:
        cleanup()


def _signal_name(exitcode: int) -> str | None:
    """Name what an exit code means, as ``test.support.get_signal_name`` (3.14) does."""
    import signal

    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            pass
    if 128 < exitcode < 256:  # a shell reports death by signal N as 128 + N
        try:
            return signal.Signals(exitcode - 128).name
        except ValueError:
            pass
    return _WINDOWS_STATUS.get(exitcode)


def interpreter_requires_environment() -> bool:
    """Tell whether ``sys.executable`` needs environment variables to start at all.

    Meant for ``@unittest.skipIf`` on tests that run a child with ``-I`` or ``-E``. The
    answer is computed once (by running ``sys.executable -E``) and cached in the module
    global ``__cached_interp_requires_environment``. ``PYTHONHOME`` being set counts as
    "required" without running anything; on platforms without subprocesses the answer
    is ``False``.

    Returns:
        ``True`` if a child started with ``-E`` fails, so the helpers must not pass
        ``-E``/``-I``.

    Raises:
        OSError: if ``sys.executable`` cannot be run at all.

    Example:
        >>> from portsafe import script_helper
        >>> script_helper.interpreter_requires_environment() in (True, False)
        True
    """
    __tracebackhide__ = True
    global __cached_interp_requires_environment
    if __cached_interp_requires_environment is None:
        if "PYTHONHOME" in os.environ:
            __cached_interp_requires_environment = True
            return True
        if not _has_subprocess_support():
            __cached_interp_requires_environment = False
            return False
        try:
            subprocess.check_call([sys.executable, "-E", "-c", "import sys; sys.exit(0)"])
        except subprocess.CalledProcessError:
            __cached_interp_requires_environment = True
        else:
            __cached_interp_requires_environment = False
    return __cached_interp_requires_environment


class PythonRunResult(_ResultBase):
    """What a child interpreter did: a ``(rc, out, err)`` named tuple.

    ``rc`` is the return code (negative: killed by that signal on POSIX), ``out`` and
    ``err`` the raw bytes of stdout and stderr. It unpacks like CPython's
    ``_PythonRunResult`` (``rc, out, err = assert_python_ok(...)``). Results made by
    this module also remember ``cmd_line``, so :meth:`fail` needs no argument.

    Example:
        >>> from portsafe import script_helper
        >>> rc, out, err = script_helper.run_python("-c", "print('hi')")
        >>> (rc, out.strip())
        (0, b'hi')
    """

    cmd_line: list[Any] | None = None
    # How this module ran the child (working directory, -I), for fail()'s import hint.
    _cwd: str | None = None
    _isolated: bool = False

    def fail(self, cmd_line: Sequence[Arg] | None = None) -> None:
        """Raise an ``AssertionError`` describing this run, for a test report.

        The message gives the return code with the signal name when there is one
        (``Process return code is -9 (SIGKILL)``), the command line, and the last
        30 000 bytes of stdout and stderr, decoded as UTF-8 -- CPython 3.14's format.

        Args:
            cmd_line: the command that produced this result; defaults to the one this
                module recorded when it ran the child.

        Raises:
            AssertionError: always; that is the point.

        Example:
            >>> from portsafe import script_helper
            >>> res = script_helper.run_python("-c", "raise SystemExit(3)")
            >>> try:
            ...     res.fail()
            ... except AssertionError as exc:
            ...     print(str(exc).splitlines()[0])
            Process return code is 3
        """
        __tracebackhide__ = True
        if cmd_line is None:
            cmd_line = self.cmd_line
        message = _report(f"Process return code is {self._describe_rc()}",
                          cmd_line, self.out, self.err)
        if self.rc and self._isolated and self._cwd is not None:
            hint = _import_hint(self.err + b"\n" + self.out, self._cwd)
            if hint is not None:
                message += f"\n\n{hint}"
        raise AssertionError(message)

    def _describe_rc(self) -> str:
        signame = _signal_name(self.rc)
        return f"{self.rc} ({signame})" if signame else str(self.rc)


# CPython's name for the result type, kept for code that imports it.
_PythonRunResult = PythonRunResult


def _report(headline: str, cmd_line: object, out: bytes, err: bytes) -> str:
    if len(out) > _MAX_REPORT_BYTES:
        out = b"(... truncated stdout ...)" + out[-_MAX_REPORT_BYTES:]
    if len(err) > _MAX_REPORT_BYTES:
        err = b"(... truncated stderr ...)" + err[-_MAX_REPORT_BYTES:]
    out_text = out.decode("utf8", "replace").rstrip()
    err_text = err.decode("utf8", "replace").rstrip()
    return (
        f"{headline}\n"
        f"command line: {cmd_line!r}\n"
        "\n"
        "stdout:\n"
        "---\n"
        f"{out_text}\n"
        "---\n"
        "\n"
        "stderr:\n"
        "---\n"
        f"{err_text}\n"
        "---"
    )


def _has_module(directory: str, name: str) -> bool:
    """Whether ``import name`` would find something in ``directory``."""
    base = os.path.join(directory, name)
    if os.path.isdir(base):  # a package, or at least a namespace package
        return True
    return any(os.path.isfile(base + suffix) for suffix in importlib.machinery.all_suffixes())


def _import_hint(output: bytes, workdir: str) -> str | None:
    """Advice for an isolated (``-I``) child that failed to import a module we can see.

    ``-I`` keeps the current directory (and a script's own) off ``sys.path``, so a
    project's module that imports fine in the test process is missing in the child.
    """
    import re

    text = output.decode("utf8", "replace")
    # "No module named 'x'" (import statement) or "No module named x" (-m)
    found = re.findall(r"No module named '?([\w.]+)", text)
    names = dict.fromkeys(name.partition(".")[0] for name in found)
    here = os.path.abspath(os.curdir)
    first = os.path.abspath(sys.path[0]) if sys.path and sys.path[0] else here
    for name in names:
        if not name.isidentifier():
            continue
        if _has_module(workdir, name):
            return (
                f"hint: {name!r} is in the child's working directory ({workdir}), but the "
                "child runs isolated (-I), which keeps that directory off sys.path: pass "
                "__isolated=False (run_python: isolated=False) to import it with -c or -m, "
                "or put the directory on PYTHONPATH"
            )
        for directory in dict.fromkeys((first, here)):
            if _has_module(directory, name):
                return (
                    f"hint: {name!r} is importable here from {directory}, but the child "
                    "runs isolated (-I), which keeps that directory off its sys.path: put "
                    f"it on PYTHONPATH (the keyword PYTHONPATH={directory!r}, or "
                    "run_python(env={'PYTHONPATH': ...})), which also turns -I off"
                )
    return None


def _check_timeout(timeout: object) -> float | None:
    __tracebackhide__ = True
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if not timeout > 0:  # also rejects NaN
        raise InvalidSettingError(
            f"timeout must be a positive number of seconds, not {timeout!r}; "
            "pass None to wait for as long as the child runs"
        )
    return float(timeout)


def _seconds(value: float) -> str:
    """``1 second``, ``0.5 seconds``, ``2 seconds``: a duration for a message."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    if text == "0":  # shorter than a millisecond: keep one significant digit
        text = f"{value:.1g}"
    return f"{text} second" if text == "1" else f"{text} seconds"


def _has_faulthandler_option(args: Sequence[Any]) -> bool:
    """Whether a command line runs Python with ``-X faulthandler``."""
    words = [
        os.fsdecode(arg) for arg in args if isinstance(arg, (str, bytes, os.PathLike))
    ]
    return "-Xfaulthandler" in words or any(
        pair == ("-X", "faulthandler") for pair in itertools.pairwise(words)
    )


def _handles_sigabrt(pid: int) -> bool | None:
    """Whether process ``pid`` catches SIGABRT, from Linux's /proc; ``None`` elsewhere."""
    import signal

    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    caught = int(line.split()[1], 16)
                    return bool(caught >> (signal.SIGABRT - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _why_no_stack_dump(proc: subprocess.Popen[bytes], faulthandler: bool) -> str | None:
    """Why SIGABRT would not make this child print its stacks, or ``None`` if it would.

    faulthandler (``-X faulthandler``) prints every thread's stack on SIGABRT. A child
    that does not catch SIGABRT would only die of it, and leave a core file, so it is
    not sent one: Linux's /proc says whether the child catches it; elsewhere the
    command line's ``-X faulthandler`` is the best evidence there is.
    """
    if sys.platform == "win32":
        return (
            "Windows has no signal that asks a process for one: have the child call "
            "faulthandler.dump_traceback_later(seconds) to print its stacks itself"
        )
    handles = _handles_sigabrt(proc.pid)
    if handles is None:
        handles = faulthandler
    if not handles:
        return "it does not handle SIGABRT: start Python with -X faulthandler to get one"
    return None


def _forbid_core_dump(pid: int) -> None:
    # faulthandler re-raises SIGABRT after printing, and death by SIGABRT writes a core
    # file wherever core dumps are enabled: a timed-out test must not leave one behind.
    try:
        import resource

        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or not allowed: core files stay as the system set them


def _stop_hung(
    proc: subprocess.Popen[bytes], expired: subprocess.TimeoutExpired, faulthandler: bool
) -> tuple[bytes, bytes, str | None]:
    """Stop a child that outlived its timeout, asking it for its stacks first.

    Returns what it printed and, if it was not asked for its stacks, why not.
    """
    import signal

    out, err = _as_bytes(expired.stdout), _as_bytes(expired.stderr)
    why_not = _why_no_stack_dump(proc, faulthandler)
    if why_not is None:
        _forbid_core_dump(proc.pid)
        proc.send_signal(signal.SIGABRT)  # does nothing to a child that has ended
        try:
            # Keep reading while it prints: on a full pipe its write, and so the
            # child, would block until it is killed, and the stacks would be lost.
            done_out, done_err = proc.communicate(timeout=_DUMP_SECONDS)
        except subprocess.TimeoutExpired as slow:
            out = _as_bytes(slow.stdout) or out
            err = _as_bytes(slow.stderr) or err
        else:
            return done_out or b"", done_err or b"", None
    proc.kill()
    try:
        # communicate() keeps what it read so far, so a second call returns the
        # whole output up to the kill.
        done_out, done_err = proc.communicate(timeout=_DRAIN_SECONDS)
    except subprocess.TimeoutExpired as stuck:
        # A grandchild holds the pipes open; report what we have.
        return _as_bytes(stuck.stdout) or out, _as_bytes(stuck.stderr) or err, why_not
    return done_out or b"", done_err or b"", why_not


def _timeout_headline(timeout: float, result: PythonRunResult, why_not: str | None) -> str:
    import signal

    waited = f"Process did not exit within {_seconds(timeout)}"
    code = f"return code {result._describe_rc()}"
    look = "look at its output below for where it hung, or raise the timeout if it is merely slow"
    if why_not is not None:
        return f"{waited} and was killed ({code}) without a stack dump ({why_not}); {look}"
    if _FAULTHANDLER_MARK in result.err or _FAULTHANDLER_MARK in result.out:
        return (
            f"{waited}; on SIGABRT it printed the stack of every thread "
            f"('{_FAULTHANDLER_MARK.decode()}' in its output below, most recent call "
            f"first) and died ({code}); raise the timeout if it is merely slow"
        )
    ended = "was killed" if result.rc == -signal.SIGKILL else "ended"
    return (
        f"{waited}; it was sent SIGABRT for a stack dump but printed none (it handles "
        f"SIGABRT itself, or had not enabled faulthandler yet) and {ended} ({code}); "
        f"{look}"
    )


def _hide_reports(excinfo: object) -> bool:
    # pytest's __tracebackhide__ hook for the inner frames: hide them for the failures
    # this module reports on the caller's behalf (a failed assertion, a timeout) and
    # keep them for anything unexpected, such as a bug here. The public helpers hide
    # their own frame outright: whatever goes wrong deeper keeps its frames.
    return isinstance(getattr(excinfo, "value", None), AssertionError)


def _communicate(
    proc: subprocess.Popen[bytes],
    timeout: float | None,
    cmd_line: list[Any],
    *,
    faulthandler: bool,
) -> tuple[bytes, bytes]:
    """Collect a child's output; on timeout get its stacks, kill it, raise ScriptTimeoutError.

    ``faulthandler`` says whether the command line enabled faulthandler, for systems
    that cannot tell whether a process handles SIGABRT.
    """
    __tracebackhide__ = _hide_reports
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        out, err, why_not = _stop_hung(proc, expired, faulthandler)
        rc = proc.wait()
        result = PythonRunResult(rc, out, err)
        result.cmd_line = cmd_line
        headline = _timeout_headline(expired.timeout, result, why_not)
        raise ScriptTimeoutError(
            _report(headline, cmd_line, out, err),
            timeout=timeout,
            cmd_line=cmd_line,
            result=result,
        ) from None
    return out or b"", err or b""


def _as_bytes(data: object) -> bytes:
    return data if isinstance(data, bytes) else b""


def _run(
    args: Iterable[Arg],
    *,
    env_vars: Mapping[str, str | None],
    isolated: bool,
    use_e_flag: bool,
    clean_env: bool,
    cwd: StrPath | None,
    timeout: float | None,
    run_using_command: Sequence[Arg] | None,
) -> tuple[PythonRunResult, list[Any]]:
    """The one implementation behind run_python_until_end() and run_python()."""
    __tracebackhide__ = _hide_reports
    cmd_line: list[Any] = [sys.executable, "-X", "faulthandler"]
    if run_using_command:
        cmd_line = list(run_using_command) + cmd_line
    if isolated:
        # -I: ignore PYTHON* variables and user site-packages, and keep the current
        # directory out of sys.path.
        cmd_line.append("-I")
    elif use_e_flag:
        cmd_line.append("-E")

    env: dict[str, str]
    if clean_env:
        env = {}
        if sys.platform == "win32":
            # Windows cannot start Python without SYSTEMROOT.
            env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    else:
        # Keep the environment: in-place builds of shared libraries need it.
        env = os.environ.copy()
    # TERM='' unless asked otherwise: readline may print escape codes (bpo-11390).
    if "TERM" not in env_vars:
        env["TERM"] = ""
    for name, value in env_vars.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    cmd_line.extend(args)

    workdir = os.path.abspath(os.curdir if cwd is None else os.fsdecode(cwd))
    proc = subprocess.Popen(
        cmd_line,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    with proc:
        try:
            out, err = _communicate(proc, timeout, cmd_line, faulthandler=True)
        finally:
            proc.kill()
            _cleanup_zombies()
    result = PythonRunResult(proc.returncode, out, err)
    result.cmd_line = cmd_line
    result._cwd = workdir
    result._isolated = isolated
    return result, cmd_line


def run_python_until_end(*args: Arg, **env_vars: Any) -> tuple[PythonRunResult, list[Any]]:
    """Run ``sys.executable -X faulthandler [flags] *args`` to completion (CPython API).

    Keyword arguments are environment variables for the child, except these dunder
    options (``__cwd=...`` works as written, even inside a class body):

    * ``__cwd``: the child's working directory;
    * ``__isolated``: force ``-I`` on or off; by default the child runs with ``-I`` when
      no environment variables are given and the interpreter does not need them, with
      neither ``-I`` nor ``-E`` otherwise;
    * ``__cleanenv``: start from an empty environment instead of a copy of ours;
    * ``__run_using_command``: a list of arguments put before the interpreter, e.g.
      ``["/usr/bin/env", "--"]`` (CPython 3.13);
    * ``__timeout`` (portsafe): seconds to wait before killing the child.

    ``TERM`` is set to ``''`` unless given.

    Args:
        *args: command-line arguments for the interpreter.
        **env_vars: environment variables, plus the dunder options above.

    Returns:
        ``(result, cmd_line)``: a :class:`PythonRunResult` and the list that was run.

    Raises:
        ScriptTimeoutError: the child outlived ``__timeout`` and was killed.
        unittest.SkipTest: the platform cannot run subprocesses.

    Example:
        >>> from portsafe import script_helper
        >>> res, cmd = script_helper.run_python_until_end("-c", "print(2 + 2)")
        >>> res.out.strip()
        b'4'
    """
    __tracebackhide__ = True
    _require_subprocess()
    env_required = interpreter_requires_environment()
    run_using_command = env_vars.pop("__run_using_command", None)
    cwd = env_vars.pop("__cwd", None)
    timeout = _check_timeout(env_vars.pop("__timeout", None))
    if "__isolated" in env_vars:
        isolated = bool(env_vars.pop("__isolated"))
    else:
        isolated = not env_vars and not env_required
    # Evaluated before __cleanenv is popped, as CPython does: asking for a clean
    # environment counts as passing environment variables, so -E is not added.
    use_e_flag = not env_vars and not env_required
    clean_env = bool(env_vars.pop("__cleanenv", None))
    return _run(
        args,
        env_vars=env_vars,
        isolated=isolated,
        use_e_flag=use_e_flag,
        clean_env=clean_env,
        cwd=cwd,
        timeout=timeout,
        run_using_command=run_using_command,
    )


def _assert_python(
    expected_success: bool, /, *args: Arg, **env_vars: Any
) -> PythonRunResult:
    __tracebackhide__ = True
    _require_subprocess()
    res, cmd_line = run_python_until_end(*args, **env_vars)
    if (res.rc and expected_success) or (not res.rc and not expected_success):
        res.fail(cmd_line)
    return res


def assert_python_ok(*args: Arg, **env_vars: Any) -> PythonRunResult:
    """Run the interpreter with ``args`` and assert it exits with 0 (CPython API).

    Options are those of :func:`run_python_until_end`: keywords are environment
    variables; ``__cwd``, ``__isolated``, ``__cleanenv``, ``__run_using_command`` and
    ``__timeout`` are options. The child runs in isolated mode (``-I``) unless
    environment variables are given or ``__isolated=False``.

    Args:
        *args: command-line arguments for the interpreter.
        **env_vars: environment variables and dunder options.

    Returns:
        The :class:`PythonRunResult` ``(rc, out, err)``.

    Raises:
        AssertionError: the return code was not 0; the message shows the command line,
            stdout and stderr.
        ScriptTimeoutError: the child outlived ``__timeout`` and was killed.

    Example:
        >>> from portsafe import script_helper
        >>> rc, out, err = script_helper.assert_python_ok("-c", "print('ok')")
        >>> out
        b'ok\\n'
    """
    __tracebackhide__ = True
    return _assert_python(True, *args, **env_vars)


def assert_python_failure(*args: Arg, **env_vars: Any) -> PythonRunResult:
    """Run the interpreter with ``args`` and assert it exits non-zero (CPython API).

    Options are those of :func:`assert_python_ok`.

    Args:
        *args: command-line arguments for the interpreter.
        **env_vars: environment variables and dunder options.

    Returns:
        The :class:`PythonRunResult` ``(rc, out, err)``.

    Raises:
        AssertionError: the return code was 0.
        ScriptTimeoutError: the child outlived ``__timeout`` and was killed.

    Example:
        >>> from portsafe import script_helper
        >>> rc, out, err = script_helper.assert_python_failure("-c", "1/0")
        >>> b"ZeroDivisionError" in err
        True
    """
    __tracebackhide__ = True
    return _assert_python(False, *args, **env_vars)


def run_python(
    *args: Arg,
    cwd: StrPath | None = None,
    isolated: bool | None = None,
    env: Mapping[str, str | None] | None = None,
    clean_env: bool = False,
    timeout: float | None = None,
    run_using_command: Sequence[Arg] | None = None,
    expect_success: bool | None = None,
) -> PythonRunResult:
    """Run ``sys.executable -X faulthandler [flags] *args`` with keyword-only options.

    The same child as :func:`run_python_until_end`, for new code: the environment is a
    mapping instead of keywords, so no option needs dunder spelling.

    Args:
        *args: command-line arguments for the interpreter.
        cwd: the child's working directory (default: ours).
        isolated: ``True`` adds ``-I``, ``False`` leaves it out; ``None`` (default)
            follows CPython: ``-I`` when neither ``env`` nor ``clean_env`` is given and
            the interpreter does not need its environment, else ``-E`` unless ``env``
            or ``clean_env`` is given.
        env: variables to set in the child; a value of ``None`` removes that variable.
        clean_env: start from an empty environment instead of a copy of ``os.environ``.
        timeout: seconds to wait; then the child is killed and
            :class:`ScriptTimeoutError` raised. ``None`` waits forever.
        run_using_command: arguments put before the interpreter (a wrapper command).
        expect_success: ``True`` asserts a zero return code, ``False`` a non-zero one,
            ``None`` (default) checks nothing.

    Returns:
        The :class:`PythonRunResult`; its ``cmd_line`` is the command that was run.

    Raises:
        AssertionError: ``expect_success`` was not met; the message is :meth:`fail`'s.
        ScriptTimeoutError: the child outlived ``timeout`` and was killed.
        TypeError: ``env`` holds a non-string, or ``timeout`` is not a number.
        portsafe.InvalidSettingError: ``timeout`` is not positive.

    Example:
        >>> from portsafe import script_helper
        >>> res = script_helper.run_python(
        ...     "-c", "import os; print(os.environ['GREETING'])",
        ...     env={"GREETING": "hello"}, timeout=60, expect_success=True)
        >>> res.out
        b'hello\\n'
    """
    __tracebackhide__ = True
    _require_subprocess()
    checked_timeout = _check_timeout(timeout)
    env_vars: dict[str, str | None] = {}
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not (value is None or isinstance(value, str)):
            raise TypeError(
                f"env must map str to str (or None to unset), not {name!r}: {value!r}"
            )
        env_vars[name] = value
    env_required = interpreter_requires_environment()
    has_env = bool(env_vars) or clean_env
    if isolated is None:
        isolated = not has_env and not env_required
    result, _ = _run(
        args,
        env_vars=env_vars,
        isolated=isolated,
        use_e_flag=not has_env and not env_required,
        clean_env=clean_env,
        cwd=cwd,
        timeout=checked_timeout,
        run_using_command=run_using_command,
    )
    if expect_success is not None and bool(result.rc) == expect_success:
        result.fail()
    return result


def spawn_python(
    *args: Arg,
    stdout: int | Any = subprocess.PIPE,
    stderr: int | Any = subprocess.STDOUT,
    **kw: Any,
) -> subprocess.Popen[bytes]:
    """Start ``sys.executable [-E] *args`` and return the running ``Popen`` (CPython API).

    stdin is a pipe; stdout is a pipe and stderr goes to stdout unless given. ``-E`` is
    added when the interpreter does not need its environment. ``TERM`` is set to
    ``vt100`` (in ``kw["env"]`` if given, else in a copy of ``os.environ``) so GNU
    readline prints no escape codes. Finish it with :func:`kill_python`.

    Args:
        *args: command-line arguments for the interpreter.
        stdout: passed to ``subprocess.Popen``.
        stderr: passed to ``subprocess.Popen``.
        **kw: more ``subprocess.Popen`` keyword arguments.

    Returns:
        The ``subprocess.Popen`` of the child.

    Raises:
        unittest.SkipTest: the platform cannot run subprocesses.

    Example:
        >>> from portsafe import script_helper
        >>> p = script_helper.spawn_python("-c", "print(input().upper())")
        >>> _ = p.stdin.write(b"shout\\n")
        >>> script_helper.kill_python(p)
        b'SHOUT\\n'
    """
    __tracebackhide__ = True
    _require_subprocess()
    cmd_line: list[Any] = [sys.executable]
    if not interpreter_requires_environment():
        cmd_line.append("-E")
    cmd_line.extend(args)
    env = kw.setdefault("env", dict(os.environ))
    env["TERM"] = "vt100"
    proc: subprocess.Popen[bytes] = subprocess.Popen(
        cmd_line, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, **kw
    )
    return proc


def kill_python(p: subprocess.Popen[bytes], *, timeout: float | None = None) -> bytes:
    """Close a spawned child's stdin, read its stdout to the end and reap it (CPython API).

    Despite the name it does not kill: it waits for the child to finish -- unless
    ``timeout`` (portsafe) is given and runs out, then it kills the child. A child that
    runs faulthandler (``spawn_python("-X", "faulthandler", ...)``) is first sent
    SIGABRT, so its output ends with the stack of each of its threads (POSIX only).

    Args:
        p: a process from :func:`spawn_python` (stdin and stdout pipes).
        timeout: seconds to wait before killing the child; ``None`` waits forever.

    Returns:
        Everything the child wrote to stdout (and stderr, with the default
        ``spawn_python`` settings).

    Raises:
        ScriptTimeoutError: the child outlived ``timeout`` and was killed.

    Example:
        >>> from portsafe import script_helper
        >>> p = script_helper.spawn_python("-c", "print('bye')")
        >>> script_helper.kill_python(p, timeout=60)
        b'bye\\n'
    """
    __tracebackhide__ = True
    checked_timeout = _check_timeout(timeout)
    if checked_timeout is None:
        assert p.stdin is not None
        assert p.stdout is not None
        p.stdin.close()
        data = p.stdout.read()
        p.stdout.close()
        p.wait()
    else:
        if p.stdin is not None and p.stdin.closed:
            # communicate() would flush the closed pipe and raise ValueError.
            p.stdin = None
        # communicate() closes stdin and reads all pipes, with a deadline.
        with p:
            try:
                args = _as_args(p.args)
                data, _ = _communicate(
                    p, checked_timeout, args, faulthandler=_has_faulthandler_option(args)
                )
            finally:
                p.kill()
    # Reap dropped children so regrtest -R does not see leaked processes.
    _cleanup_zombies()
    return data


def _as_args(args: object) -> list[Any]:
    if isinstance(args, (str, bytes, os.PathLike)):
        return [args]
    result: list[Any] = list(args)  # type: ignore[call-overload]
    return result


def make_script(
    script_dir: StrPath, script_basename: str, source: str | bytes, omit_suffix: bool = False
) -> str:
    """Write ``source`` to ``script_dir/script_basename.py`` and return its path.

    ``str`` source is written as UTF-8, ``bytes`` as is (CPython 3.14), so a test can
    write a script with a coding cookie or invalid UTF-8. Import caches are
    invalidated so the new file is importable at once.

    Args:
        script_dir: an existing directory.
        script_basename: the file name without ``.py``.
        source: the script's text (``str``) or exact bytes (``bytes``).
        omit_suffix: don't add ``.py``.

    Returns:
        The path of the new file.

    Raises:
        TypeError: ``source`` is neither ``str`` nor ``bytes``.
        OSError: the file cannot be written.

    Example:
        >>> import tempfile
        >>> from portsafe import script_helper
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = script_helper.make_script(d, "hello", "print('hi')")
        ...     script_helper.assert_python_ok(path).out
        b'hi\\n'
    """
    __tracebackhide__ = True
    script_filename = script_basename
    if not omit_suffix:
        script_filename += os.extsep + "py"
    script_name = os.path.join(script_dir, script_filename)
    if isinstance(source, str):
        # UTF-8 is the default source encoding.
        with open(script_name, "w", encoding="utf-8") as script_file:
            script_file.write(source)
    elif isinstance(source, (bytes, bytearray)):
        with open(script_name, "wb") as script_file:
            script_file.write(source)
    else:
        raise TypeError(f"source must be str or bytes, not {type(source).__name__}")
    importlib.invalidate_caches()
    return script_name


def make_legacy_pyc(source: StrPath) -> str:
    """Move the ``__pycache__`` pyc of ``source`` next to it, as ``<source>c``.

    This is ``test.support.import_helper.make_legacy_pyc``: a legacy pyc is loaded
    without its source, which is how tests check sourceless imports.

    Args:
        source: path of a ``.py`` file whose PEP 3147 pyc exists (the ``.py`` itself
            need not exist any more).

    Returns:
        The path of the legacy pyc.

    Raises:
        FileNotFoundError: there is no compiled file in ``__pycache__``; compile it
            first (``py_compile.compile(source)``).

    Example:
        >>> import os, py_compile, tempfile
        >>> from portsafe import script_helper
        >>> with tempfile.TemporaryDirectory() as d:
        ...     src = script_helper.make_script(d, "mod", "x = 1")
        ...     _ = py_compile.compile(src, doraise=True)
        ...     os.path.basename(script_helper.make_legacy_pyc(src))
        'mod.pyc'
    """
    __tracebackhide__ = True
    source = os.fspath(source)
    pyc_file = importlib.util.cache_from_source(source)
    up_one = os.path.dirname(os.path.abspath(source))
    legacy_pyc = os.path.join(up_one, os.path.basename(source) + "c")
    os.replace(pyc_file, legacy_pyc)
    return legacy_pyc


def make_zip_script(
    zip_dir: StrPath, zip_basename: str, script_name: StrPath, name_in_zip: str | None = None
) -> tuple[str, str]:
    """Put one script into a new zip file ``zip_dir/zip_basename.zip``.

    A pyc from ``__pycache__`` is first turned into a legacy pyc (see
    :func:`make_legacy_pyc`) so it is importable from the archive.

    Args:
        zip_dir: where the zip file goes.
        zip_basename: its name without ``.zip``.
        script_name: the file to add.
        name_in_zip: its name inside the archive (default: its base name).

    Returns:
        ``(zip_path, path_inside_zip)``, e.g. ``("/d/z.zip", "/d/z.zip/__main__.py")``.

    Raises:
        OSError: a file cannot be read or written.

    Example:
        >>> import tempfile
        >>> from portsafe import script_helper
        >>> with tempfile.TemporaryDirectory() as d:
        ...     main = script_helper.make_script(d, "__main__", "print('zipped')")
        ...     zip_name, _ = script_helper.make_zip_script(d, "app", main)
        ...     script_helper.assert_python_ok(zip_name).out
        b'zipped\\n'
    """
    __tracebackhide__ = True
    import zipfile

    script_name = os.fspath(script_name)
    zip_name = os.path.join(zip_dir, zip_basename + os.extsep + "zip")
    with zipfile.ZipFile(zip_name, "w") as zip_file:
        if name_in_zip is None:
            parts = script_name.split(os.sep)
            if len(parts) >= 2 and parts[-2] == "__pycache__":
                legacy_pyc = make_legacy_pyc(importlib.util.source_from_cache(script_name))
                name_in_zip = os.path.basename(legacy_pyc)
                script_name = legacy_pyc
            else:
                name_in_zip = os.path.basename(script_name)
        zip_file.write(script_name, name_in_zip)
    return zip_name, os.path.join(zip_name, name_in_zip)


def make_pkg(pkg_dir: StrPath, init_source: str | bytes = "") -> None:
    """Create the package directory ``pkg_dir`` with an ``__init__.py``.

    Args:
        pkg_dir: the directory to create (it must not exist).
        init_source: the source of ``__init__.py``.

    Raises:
        FileExistsError: ``pkg_dir`` already exists.

    Example:
        >>> import os, tempfile
        >>> from portsafe import script_helper
        >>> with tempfile.TemporaryDirectory() as d:
        ...     script_helper.make_pkg(os.path.join(d, "pkg"), "VALUE = 1")
        ...     sorted(os.listdir(os.path.join(d, "pkg")))
        ['__init__.py']
    """
    __tracebackhide__ = True
    os.mkdir(pkg_dir)
    make_script(pkg_dir, "__init__", init_source)


def make_zip_pkg(  # noqa: PLR0917 -- CPython's positional signature
    zip_dir: StrPath,
    zip_basename: str,
    pkg_name: str,
    script_basename: str,
    source: str | bytes,
    depth: int = 1,
    compiled: bool = False,
) -> tuple[str, str]:
    """Build ``zip_dir/zip_basename.zip`` holding a package nested ``depth`` deep.

    The archive holds ``pkg/__init__.py``, ``pkg/pkg/__init__.py``, ... and the script
    ``script_basename.py`` in the innermost package; with ``compiled=True`` it holds
    legacy ``.pyc`` files instead of sources. The temporary files made in ``zip_dir``
    are removed again.

    Args:
        zip_dir: where the zip file goes.
        zip_basename: its name without ``.zip``.
        pkg_name: the package name, repeated ``depth`` times.
        script_basename: the script's name without ``.py``.
        source: the script's source.
        depth: how many nested packages.
        compiled: store bytecode instead of source.

    Returns:
        ``(zip_path, path_of_script_inside_zip)``.

    Raises:
        OSError: a file cannot be written.
        py_compile.PyCompileError: ``compiled`` and ``source`` does not compile.

    Example:
        >>> import tempfile
        >>> from portsafe import script_helper
        >>> with tempfile.TemporaryDirectory() as d:
        ...     zip_name, _ = script_helper.make_zip_pkg(d, "z", "pkg", "__main__", "print(1)")
        ...     script_helper.assert_python_ok("-m", "pkg", PYTHONPATH=zip_name).out
        b'1\\n'
    """
    __tracebackhide__ = True
    # Loaded on use: zipfile pulls in compression modules, py_compile pulls in traceback.
    import py_compile
    import zipfile

    unlink: list[str] = []
    init_name = make_script(zip_dir, "__init__", "")
    unlink.append(init_name)
    init_basename = os.path.basename(init_name)
    script_name = make_script(zip_dir, script_basename, source)
    unlink.append(script_name)
    script_basename_in_zip = os.path.basename(script_name)
    if compiled:
        # doraise=True: these return the pyc path or raise, never None.
        init_name = str(py_compile.compile(init_name, doraise=True))
        script_name = str(py_compile.compile(script_name, doraise=True))
        unlink.extend((init_name, script_name))
        # Store legacy names (``__init__.pyc``): zipimport never looks in __pycache__.
        # CPython's helper kept the ``.py`` / ``.cpython-3X.pyc`` names here, which
        # made an archive that cannot be imported (no CPython test uses compiled=True).
        init_basename += "c"
        script_basename_in_zip += "c"
    pkg_names = [os.sep.join([pkg_name] * i) for i in range(1, depth + 1)]
    script_name_in_zip = os.path.join(pkg_names[-1], script_basename_in_zip)
    zip_name = os.path.join(zip_dir, zip_basename + os.extsep + "zip")
    with zipfile.ZipFile(zip_name, "w") as zip_file:
        for name in pkg_names:
            zip_file.write(init_name, os.path.join(name, init_basename))
        zip_file.write(script_name, script_name_in_zip)
    for name in unlink:
        os.unlink(name)
    return zip_name, os.path.join(zip_name, script_name_in_zip)


def _support_verbose() -> bool:
    # Follow regrtest's verbosity when test.support is already loaded; never import it.
    support = sys.modules.get("test.support")
    return bool(getattr(support, "verbose", False))


def run_test_script(script: StrPath) -> None:
    """Run a unittest script in a child with ``-u ... -v`` and assert it passes.

    When ``test.support`` is loaded with ``verbose`` set (regrtest ``-v``), the child
    writes straight to our stdout and stderr so output shows up live; otherwise this is
    ``assert_python_ok("-u", script, "-v")``.

    Args:
        script: path of the script.

    Raises:
        AssertionError: the script exited non-zero.

    Example:
        >>> import tempfile
        >>> from portsafe import script_helper
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = script_helper.make_script(d, "t", (
        ...         "import unittest\\n"
        ...         "class T(unittest.TestCase):\\n"
        ...         "    def test_it(self): pass\\n"
        ...         "unittest.main()\\n"))
        ...     script_helper.run_test_script(path)
    """
    __tracebackhide__ = True
    _require_subprocess()
    if _support_verbose():
        name = f"script {os.path.basename(script)}"
        print(flush=True)
        print(f"===== {name} ======", flush=True)
        # The child inherits stdout and stderr so nothing is lost if it crashes.
        args = [sys.executable, "-E", "-X", "faulthandler", "-u", os.fspath(script), "-v"]
        proc = subprocess.run(args, check=False)
        print(f"===== {name} completed: exit code {proc.returncode} ======", flush=True)
        if proc.returncode:
            raise AssertionError(f"{name} failed")
    else:
        assert_python_ok("-u", script, "-v")

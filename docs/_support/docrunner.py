"""Run every code block of README.md and docs/*.md as part of the test suite (Sybil).

What each fenced block means to the runner:

* ```` ```python ````: run in order, in one namespace per document (a doctest block,
  ``>>>``, is checked as a doctest). A block whose first line is only a file name
  comment (``# test_cli.py``, ``# myapp.py``) is a *file*: it is written to the
  document's work directory instead; a ``test_*.py`` file is then run with pytest in a
  child process and must pass.
* ```` ```sh ````: the block is one bash script (``set -euo pipefail``), run with a
  timeout in its own process group; whatever it left running (a server started with
  ``&``, its lease keeper) is killed when the script ends.
* ```` ```console ````: the ``$ `` lines are run in order; the output shown is an
  illustration (pids and ports differ each run) and is not compared. A command fails
  the example when it exits with 2 or more (portsafe's exit 1 means "nothing found").
* ```` ```ini ```` / ```` ```toml ````: parsed, so a typo fails.
* bare ```` ``` ```` and ```` ```text ````: output shown to the reader, not run.
* any other language: fails, asking for a runner or a skip.

A block that cannot run here is preceded by ``<!-- skip: next "why not" -->`` (Sybil's
Markdown skip directive; the reason is a Python string and is shown in the report).

Every document gets a fresh work directory (its current directory while its blocks
run) holding copies of the stand-ins next to this file (``myapp.py``: a WSGI app,
``myasgi.py``: an ASGI app, ``mypkg``: a package with a command line), and a throw-away
``server.pem`` when the document mentions it or ``openssl s_server`` (made with
``openssl`` at test time: no key is committed). Where reservations are lock files (not
Linux), Python blocks and each shell block get a private ``PORTSAFE_LOCK_DIR`` under it;
on Linux, which ignores that setting, they use the network namespace's names. Shell
blocks find ``portsafe`` (the test interpreter's) and the stand-in programs of ``bin/``
on ``PATH``, and carry ``PORTSAFE_DOCS_BLOCK`` in their environment, by which whatever
they leave running is found and stopped.
No block may send traffic off the machine.

Blocks run in document order even under pytest-xdist, which may hand a document's
examples to several workers: a worker first replays, in order, the earlier examples
it did not run itself.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.integration.pytest import SybilFile, SybilItem
from sybil.parsers.markdown import ClearNamespaceParser, PythonCodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

HERE = Path(__file__).resolve().parent
STANDINS = ("myapp.py", "myasgi.py", "mypkg")
BIN = HERE / "bin"
SHELL_TIMEOUT = 60.0
PYTEST_TIMEOUT = 120.0
RUN = ("python", "sh", "console")
OUTPUT = ("", "text")
DATA = ("ini", "toml")
FILE_COMMENT = re.compile(r"\A# (?P<name>[\w.-]+\.py)[ \t]*\n")
_DONE = "__docrunner_done__"
_WORKDIR = "__docrunner_workdir__"
_SAVED = "__docrunner_saved__"
BLOCK_MARKER = "PORTSAFE_DOCS_BLOCK"
# Only the lock-file backend reads PORTSAFE_LOCK_DIR; Linux's names warn that it is set.
LOCK_FILES = (not sys.platform.startswith("linux")
              or os.environ.get("_PORTSAFE_SELFTEST_FILE_BACKEND") == "1")


# -- per-document set-up ---------------------------------------------------------------

def setup(namespace: dict[str, Any]) -> None:
    """Give the document a fresh work directory, stand-ins and a private lock directory."""
    workdir = Path(tempfile.mkdtemp(prefix="portsafe-docs-"))
    for name in STANDINS:
        if (HERE / name).is_dir():
            shutil.copytree(HERE / name, workdir / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(HERE / name, workdir / name)
    namespace[_DONE] = set()
    namespace[_WORKDIR] = workdir
    namespace[_SAVED] = (os.getcwd(), os.environ.get("PORTSAFE_LOCK_DIR"))
    os.chdir(workdir)
    if LOCK_FILES:
        os.environ["PORTSAFE_LOCK_DIR"] = str(workdir / "locks")


def teardown(namespace: dict[str, Any]) -> None:
    """Undo :func:`setup`: back to the old directory and lock setting, work dir removed."""
    cwd, lock_dir = namespace.pop(_SAVED)
    os.chdir(cwd)
    if lock_dir is None:
        os.environ.pop("PORTSAFE_LOCK_DIR", None)
    else:
        os.environ["PORTSAFE_LOCK_DIR"] = lock_dir
    shutil.rmtree(namespace.pop(_WORKDIR), ignore_errors=True)


def _workdir(example: Example) -> Path:
    workdir: Path = example.namespace[_WORKDIR]
    text = example.document.text
    wants_pem = "server.pem" in text or "openssl s_server" in text  # its default cert file
    if wants_pem and not (workdir / "server.pem").exists():
        _make_certificate(workdir / "server.pem")
    return workdir


def _make_certificate(path: Path) -> None:
    """A self-signed localhost key and certificate in one file, as `openssl s_server` reads."""
    if shutil.which("openssl") is None:
        raise unittest.SkipTest("openssl is not installed: no server.pem can be made")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(path),
         "-out", str(path.with_suffix(".crt"))],
        check=True, capture_output=True, timeout=30)
    with path.open("a") as pem:
        pem.write(path.with_suffix(".crt").read_text())


def child_env(workdir: Path, lock_name: str) -> dict[str, str]:
    """The environment of a shell block or a pytest child: private locks, our tools first."""
    env = dict(os.environ)
    if LOCK_FILES:
        env["PORTSAFE_LOCK_DIR"] = str(workdir / lock_name)
    env[BLOCK_MARKER] = str(workdir / lock_name)
    env["PORTSAFE_KEEPER_IDLE"] = "1"  # a block's lease keeper must not outlive the test long
    env["PATH"] = os.pathsep.join([str(BIN), str(Path(sys.executable).parent), env["PATH"]])
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


# -- evaluators -------------------------------------------------------------------------

def _python_file(example: Example, name: str) -> str | None:
    workdir = _workdir(example)
    (workdir / name).write_text(example.parsed, encoding="utf-8")
    if not (name.startswith("test_") or name.endswith("_test.py")):
        return None
    env = child_env(workdir, "locks-pytest")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-W", "error::ResourceWarning", name],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=PYTEST_TIMEOUT,
        check=False)
    if proc.returncode != 0:
        return f"pytest {name} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return None


def _run_script(example: Example, script: str) -> tuple[int, str]:
    workdir = _workdir(example)
    lock_name = f"locks-sh-{example.line}"
    env = child_env(workdir, lock_name)
    path = workdir / f"block-{example.line}.sh"
    path.write_text("set -euo pipefail\n" + script, encoding="utf-8")
    log = workdir / f"block-{example.line}.log"
    # Output goes to a file, not a pipe: a server the block left in the background keeps
    # a pipe open, and reading it to the end would wait for the server, not the block.
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", str(path)], cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=SHELL_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _kill_group(proc.pid)
            _kill_by_marker(env[BLOCK_MARKER])
            proc.wait()
    text = log.read_text(errors="replace")
    if rc is None:
        return -1, f"timed out after {SHELL_TIMEOUT:.0f} s (a block must end by itself)\n{text}"
    return rc, text


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_by_marker(value: str) -> None:
    """Stop what a block left detached (its lease keeper): processes with its marker."""
    marker = f"{BLOCK_MARKER}={value}".encode()
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def evaluate_sh(example: Example) -> str | None:
    """Run a ```sh block as one bash script; it must exit 0 within the timeout."""
    rc, out = _run_script(example, example.parsed)
    if rc != 0:
        return f"shell block exited {rc}:\n{out}"
    return None


def console_commands(text: str) -> list[str]:
    """The commands of a ```console block: its ``$ `` lines, with ``\\`` continuations."""
    commands: list[str] = []
    continuing = False
    for line in text.splitlines():
        if continuing:
            commands[-1] += "\n" + line
        elif line.startswith("$ "):
            commands.append(line[2:])
        else:
            continue
        continuing = line.endswith("\\")
    return commands


def evaluate_console(example: Example) -> str | None:
    """Run each ``$`` command of a ```console block; exit 2 or more fails the example."""
    commands = console_commands(example.parsed)
    if not commands:
        return "a console block needs at least one '$ command' line"
    script = "set +e\n"
    for n, command in enumerate(commands):
        script += (f"{command}\nrc=$?\nif [ $rc -ge 2 ]; then echo 'command {n + 1} "
                   f"exited '$rc >&2; exit $rc; fi\n")
    rc, out = _run_script(example, script)
    if rc != 0:
        return f"console block exited {rc}:\n{out}"
    return None


def evaluate_ini(example: Example) -> str | None:
    """Parse an ```ini block (a bare ``key = value`` list reads as one section)."""
    text = example.parsed
    if not re.search(r"^\s*\[", text, re.MULTILINE):
        text = "[section]\n" + text
    try:
        configparser.ConfigParser().read_string(text)
    except configparser.Error as exc:
        return f"not valid ini: {exc}"
    return None


def evaluate_toml(example: Example) -> str | None:
    """Parse a ```toml block (Python 3.11+ has tomllib; 3.10 skips)."""
    try:
        import tomllib
    except ImportError:
        raise unittest.SkipTest("tomllib needs Python 3.11") from None
    try:
        tomllib.loads(example.parsed)
    except tomllib.TOMLDecodeError as exc:
        return f"not valid TOML: {exc}"
    return None


def no_runner(example: Example) -> str:
    """A block in a language nobody runs: say how to fix it."""
    language = example.region.lexemes["arguments"]
    return (f"no runner for ```{language} blocks: mark the block with "
            '<!-- skip: next "why it cannot run" --> or add a runner in '
            "docs/_support/docrunner.py")


# -- parsers ----------------------------------------------------------------------------

class FencedBlockParser:
    """Every fenced block with a language that the Python parser does not take."""

    def __init__(self) -> None:
        self.lexer = FencedCodeBlockLexer(language=r"[^\s`]*",
                                          mapping={"language": "arguments",
                                                   "source": "source"})
        self.evaluators: dict[str, Callable[[Example], str | None]] = {
            "sh": evaluate_sh, "console": evaluate_console,
            "ini": evaluate_ini, "toml": evaluate_toml,
        }

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.lexer(document):
            language = region.lexemes["arguments"]
            if language in OUTPUT or language == "python":
                continue
            region.parsed = str(region.lexemes["source"])
            region.evaluator = self.evaluators.get(language, no_runner)
            yield region


class PythonParser(PythonCodeBlockParser):
    """Python blocks; a block opening with a ``# name.py`` line is a file, not code."""

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in super().__call__(document):
            match = FILE_COMMENT.match(str(region.parsed))
            if match is not None:
                name = match.group("name")
                region.parsed = str(region.parsed)
                region.evaluator = lambda example, name=name: _python_file(example, name)
            yield region


# -- pytest collection: examples in order, whichever worker runs them ------------------

class InOrderItem(SybilItem):  # type: ignore[misc]
    """A Sybil example that first runs the earlier examples this process has not run."""

    def runtest(self) -> None:
        example = self.example
        done: set[int] = example.namespace[_DONE]
        never = _never_run(example.document)
        for earlier in _examples_before(example):
            if earlier.start in done or earlier.start in never:
                continue
            done.add(earlier.start)
            # A failure here is the earlier example's own, reported by its own item.
            with contextlib.suppress(Exception):
                earlier.evaluate()
        done.add(example.start)
        example.evaluate()

    def _traceback_filter(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:
        # Sybil's own filter assumes its runtest frame layout; keep the frames from
        # the example on, or all of them.
        traceback = excinfo.traceback
        for n, entry in enumerate(traceback):
            if entry.path == Path(self.example.path):
                return traceback[n:]
        return traceback


def _never_run(document: Document) -> set[int]:
    never: set[int] = document.__dict__.setdefault("_docrunner_never_run", set())
    return never


def never_replay(example: Example) -> None:
    """Keep an example that is marked not to run out of the replay of later ones."""
    _never_run(example.document).add(example.start)


def _examples_before(example: Example) -> Iterator[Example]:
    for earlier in example.document.examples():
        if earlier.start >= example.start:
            return
        yield earlier


class InOrderFile(SybilFile):  # type: ignore[misc]
    """A Markdown file whose examples are :class:`InOrderItem` s."""

    def collect(self) -> Iterator[InOrderItem]:
        for sybil in self.sybils:
            document = sybil.parse(self.path)
            self.documents.append(document)
            for example in document.examples():
                yield InOrderItem.from_parent(self, sybil=sybil, example=example)


def make_sybil(root: Path, patterns: list[str]) -> Sybil:
    """The Sybil that runs the Markdown files matching ``patterns`` under ``root``."""
    return Sybil(
        parsers=[SkipParser(), ClearNamespaceParser(), PythonParser(), FencedBlockParser()],
        patterns=patterns,
        path=str(root),
        setup=setup,
        teardown=teardown,
        name="docs",
    )


def pytest_collect_file(sybil: Sybil) -> Callable[[Path, pytest.Collector], Any]:
    """A ``pytest_collect_file`` hook for conftest.py."""

    def collect(file_path: Path, parent: pytest.Collector) -> InOrderFile | None:
        if sybil.should_parse(file_path):
            return InOrderFile.from_parent(parent, path=file_path, sybils=[sybil])
        return None

    return collect


"""Run CPython's own tests with its helper modules replaced by portsafe's, and compare.

For each interpreter given, this runs the interpreter's installed ``test`` package
(``python -m test``, i.e. ``test.libregrtest``) twice on the same test modules:

1. *stock*: CPython's ``test.support.<helper>``;
2. *portsafe*: ``test.support.<helper>`` aliased to ``portsafe.<helper>`` by a
   ``sys.meta_path`` finder, installed in the main process and in every ``-j`` worker
   by ``tools/cpython_suite/sitecustomize.py`` on ``PYTHONPATH``.

Both runs get the same environment (same ``PYTHONPATH``), except for the variable that
switches the alias on. Counts of run/passed/skipped/failed/errors come from regrtest's
``--junit-xml`` (3.10's summary prints no counts), per test module; a table is printed
and the exit status is 1 when any count or module status differs. The portsafe run
must also *prove* the replacement was used: every aliased process appends which file
it loaded and how many times each public function was called; no load or no call is a
failure too (exit 3).

Never enabled: regrtest's ``network`` resource (those tests reach for hosts off this
machine). Always passed: ``-i '*VSOCK*'`` (an AF_VSOCK test hangs in some sandboxes).
Never passed: ``--fast-ci``/``--slow-ci``, which re-exec with ``-E`` and would drop
``PYTHONPATH`` and with it the alias.

Examples::

    python tools/cpython_suite.py                       # socket_helper set, this python
    python tools/cpython_suite.py --smoke --python /root/.pyenv/versions/3.12.1/bin/python
    python tools/cpython_suite.py --replace script_helper
    python tools/cpython_suite.py --modules test_httplib test_ftplib

A module that runs no test in either run proves nothing: its row says "not compared".
That is expected only of the modules in ``NO_TESTS_EXPECTED`` (``test_timeout``: every
test needs the ``network`` resource); any other module that runs no test fails the run.

Exit status: 0 identical (or nothing to compare: no ``test`` package, Python < 3.10),
1 counts differ, 2 usage error, 3 the replacement could not be proven in use,
4 a module expected to run tests ran none.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPORT_DIR = Path(__file__).resolve().parent / "cpython_suite"
SRC_DIR = ROOT / "src"

MODULES = {
    "socket_helper": [
        "test_support",
        "test_socket",
        "test_asyncio.test_events",
        "test_asyncio.test_unix_events",
        "test_httplib",
        "test_ftplib",
        "test_timeout",
        "test_ssl",
    ],
    "script_helper": [
        "test_script_helper",
        "test_cmd_line_script",
        "test_zipimport_support",
    ],
}
# Fast modules that still call find_unused_port/bind_port/transient_internet (resp. the
# script_helper entry points) many times: a few seconds per run.
SMOKE = {
    "socket_helper": ["test_support", "test_httplib", "test_ftplib"],
    "script_helper": ["test_script_helper"],
}
# Functions that must have been called at least once in the portsafe run.
MUST_CALL = {
    "socket_helper": ("bind_port", "find_unused_port"),
    "script_helper": ("assert_python_ok",),
}
# script_helper's tests compare child output and byte-code files; these variables
# change both, so neither run gets them.
UNSET_FOR = {"script_helper": ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")}

# Modules that run no test here, and why. Their rows read "not compared"; a module not
# listed that runs no test is a failure (exit 4), since 0 = 0 would prove nothing.
NO_TESTS_EXPECTED = {
    "test_timeout": "every test needs the 'network' resource, which is never enabled",
}

STATUS_RE = re.compile(r"\[\s*\d+/\d+(?:/\d+)?\] (?P<name>test[\w.]*) (?P<status>.+)$")


@dataclass
class Counts:
    run: int = 0
    passed: int = 0
    skipped: int = 0
    failed: int = 0
    errors: int = 0

    def row(self) -> tuple[int, int, int, int, int]:
        return (self.run, self.passed, self.skipped, self.failed, self.errors)


@dataclass
class RunResult:
    label: str
    returncode: int
    seconds: float
    counts: dict[str, Counts] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    log: Path | None = None


def probe(python: str, modules: list[str]) -> tuple[bool, str, list[str]]:
    """Return (usable, version or explanation, missing test modules) for ``python``."""
    code = (
        "import sys, importlib.util as u; print('%d.%d' % sys.version_info[:2])\n"
        "try:\n import test.libregrtest, test.support\nexcept ImportError as e: print('NO', e)\n"
        "else:\n print('OK')\n"
        " for m in sys.argv[1:]:\n"
        "  try: found = u.find_spec('test.' + m)\n"
        "  except ImportError: found = None\n"
        "  if found is None: print(m)\n"
    )
    try:
        proc = subprocess.run([python, "-I", "-c", code, *modules], capture_output=True,
                              text=True, timeout=60, check=False)
    except OSError as exc:
        return False, f"cannot run {python}: {exc}", []
    lines = proc.stdout.split()
    if proc.returncode or len(lines) < 2:
        return False, f"{python} failed to start: {proc.stderr.strip()[-300:]}", []
    version = lines[0]
    major, minor = (int(x) for x in version.split("."))
    if (major, minor) < (3, 10):
        return False, f"{python} is Python {version}; portsafe needs 3.10 or newer", []
    missing = lines[2:] if lines[1] == "OK" else list(modules)
    if len(missing) == len(modules):
        return False, (f"{python} (Python {version}) has no `test` package (or none of the"
                       " requested test modules) installed, so there is nothing to compare"
                       " (Debian/Ubuntu ship them as libpython3.X-testsuite)"), missing
    return True, version, missing


def base_env(replace: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSAFE_CPYTHON_")}
    for helper in replace:
        for name in UNSET_FOR.get(helper, ()):
            env.pop(name, None)
    # Both runs get the same PYTHONPATH: the only difference is the alias switch.
    parts = [str(SUPPORT_DIR), str(SRC_DIR)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def module_of(test_id: str, modules: list[str]) -> str | None:
    # Longest match first, so test_asyncio.test_events never swallows a sibling.
    for module in sorted(modules, key=len, reverse=True):
        for prefix in (f"test.{module}.", f"{module}."):
            if test_id.startswith(prefix):
                return module
    return None


def parse_junit(path: Path, modules: list[str]) -> dict[str, Counts]:
    counts: dict[str, Counts] = collections.defaultdict(Counts)
    if not path.exists():
        return dict(counts)
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for suite in suites:
        owner: str | None = None
        seen_errors = seen_failures = 0
        for case in suite.iter("testcase"):
            name = case.get("name")
            if name is None:
                # regrtest's XML leaves a test whose subtests failed without a name.
                continue
            module = module_of(name, modules) or "(other)"
            owner = owner or module
            c = counts[module]
            c.run += 1
            if case.find("skipped") is not None:
                c.skipped += 1
            elif case.find("error") is not None:
                c.errors += 1
                seen_errors += 1
            elif case.find("failure") is not None:
                c.failed += 1
                seen_failures += 1
            else:
                c.passed += 1
        # Errors outside a test case (setUpClass, subtests) only show in the totals.
        extra_errors = int(suite.get("errors", 0)) - seen_errors
        extra_failures = int(suite.get("failures", 0)) - seen_failures
        if extra_errors > 0 or extra_failures > 0:
            c = counts[owner or "(unattributed)"]
            c.errors += max(extra_errors, 0)
            c.failed += max(extra_failures, 0)
    return dict(counts)


def normalise_status(text: str) -> str:
    text = text.strip()
    # Drop durations such as "(43.2 sec)" or "(1 min 2 sec)"; keep "(env changed)".
    text = re.sub(r"\s*\((?:\d[^)]*)\)", "", text)
    return text.split(" -- ")[0].strip()


def run_suite(python: str, label: str, modules: list[str], env: dict[str, str],
              workdir: Path, args: argparse.Namespace) -> RunResult:
    xml = workdir / f"{label}.xml"
    log = workdir / f"{label}.log"
    cmd = [python, "-m", "test", "-j", str(args.jobs), "--junit-xml", str(xml),
           "-i", "*VSOCK*", "--timeout", str(args.timeout)]
    if args.resources:
        cmd += ["-u", args.resources]
    cmd += modules
    rundir = workdir / f"{label}-cwd"
    rundir.mkdir(exist_ok=True)
    start = time.monotonic()
    with log.open("w") as out:
        out.write("+ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, env=env, cwd=rundir, stdout=out, stderr=subprocess.STDOUT,
                              check=False)
    seconds = time.monotonic() - start
    result = RunResult(label, proc.returncode, seconds, parse_junit(xml, modules), log=log)
    for line in log.read_text(errors="replace").splitlines():
        m = STATUS_RE.search(line)
        if m and m.group("name") in modules:
            result.status[m.group("name")] = normalise_status(m.group("status"))
    return result


def read_calls(path: Path) -> tuple[dict[str, set[str]], dict[str, collections.Counter[str]]]:
    loaded: dict[str, set[str]] = collections.defaultdict(set)
    calls: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    if not path.exists():
        return loaded, calls
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "loaded":
            loaded[event["alias"]].add(event["file"])
        elif event["event"] == "calls":
            calls[event["alias"]].update(event["calls"])
    return loaded, calls


def check_proof(replace: list[str], calls_file: Path) -> list[str]:
    loaded, calls = read_calls(calls_file)
    problems = []
    for helper in replace:
        alias = f"test.support.{helper}"
        files = loaded.get(alias, set())
        total = calls.get(alias, collections.Counter())
        summary = ", ".join(f"{k}={v}" for k, v in sorted(total.items())) or "no calls"
        print(f"  proof: {alias} -> portsafe.{helper} loaded in {len(files)} file(s) "
              f"{sorted(files)}; calls: {summary}")
        if not files:
            problems.append(f"{alias} was never loaded from portsafe")
        elif any(not f.startswith(str(SRC_DIR)) for f in files):
            problems.append(f"{alias} was loaded from outside {SRC_DIR}: {sorted(files)}")
        missing = [name for name in MUST_CALL.get(helper, ()) if not total.get(name)]
        if files and missing:
            problems.append(f"portsafe.{helper}.{'/'.join(missing)} never called")
    return problems


def print_table(version: str, modules: list[str], stock: RunResult, ours: RunResult
                ) -> tuple[bool, list[str]]:
    """Print the comparison; return (identical, modules expected to run tests that ran none)."""
    header = (f"{'Python ' + version:<12} {'module':<31} {'stock run/pass/skip/fail/err':>29}"
              f"  {'portsafe run/pass/skip/fail/err':>32}  same")
    print(header)
    print("-" * len(header))
    identical = True
    not_run: list[str] = []
    names = list(modules) + sorted((set(stock.counts) | set(ours.counts)) - set(modules))
    for module in names:
        a = stock.counts.get(module, Counts())
        b = ours.counts.get(module, Counts())
        sa, sb = stock.status.get(module, "?"), ours.status.get(module, "?")
        fa = "/".join(map(str, a.row()))
        fb = "/".join(map(str, b.row()))
        if a.run == 0 and b.run == 0:
            why = NO_TESTS_EXPECTED.get(module)
            if why is None:
                not_run.append(module)
                why = "expected to run tests"
            verdict = f"not compared (0 tests run: {why})"
        else:
            same = a.row() == b.row() and sa == sb
            identical &= same
            verdict = "yes" if same else "NO"
            if sa != sb:
                verdict += f"   status: {sa!r} vs {sb!r}"
        print(f"{'':<12} {module:<31} {fa:>29}  {fb:>32}  {verdict}")
    ta = [sum(x) for x in zip(*(c.row() for c in stock.counts.values()), strict=False)] or [0] * 5
    tb = [sum(x) for x in zip(*(c.row() for c in ours.counts.values()), strict=False)] or [0] * 5
    print(f"{'':<12} {'TOTAL':<31} {'/'.join(map(str, ta)):>29}  {'/'.join(map(str, tb)):>32}"
          f"  {'yes' if identical else 'NO'}")
    identical &= stock.returncode == ours.returncode
    print(f"{'':<12} {'regrtest exit / seconds':<31} "
          f"{f'{stock.returncode} / {stock.seconds:.0f}s':>29}  "
          f"{f'{ours.returncode} / {ours.seconds:.0f}s':>32}")
    return identical, not_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare CPython's own tests run with stock vs portsafe helper modules.")
    parser.add_argument("--python", action="append", dest="pythons", metavar="PATH",
                        help="interpreter to test (repeatable; default: this one)")
    parser.add_argument("--replace", action="append", choices=sorted(MODULES),
                        help="helper to replace (repeatable; default: socket_helper)")
    parser.add_argument("--modules", nargs="+", metavar="TEST",
                        help="test modules to run (default: the set for --replace)")
    parser.add_argument("--smoke", action="store_true",
                        help="run the small, fast smoke set instead of the full set")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="regrtest -j (default 2)")
    parser.add_argument("--timeout", type=int, default=900,
                        help="regrtest per-file timeout in seconds (default 900)")
    parser.add_argument("--resources", default="",
                        help="regrtest -u value; must not enable 'network' (default: none)")
    parser.add_argument("--keep", metavar="DIR", help="keep logs and XML in DIR")
    args = parser.parse_args(argv)

    replace = args.replace or ["socket_helper"]
    if args.modules:
        modules = args.modules
    else:
        preset = SMOKE if args.smoke else MODULES
        modules = [m for helper in replace for m in preset[helper]]
    resources = [r.strip() for r in args.resources.split(",") if r.strip()]
    if "network" in resources or ("all" in resources and "-network" not in resources):
        parser.error("the 'network' resource reaches hosts off this machine; "
                     "use e.g. --resources all,-network")

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="portsafe-cpython-suite-"))
    workdir.mkdir(parents=True, exist_ok=True)
    exit_code = compared = 0
    try:
        for n, python in enumerate(args.pythons or [sys.executable]):
            usable, version, missing = probe(python, modules)
            if not usable:
                print(f"SKIPPED: {version}")
                continue
            if missing:
                print(f"NOT INSTALLED in {python}, so not compared: {' '.join(missing)}")
            present = [m for m in modules if m not in missing]
            print(f"== {python} (Python {version}): replacing {', '.join(replace)}; "
                  f"modules: {' '.join(present)}", flush=True)
            compared += 1
            here = workdir / f"py{n}-{version}"
            here.mkdir(exist_ok=True)
            env = base_env(replace)
            stock = run_suite(python, "stock", present, env, here, args)
            calls_file = here / "portsafe-calls.jsonl"
            calls_file.unlink(missing_ok=True)
            env_ours = dict(env, PORTSAFE_CPYTHON_REPLACE=",".join(replace),
                            PORTSAFE_CPYTHON_CALLS_FILE=str(calls_file))
            ours = run_suite(python, "portsafe", present, env_ours, here, args)
            identical, not_run = print_table(version, present, stock, ours)
            problems = check_proof(replace, calls_file)
            for problem in problems:
                print(f"  NOT PROVEN: {problem}")
            for module in not_run:
                print(f"  NOT RUN: {module} ran no test in either run; it is expected to"
                      f" (see {stock.log})")
            if problems:
                exit_code = max(exit_code, 3)
            elif not_run:
                exit_code = max(exit_code, 4)
            elif not identical:
                print(f"  MISMATCH: see {stock.log} and {ours.log}")
                exit_code = max(exit_code, 1)
            print(f"  wall time: stock {stock.seconds:.0f}s + portsafe {ours.seconds:.0f}s",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if exit_code == 0:
        print("RESULT: identical counts" if compared else "RESULT: nothing to compare")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

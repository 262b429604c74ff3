"""A real third-party suite, without and with auto mode: aioftp's port-using tests.

Run: python tools/realworld.py [--count N] [--workers 4] [--version 0.28.3]
     nox -s realworld -- [same options]

What it does, in a temporary directory that it removes afterwards:

1. fetches aioftp's source distribution from the package index, pinned
   (``pip download --no-deps --no-binary :all: aioftp==VERSION``; its sdist ships the
   tests), and unpacks it;
2. makes a venv, installs portsafe from this checkout (a real install, with auto mode's
   start-up hook), aioftp from that sdist, and its test tools (pytest-asyncio,
   pytest-xdist, pytest-repeat, ...);
3. runs aioftp's tests that take ports from pytest-asyncio's ``unused_tcp_port`` fixtures
   (``tests/test_connection.py``, ``tests/test_extra.py``, and the SOCKS server of
   ``tests/test_client_side_socks.py``), each repeated ``--count``
   times, under ``-n WORKERS``, two runs at the same time: first without auto mode,
   then with ``PORTSAFE_AUTO=1``;
4. prints the failures of each pair of runs, and how many of them are "Address already
   in use" (the others, timeouts of aioftp's 1-second test deadline on a loaded machine,
   have nothing to do with ports).

portsafe's pytest plugin is left out of both runs (``-p no:portsafe``), so the only
difference is the variable. Nothing here sends traffic off the machine: the tests use
127.0.0.1 and ::1. The exit status is 0 when no test failed with "Address already in use"
under auto mode.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = "0.28.3"
TESTS = ["tests/test_connection.py", "tests/test_extra.py", "tests/test_client_side_socks.py"]
TOOLS = ["pytest", "pytest-asyncio", "pytest-xdist", "pytest-repeat", "pytest-mock",
         "async_timeout>=4.0", "trustme", "siosocks>=0.2"]


def run(args, **kwargs):
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, check=True, **kwargs)


def fetch(version, where):
    """aioftp's sdist, unpacked; the directory of its source tree."""
    downloads = os.path.join(where, "sdist")
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"aioftp=={version}", "-d", downloads])
    archive = next(os.path.join(downloads, name) for name in os.listdir(downloads)
                   if name.endswith(".tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")  # 3.10.12+: no paths outside *where*
    tree = os.path.join(where, f"aioftp-{version}")
    missing = [path for path in TESTS if not os.path.exists(os.path.join(tree, path))]
    if missing:
        raise SystemExit(f"aioftp {version}'s sdist lacks {missing}: pick another --version")
    return tree, archive


def make_venv(where, archive):
    path = os.path.join(where, "venv")
    run([sys.executable, "-m", "venv", path])
    python = os.path.join(path, "bin", "python")
    run([python, "-m", "pip", "install", "-q", ROOT, archive, *TOOLS])
    return python


SUMMARY = re.compile(r"^(?:=+ )?(\d+ \w+.*?) in [\d.]+s")


def counts(output):
    """{"passed": n, "failed": n, "error": n, ...} from pytest's last line."""
    found = {}
    for line in reversed(output.splitlines()):
        match = SUMMARY.search(line)
        if match:
            for part in match.group(1).split(","):
                number, _, word = part.strip().partition(" ")
                if number.isdigit():
                    found[word.rstrip("s") if word.endswith("errors") else word] = int(number)
            break
    return found


def run_pair(python, tree, *, auto, count, workers):
    """Two runs at once; [(counts, address-in-use lines), ...]."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PORTSAFE", "PYTEST", "PYTHONPATH"))}
    if auto:
        env["PORTSAFE_AUTO"] = "1"
        env["PORTSAFE_LOCK_DIR"] = os.path.join(os.path.dirname(tree), "locks")
    args = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:portsafe",
            "-p", "no:anyio", "-o", "addopts=--import-mode=importlib", "-o",
            "log_level=WARNING", "-o", "asyncio_default_fixture_loop_scope=function",
            "-rfE", "-n", str(workers), "--count", str(count), *TESTS]
    print("+", ("PORTSAFE_AUTO=1 " if auto else "") + " ".join(args[1:]), "(twice at once)",
          flush=True)
    procs = [subprocess.Popen(args, cwd=tree, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        output = proc.communicate()[0]
        failures = [line for line in output.splitlines()
                    if line.startswith(("FAILED ", "ERROR "))]
        in_use = sum(1 for line in failures if _IN_USE.search(line))
        results.append((counts(output), in_use, failures))
    return results


_IN_USE = re.compile(r"Address already in use|Errno 98\b|EADDRINUSE|WinError 10048")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=VERSION, help="aioftp version (pinned)")
    parser.add_argument("--count", type=int, default=10, help="repeats of each test")
    parser.add_argument("--workers", type=int, default=4, help="xdist workers per run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    where = tempfile.mkdtemp(prefix="portsafe-realworld-")
    try:
        tree, archive = fetch(args.version, where)
        python = make_venv(where, archive)
        figures = {}
        for auto in (False, True):
            started = time.monotonic()
            pair = run_pair(python, tree, auto=auto, count=args.count, workers=args.workers)
            label = "with auto mode" if auto else "without auto mode"
            tests = sum(found.get(word, 0) for found, _, _ in pair
                        for word in ("passed", "failed", "error", "skipped"))
            failed = sum(found.get("failed", 0) + found.get("error", 0)
                         for found, _, _ in pair)
            in_use = sum(in_use for _, in_use, _ in pair)
            figures[auto] = (failed, in_use)
            print(f"{label}: {failed} failed of {tests}, {in_use} of them 'Address already "
                  f"in use', {time.monotonic() - started:.0f} s")
            for _, _, failures in pair:
                for line in failures[:20]:
                    print("   ", line[:300])
        print(f"aioftp {args.version}, {' '.join(TESTS)}, --count {args.count}, "
              f"-n {args.workers}, two runs at once: failures (of them 'Address already in "
              f"use') without auto mode {figures[False][0]} ({figures[False][1]}), with "
              f"{figures[True][0]} ({figures[True][1]})")
        return 1 if figures[True][1] else 0
    finally:
        if args.keep:
            print(f"kept {where}")
        else:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""portsafe's speed, every figure a ratio against a yardstick measured in the same run.

Run:
    python bench/bench_reserve.py [--python all|3.12.1|PATH ...] [--json out.json] [--quick]
    python bench/chart.py out.json docs/assets/bench.svg

For each interpreter (default: pyenv's 3.11.7) the bench makes a venv with an
installed, bytecode-compiled copy of portsafe (see ``_env.py``) and a private lock
directory, then measures in it:

- reserve_port()+release() p50 vs CPython's find_unused_port (copied in
  ``_yardsticks.py``) and portpicker; ports=range(30000, 30300) and
  range(20000, 30000) vs the default call; AF_UNSPEC/socktype=0 and
  reserve_ports(3)+release vs find_unused_port;
- one more reservation with 0 / 1,000 / 10,000 / 30,000 held, each level with its own
  find_unused_port yardstick, as a ratio to the 0-held level;
- the first reservation of a fresh process vs 100 plain binds in that process;
- N processes (2, 8, 32, 64) reserving and releasing in a loop, on the default range and
  on a 300-port range: throughput N=64 vs N=2, duplicates checked with an independent
  flock per port, NoFreePortError counted;
- imports (-X importtime, cumulative), and ``PORT=$(portsafe)`` client CPU with a
  running keeper vs portpicker's one-liner, and a first call vs a later one;
- a collision run (pick, wait U(0, 50 ms), bind+listen under loopback load).

Every figure: interleaved samples, min/median/max over at least 3 repeats, the target
next to it with PASS/MISS (on the median). Nothing here is asserted by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def inner(args: argparse.Namespace) -> dict:
    """Run every figure in this interpreter (the bench's venv), return the results."""
    from _latency import held, latency
    from _procs import cli, collisions, first_reservation, imports, throughput

    import portsafe
    from portsafe._locking import claim as _claim

    quick = args.quick
    repeats = 3
    sections = set(args.only.split(",")) if args.only else None

    def wanted(name: str) -> bool:
        return sections is None or name in sections

    figures: list[dict] = []
    result: dict = {"python": platform.python_version(), "executable": sys.executable,
                    "cpus": os.cpu_count(), "lock_dir": os.environ.get("PORTSAFE_LOCK_DIR"),
                    "ephemeral": list(portsafe.ephemeral_port_range()), "figures": figures,
                    "claim": _claim.IMPLEMENTATION}
    if wanted("latency"):
        figures += latency(800 if quick else 4000, repeats)
    if wanted("held"):
        figures += held(300 if quick else 2000, repeats, (0, 1000, 10000))
        figures += held(300 if quick else 2000, repeats, (0, 10000), elsewhere=True)
    if wanted("first"):
        figures += first_reservation(4 if quick else 10, repeats)
    if wanted("imports"):
        figures += imports(6 if quick else 15)
    if wanted("cli"):
        figures += cli(4 if quick else 10, repeats, os.environ["PORTSAFE_LOCK_DIR"])
    if wanted("procs"):
        figures += throughput((2, 8, 32, 64), 0.6 if quick else 1.5, repeats)
    if wanted("collisions"):
        result["collisions"] = collisions(8, 10 if quick else 30, 6.0 if quick else 20.0)
    return result


def outer(args: argparse.Namespace) -> int:
    """Build a venv per interpreter, run the bench inside it, print and save the table."""
    from _env import interpreters, make
    from _stats import print_table

    runs = []
    with tempfile.TemporaryDirectory(prefix="portsafe-bench-") as scratch:
        for python in interpreters(args.python):
            exe = make(python, scratch)
            # Private (other users' locks do not count) where lock files are used (macOS,
            # the BSDs); names ignore it.
            lock_dir = tempfile.mkdtemp(prefix="portsafe-bench-locks-")
            out = os.path.join(scratch, "inner.json")
            env = {key: value for key, value in os.environ.items()
                   if not key.startswith(("PORTSAFE_", "PYTHONPATH", "PORTSERVER"))
                   or key == "PORTSAFE_PURE_PYTHON"}  # to measure the Python claim
            env["PORTSAFE_LOCK_DIR"] = lock_dir
            subprocess.run([exe, "-c", "import portsafe; portsafe.reserve_port().release()"],
                           env=env, check=True)  # completes it
            command = [exe, os.path.join(HERE, "bench_reserve.py"), "--inner", "--json", out]
            if args.quick:
                command.append("--quick")
            if args.only:
                command += ["--only", args.only]
            subprocess.run(command, env=env, check=True)
            with open(out) as file:
                run = json.load(file)
            runs.append(run)
            print_table(f"{run['python']} (claim: {run['claim']})", run["figures"])
            if "collisions" in run:
                found = run["collisions"]["methods"]
                print("  collision run: " + ", ".join(
                    f"{name} {item['collisions']}/{item['picks']}" for name, item in
                    found.items()) + " EADDRINUSE per pick")
            shutil.rmtree(lock_dir, ignore_errors=True)
    report = {"command": " ".join(["python", "bench/bench_reserve.py", *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "system": platform.platform()},
              "runs": runs}
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
        print(f"\nwritten: {args.json}")
    misses = [f"{run['python']}: {item['label']}" for run in runs for item in run["figures"]
              if item["status"] == "MISS"]
    print(f"\n{len(misses)} target(s) missed" + "".join(f"\n  {m}" for m in misses))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", action="append", default=[],
                        help="interpreter: a path, a pyenv version, or 'all' (repeatable)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="fewer samples (noisier)")
    parser.add_argument("--only", help="comma-separated sections: latency,held,first,"
                        "imports,cli,procs,collisions")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        result = inner(args)
        with open(args.json, "w") as file:
            json.dump(result, file)
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())

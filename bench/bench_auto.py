"""Auto mode's costs, as ratios against a yardstick measured in the same run.

Run: python bench/bench_auto.py [--quick] [--rounds N]

1. ``socket()+bind(("127.0.0.1", 0))+close()`` with auto mode on, against the same
   without portsafe; once without a reuse option and once with SO_REUSEADDR set (on
   both sides). Batches alternate (plain, auto, plain, auto, ...); each round's ratio is
   auto/plain. Leases are at their cap before timing starts, so every pick also pays
   for the release of the oldest lease: the steady state of a long suite.
   Targets: at most 2.5x (no reuse option) and 4x (SO_REUSEADDR).
2. An explicit bind: ``socket()+bind(("127.0.0.1", P))+listen()+close()`` of a free
   port P, auto mode on against off, in the same alternating batches. On Linux auto
   mode makes one reservation attempt per explicit bind (the family's marker name, the
   probe name, the two period names' check only when the probe name is taken, and P's
   reservation; all dropped at ``listen()``): printed as the ratio and as microseconds
   added per bind (median round).
3. ``python -c pass``: a venv with portsafe's wheel installed (the start-up hook in
   site-packages), PORTSAFE_AUTO unset and set, against a venv without portsafe, both
   made from the same interpreter (default ~/.pyenv/versions/3.11.7/bin/python) and
   bytecode-compiled. The three are run in turn, in rotating order; each round's
   ratio uses the child's CPU time (user+system, from os.wait4).
   Targets: median at most 1.02x (unset) and 1.15x (set), over at least 30 rounds.

Every figure is printed as min / median / max of the per-round ratios. Nothing is
asserted: these are figures to read, not tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--binds-only" not in sys.argv:  # that part runs in the venv with the installed wheel
    sys.path.insert(0, os.path.join(ROOT, "src"))

from portsafe._auto import switch as _auto  # noqa: E402

PYTHON = os.path.expanduser("~/.pyenv/versions/3.11.7/bin/python")


def spread(ratios):
    return (f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}"
            f"  ({len(ratios)} rounds)")


def verdict(ratios, target):
    return "meets" if statistics.median(ratios) <= target else "MISSES"


def pick_loop(count, reuse):
    bind, close, new = socket.socket.bind, socket.socket.close, socket.socket
    start = time.perf_counter()
    for _ in range(count):
        sock = new()
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bind(sock, ("127.0.0.1", 0))
        close(sock)
    return time.perf_counter() - start


def bench_bind(rounds, batch):
    results = {}
    for reuse in (False, True):
        ratios = []
        _auto.enable()
        pick_loop(600, reuse)  # leases at their cap (256): the steady state
        _auto.disable()
        pick_loop(200, reuse)
        for _ in range(rounds):
            plain = pick_loop(batch, reuse)
            _auto.enable()
            pick_loop(300, reuse)  # back to the cap: disable() released the leases
            auto = pick_loop(batch, reuse)
            _auto.disable()
            ratios.append(auto / plain)
        results[reuse] = ratios
    return results


def server_loop(count, port):
    new = socket.socket
    start = time.perf_counter()
    for _ in range(count):
        sock = new()
        sock.bind(("127.0.0.1", port))
        sock.listen()
        sock.close()
    return time.perf_counter() - start


def bench_explicit(rounds, batch):
    """(auto/plain ratios, microseconds added per bind) of explicit server binds."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ratios, added = [], []
    for _ in range(rounds):
        plain = server_loop(batch, port)
        _auto.enable()
        auto = server_loop(batch, port)
        _auto.disable()
        ratios.append(auto / plain)
        added.append((auto - plain) / batch * 1e6)
    return ratios, added


def make_venvs(python, where):
    """(venv without portsafe, venv with portsafe's wheel), bytecode-compiled."""
    wheels = os.path.join(where, "wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels,
                    ROOT], check=True)
    wheel = next(os.path.join(wheels, name) for name in os.listdir(wheels)
                 if name.startswith("portsafe-"))
    made = []
    for name in ("plain", "portsafe"):
        path = os.path.join(where, name)
        subprocess.run([python, "-m", "venv", path], check=True)
        bin_python = os.path.join(path, "bin", "python")
        if name == "portsafe":
            subprocess.run([bin_python, "-m", "pip", "install", "-q", "--no-deps", wheel],
                           check=True)
        env = {**os.environ}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([bin_python, "-m", "compileall", "-q", path], env=env, check=False,
                       stdout=subprocess.DEVNULL)
        made.append(bin_python)
    return made


def cpu_of(python, env):
    pid = os.posix_spawn(python, [python, "-c", "pass"], env)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{python} -c pass failed")
    return usage.ru_utime + usage.ru_stime


def bench_startup(plain, with_portsafe, rounds, where):
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("PORTSAFE", "PYTHON"))}
    on = {**base, "PORTSAFE_AUTO": "1", "PORTSAFE_LOCK_DIR": os.path.join(where, "locks")}
    runs = [("plain", plain, base), ("unset", with_portsafe, base), ("set", with_portsafe, on)]
    for _, exe, env in runs * 3:  # warm the page cache
        cpu_of(exe, env)
    unset, setting = [], []
    for index in range(rounds):
        order = runs[index % 3:] + runs[:index % 3]
        times = {name: cpu_of(exe, env) for name, exe, env in order}
        unset.append(times["unset"] / times["plain"])
        setting.append(times["set"] / times["plain"])
    return unset, setting


def report_binds(rounds, batch):
    logging_off()
    binds = bench_bind(rounds, batch)
    print(f"socket()+bind(port 0)+close(), auto mode / without portsafe, batches of {batch} "
          f"(min / median / max):")
    print(f"  no reuse option: {spread(binds[False])}  target <= 2.5x: "
          f"{verdict(binds[False], 2.5)}")
    print(f"  SO_REUSEADDR:    {spread(binds[True])}  target <= 4x: {verdict(binds[True], 4)}")
    ratios, added = bench_explicit(rounds, batch)
    print(f"socket()+bind(explicit port)+listen()+close(), auto mode / off: {spread(ratios)}")
    print(f"  added per explicit bind (one reservation attempt): "
          f"{statistics.median(added):.1f} us (median round; min {min(added):.1f}, "
          f"max {max(added):.1f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per figure")
    parser.add_argument("--python", default=PYTHON, help="interpreter for the venvs")
    parser.add_argument("--binds-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds = args.rounds or (10 if args.quick else 40)
    batch = 500 if args.quick else 2000
    os.environ.pop("PORTSAFE_AUTO", None)
    if args.binds_only:
        os.environ["PORTSAFE_LOCK_DIR"] = tempfile.mkdtemp(prefix="portsafe-bench-locks-")
        report_binds(rounds, batch)
        return
    if not os.path.exists(args.python):
        print(f"{args.python} is not installed: measuring with {sys.executable} from the "
              f"checkout, and no start-up figures")
        os.environ["PORTSAFE_LOCK_DIR"] = tempfile.mkdtemp(prefix="portsafe-bench-locks-")
        report_binds(rounds, batch)
        return
    where = tempfile.mkdtemp(prefix="portsafe-bench-auto-")
    try:
        plain, with_portsafe = make_venvs(args.python, where)
        print(f"venvs from {args.python}, portsafe installed from its wheel")
        subprocess.run([with_portsafe, os.path.abspath(__file__), "--binds-only",
                        "--rounds", str(rounds), *(["--quick"] if args.quick else [])],
                       check=True, cwd=where)
        unset, setting = bench_startup(plain, with_portsafe, max(rounds, 30), where)
        print("python -c pass, child CPU time, venv with portsafe / venv without "
              "(min / median / max):")
        print(f"  PORTSAFE_AUTO unset: {spread(unset)}  target <= 1.02x: "
              f"{verdict(unset, 1.02)}")
        print(f"  PORTSAFE_AUTO=1:     {spread(setting)}  target <= 1.15x: "
              f"{verdict(setting, 1.15)}")
    finally:
        shutil.rmtree(where, ignore_errors=True)


def logging_off():
    import logging

    logging.getLogger("portsafe.auto").addHandler(logging.NullHandler())
    logging.getLogger("portsafe.auto").propagate = False


if __name__ == "__main__":
    main()

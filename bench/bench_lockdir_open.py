"""The once-per-process cost of opening the lock directory, against socket+bind+close.

Run: python bench/bench_lockdir_open.py [--runs 7] [--lock-dir PATH]

The lock directory is the lock-file backend's (macOS, the BSDs, Windows); on Linux run
this inside the test suite's channel to it: ``unshare --net -- python
tests/support/netns.py env _PORTSAFE_SELFTEST_FILE_BACKEND=1 python
bench/bench_lockdir_open.py``.

Each run is a fresh interpreter with portsafe's modules imported and the lock directory
already made. In it, the yardstick (plain ``socket()+bind(0)+close()`` on 127.0.0.1) is
timed in batches before and after the measured call, so both see the same machine. The
measured calls are the first ``_locks.table().current()`` (open, verify, flock, read the
marker: everything the directory's hardening adds per process) and, separately, a whole
first ``reserve_port()+release()``. Figures are in units of one yardstick call,
min/median/max over the runs.

Then the per-reservation check, in one process, interleaved with its yardsticks:
``table().current()`` (what each reservation calls) against ``os.lstat`` of the
directory and ``lock_dir()`` (the setting read). Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INNER = r"""
import json, socket, sys, time
import portsafe
from portsafe._locking import files as _locks
from portsafe._core import ranges as _ranges
from portsafe._core import probe as _probe
from portsafe._locking import lockdir as _lockdir
from portsafe._locking import fileformat as _lockformat

def yardstick(n=50):
    best = []
    for _ in range(3):
        t = time.perf_counter_ns()
        for _ in range(n):
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.close()
        best.append((time.perf_counter_ns() - t) / n)
    return sorted(best)[1]

what = sys.argv[1]
before = yardstick()
t = time.perf_counter_ns()
if what == "open":
    _locks.table().current()
else:
    portsafe.reserve_port().release()
cost = time.perf_counter_ns() - t
after = yardstick()
print(json.dumps({"cost": cost, "yardstick": (before + after) / 2}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--lock-dir", help="PORTSAFE_LOCK_DIR (default: unset)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    if args.lock_dir:
        env["PORTSAFE_LOCK_DIR"] = args.lock_dir
    else:
        env.pop("PORTSAFE_LOCK_DIR", None)
    subprocess.run([sys.executable, "-c", "import portsafe; portsafe.reserve_port().release()"],
                   env=env, check=True)  # the directory exists from here on
    for what in ("open", "first reservation"):
        ratios, micros = [], []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, "-c", INNER, what.split()[0]], env=env,
                                 check=True, capture_output=True, text=True).stdout
            sample = json.loads(out)
            ratios.append(sample["cost"] / sample["yardstick"])
            micros.append(sample["cost"] / 1000)
        print(f"{what:>18}: {min(ratios):6.1f} / {statistics.median(ratios):6.1f} / "
              f"{max(ratios):6.1f} socket+bind+close calls (min/median/max of {args.runs}); "
              f"{statistics.median(micros):8.1f} us median")
    hot(env)


HOT = r"""
import os, time
from portsafe._locking import files as _locks
from portsafe._settings import lock_dir
table = _locks.table()
table.current()
path = lock_dir()
def run(f, n=20000):
    t = time.perf_counter_ns()
    for _ in range(n):
        f()
    return (time.perf_counter_ns() - t) / n / 1000
rows = {"table().current() (per call)": table.current,
        "os.lstat(directory)": lambda: os.lstat(path),
        "lock_dir() (the setting)": lock_dir}
found = {name: [] for name in rows}
for _ in range(7):
    for name, call in rows.items():
        found[name].append(run(call))
for name, samples in found.items():
    samples.sort()
    print(f"{name:>34}: {samples[0]:5.2f} / {samples[3]:5.2f} / {samples[-1]:5.2f} us "
          f"(min/median/max of 7 x 20,000)")
"""


def hot(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-c", HOT], env=env, check=True)


if __name__ == "__main__":
    main()

"""How far the lock-file backend's reserve_port()+release() is from the kernel's floor,
as ratios to find_unused_port.

Run: python bench/bench_floor.py [--python all|3.12.1|PATH ...] [--samples 3000]

The lock-file backend is what macOS, the BSDs and Windows run; on Linux, run this inside
the test suite's channel to it (``main`` prints how). Per interpreter (default: the
running one), in a fresh process with an installed, bytecode-compiled copy of portsafe
(``_env.py``) and a private lock directory made like the default one (right in the
temporary directory), each of these is interleaved with CPython's ``find_unused_port``
(``_yardsticks.py``), per-call medians, 3 repeats, as ``bench_reserve.py`` measures:

- ``syscalls``: the six system calls of a reservation and its release and nothing
  else, from Python: the directory check (lstat of its path), lock, socket, bind,
  close, unlock;
- ``ideal``: a near-ideal Python version of the whole call and release (one function,
  a Reservation-like object, the in-process mutex and held-port map; no checks of
  arguments or settings);
- ``portsafe``: ``portsafe.reserve_port().release()``;
- ``three_syscalls`` / ``three``: the same for ``reserve_ports(3)+release()`` (one
  check, three ports' four calls each, one unlock over their span) from Python / the
  real call;
- ``unspec_syscalls`` / ``unspec``: the same for ``family=AF_UNSPEC, socktype=0`` (one
  dual-stack ``[::]`` socket per type, with its ``IPV6_V6ONLY=0``) / the real call.

It says what the latency targets of issue 11 (0.6, 1.5 and 1.0) are up against. Nothing
is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

INNER = r"""
import _socket, fcntl, json, os, socket, statistics, sys, threading
sys.path.insert(0, sys.argv[1])
from _stats import interleaved
from _yardsticks import find_unused_port
import portsafe
from portsafe._locking import files as _locks
from portsafe._core import probe as _probe

for _ in range(3):
    portsafe.reserve_port().release()
table = _locks.table()
lockdir = table.current()
shard = table._home
fd, path, base = shard.fd, lockdir.path, shard.index << 8
lockf, lstat = fcntl.lockf, os.lstat
EXCLUSIVE, UNLOCK = fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN
step = [0]


def free(port):
    sock = _socket.socket(2, 1)
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


# the shard's ports free now and not held (a port some other program binds meanwhile
# costs a failed bind instead, still a system call: nothing else changes)
ports = [port for port in range(max(base, 1024), base + 256)
         if port not in table.held and free(port)]


# The system calls are written out in each function below, not shared through a helper:
# a helper would add a Python call to what is meant to be the system calls alone.
def syscalls():
    i = step[0] = (step[0] + 37) % len(ports)
    port = ports[i]
    lstat(path)
    lockf(fd, EXCLUSIVE, 1, port)
    sock = _socket.socket(2, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        pass
    sock.close()
    lockf(fd, UNLOCK, 1, port)


class Held:
    __slots__ = ("_pid", "_spec", "port")

    def __del__(self):
        if self._pid != 1:
            return


mutex, held, new = threading.Lock(), {}, object.__new__
SPEC, ctime = ("127.0.0.1", 2, 1, False), lstat(path).st_ctime_ns


def ideal():
    info = lstat(path)
    if info.st_ctime_ns != ctime:
        raise RuntimeError("the lock directory changed")
    i = step[0] = (step[0] + 37) % len(ports)
    port = ports[i]
    with mutex:
        if port in held:
            raise RuntimeError("held")
        lockf(fd, EXCLUSIVE, 1, port)
        held[port] = shard
    sock = _socket.socket(2, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        pass
    finally:
        sock.close()
    made = new(Held)
    made.port, made._spec, made._pid = port, SPEC, 1
    if made._pid:
        made._pid = 0
        with mutex:
            lockf(held.pop(made.port).fd, UNLOCK, 1, made.port)


def whole():
    portsafe.reserve_port().release()


def three_syscalls():  # reserve_ports(3)+release(): one check, three ports' four calls
    lstat(path)  # each, and one unlock over their span (this process holds nothing between)
    taken = []
    for _ in range(3):
        i = step[0] = (step[0] + 37) % len(ports)
        port = ports[i]
        lockf(fd, EXCLUSIVE, 1, port)
        sock = _socket.socket(2, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            pass
        sock.close()
        taken.append(port)
    low = min(taken)
    lockf(fd, UNLOCK, max(taken) - low + 1, low)


def three():
    portsafe.reserve_ports(3).release()


V6 = (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


def unspec_syscalls():  # AF_UNSPEC, socktype=0: one dual-stack [::] bind per type
    i = step[0] = (step[0] + 37) % len(ports)
    port = ports[i]
    lstat(path)
    lockf(fd, EXCLUSIVE, 1, port)
    for kind in (1, 2):
        sock = _socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(*V6)
        try:
            sock.bind(("::", port))
        except OSError:
            pass
        sock.close()
    lockf(fd, UNLOCK, 1, port)


def unspec():
    portsafe.reserve_port(family=socket.AF_UNSPEC, socktype=0).release()


out = {"python": sys.version.split()[0]}
calls = (("syscalls", syscalls), ("ideal", ideal), ("portsafe", whole),
         ("three_syscalls", three_syscalls), ("three", three))
if socket.has_ipv6 and _probe.dual_stack_is_stricter():
    calls += (("unspec_syscalls", unspec_syscalls), ("unspec", unspec))
for name, call in calls:
    med = interleaved({"call": call, "yardstick": find_unused_port}, int(sys.argv[2]), 3)
    ratios = sorted(a / b for a, b in zip(med["call"], med["yardstick"]))
    out[name] = {"min": ratios[0], "median": statistics.median(ratios), "max": ratios[-1]}
print(json.dumps(out))
"""


sys.path.insert(0, HERE)
from _env import interpreters as _found  # noqa: E402
from _env import make  # noqa: E402


def interpreters(choice: list[str]) -> list[str]:
    return _found(choice) if choice else [sys.executable]


def main() -> int:
    from portsafe._platform import NAMES

    if NAMES:
        print("bench_floor.py measures the lock-file backend's floor (macOS, the BSDs). On "
              "Linux reservations are names: bench_reserve.py --only latency prints their "
              "floor (the figures 'vs its system calls'). To measure the file backend here: "
              "unshare --net -- python tests/support/netns.py "
              "env _PORTSAFE_SELFTEST_FILE_BACKEND=1 "
              "python bench/bench_floor.py")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", action="append", default=[],
                        help="interpreter: a path, a pyenv version, or 'all' (repeatable)")
    parser.add_argument("--samples", type=int, default=3000)
    args = parser.parse_args()
    names = ("syscalls", "ideal", "portsafe", "three_syscalls", "three", "unspec_syscalls",
             "unspec")
    print("ratios to find_unused_port, min/median/max of 3 repeats; syscalls: the system "
          "calls alone, from Python; ideal: a near-ideal Python version; three: "
          "reserve_ports(3); unspec: AF_UNSPEC, socktype=0")
    print(f"{'python':8} " + " ".join(f"{name:>15}" for name in names))
    scratch = tempfile.mkdtemp(prefix="portsafe-floor-")
    try:
        for python in interpreters(args.python):
            row = measure(make(python, scratch), args.samples)
            cells = [f"{row[k]['min']:.2f}/{row[k]['median']:.2f}/{row[k]['max']:.2f}"
                     if k in row else "-" for k in names]
            print(f"{row['python']:8} " + " ".join(f"{cell:>15}" for cell in cells))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def measure(exe: str, samples: int) -> dict[str, object]:
    """One interpreter's figures, from its installed copy (``_env.make``), in a private
    lock directory made like the default one."""
    lock_dir = tempfile.mkdtemp(prefix="portsafe-floor-locks-")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PORTSAFE_", "PORTSERVER"))}
    env["PORTSAFE_LOCK_DIR"] = lock_dir
    try:
        subprocess.run([exe, "-c", "import portsafe; portsafe.reserve_port().release()"],
                       env=env, check=True)  # completes it
        done = subprocess.run([exe, "-c", INNER, HERE, str(samples)], env=env,
                              check=False, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{exe}: the measuring process failed:\n{done.stderr}")
    finally:
        shutil.rmtree(lock_dir, ignore_errors=True)
    row: dict[str, object] = json.loads(done.stdout)
    return row


if __name__ == "__main__":
    sys.exit(main())

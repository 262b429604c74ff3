"""Reservation speed and collisions, portsafe side by side with the alternatives.

Run: python bench/bench_reserve.py [--quick]

Prints, in one run:
1. latency of reserve_port()+release() against CPython's find_unused_port (p50, p99),
   and portpicker.pick_unused_port where installed;
2. the cost of one more reservation with 0, 1,000 and 10,000 already held;
3. a collision run: 16 processes, each pick a port, sleep U(0, 50 ms), bind and listen
   50 ms, release; with and without SO_REUSEADDR; while two other processes open
   loopback connections at 200/s (their source ports come from the ephemeral range);
4. the import cost of portsafe (python -X importtime).
Nothing here is asserted: these are figures to read, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import portsafe  # noqa: E402


def cpython_find_unused_port(family=socket.AF_INET, socktype=socket.SOCK_STREAM):
    """CPython's test.support.socket_helper.find_unused_port, verbatim in behaviour."""
    with socket.socket(family, socktype) as tempsock:
        if tempsock.family == socket.AF_INET and tempsock.type == socket.SOCK_STREAM:
            if hasattr(socket, "SO_REUSEADDR") and tempsock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1:
                raise RuntimeError("tests should never set the SO_REUSEADDR option")
            if hasattr(socket, "SO_REUSEPORT"):
                try:
                    if tempsock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1:
                        raise RuntimeError("tests should never set the SO_REUSEPORT option")
                except OSError:
                    pass
        tempsock.bind(("localhost", 0))
        return tempsock.getsockname()[1]


def stock_find_unused_port():
    try:
        from test.support.socket_helper import find_unused_port
    except ImportError:
        return cpython_find_unused_port, "find_unused_port (CPython's code, inlined)"
    return find_unused_port, "test.support.socket_helper.find_unused_port"


def percentiles(samples):
    samples = sorted(samples)
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def time_calls(call, count):
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        call()
        samples.append((clock() - start) / 1000)
    return percentiles(samples)


def latency(count):
    find_unused_port, name = stock_find_unused_port()

    def portsafe_call():
        portsafe.reserve_port().release()

    rows = []
    for _ in range(2):  # interleaved rounds, so drift hits both alike
        rows.append(("portsafe reserve_port()+release()", time_calls(portsafe_call, count)))
        rows.append((name, time_calls(find_unused_port, count)))
    try:
        import portpicker

        rows.append(("portpicker.pick_unused_port()",
                     time_calls(portpicker.pick_unused_port, max(count // 10, 50))))
    except ImportError:
        pass
    best: dict[str, tuple[float, float]] = {}
    for label, (p50, p99) in rows:
        if label not in best or p50 < best[label][0]:
            best[label] = (p50, p99)
    print(f"\n1. latency, {count} calls each (best of 2 interleaved rounds), microseconds")
    print(f"   {'':44} {'p50':>8} {'p99':>8}")
    for label, (p50, p99) in best.items():
        print(f"   {label:44} {p50:8.1f} {p99:8.1f}")
    ratio = best["portsafe reserve_port()+release()"][0] / best[name][0]
    print(f"   portsafe p50 / find_unused_port p50 = {ratio:.2f}  (target <= 0.75)")


def cost_with_held(count):
    print("\n2. cost of one more reserve_port()+release() with N already held (microseconds)")
    held = []
    for target in (0, 1000, 10000):
        while len(held) < target:
            held.append(portsafe.reserve_port())
        p50, p99 = time_calls(lambda: portsafe.reserve_port().release(), count)
        from portsafe import _locks

        print(f"   N={target:>6}: p50 {p50:6.1f}  p99 {p99:6.1f}   "
              f"lock files open: {_locks.table().open_fds}")
    for reservation in held:
        reservation.release()


WORKER = r"""
import json, random, socket, sys, time
sys.path.insert(0, {src!r})
method, reuse = sys.argv[1], sys.argv[2] == "1"
picks, start_at = int(sys.argv[3]), float(sys.argv[4])
if method == "portsafe":
    import portsafe
    def pick():
        r = portsafe.reserve_port()
        return r.port, r.release
elif method == "portpicker":
    import portpicker
    def pick():
        return portpicker.pick_unused_port(), lambda: None
else:
    sys.path.insert(0, {bench!r})
    from bench_reserve import stock_find_unused_port
    find, _ = stock_find_unused_port()
    def pick():
        return find(), lambda: None
while time.time() < start_at:
    time.sleep(0.005)
collisions = errors = 0
for _ in range(picks):
    try:
        port, release = pick()
    except Exception:
        errors += 1
        continue
    time.sleep(random.uniform(0, 0.05))
    try:
        with socket.socket() as server:
            if reuse:
                server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            time.sleep(0.05)
    except OSError:
        collisions += 1
    release()
print(json.dumps([collisions, errors]))
"""

LOAD = r"""
import socket, sys, time
rate, until = float(sys.argv[1]), float(sys.argv[2])
listener = socket.create_server(("127.0.0.1", 0))
address = listener.getsockname()
interval, next_at, opened = 1.0 / rate, time.monotonic(), 0
while time.time() < until:
    client = socket.create_connection(address)
    conn, _ = listener.accept()
    client.close(); conn.close()  # leaves TIME_WAIT on an ephemeral source port
    opened += 1
    next_at += interval
    time.sleep(max(0.0, next_at - time.monotonic()))
print(opened)
"""


def collision_run(method, reuse, processes, picks):
    start_at = time.time() + 1.0
    duration = picks * 0.08 + 3
    worker = WORKER.format(src=os.path.join(ROOT, "src"), bench=os.path.dirname(__file__))
    load = [subprocess.Popen([sys.executable, "-c", LOAD, "200", str(start_at + duration)],
                             stdout=subprocess.PIPE, text=True) for _ in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", worker, method, "1" if reuse else "0",
                               str(picks), str(start_at)], stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    collisions = errors = 0
    for proc in procs:
        out, _ = proc.communicate()
        c, e = json.loads(out)
        collisions += c
        errors += e
    for proc in load:
        proc.kill()
        proc.communicate()
    return collisions, errors


def collisions(processes, picks):
    methods = ["portsafe", "find_unused_port"]
    try:
        import portpicker  # noqa: F401

        methods.append("portpicker")
    except ImportError:
        pass
    print(f"\n3. collision run: {processes} processes x {picks} picks, sleep U(0,50ms), "
          f"bind+listen 50 ms; 2 load processes at 200 loopback connections/s")
    print(f"   {'':28} {'SO_REUSEADDR':>13} {'collisions':>11} {'errors':>7}")
    for method in methods:
        for reuse in (False, True):
            found, errors = collision_run(method, reuse, processes, picks)
            print(f"   {method:28} {'yes' if reuse else 'no':>13} {found:>11} {errors:>7}"
                  f"   (of {processes * picks} picks)")


def import_cost():
    print("\n4. import cost (python -X importtime: sum of top-level imports, microseconds, "
          "best of 5)")
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its .pyc files
    subprocess.run([sys.executable, "-c", "import portsafe; portsafe.reserve_port"], env=env,
                   check=True)  # warm the bytecode cache
    for statement in ("import socket", "import socket, portsafe",
                      "import socket, portsafe; portsafe.reserve_port"):
        best = None
        for _ in range(5):
            err = subprocess.run([sys.executable, "-X", "importtime", "-c", statement],
                                 env=env, capture_output=True, text=True, check=True).stderr
            total = sum(int(line.split("|")[1]) for line in err.splitlines()
                        if line.startswith("import time:") and "|" in line
                        and line.split("|")[1].strip().isdigit()
                        and not line.split("|")[2].startswith("  "))
            best = total if best is None else min(best, total)
        print(f"   {statement:52} {best:>8}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and picks")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} cores, "
          f"ephemeral range {portsafe.ephemeral_port_range()}")
    latency(2000 if args.quick else 20000)
    cost_with_held(500 if args.quick else 5000)
    collisions(16, 20 if args.quick else 100)
    import_cost()


if __name__ == "__main__":
    main()

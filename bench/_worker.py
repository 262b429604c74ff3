"""Child processes of the bench: run as ``python _worker.py MODE ARGS``.

Modes:
  first ORDER       the first reservation of a fresh process vs 100 plain binds
  loop SPEC DIR     reserve/release in a loop until told to stop; duplicates are caught
                    with an independent lock (flock on DIR/<port>) held meanwhile
  collide METHOD N  pick a port, wait U(0, 50 ms), bind+listen; count EADDRINUSE
  load SECONDS      open and close loopback connections (ephemeral source ports)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import socket
import sys
import time


def first(order: str) -> None:
    from _yardsticks import plain_binds

    import portsafe
    from portsafe._core import reserve as _reserve  # noqa: F401 - imported first
    from portsafe._locking import nametable  # noqa: F401 - the table's, imported too

    # `from portsafe import reserve_port` in a test: the lazy attribute's import is an
    # import (reported by the imports figure), not part of the first reservation.
    reserve = portsafe.reserve_port
    clock = time.perf_counter_ns
    result = {}
    for step in (("binds", "first") if order == "binds-first" else ("first", "binds")):
        # No gc.collect() first: a test's first reservation runs with whatever the
        # imports left in the young generation, and so does this one.
        start = clock()
        if step == "binds":
            plain_binds(100)
        else:
            reserve().release()
        result[step] = (clock() - start) / 1000
    print(json.dumps(result))


def loop(spec: str, directory: str) -> None:
    import portsafe

    ports = None if spec == "default" else range(*map(int, spec.split(":")))
    reserve = portsafe.reserve_port
    print("ready", flush=True)
    end = float(sys.stdin.readline())
    ops = dups = nofree = 0
    while time.time() < end:
        try:
            reservation = reserve(ports=ports)
        except portsafe.NoFreePortError:
            nofree += 1
            continue
        fd = os.open(os.path.join(directory, str(reservation.port)), os.O_RDWR | os.O_CREAT,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            dups += 1  # another process holds this port's reservation right now
        os.close(fd)  # drops the flock (if taken) before the reservation goes
        reservation.release()
        ops += 1
    print(json.dumps({"ops": ops, "dups": dups, "nofree": nofree}))


def collide(method: str, picks: int) -> None:
    if method == "portsafe":
        import portsafe

        def pick() -> tuple[int, object]:
            reservation = portsafe.reserve_port()
            return reservation.port, reservation.release
    elif method == "portpicker":
        import portpicker

        def pick() -> tuple[int, object]:
            return portpicker.pick_unused_port(), None
    else:
        from _yardsticks import find_unused_port

        def pick() -> tuple[int, object]:
            return find_unused_port(), None
    print("ready", flush=True)
    end = float(sys.stdin.readline())
    collisions = done = 0
    for _ in range(picks):
        if time.time() > end:
            break
        port, release = pick()
        time.sleep(random.uniform(0, 0.05))
        try:
            with socket.socket() as server:
                server.bind(("127.0.0.1", port))
                server.listen()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            collisions += 1
        if callable(release):
            release()
        done += 1
    print(json.dumps({"collisions": collisions, "picks": done}))


def load(seconds: float) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    end = time.time() + seconds
    while time.time() < end:
        client = socket.create_connection(address)
        conn, _ = listener.accept()
        client.close()  # the client closes first: TIME_WAIT on an ephemeral port
        conn.close()
        time.sleep(0.002)
    listener.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "first":
        first(args[0])
    elif mode == "loop":
        loop(args[0], args[1])
    elif mode == "collide":
        collide(args[0], int(args[1]))
    else:
        load(float(args[0]))

"""A child process that runs portsafe calls on command, for multi-process lock tests.

Run as ``python tests/children/agent.py [uid]``: drops to *uid* (after importing portsafe) if
given, prints ``ready``, then reads one JSON command a line from stdin and answers with
one JSON line:

* ``{"op": "reserve", "kwargs": {...}}`` -> ``{"port": N}`` (held until released)
* ``{"op": "release", "port": N}`` -> ``{}``
* ``{"op": "flood", "path": P, "start": S, "count": C, "hold": [ports]}`` -> ``{}``:
  lock C separate bytes from offset S of file P, and the bytes of *hold* (as a hostile
  user would)

An exception answers ``{"error": "<class name>", "message": "..."}``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tempfile
import warnings

import portsafe


def warm_up() -> None:
    """Reserve once in a scratch directory: imports everything a reservation needs
    while the interpreter's files are still readable (after setuid they may not be)."""
    scratch = tempfile.mkdtemp()
    saved = os.environ.get("PORTSAFE_LOCK_DIR")
    os.environ["PORTSAFE_LOCK_DIR"] = scratch
    try:
        portsafe.reserve_port().release()
        with warnings.catch_warnings(record=True):
            warnings.warn("warm-up", RuntimeWarning, stacklevel=1)
        try:
            raise portsafe.LockDirError(1, "warm-up")
        except portsafe.PortsafeError:
            pass
    finally:
        if saved is not None:
            os.environ["PORTSAFE_LOCK_DIR"] = saved
        shutil.rmtree(scratch)


def main() -> None:
    warm_up()
    if len(sys.argv) > 1:
        uid = int(sys.argv[1])
        os.setgid(uid)
        os.setuid(uid)
    held: dict[int, portsafe.Reservation] = {}
    files: list[int] = []
    print("ready", flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                answer = run(command, held, files)
            answer["warnings"] = [str(w.message) for w in caught]
        except Exception as exc:
            answer = {"error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(answer), flush=True)


def run(command: dict, held: dict[int, portsafe.Reservation], files: list[int]) -> dict:
    op = command["op"]
    if op == "reserve":
        kwargs = dict(command.get("kwargs", {}))
        if "ports" in kwargs:
            kwargs["ports"] = range(*kwargs["ports"])
        reservation = portsafe.reserve_port(**kwargs)
        held[reservation.port] = reservation
        return {"port": reservation.port}
    if op == "release":
        held.pop(command["port"]).release()
        return {}
    if op == "flood":
        fd = os.open(command["path"], os.O_RDWR)
        files.append(fd)
        for offset in range(command["start"], command["start"] + 2 * command["count"], 2):
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        for port in command.get("hold", []):
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        return {}
    raise ValueError(f"unknown op {op!r}")


if __name__ == "__main__":
    main()

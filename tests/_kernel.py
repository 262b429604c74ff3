"""What the kernel says of portsafe's locks, asked without portsafe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from portsafe import _locks

#: Asks the kernel who holds each (shard file, port) on stdin, one F_GETLK each, from a
#: process of its own: this one must not open a lock file (closing it would drop its own
#: locks there). /proc/locks would not do: it is read in pieces, and while other
#: processes lock and unlock, a piece can skip a lock that was held all along.
HOLDER = textwrap.dedent("""
    import fcntl, json, os, struct, sys
    files, answers = {}, []
    for path, port in json.load(sys.stdin):
        if path not in files:
            files[path] = os.open(path, os.O_RDONLY)
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, port, 1, 0)
        found = fcntl.fcntl(files[path], fcntl.F_GETLK, query)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", found)
        answers.append(0 if kind == fcntl.F_UNLCK else pid)
    print(json.dumps(answers))
""")


def kernel_holders(ports: list[int]) -> list[int]:
    """The pid the kernel says holds each of *ports* in the lock directory (0: nobody)."""
    where = _locks.lock_dir()
    asked = [(os.path.join(where, _locks.shard_name(port >> _locks.SHARD_BITS)), port)
             for port in ports]
    answer = subprocess.run([sys.executable, "-c", HOLDER], input=json.dumps(asked),
                            capture_output=True, text=True, check=True, timeout=60)
    return json.loads(answer.stdout)

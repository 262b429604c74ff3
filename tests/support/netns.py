"""Run a command in a private network namespace of its own, with loopback up.

    unshare --net -- python tests/support/netns.py COMMAND [ARG ...]

``unshare --net`` gives the command a network namespace with only ``lo``, and down: this
brings it up (the ``SIOCSIFFLAGS`` ioctl, as ``ip link set lo up``) and execs COMMAND.
Tests use it for whatever must not touch the machine's shared namespace: ports and
names held there are the namespace's alone. :data:`PREFIX` is that command line, and
:func:`available` says whether it works here (root, or user namespaces allowed).
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import socket
import struct
import subprocess
import sys

PREFIX = ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__)]
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring ``lo`` up in this network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether :data:`PREFIX` can run a command here."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    done = subprocess.run([*PREFIX, sys.executable, "-c", "pass"], capture_output=True,
                          check=False)
    return done.returncode == 0


if __name__ == "__main__":
    loopback_up()
    os.execvp(sys.argv[1], sys.argv[1:])

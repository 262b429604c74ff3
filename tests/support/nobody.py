"""Run code as another local user (uid 65534), for tests of what other users can do."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NOBODY = 65534


@contextlib.contextmanager
def as_nobody(work: Callable[[], None],
              then: Callable[[], None] = lambda: time.sleep(120)) -> Iterator[int]:
    """Run *work* in a child process of uid 65534; yield its pid once it returned, while
    the child runs *then* until killed. Skips where uid 65534 is not usable."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the other user's process
        try:
            os.close(read_end)
            resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))  # room for floods
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            work()
            os.write(write_end, b"up")
            then()
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as status:
            if status.read(2) != b"up":
                pytest.skip("cannot run a process as uid 65534 here")
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

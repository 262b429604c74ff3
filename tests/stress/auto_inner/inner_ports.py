"""The inner stress suite: pick with a bind-close helper, wait 0-30 ms, bind and listen.

The server then serves for 20 ms, as a test's server would, so that another worker's
bind of the same number meets it.

Run by ``tests/stress/test_auto_stress.py`` (never collected by the outer run: its
files are named ``inner_*``), twice at once under ``-n 4`` in a network namespace whose
ephemeral range is cut to 100 ports.
"""

from __future__ import annotations

import os
import random
import socket
import time

import pytest


@pytest.mark.parametrize("i", range(int(os.environ.get("AUTO_STRESS_TESTS", "300"))))
def test_pick_wait_bind(i: int, unused_port: int) -> None:
    """The server binds the picked number without SO_REUSEADDR after a random delay."""
    time.sleep(random.uniform(0, 0.030))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", unused_port))
        server.listen()
        time.sleep(0.020)

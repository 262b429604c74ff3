"""Proof for the port server: 120 processes ask at the same instant.

Every request either gets a port that is delivered (and held by the server for that
process alone, as the kernel says) or nothing is held for it; once the processes exit,
every grant comes back. The clients are real processes, released together by one write
to a pipe they all wait on, so the requests really arrive as one burst.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.support.portserver import held_by, path_name, private_ports, serving

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="abstract unix sockets and SO_PEERCRED"),
    pytest.mark.timeout(240),
]

CLIENTS = 120

CLIENT = textwrap.dedent("""
    import json, os, sys
    from portsafe._core.serverclient import request_port
    go = int(sys.argv[2])
    print("ready", flush=True)
    os.read(go, 1)  # all clients wake on one write
    print(json.dumps(request_port(sys.argv[1], timeout=5.0)), flush=True)
    sys.stdin.read()
""")


def test_burst_of_processes_is_served_or_left_unheld(tmp_path: Path) -> None:
    """120 processes at once: the ports the server holds are exactly those delivered,
    one process each; after they exit, the server holds nothing. The server has 200
    ports of its own (a private network namespace), reached through a path socket."""
    address = path_name()
    with (private_ports(200, tmp_path) as (prefix, env, ports),
          serving(["--range", f"{ports[0]}-{ports[-1]}"], env, tmp_path / "serve.log",
                  address, prefix) as server):
        _burst(address, server, env, ports)


def _burst(address: str, server: subprocess.Popen[bytes], env: dict[str, str],
           ports: range) -> None:
    go_read, go_write = os.pipe()
    clients: list[subprocess.Popen[str]] = []
    try:
        # extend() keeps the clients started so far if one fails, for finally
        clients.extend(subprocess.Popen(
            [sys.executable, "-c", CLIENT, address, str(go_read)], env=env,
            pass_fds=(go_read,), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True) for _ in range(CLIENTS))
        for client in clients:
            assert client.stdout is not None
            assert client.stdout.readline() == "ready\n"
        os.write(go_write, b"x" * CLIENTS)
        got = []
        for client in clients:
            assert client.stdout is not None
            got.append(json.loads(client.stdout.readline()))
        delivered = [port for port in got if port is not None]
        assert len(delivered) == len(set(delivered)), "one port delivered twice"
        held: set[int] = set()
        for _ in range(100):  # requests of clients that gave up may still be queued
            held = held_by(server.pid, ports, env)
            if held == set(delivered):
                break
            time.sleep(0.1)
        assert held == set(delivered), "grants held for nobody, or not held at all"
        assert delivered, "the server served nobody"
    finally:
        for client in clients:
            for stream in (client.stdin, client.stdout):
                if stream is not None:
                    stream.close()
        for client in clients:
            client.wait(timeout=60)
        os.close(go_read)
        os.close(go_write)
    for _ in range(100):  # reclaimed once a second after the owners exit
        held = held_by(server.pid, ports, env)
        if not held:
            break
        time.sleep(0.1)
    assert held == set(), "grants of exited processes were not reclaimed"

"""Proof for the port server: 120 processes ask at the same instant.

Every request either gets a port that is delivered (and held by the server for that
process alone) or nothing is held for it; once the processes exit, every grant comes
back. The clients are real processes, released together by one write to a pipe they all
wait on, so the requests really arrive as one burst.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import portsafe

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="abstract unix sockets and SO_PEERCRED"),
    pytest.mark.timeout(240),
]

CLIENTS = 120

CLIENT = textwrap.dedent("""
    import json, os, sys
    from portsafe._server import request_port
    go = int(sys.argv[2])
    print("ready", flush=True)
    os.read(go, 1)  # all clients wake on one write
    print(json.dumps(request_port(sys.argv[1], timeout=5.0)), flush=True)
    sys.stdin.read()
""")

LISTER = ("import json; from portsafe import _locks; print(json.dumps(_locks.holders()))")


def _held_by(env: dict[str, str], pid: int) -> set[int]:
    out = subprocess.run([sys.executable, "-c", LISTER], env=env, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return {port for port, holder in json.loads(out) if holder == pid}


def _wait_listening(address: str, proc: subprocess.Popen[bytes]) -> None:
    import socket

    for _ in range(400):
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect("\0" + address[1:])
            except OSError:
                time.sleep(0.025)
                continue
        return
    raise AssertionError(f"nothing listens on {address!r}")


def test_burst_of_processes_is_served_or_left_unheld(tmp_path: Path) -> None:
    """120 processes at once: the ports the server holds are exactly those delivered,
    one process each; after they exit, the server holds nothing."""
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    env = dict(os.environ, PORTSAFE_LOCK_DIR=str(lock_dir))
    address = f"@portsafe-burst-{uuid.uuid4().hex[:12]}"
    with portsafe.reserve_ports(200, contiguous=True) as block:  # nobody else's ports
        server = subprocess.Popen(
            [sys.executable, "-m", "portsafe", "serve", "--address", address, "--range",
             f"{block.ports[0]}-{block.ports[-1]}"], env=env)
        try:
            _burst(address, server, env)
        finally:
            server.kill()
            server.wait(timeout=30)


def _burst(address: str, server: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    go_read, go_write = os.pipe()
    clients: list[subprocess.Popen[str]] = []
    try:
        _wait_listening(address, server)
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
            held = _held_by(env, server.pid)
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
        held = _held_by(env, server.pid)
        if not held:
            break
        time.sleep(0.1)
    assert held == set(), "grants of exited processes were not reclaimed"

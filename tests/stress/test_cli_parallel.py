"""Proof for the command line: parallel `portsafe run` servers, and portpicker fleets."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import uuid

import pytest
from tests.support import netns as _netns

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX command line"),
    pytest.mark.timeout(180),
]


def _get(port: int) -> int:
    # http.client, not urllib: no proxy settings can send this off the machine.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


class TestParallelRun:
    def test_http_servers_each_answer_on_their_own_port(self) -> None:
        """Eight `portsafe run -- python -m http.server {port}` at once: eight ports, each
        answered by its own server; SIGTERM to portsafe reaches the server."""
        procs = [subprocess.Popen(
            [sys.executable, "-m", "portsafe", "run", "--", sys.executable, "-u", "-m",
             "http.server", "{port}", "--bind", "127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        ) for _ in range(8)]
        try:
            ports = []
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline().decode()  # "Serving HTTP on 127.0.0.1 port N ..."
                ports.append(int(line.split(" port ")[1].split()[0]))
            assert len(set(ports)) == 8
            assert all(_get(port) == 200 for port in ports)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=60) for proc in procs]
            for proc in procs:
                assert proc.stdout is not None
                proc.stdout.close()
        assert codes == [128 + signal.SIGTERM] * 8


FLEET = """
import os, signal, socket, subprocess, sys, time
import portsafe
address = sys.argv[1]
# Nothing else lives in this private network namespace: 12 contiguous free ports.
block = portsafe.reserve_ports(12, contiguous=True)
low, high = block.ports[0], block.ports[-1]
block.release()
server = subprocess.Popen([sys.executable, "-m", "portsafe", "serve", "--address",
                           address, "--range", f"{low}-{high}"])
try:
    for _ in range(400):
        with socket.socket(socket.AF_UNIX) as probe:
            if probe.connect_ex("\\0" + address[1:]) == 0:
                break
        time.sleep(0.025)
    code = ("import sys, portpicker; "
            "print(portpicker.pick_unused_port(), flush=True); sys.stdin.read()")
    client_env = dict(os.environ, PORTSERVER_ADDRESS=address)
    for _wave in range(3):
        clients = [subprocess.Popen([sys.executable, "-c", code], env=client_env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                   for _ in range(12)]
        try:
            got = [int(c.stdout.readline()) for c in clients]
        finally:
            for c in clients:
                c.communicate(b"")
        assert sorted(got) == list(range(low, high + 1)), (got, low, high)
finally:
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
print("ok")
"""


class TestPortpickerFleet:
    def test_distinct_while_alive_reclaimed_after(self) -> None:
        """portpicker clients in 3 waves of 12 processes against `portsafe serve` with 12
        ports: each wave gets all 12, distinct, only after the previous wave exited. In a
        private network namespace, where nothing else can hold those 12 ports."""
        pytest.importorskip("portpicker")
        if not _netns.available():
            pytest.skip("needs unshare --net (root or user namespaces)")
        env = dict(os.environ)
        env.pop("PORTSAFE_LOCK_DIR", None)
        done = subprocess.run([*_netns.PREFIX, sys.executable, "-c", FLEET,
                               f"@portsafe-stress-{uuid.uuid4().hex[:12]}"], env=env,
                              capture_output=True, text=True, timeout=170, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"


class TestColdStarts:
    def test_200_first_calls_at_once_all_get_held_ports(self, tmp_path) -> None:
        """200 `portsafe` calls at once with no keeper running: one keeper is started,
        every call exits 0 with its own port, and every printed port is held by it."""
        import json

        lock_dir = tmp_path / "locks"
        lock_dir.mkdir(mode=0o700)
        env = dict(os.environ, PORTSAFE_LOCK_DIR=str(lock_dir), PORTSAFE_KEEPER_IDLE="5")
        procs = [subprocess.Popen([sys.executable, "-m", "portsafe"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(200)]
        results = [(proc.wait(timeout=150), *proc.communicate(timeout=30)) for proc in procs]
        failures = [err.decode() for code, _out, err in results if code != 0]
        ports = [int(out) for code, out, _err in results if code == 0]
        listed = subprocess.run(
            [sys.executable, "-c", ("import json; from portsafe._locking import files as _locks; "
                                    "print(json.dumps(_locks.holders()))")],
            env=env, capture_output=True, text=True, timeout=60, check=True)
        held = dict(json.loads(listed.stdout))
        keepers = {held.get(port) for port in ports}
        for pid in keepers - {None}:
            os.kill(pid, signal.SIGTERM)
        assert not failures, failures[:3]
        assert len(set(ports)) == 200
        assert None not in keepers, "a printed port is held by nobody"
        assert len(keepers) == 1, f"{len(keepers)} keepers started"

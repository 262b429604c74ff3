"""reserve_port() with PORTSERVER_ADDRESS: ask the server, lock locally, pool on release."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

import portsafe
from _portserver import portpicker_portserver, server_name, wait_listening
from portsafe import _pool, _server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract unix sockets and SO_PEERCRED")

CLIENT = textwrap.dedent("""
    import json, os, portsafe
    from portsafe import _locks
    r = portsafe.reserve_port()
    first, holder = r.port, _locks.table().holder(r.port)
    r.release()
    with portsafe.reserve_port() as again:
        second = again.port
    print(json.dumps({"first": first, "holder": holder, "second": second,
                      "pid": os.getpid()}))
""")


@pytest.fixture
def shared_env(tmp_path):
    """Server and client share a private lock directory, as one machine's users do."""
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    return dict(os.environ, PORTSAFE_LOCK_DIR=str(lock_dir))


def block_of(n: int) -> range:
    with portsafe.reserve_ports(n, contiguous=True) as group:
        return range(group.ports[0], group.ports[0] + n)


def run_client(env: dict[str, str], address: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", CLIENT], env=dict(env, PORTSERVER_ADDRESS=address),
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out)


class TestWithPortsafeServer:
    def test_grant_is_used_and_pooled(self, shared_env):
        """A grant held by portsafe serve is handed over: the client locks it itself;
        release() returns it to the pool."""
        address, block = server_name(), block_of(8)
        server = subprocess.Popen([sys.executable, "-m", "portsafe", "serve", "--address",
                                   address, "--range", f"{block[0]}-{block[-1]}"],
                                  env=shared_env)
        try:
            wait_listening(address, server)
            result = run_client(shared_env, address)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        assert result["first"] in block
        assert result["holder"] == result["pid"]  # taken over from the server
        assert result["second"] == result["first"]  # taken from the pool, not asked again


class TestWithPortpickerServer:
    def test_grant_is_locked_locally(self, shared_env):
        """Google's portserver.py locks nothing, so the client takes the local lock."""
        script = portpicker_portserver()
        if script is None:
            pytest.skip("portpicker's portserver.py is not installed")
        pytest.importorskip("psutil", reason="portserver.py needs psutil")
        address, block = server_name(), block_of(8)
        server = subprocess.Popen([sys.executable, str(script), "--portserver_address",
                                   address, "--portserver_static_pool",
                                   f"{block[0]}-{block[-1]}"], stderr=subprocess.DEVNULL)
        try:
            wait_listening(address, server)
            result = run_client(shared_env, address)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        assert result["first"] in block
        assert result["holder"] == result["pid"]
        assert result["second"] == result["first"]


class FakeServer:
    """A port server in a thread that always grants the same port."""

    def __init__(self, port: int) -> None:
        self.address = server_name()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(_server.unix_address(self.address))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = port
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(64)
                conn.sendall(b"%d\n" % self.port)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


class TestFallback:
    def test_grant_held_by_another_local_user_is_not_used(self, shared_env):
        """A granted port that a local portsafe user holds is refused: fall back."""
        holder = str(Path(__file__).with_name("_holder.py"))
        held = subprocess.Popen([sys.executable, holder], env=shared_env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert held.stdout is not None
        [port] = json.loads(held.stdout.readline())
        fake = FakeServer(port)
        try:
            result = run_client(shared_env, fake.address)
        finally:
            fake.close()
            assert held.stdin is not None
            held.stdin.close()
            held.wait(timeout=30)
            held.stdout.close()
        assert result["first"] != port
        assert result["holder"] == result["pid"]  # an ordinary local reservation

    def test_no_server_falls_back(self, shared_env):
        """A PORTSERVER_ADDRESS where nothing listens costs a refused connect, no more."""
        result = run_client(shared_env, server_name())
        assert result["holder"] == result["pid"]

    def test_explicit_ports_do_not_ask_the_server(self, monkeypatch):
        """ports= is an explicit choice: the server is not asked."""
        fake = FakeServer(1)  # an answer no test could use
        monkeypatch.setenv("PORTSERVER_ADDRESS", fake.address)
        try:
            block = block_of(2)
            with portsafe.reserve_port(ports=block) as r:
                assert r.port in block
        finally:
            fake.close()


HOLDING_CLIENT = textwrap.dedent("""
    import json, os, sys, portsafe
    r = portsafe.reserve_port()
    print(json.dumps(r.port), flush=True)
    sys.stdin.read()
    r.release()
""")

SQUATTER = textwrap.dedent("""
    import os, socket, sys, portsafe
    from portsafe import _pool, _server
    portsafe.reserve_port().release()  # import everything while still root
    os.setgid(65534)
    os.setuid(65534)
    grant = portsafe.reserve_port()  # locked by uid 65534, as portsafe serve would
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(_server.unix_address(sys.argv[1]))
    listener.listen(16)
    print(grant.port, flush=True)
    while True:  # the same port to everyone
        conn, _ = listener.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"%d\\n" % grant.port)
""")


def start_holding_client(env: dict[str, str],
                         address: str | None) -> tuple[subprocess.Popen[str], int]:
    """A client process that reserves one port (asking *address* if given) and holds it
    until its stdin closes."""
    env = dict(env)
    env.pop("PORTSERVER_ADDRESS", None)
    if address is not None:
        env["PORTSERVER_ADDRESS"] = address
    proc = subprocess.Popen([sys.executable, "-c", HOLDING_CLIENT], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise AssertionError(f"client exited with {proc.returncode}")
    return proc, json.loads(line)


def stop(proc: subprocess.Popen[str]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    proc.wait(timeout=30)


def local_port_taken(env: dict[str, str], port: int) -> bool:
    """Whether a process that does not ask the server can reserve *port* now."""
    env = {k: v for k, v in env.items() if k != "PORTSERVER_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c",
         f"import portsafe; portsafe.reserve_port(ports=[{port}]).release()"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode == 0


@pytest.mark.timeout(120)
class TestUntrustedServer:
    def test_other_users_server_cannot_hand_one_port_to_everyone(self):
        """A uid-65534 process on the server's name, holding the lock on the port it
        hands to everyone: each client still gets a port of its own."""
        if os.getuid() != 0:
            pytest.skip("needs root to run a child as another user")
        shared = Path(tempfile.mkdtemp(prefix="portsafe-squat-"))  # 65534 must reach it
        shared.chmod(0o1777)
        env = dict(os.environ, PORTSAFE_LOCK_DIR=str(shared))
        address = server_name()
        squatter = subprocess.Popen([sys.executable, "-c", SQUATTER, address], env=env,
                                    stdout=subprocess.PIPE, text=True)
        clients: list[subprocess.Popen[str]] = []
        try:
            assert squatter.stdout is not None
            squatted = int(squatter.stdout.readline())
            ports = []
            for _ in range(2):
                proc, port = start_holding_client(env, address)
                clients.append(proc)
                ports.append(port)
        finally:
            for proc in clients:
                stop(proc)
            squatter.kill()
            squatter.wait(timeout=30)
            assert squatter.stdout is not None
            squatter.stdout.close()
            shutil.rmtree(shared, ignore_errors=True)
        assert squatted not in ports
        assert ports[0] != ports[1]

    def test_trust_is_root_or_self(self):
        """Grants are taken from servers run by root or this user only."""
        assert _pool.trusted(0)
        assert _pool.trusted(os.getuid())
        assert _pool.trusted(None)  # unknown: used only if this process can lock it
        assert not _pool.trusted(65534 if os.getuid() != 65534 else 65533)


@pytest.mark.timeout(120)
class TestServerRestart:
    def test_kill_9_and_restart_keep_the_clients_ports(self, shared_env):
        """kill -9 of the server, then a new one on the same address and range: the
        port a client holds is still kept from other processes, local or served."""
        address, (port,) = server_name(), block_of(1)
        argv = [sys.executable, "-m", "portsafe", "serve", "--address", address,
                "--range", f"{port}-{port}"]
        server = subprocess.Popen(argv, env=shared_env)
        restarted = None
        client = None
        try:
            wait_listening(address, server)
            client, got = start_holding_client(shared_env, address)
            assert got == port  # the only port served
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
            restarted = subprocess.Popen(argv, env=shared_env)
            wait_listening(address, restarted)
            assert not local_port_taken(shared_env, port), "the client's port was free"
            other, other_port = start_holding_client(shared_env, address)
            stop(other)
            assert other_port != port
        finally:
            if client is not None:
                stop(client)
            for proc in (server, restarted):
                if proc is not None:
                    proc.kill()
                    proc.wait(timeout=30)

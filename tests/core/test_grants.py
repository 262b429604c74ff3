"""reserve_port() with PORTSERVER_ADDRESS: ask the server, hold the port itself, pool on
release; the hand-over of a grant from the server to its grantee."""

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
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.support import CHILDREN
from tests.support.portserver import (
    held_by,
    path_name,
    portpicker_portserver,
    private_ports,
    server_name,
    serving,
    unlink_quietly,
    wait_for_line,
    wait_listening,
)

import portsafe
from portsafe import _platform as backend
from portsafe._core import grants as _pool
from portsafe._core import serverclient as _server_client
from portsafe._locking import files as _locks
from portsafe._locking import names
from portsafe._services import portserver as _server

if TYPE_CHECKING:
    from collections.abc import Iterable

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract unix sockets and SO_PEERCRED")

needs_names = pytest.mark.skipif(not _locks.table().passes_descriptors,
                                 reason="names: the server passes the name's descriptor")

#: Reserves a port, says which, and, once told, releases it and reserves again.
CLIENT = textwrap.dedent("""
    import json, os, sys, portsafe
    r = portsafe.reserve_port()
    print(json.dumps({"first": r.port, "pid": os.getpid()}), flush=True)
    sys.stdin.readline()
    r.release()
    with portsafe.reserve_port() as again:
        print(json.dumps({"second": again.port}), flush=True)
        sys.stdin.read()
""")


class Site:
    """Ports of the test's own (``_portserver.private_ports``): how its processes start
    (*prefix*: in its private network namespace), their environment, and an address for
    servers that only its processes reach (abstract there, where there are names)."""

    def __init__(self, prefix: list[str], env: dict[str, str], ports: range) -> None:
        self.prefix, self.env, self.ports = prefix, env, ports
        self.inner = server_name() if prefix else path_name()

    def popen(self, argv: list[str], address: str | None = None,
              env: dict[str, str] | None = None, **options: object) -> subprocess.Popen[str]:
        """A process of the site, asking *address* (PORTSERVER_ADDRESS) if given."""
        env = dict(self.env if env is None else env)
        if address is not None:
            env["PORTSERVER_ADDRESS"] = address
        return subprocess.Popen([*self.prefix, *argv], env=env, text=True,  # type: ignore[call-overload]
                                **options)


@pytest.fixture
def site(tmp_path: Path):
    with private_ports(32, tmp_path) as (prefix, env, ports):
        yield Site(prefix, env, ports)


@pytest.fixture
def portsafe_server(site: Site, tmp_path: Path):
    """``portsafe serve`` of the site on its first 8 ports; yields (address, process)."""
    address = site.inner
    with serving(["--range", f"{site.ports[0]}-{site.ports[7]}"], site.env,
                 tmp_path / "serve.log", address, site.prefix) as proc:
        yield address, proc


def start_client(site: Site, address: str | None, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """A CLIENT of the site, once it has reserved its first port."""
    proc = site.popen([sys.executable, "-c", CLIENT], address, env, stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise AssertionError(f"client exited with {proc.returncode}")
    return proc, json.loads(line)


def second_port(proc: subprocess.Popen[str]) -> int:
    """Tell a CLIENT to release its port and reserve again; the port it got."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    return int(json.loads(proc.stdout.readline())["second"])


def _server_lets_go(pid: int, ports: Iterable[int], env: dict[str, str]) -> bool:
    """Whether the server *pid* soon holds none of *ports*: with names it closes its
    copy of a handed-over descriptor once it has seen the grantee close the connection,
    a moment after the grantee holds its own."""
    for _ in range(200):
        if not held_by(pid, ports, env):
            return True
        time.sleep(0.025)
    return False


def stop(proc: subprocess.Popen[str]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    proc.wait(timeout=30)


class TestWithPortsafeServer:
    def test_grant_is_taken_over_and_pooled(self, site: Site, portsafe_server) -> None:
        """A grant held by portsafe serve is handed over: the client holds it itself
        (the server no longer does); release() returns it to the pool, and the next
        reservation takes it from there."""
        address, server = portsafe_server
        client, got = start_client(site, address)
        try:
            first = got["first"]
            assert first in site.ports[:8]
            assert held_by(client.pid, [first], site.env) == {first}
            assert _server_lets_go(server.pid, site.ports, site.env)
            assert second_port(client) == first  # from the pool, not asked again
            assert held_by(client.pid, [first], site.env) == {first}
        finally:
            stop(client)


class TestWithPortpickerServer:
    def test_grant_is_held_locally(self, site: Site) -> None:
        """Google's portserver.py holds nothing, so the client takes the port itself."""
        script = portpicker_portserver()
        if script is None:
            pytest.skip("portpicker's portserver.py is not installed")
        pytest.importorskip("psutil", reason="portserver.py needs psutil")
        address = path_name()  # reached from here, to wait for it
        server = site.popen([sys.executable, str(script), "--portserver_address", address,
                             "--portserver_static_pool", f"{site.ports[0]}-{site.ports[7]}"],
                            stderr=subprocess.DEVNULL)
        client = None
        try:
            wait_listening(address, server)  # type: ignore[arg-type]
            client, got = start_client(site, address)
            first = got["first"]
            assert first in site.ports[:8]
            assert held_by(client.pid, [first], site.env) == {first}
            assert second_port(client) == first
        finally:
            if client is not None:
                stop(client)
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
            unlink_quietly(address)


class FakeServer:
    """A port server in a thread of this process: grants *port* to every request, and
    answers ``take`` with *take_reply* and the descriptors *take_fds*."""

    def __init__(self, port: int, *, address: str | None = None, take_reply: bytes = b"",
                 take_fds: tuple[int, ...] = ()) -> None:
        self.address = address or path_name()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(_server.unix_address(self.address))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port, self.take_reply, self.take_fds = port, take_reply, take_fds
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
                if not conn.recv(64).startswith(b"take"):
                    conn.sendall(b"%d\n" % self.port)
                elif self.take_fds:
                    socket.send_fds(conn, [self.take_reply], list(self.take_fds))
                elif self.take_reply:
                    conn.sendall(self.take_reply)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()
        unlink_quietly(self.address)


class TestFallback:
    def test_grant_held_by_another_local_user_is_not_used(self, site: Site) -> None:
        """A granted port that a local portsafe user holds is refused: fall back."""
        holder = str(CHILDREN / "holder.py")
        held = site.popen([sys.executable, holder], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE)
        assert held.stdout is not None
        [port] = json.loads(held.stdout.readline())
        fake = FakeServer(port)  # a path: reached from the site
        client = None
        try:
            client, got = start_client(site, fake.address)
            assert got["first"] != port
            assert held_by(client.pid, [got["first"]], site.env) == {got["first"]}
            assert held_by(held.pid, [port], site.env) == {port}  # left alone
        finally:
            if client is not None:
                stop(client)
            fake.close()
            stop(held)

    def test_no_server_falls_back(self, site: Site) -> None:
        """A PORTSERVER_ADDRESS where nothing listens costs a refused connect, no more."""
        client, got = start_client(site, server_name())
        try:
            assert held_by(client.pid, [got["first"]], site.env) == {got["first"]}
        finally:
            stop(client)

    def test_explicit_ports_do_not_ask_the_server(self, monkeypatch) -> None:
        """ports= is an explicit choice: the server is not asked."""
        fake = FakeServer(1)  # an answer no test could use
        monkeypatch.setenv("PORTSERVER_ADDRESS", fake.address)
        try:
            with portsafe.reserve_ports(2, contiguous=True) as group:
                block = range(group.ports[0], group.ports[0] + 2)
            with portsafe.reserve_port(ports=block) as r:
                assert r.port in block
        finally:
            fake.close()


#: Asks *address* for N grants, prints them, and once told, takes each over as the pool
#: does; prints the ports it then holds, and keeps them until stdin closes.
GRANTEE = textwrap.dedent("""
    import json, sys
    from portsafe._core import grants as _pool
    from portsafe._core import serverclient as _server_client
    address, n = sys.argv[1], int(sys.argv[2])
    grants = [_server_client.request_grant(address) for _ in range(n)]
    print(json.dumps([g and g[0] for g in grants]), flush=True)
    sys.stdin.readline()
    taken = [p for p, pid, _uid in grants if _pool._take_over(p, address, pid, "")]
    print(json.dumps(taken), flush=True)
    sys.stdin.read()
""")

#: Binds the names of the ports in argv[1], round and round, until stdin closes; prints
#: the names it managed to bind (each closed at once) and how many binds it tried.
BINDER = textwrap.dedent("""
    import json, select, socket, sys
    from portsafe._locking import names
    wanted = [names.name(p) for p in json.loads(sys.argv[1])]
    won, tries = [], 0
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        for name in wanted:
            tries += 1
            try:
                sock.bind(name)
            except OSError:
                continue
            won.append(name[1:].decode())
            sock.close()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    print(json.dumps({"won": won, "tries": tries}), flush=True)
""")


@needs_names
@pytest.mark.timeout(180)
class TestDescriptorHandOver:
    def test_the_name_is_held_throughout_the_hand_over(self, site: Site, tmp_path) -> None:
        """While grants pass from the server to their grantee, another process binds
        their names in a tight loop and never succeeds: at no moment does nobody hold
        them. Afterwards the grantee holds each, the server none."""
        address = site.inner
        with serving(["--range", f"{site.ports[0]}-{site.ports[-1]}"], site.env,
                     tmp_path / "serve.log", address, site.prefix) as server:
            for _round in range(3):
                grantee = site.popen([sys.executable, "-c", GRANTEE, address, "16"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                binder = None
                try:
                    assert grantee.stdout is not None
                    assert grantee.stdin is not None
                    granted = json.loads(grantee.stdout.readline())
                    assert None not in granted
                    assert len(set(granted)) == 16
                    assert held_by(server.pid, granted, site.env) == set(granted)
                    binder = site.popen([sys.executable, "-c", BINDER, json.dumps(granted)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                    assert binder.stdout is not None
                    assert binder.stdin is not None
                    assert binder.stdout.readline() == "ready\n"
                    grantee.stdin.write("go\n")
                    grantee.stdin.flush()
                    taken = json.loads(grantee.stdout.readline())
                    binder.stdin.close()
                    outcome = json.loads(binder.stdout.readline())
                    assert outcome["won"] == [], "a name was free during the hand-over"
                    assert outcome["tries"] >= len(granted)
                    assert sorted(taken) == sorted(granted)
                    assert held_by(grantee.pid, granted, site.env) == set(granted)
                    assert _server_lets_go(server.pid, granted, site.env)
                finally:
                    for proc in (grantee, binder):
                        if proc is not None:
                            stop(proc)

    @pytest.mark.parametrize(("reply", "count"), [
        (b"ok\n", 0),   # a server of lock files, or an older portsafe
        (b"fd\n", 0),   # says fd, sends none
        (b"ok\n", 1),   # a descriptor, but not the answer that goes with it
        (b"fd\n", 2),   # more than one
        (b"", 0),       # portpicker's: closes without a word
    ])
    def test_other_answers_mean_no_and_leave_nothing_open(self, reply: bytes,
                                                          count: int) -> None:
        """Any answer to ``take`` but ``fd`` with one descriptor is "no": nothing is
        adopted, and every descriptor that came with it is closed (the sender's socket
        sees its last copy go)."""
        port = 20000
        pairs = [socket.socketpair() for _ in range(count)]
        fake = FakeServer(port, take_reply=reply,
                          take_fds=tuple(theirs.fileno() for _mine, theirs in pairs))
        try:
            assert _server_client.request_descriptor(fake.address, port, timeout=5.0) is None
            assert not _pool._take_over(port, fake.address, os.getpid(), "")
        finally:
            fake.close()
        assert not _locks.table().holds(port)
        for mine, theirs in pairs:
            theirs.close()  # the sender's copy: none should be left anywhere else
            mine.settimeout(10)
            assert mine.recv(16) == b""  # EOF: every copy of the other end is closed
            mine.close()

    def test_an_answer_for_another_port_is_not_adopted(self) -> None:
        """A descriptor that does not hold the asked port's name is refused and closed."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
            other.bind(names.name(20001))
            fake = FakeServer(20000, take_reply=b"fd\n", take_fds=(other.fileno(),))
            try:
                assert not _pool._take_over(20000, fake.address, os.getpid(), "")
            finally:
                fake.close()
        assert not _locks.table().holds(20000)
        assert not _locks.table().holds(20001)

    def test_an_older_client_takes_nothing(self, site: Site, portsafe_server) -> None:
        """A client that only knows the lock-file hand-over (``ok``) gets ``fd``, which
        it does not take: "no"."""
        address, _server_proc = portsafe_server
        code = ("import json; from portsafe._core import serverclient as c; "
                "import sys; a = sys.argv[1]; g = c.request_grant(a); "
                "print(json.dumps([g[0], c.request_handover(a, g[0])]))")
        proc = site.popen([sys.executable, "-c", code, address], stdout=subprocess.PIPE)
        out, _err = proc.communicate(timeout=60)
        port, answer = json.loads(out)
        assert port in site.ports[:8]
        assert answer is False


SQUATTER = textwrap.dedent("""
    import os, socket, sys, portsafe
    from portsafe._core import grants as _pool
    from portsafe._services import portserver as _server
    portsafe.reserve_port().release()  # import everything while still root
    os.setgid(65534)
    os.setuid(65534)
    grant = portsafe.reserve_port()  # held by uid 65534, as portsafe serve would
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


@pytest.mark.timeout(120)
class TestUntrustedServer:
    def test_other_users_server_cannot_hand_one_port_to_everyone(self, site: Site) -> None:
        """A uid-65534 process on the server's name, holding the port it hands to
        everyone: each client still gets a port of its own."""
        if os.getuid() != 0:
            pytest.skip("needs root to run a child as another user")
        env = dict(site.env)
        shared = None
        if not backend.NAMES:  # 65534 must reach the lock directory
            shared = Path(tempfile.mkdtemp(prefix="portsafe-squat-"))
            shared.chmod(0o1777)
            env["PORTSAFE_LOCK_DIR"] = str(shared)
        address = site.inner
        squatter = site.popen([sys.executable, "-c", SQUATTER, address], env=env,
                              stdout=subprocess.PIPE)
        clients: list[subprocess.Popen[str]] = []
        try:
            assert squatter.stdout is not None
            squatted = int(squatter.stdout.readline())
            ports = []
            for _ in range(2):
                proc, got = start_client(site, address, env)
                clients.append(proc)
                ports.append(got["first"])
                assert held_by(proc.pid, [got["first"]], env) == {got["first"]}
        finally:
            for proc in clients:
                stop(proc)
            squatter.kill()
            squatter.wait(timeout=30)
            assert squatter.stdout is not None
            squatter.stdout.close()
            unlink_quietly(address)
            if shared is not None:
                shutil.rmtree(shared, ignore_errors=True)
        assert squatted not in ports
        assert ports[0] != ports[1]

    def test_trust_is_root_or_self(self) -> None:
        """Grants are taken from servers run by root or this user only."""
        assert _pool.trusted(0)
        assert _pool.trusted(os.getuid())
        assert _pool.trusted(None)  # unknown: used only if this process can hold it
        assert not _pool.trusted(65534 if os.getuid() != 65534 else 65533)


@pytest.mark.timeout(120)
class TestServerRestart:
    def test_kill_9_and_restart_keep_the_clients_ports(self, site: Site, tmp_path) -> None:
        """kill -9 of the server, then a new one on the same address and range: the
        port a client holds is still its own, and kept from other processes, local or
        served."""
        port = site.ports[0]
        address = site.inner
        argv = [sys.executable, "-m", "portsafe", "serve", "--address", address,
                "--range", f"{port}-{port}", "--verbose"]
        logs = [tmp_path / "first.log", tmp_path / "second.log"]
        servers: list[subprocess.Popen[str]] = []
        client = None
        try:
            with open(logs[0], "wb") as out:
                servers.append(site.popen(argv, stderr=out))
            _wait_serving(logs[0], servers[0])
            client, got = start_client(site, address)
            assert got["first"] == port  # the only port served
            servers[0].send_signal(signal.SIGKILL)
            servers[0].wait(timeout=30)
            with open(logs[1], "wb") as out:
                servers.append(site.popen(argv, stderr=out))
            _wait_serving(logs[1], servers[1])
            assert held_by(client.pid, [port], site.env) == {port}
            other, other_got = start_client(site, address)
            stop(other)
            assert other_got["first"] != port
        finally:
            if client is not None:
                stop(client)
            for proc in servers:
                proc.kill()
                proc.wait(timeout=30)
            unlink_quietly(address)


def _wait_serving(log: Path, proc: subprocess.Popen[str]) -> None:
    wait_for_line(log, "serving on", proc)  # type: ignore[arg-type]

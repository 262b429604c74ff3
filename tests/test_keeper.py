"""The lease keeper: the detached per-user process that holds ``portsafe reserve`` leases."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

import portsafe
from portsafe import _keeper, _locks, _server

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")


def _gone(pid: int) -> bool:
    return _server.process_identity(pid) is None


def _wait_gone(pid: int) -> None:
    for _ in range(800):
        if _gone(pid):
            return
        time.sleep(0.025)
    raise AssertionError(f"pid {pid} is still alive")


@pytest.fixture
def keeper_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private lock directory (hence a private keeper) that idles out fast; the keeper
    is stopped afterwards. Nothing in this process may reserve meanwhile: the core keeps
    its lock files open per process, so they would stay in the default directory."""
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(lock_dir))
    monkeypatch.setenv("PORTSAFE_KEEPER_IDLE", "1")
    yield dict(os.environ)
    try:
        reply = _keeper.call({"op": "ping"}, start=False, timeout=2.0)
    except _keeper.KeeperError:
        return
    os.kill(int(reply["pid"]), signal.SIGTERM)  # type: ignore[call-overload]
    _wait_gone(int(reply["pid"]))  # type: ignore[call-overload]


def _ask(k: _keeper.Keeper, request: dict[str, object]) -> dict[str, object]:
    reply = k.handle(json.dumps(request).encode(), os.getpid(), os.getuid())
    assert reply is not None
    return json.loads(reply)


class TestAddress:
    def test_address_depends_on_lock_settings(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Another lock directory means another keeper: it would lock in the wrong place."""
        first = _keeper.keeper_address()
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", "/elsewhere")
        assert _keeper.keeper_address() != first

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract names: Linux")
    def test_linux_uses_an_abstract_name_with_the_uid(self) -> None:
        """On Linux the keeper lives in the abstract namespace, named by uid."""
        assert _keeper.keeper_address().startswith(f"@portsafe-keeper-{os.getuid()}-")


class TestLeaseBook:
    """In-process keeper book; it reserves in the default lock directory."""

    def test_reserve_list_release(self) -> None:
        """reserve holds ports for the keeper; list shows them; release frees one."""
        k = _keeper.Keeper(idle=60)
        reply = _ask(k, {"op": "reserve", "n": 2, "lease": 60})
        assert reply["ok"] is True
        ports = reply["ports"]
        assert isinstance(ports, list)
        assert {p for p, _pid in _locks.holders()} >= set(ports)
        listed = _ask(k, {"op": "list"})["leases"]
        assert [item["port"] for item in listed] == sorted(ports)  # type: ignore[union-attr]
        assert _ask(k, {"op": "release", "port": ports[0]}) == {"ok": True, "released": True}
        assert _ask(k, {"op": "release", "port": ports[0]}) == {"ok": True, "released": False}
        portsafe.reserve_port(ports=[ports[0]]).release()  # free again
        _ask(k, {"op": "release", "port": ports[1]})

    def test_expired_leases_are_released(self) -> None:
        """Once its lease is over, the port is released on the next tick."""
        k = _keeper.Keeper(idle=60)
        (port,) = _ask(k, {"op": "reserve", "n": 1, "lease": 0.001})["ports"]  # type: ignore[misc]
        for _ in range(400):
            k.tick()
            if not k.leases:
                break
            time.sleep(0.01)
        assert not k.leases
        portsafe.reserve_port(ports=[port]).release()

    def test_errors_come_back_as_json(self) -> None:
        """Bad JSON, unknown ops and no free port are answered, not crashed on."""
        k = _keeper.Keeper(idle=60)
        assert k.handle(b"{nope", None, None) is not None
        assert _ask(k, {"op": "dance"})["ok"] is False
        with portsafe.reserve_port() as held:
            reply = _ask(k, {"op": "reserve", "n": 1, "lease": 5,
                             "range": [held.port, held.port]})
        assert reply["kind"] == "NoFreePortError"

    def test_other_users_are_ignored(self) -> None:
        """A request from another uid gets no answer at all."""
        k = _keeper.Keeper(idle=60)
        assert k.handle(b'{"op": "ping"}', 1, os.getuid() + 1) is None


@pytest.mark.timeout(120)
class TestDetachedKeeper:
    def test_started_on_demand_and_detached(self, keeper_env: dict[str, str]) -> None:
        """The first call starts a keeper in its own session with /dev/null for stdio."""
        pid = int(_keeper.call({"op": "ping"})["pid"])  # type: ignore[call-overload]
        assert pid != os.getpid()
        if sys.platform.startswith("linux"):
            assert os.getsid(pid) == pid
            for fd in (0, 1, 2):
                assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        assert int(_keeper.call({"op": "ping"})["pid"]) == pid  # type: ignore[call-overload]

    def test_exits_when_idle(self, keeper_env: dict[str, str]) -> None:
        """Holding nothing for PORTSAFE_KEEPER_IDLE seconds, the keeper exits."""
        reply = _keeper.call({"op": "reserve", "n": 1, "lease": 0.2})
        _wait_gone(int(reply["pid"]))  # type: ignore[call-overload]
        with pytest.raises(_keeper.KeeperNotRunningError):
            _keeper.call({"op": "ping"}, start=False)

    def test_concurrent_starts_share_one_keeper(self, keeper_env: dict[str, str]) -> None:
        """Several first calls at once end up with one keeper holding all their ports."""
        code = ("import json; from portsafe import _keeper; "
                "print(json.dumps(_keeper.call({'op': 'reserve', 'n': 1, 'lease': 30})))")
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
                 for _ in range(4)]
        replies = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
        assert len({r["pid"] for r in replies}) == 1
        assert len({r["ports"][0] for r in replies}) == 4

    def test_killed_keeper_loses_its_locks_and_is_replaced(self, keeper_env) -> None:
        """kill -9 of the keeper releases its ports; the next call starts a new keeper."""
        reply = _keeper.call({"op": "reserve", "n": 1, "lease": 60})
        pid, port = int(reply["pid"]), reply["ports"][0]  # type: ignore[call-overload,index]
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        done = subprocess.run([sys.executable, "-m", "portsafe", "--lease", "0", "--range",
                               f"{port}-{port}"], capture_output=True, timeout=60, check=False)
        assert done.returncode == 0  # free again: the kernel dropped the dead keeper's lock
        assert int(_keeper.call({"op": "ping"})["pid"]) != pid  # type: ignore[call-overload]

    @pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root")
    def test_squatter_of_another_user_is_refused(self, keeper_env: dict[str, str]) -> None:
        """Abstract names carry no permissions: a keeper of another uid is not trusted."""
        address = _keeper.keeper_address()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the squatter child
            try:
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as squat:
                    squat.bind(_server.unix_address(address))
                    squat.listen()  # SO_PEERCRED reports the uid at listen() time
                    os.write(write_end, b"up")
                    time.sleep(60)
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as status:
                if status.read(2) != b"up":
                    pytest.skip("cannot run a process as uid 65534 here")
            with pytest.raises(_keeper.KeeperError, match="uid 65534"):
                _keeper.call({"op": "ping"})
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

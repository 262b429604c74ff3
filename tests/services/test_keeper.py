"""The lease keeper: the detached per-user process that holds ``portsafe reserve`` leases."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest
from tests.support.nobody import as_nobody
from tests.support.portserver import held_by, name_is_free

import portsafe
from portsafe import _platform as backend
from portsafe._errors import KeeperError, KeeperNotRunningError
from portsafe._services import keeper as _keeper
from portsafe._services import keeper_client as _keeper_client
from portsafe._system import process_identity
from portsafe._unixsock import bind_unix, unix_address

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

NOBODY = 65534
needs_root = pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                                reason="needs root to run a process as uid 65534")
abstract_only = pytest.mark.skipif(not backend.ABSTRACT,
                                   reason="abstract socket names: Linux, not its test channel")

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")


def _gone(pid: int) -> bool:
    return process_identity(pid) is None


def _wait_gone(pid: int) -> None:
    for _ in range(800):
        if _gone(pid):
            return
        time.sleep(0.025)
    raise AssertionError(f"pid {pid} is still alive")


@pytest.fixture
def keeper_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A keeper of this test's own that idles out fast; stopped afterwards. Its address
    hashes PORTSAFE_EXCLUDE as written, so a spelling of this test's own (privileged
    ports, never candidates: nothing else changes) gives it a keeper no other test or
    user shares. Where ports are held by lock files, a private lock directory too; then
    nothing in this process may reserve meanwhile (the core keeps its lock files open
    per process, so they would stay in the default directory)."""
    rng = random.Random()
    monkeypatch.setenv("PORTSAFE_EXCLUDE", " ".join(
        [f"1-{rng.randrange(1, 1024)}"] + [str(rng.randrange(1, 1024)) for _ in range(3)]))
    if backend.NAMES:
        monkeypatch.delenv("PORTSAFE_LOCK_DIR", raising=False)  # ignored, with a warning
    else:
        lock_dir = tmp_path / "locks"
        lock_dir.mkdir(mode=0o700)
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(lock_dir))
    monkeypatch.setenv("PORTSAFE_KEEPER_IDLE", "1")
    yield dict(os.environ)
    try:
        reply = _keeper_client.call({"op": "ping"}, start=False, timeout=2.0)
    except KeeperError:
        return
    os.kill(int(reply["pid"]), signal.SIGTERM)  # type: ignore[call-overload]
    _wait_gone(int(reply["pid"]))  # type: ignore[call-overload]


def _ask(k: _keeper.Keeper, request: dict[str, object]) -> dict[str, object]:
    reply = k.handle(json.dumps(request).encode(), os.getpid(), os.getuid())
    assert reply is not None
    return json.loads(reply)


class TestAddress:
    def test_address_depends_on_the_reservation_settings(self, monkeypatch) -> None:
        """Another PORTSAFE_RANGE or PORTSAFE_EXCLUDE means another keeper: it would
        reserve from other ports."""
        monkeypatch.delenv("PORTSAFE_RANGE", raising=False)
        monkeypatch.delenv("PORTSAFE_EXCLUDE", raising=False)
        first = _keeper_client.keeper_address()
        monkeypatch.setenv("PORTSAFE_RANGE", "20000-29999")
        ranged = _keeper_client.keeper_address()
        monkeypatch.setenv("PORTSAFE_EXCLUDE", "20000")
        assert len({first, ranged, _keeper_client.keeper_address()}) == 3

    def test_lock_directory_matters_only_with_lock_files(self, monkeypatch) -> None:
        """Names have no lock directory: PORTSAFE_LOCK_DIR (ignored on Linux) does not
        change the keeper; with lock files, the keeper locks there, so it does."""
        monkeypatch.delenv("PORTSAFE_LOCK_DIR", raising=False)
        first = _keeper_client.keeper_address()
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", "/elsewhere")
        changed = _keeper_client.keeper_address() != first
        assert changed is not backend.ABSTRACT

    @abstract_only
    def test_linux_uses_an_abstract_name_with_protocol_and_uid(self) -> None:
        """On Linux the keeper lives in the abstract namespace (per network namespace),
        named by protocol and uid: a keeper of the lock-file layout (protocol 2, no
        number in its name) is never asked."""
        assert _keeper_client.PROTOCOL == 3
        addresses = _keeper_client.keeper_addresses()
        assert len(addresses) == _keeper_client.NAMES
        for address in addresses:
            assert address.startswith(f"@portsafe-keeper3-{os.getuid()}-")

    def test_the_layout_follows_the_lock_system(self) -> None:
        """Abstract names exactly where ``_platform.ABSTRACT`` says, which the
        keeper client works out without importing it."""
        assert _keeper_client._abstract() is backend.ABSTRACT
        assert _keeper_client.keeper_address().startswith("@") is backend.ABSTRACT


class TestLeaseBook:
    """In-process keeper book; it reserves in the default lock directory."""

    def test_reserve_list_release(self) -> None:
        """reserve holds ports for the keeper; list shows them; release frees one."""
        k = _keeper.Keeper(idle=60)
        reply = _ask(k, {"op": "reserve", "n": 2, "lease": 60})
        assert reply["ok"] is True
        ports = reply["ports"]
        assert isinstance(ports, list)
        assert held_by(os.getpid(), ports, dict(os.environ)) == set(ports)
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
        pid = int(_keeper_client.call({"op": "ping"})["pid"])  # type: ignore[call-overload]
        assert pid != os.getpid()
        if sys.platform.startswith("linux"):
            assert os.getsid(pid) == pid
            for fd in (0, 1, 2):
                assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        assert int(_keeper_client.call({"op": "ping"})["pid"]) == pid  # type: ignore[call-overload]

    def test_exits_when_idle(self, keeper_env: dict[str, str]) -> None:
        """Holding nothing for PORTSAFE_KEEPER_IDLE seconds, the keeper exits."""
        reply = _keeper_client.call({"op": "reserve", "n": 1, "lease": 0.2})
        _wait_gone(int(reply["pid"]))  # type: ignore[call-overload]
        with pytest.raises(KeeperNotRunningError):
            _keeper_client.call({"op": "ping"}, start=False)

    def test_concurrent_starts_share_one_keeper(self, keeper_env: dict[str, str]) -> None:
        """Several first calls at once end up with one keeper holding all their ports."""
        code = ("import json; from portsafe._services import keeper_client as _keeper_client; "
                "print(json.dumps(_keeper_client.call({'op': 'reserve', 'n': 1, 'lease': 30})))")
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
                 for _ in range(4)]
        replies = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
        assert len({r["pid"] for r in replies}) == 1
        assert len({r["ports"][0] for r in replies}) == 4

    def test_killed_keeper_loses_its_locks_and_is_replaced(self, keeper_env) -> None:
        """kill -9 of the keeper releases its ports; the next call starts a new keeper."""
        reply = _keeper_client.call({"op": "reserve", "n": 1, "lease": 60})
        pid, port = int(reply["pid"]), reply["ports"][0]  # type: ignore[call-overload,index]
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        if backend.NAMES:
            assert name_is_free(port)  # the kernel dropped the dead keeper's name
        done = subprocess.run([sys.executable, "-m", "portsafe", "--lease", "0", "--range",
                               f"{port}-{port}"], capture_output=True, timeout=60, check=False)
        assert done.returncode == 0  # free again: the kernel dropped the dead keeper's lock
        assert int(_keeper_client.call({"op": "ping"})["pid"]) != pid  # type: ignore[call-overload]


def _squat(addresses: list[str]) -> Callable[[], None]:
    keep: list[socket.socket] = []

    def work() -> None:
        for address in addresses:
            squat = socket.socket(socket.AF_UNIX)
            squat.bind(unix_address(address))
            squat.listen()  # SO_PEERCRED reports the uid at listen() time
            keep.append(squat)

    return work


def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "portsafe", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _keeper_pid() -> int:
    return int(_keeper_client.call({"op": "ping"}, start=False)["pid"])  # type: ignore[call-overload]


def _assert_held_or_failed(done: subprocess.CompletedProcess[str], env: dict[str, str]) -> None:
    """The promise of `PORT=$(portsafe)`: exit 0 means the printed port is held by a
    process of ours (the keeper, as the kernel says); anything else prints no port."""
    if done.returncode != 0:
        assert done.stdout == "", done.stdout
        return
    port = int(done.stdout)
    holder = _keeper_pid()
    assert held_by(holder, [port], env) == {port}, f"port {port} printed, not held"
    with open(f"/proc/{holder}/status") as status:
        uid_line = next(line for line in status if line.startswith("Uid:"))
    assert int(uid_line.split()[1]) == os.getuid()


@pytest.mark.timeout(180)
class TestHostileNeighbours:
    """Another user on the machine, or a broken client, cannot make `portsafe` print a
    port nobody holds, nor take the keeper (and everyone's leases) down."""

    @needs_root
    @abstract_only
    def test_squatter_on_the_first_name_is_skipped(self, keeper_env: dict[str, str]) -> None:
        """A uid-65534 process listening on the keeper's first name is not trusted:
        the keeper starts on the next name, and the port is held by it."""
        with as_nobody(_squat(_keeper_client.keeper_addresses()[:1])):
            done = _cli(keeper_env)
            assert done.returncode == 0, done.stderr
            _assert_held_or_failed(done, keeper_env)
            reply = _keeper_client.call({"op": "ping"}, start=False)
            assert int(reply["pid"]) != os.getpid()  # type: ignore[call-overload]

    @needs_root
    @abstract_only
    def test_squatters_on_every_name_fail_loudly(self, keeper_env: dict[str, str]) -> None:
        """With every keeper name squatted, `portsafe` prints nothing and exits 4 with a
        message naming the other user and what to do; --lease 0 still works."""
        with as_nobody(_squat(_keeper_client.keeper_addresses())):
            done = _cli(keeper_env)
            assert done.returncode == 4
            assert done.stdout == ""
            assert "uid 65534" in done.stderr
            assert "portsafe run" in done.stderr
            unheld = _cli(keeper_env, "--lease", "0")
            assert unheld.returncode == 0
            assert int(unheld.stdout) > 0

    @needs_root
    @abstract_only
    def test_idle_connections_of_another_user_cost_nothing(self, keeper_env, monkeypatch) -> None:
        """3,000 idle connections from uid 65534 (and more arriving) are closed at
        accept, before a byte is read: the owner's calls are still served and held."""
        # The keeper must outlive the flood's set-up on a loaded machine: a one-second
        # idle would let it exit before the first call, and the pid check below would
        # compare two keepers.
        monkeypatch.setenv("PORTSAFE_KEEPER_IDLE", "120")
        keeper_env = dict(os.environ)
        keeper = int(_keeper_client.call({"op": "ping"})["pid"])  # type: ignore[call-overload]
        address = unix_address(_keeper_client.keeper_address())

        opened: list[socket.socket] = []

        def flood() -> None:
            while len(opened) < 3000:
                sock = socket.socket(socket.AF_UNIX)
                sock.setblocking(False)
                try:
                    sock.connect(address)
                except BlockingIOError:  # the backlog is full: the keeper is behind
                    sock.close()
                    time.sleep(0.001)
                    continue
                opened.append(sock)

        def more() -> None:  # keep flooding while the owner's calls run
            while True:
                with contextlib.suppress(OSError):
                    extra = socket.socket(socket.AF_UNIX)
                    extra.setblocking(False)
                    extra.connect(address)
                    opened.append(extra)
                if len(opened) > 7000:
                    for old in opened[:3000]:
                        old.close()
                    del opened[:3000]

        with as_nobody(flood, more):
            for _ in range(5):
                done = _cli(keeper_env)
                assert done.returncode == 0, done.stderr
                _assert_held_or_failed(done, keeper_env)
        assert int(_keeper_client.call({"op": "ping"})["pid"]) == keeper  # type: ignore[call-overload]

    def test_malformed_requests_get_an_error_and_the_keeper_lives(self, keeper_env) -> None:
        """2,000 `[` (RecursionError in json), garbage bytes, a JSON list, a NaN lease:
        each gets an error reply; the keeper and an existing lease survive."""
        reply = _keeper_client.call({"op": "reserve", "n": 1, "lease": 60})
        keeper, port = int(reply["pid"]), reply["ports"][0]  # type: ignore[call-overload,index]
        address = unix_address(_keeper_client.keeper_address())
        for line in (b"[" * 2000, b"\xff\xfe{", b"[1, 2]", b'{"op": "reserve", "lease": NaN}',
                     b'{"op": "reserve", "n": 1, "lease": Infinity}', b'{"op": {}}',
                     b'{"op": "reserve", "n": 100000, "lease": 1}'):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(address)
                sock.sendall(line + b"\n")
                answer = json.loads(sock.makefile("rb").readline())
            assert answer["ok"] is False, line
            assert answer["error"], line
        assert int(_keeper_client.call({"op": "ping"})["pid"]) == keeper  # type: ignore[call-overload]
        assert held_by(keeper, [port], keeper_env) == {port}

    def test_a_keeper_that_never_answers_means_no_port(self, keeper_env) -> None:
        """Something of ours listening on the keeper's name without answering: after
        its retries `portsafe` exits 4 and prints nothing."""
        with bind_unix(_keeper_client.keeper_address()) as mute:
            with pytest.raises(KeeperError, match="did not answer"):
                _keeper_client.call({"op": "ping"}, timeout=1.0)
            done = _cli(keeper_env, "--json")
            assert mute.fileno() >= 0
        assert done.returncode == 4
        assert done.stdout == ""
        assert "portsafe run" in done.stderr

    def test_lease_zero_needs_no_keeper(self, keeper_env: dict[str, str]) -> None:
        """--lease 0 asks for no hold: it exits 0 even when no keeper can answer."""
        with bind_unix(_keeper_client.keeper_address()):
            done = _cli(keeper_env, "--lease", "0")
        assert done.returncode == 0
        assert int(done.stdout) > 0


class TestStart:
    def test_keeper_holds_no_descriptor_of_its_starter(self, keeper_env, tmp_path) -> None:
        """The detached keeper keeps none of the starter's descriptors (a pipe held open
        would keep `$(...)` or a harness waiting), only /dev/null and its own."""
        read_end, write_end = os.pipe()
        os.set_inheritable(write_end, True)
        try:
            done = subprocess.run([sys.executable, "-m", "portsafe"], env=keeper_env,
                                  pass_fds=(write_end,), capture_output=True, timeout=60,
                                  check=False)
        finally:
            os.close(write_end)
        assert done.returncode == 0
        os.set_blocking(read_end, False)
        try:  # EOF at once: nobody else has the write end
            assert os.read(read_end, 1) == b""
        except BlockingIOError:
            pytest.fail("the keeper inherited the starter's pipe")
        finally:
            os.close(read_end)

    def test_a_bad_idle_setting_fails_before_starting(self, keeper_env, monkeypatch) -> None:
        """PORTSAFE_KEEPER_IDLE=garbage: InvalidSettingError in the caller, no keeper."""
        monkeypatch.setenv("PORTSAFE_KEEPER_IDLE", "garbage")
        with pytest.raises(portsafe.InvalidSettingError, match="PORTSAFE_KEEPER_IDLE"):
            _keeper_client.call({"op": "ping"})
        with pytest.raises(KeeperNotRunningError):
            _keeper_client.call({"op": "ping"}, start=False)


class TestReplies:
    def test_fast_reply_reading_matches_json(self) -> None:
        """The client reads the keeper's usual reserve reply without json; the result
        is what json would give (so the keeper must keep writing it that way)."""
        k = _keeper.Keeper(idle=60)
        for n in (1, 3):
            line = k.handle(json.dumps({"op": "reserve", "n": n, "lease": 60}).encode(),
                            os.getpid(), os.getuid())
            assert line is not None
            assert line.startswith(_keeper_client._FAST_PREFIX)
            fast = _keeper_client._decode(line, "test")
            full = json.loads(line)
            assert fast == {"ok": True, "ports": full["ports"], "pid": full["pid"]}
            for port in full["ports"]:
                _ask(k, {"op": "release", "port": port})

    def test_other_replies_fall_back_to_json(self) -> None:
        """Errors and lists are decoded in full; an empty answer is a reset."""
        k = _keeper.Keeper(idle=60)
        line = k.handle(b'{"op": "list"}', os.getpid(), os.getuid())
        assert line is not None
        assert _keeper_client._decode(line, "test")["leases"] == []
        with pytest.raises(ConnectionResetError):
            _keeper_client._decode(b"", "test")


@pytest.fixture
def runtime():
    """A short private directory (AF_UNIX paths are short) for XDG_RUNTIME_DIR; removed
    after the fixtures that use it."""
    import tempfile

    made = tempfile.mkdtemp(prefix="ps-", dir="/tmp")
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.mark.timeout(120)
class TestPathSockets:
    """The layout where there are no abstract names (macOS, the BSDs, and the file
    backend's test channel on Linux): a socket file in a 0700 directory."""

    def test_path_keeper_and_stale_socket(self, runtime, keeper_env, monkeypatch) -> None:
        """Without abstract names the keeper listens on a path in a private directory; a
        socket file left by a killed keeper is replaced by the next start."""
        monkeypatch.setattr(_keeper_client, "_abstract", lambda: False)
        monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
        (address,) = _keeper_client.keeper_addresses()
        assert address.startswith(runtime)
        assert os.stat(os.path.dirname(address)).st_mode & 0o777 == 0o700
        first = int(_keeper_client.call({"op": "ping"})["pid"])  # type: ignore[call-overload]
        os.kill(first, signal.SIGKILL)
        _wait_gone(first)
        assert os.path.exists(address)  # stale
        second = int(_keeper_client.call({"op": "ping"})["pid"])  # type: ignore[call-overload]
        assert second != first
        os.kill(second, signal.SIGTERM)
        _wait_gone(second)

    def test_too_long_a_path_is_a_clear_error(self, monkeypatch, tmp_path) -> None:
        """A socket path longer than unix sockets allow fails at once, saying what to
        do, instead of a keeper that can never be reached."""
        monkeypatch.setattr(_keeper_client, "_abstract", lambda: False)
        deep = tmp_path / ("d" * 100)
        deep.mkdir()
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
        with pytest.raises(KeeperError, match="XDG_RUNTIME_DIR"):
            _keeper_client.call({"op": "ping"}, timeout=5.0)

    def test_unsafe_private_directory_is_refused(self, monkeypatch, tmp_path) -> None:
        """A private directory that is not 0700 (or not ours) is an error, not used."""
        monkeypatch.setattr(_keeper_client, "_abstract", lambda: False)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
        (tmp_path / f"portsafe-keeper-{os.getuid()}").mkdir(mode=0o755)
        (tmp_path / f"portsafe-keeper-{os.getuid()}").chmod(0o755)
        with pytest.raises(KeeperError, match="0700"):
            _keeper_client.keeper_addresses()

    @pytest.mark.timeout(120)
    @pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0
                        or shutil.which("unshare") is None,
                        reason="the test channel needs a private network namespace")
    def test_the_test_channel_runs_the_path_layout_on_linux(self, runtime, tmp_path) -> None:
        """With the file backend's test channel (Linux, a private network namespace),
        the keeper takes the path layout, not abstract names, and serves there: the
        code macOS runs. A keeper per network namespace, though a path is seen from
        all of them: two namespaces get two addresses."""
        (tmp_path / "locks").mkdir(mode=0o700)
        env = dict(os.environ, XDG_RUNTIME_DIR=runtime, PORTSAFE_KEEPER_IDLE="1",
                   PORTSAFE_LOCK_DIR=str(tmp_path / "locks"))
        env[backend.SELFTEST] = "1"
        code = textwrap.dedent("""
            import json, os
            from portsafe._services import keeper_client as kc
            from portsafe import _platform as backend
            addresses = kc.keeper_addresses()
            reserved = kc.call({"op": "reserve", "n": 1, "lease": 30})
            listed = kc.call({"op": "list"}, start=False)
            released = kc.call({"op": "release", "port": reserved["ports"][0]}, start=False)
            os.kill(int(reserved["pid"]), 15)
            print(json.dumps({"abstract": backend.ABSTRACT, "addresses": addresses,
                              "reserved": reserved, "listed": listed, "released": released}),
                  flush=True)
            import sys
            sys.stdin.read()  # both namespaces alive at once: their inodes differ
        """)
        procs = [subprocess.Popen(["unshare", "--net", sys.executable, "-c", code], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = []
        try:
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line, proc.communicate(timeout=60)[1]
                outs.append(json.loads(line))
        finally:
            for proc in procs:
                proc.communicate("", timeout=60)
        for out in outs:
            assert out["abstract"] is False
            (address,) = out["addresses"]
            assert address.startswith(runtime + "/")
            assert out["reserved"]["ok"] is True
            assert [lease["port"] for lease in out["listed"]["leases"]] == \
                out["reserved"]["ports"]
            assert out["released"] == {"ok": True, "released": True}
        assert outs[0]["addresses"] != outs[1]["addresses"]  # one keeper per namespace

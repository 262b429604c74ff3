"""The reservation API and the guarantees G1-G5 within one machine."""

from __future__ import annotations

import gc
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
from tests.support import CHILDREN
from tests.support.kernel import kernel_holders

import portsafe
from portsafe._core import probe as _probe
from portsafe._core import ranges as _ranges
from portsafe._locking import files as _locks
from portsafe._locking import lockdir as _lockdir

HOLDER = str(CHILDREN / "holder.py")
needs_ipv6 = pytest.mark.skipif(not _probe.ipv6_available(), reason="no IPv6 on this host")
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX record locks")


class Holder:
    """A child process holding reservations until closed."""

    def __init__(self, **options: object) -> None:
        self.proc = subprocess.Popen([sys.executable, HOLDER, json.dumps(options)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "holder died before reserving"
        self.ports: list[int] = json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout):
            assert stream is not None
            stream.close()


def free_block(size: int, ports: range | None = None) -> range:
    """A block of ports nobody holds right now (reserved, then released), of *ports*."""
    with portsafe.reserve_ports(size, contiguous=True, ports=ports) as group:
        return range(group.ports[0], group.ports[-1] + 1)


def bind(port: int, *, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
         reuse: bool = False) -> socket.socket:
    sock = socket.socket(family, kind)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    sock.bind((host, port))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


class TestReservePort:
    def test_returns_held_reservation_outside_ephemeral_range(self):
        """The default port is held, and outside the ephemeral and dev-server ports."""
        low, high = portsafe.ephemeral_port_range()
        with portsafe.reserve_port() as r:
            assert isinstance(r.port, int)
            assert not low <= r.port <= high
            assert r.port not in _ranges.COMMON_DEV_PORTS
            assert r.port >= 1024
            assert r.address == ("127.0.0.1", r.port)
            assert _locks.table().holds(r.port)
            assert "held" in repr(r)
        assert r.released
        assert not _locks.table().holds(r.port)

    @pytest.mark.parametrize("reuse", [False, True])
    @pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
    def test_own_server_can_bind(self, reuse, kind):
        """The reservation does not stop the caller's server, with or without SO_REUSEADDR."""
        with portsafe.reserve_port(socktype=kind) as r, bind(r.port, kind=kind, reuse=reuse):
            pass

    def test_release_is_idempotent(self):
        """release() twice is harmless and the port can be reserved again."""
        r = portsafe.reserve_port()
        r.release()
        r.release()
        with portsafe.reserve_port(ports=[r.port]) as again:
            assert again.port == r.port

    def test_distinct_within_process(self):
        """Two live reservations in one process never share a port (G1)."""
        with portsafe.reserve_ports(50) as group:
            assert len(set(group.ports)) == 50

    def test_explicit_ports_may_be_ephemeral(self):
        """An explicit ports= counts as asking, so ephemeral ports are allowed."""
        low, _ = portsafe.ephemeral_port_range()
        candidates = range(low + 100, low + 200)
        with portsafe.reserve_port(ports=candidates) as r:
            assert r.port in candidates

    def test_exclude(self):
        """exclude= is never returned."""
        block = free_block(4)
        with portsafe.reserve_port(ports=block, exclude=block[:3]) as r:
            assert r.port == block[3]

    def test_skips_port_in_use(self):
        """A port some non-portsafe socket is bound to is skipped (G3)."""
        block = free_block(2)
        with bind(block[0]), portsafe.reserve_port(ports=block) as r:
            assert r.port == block[1]

    def test_skips_port_bound_for_udp_when_both_asked(self):
        """socktype=0 needs the number free for TCP and UDP alike."""
        block = free_block(2)
        with bind(block[0], kind=socket.SOCK_DGRAM), \
                portsafe.reserve_port(ports=block, socktype=0) as r:
            assert r.port == block[1]
        with bind(block[0], kind=socket.SOCK_DGRAM), portsafe.reserve_port(
                ports=block[:1], socktype=socket.SOCK_STREAM) as r:
            assert r.port == block[0]  # TCP only: the UDP socket does not matter

    @needs_ipv6
    def test_ipv6_and_both_families(self):
        """AF_INET6 checks ::1; AF_UNSPEC the same number on 127.0.0.1 and ::1."""
        with portsafe.reserve_port(family=socket.AF_INET6) as r:
            assert r.host == "::1"
            bind(r.port, family=socket.AF_INET6).close()
        block = free_block(2)
        with bind(block[0], family=socket.AF_INET6), \
                portsafe.reserve_port(ports=block, family=socket.AF_UNSPEC) as r:
            assert r.port == block[1]

    def test_wildcard_host(self):
        """host='' probes the wildcard address, seeing a socket on any address."""
        block = free_block(2)
        with bind(block[0]), portsafe.reserve_port(ports=block, host="") as r:
            assert r.port == block[1]
            assert r.host == ""

    def test_environment_range_and_exclude(self, monkeypatch):
        """PORTSAFE_RANGE and PORTSAFE_EXCLUDE are honoured."""
        block = free_block(3)
        monkeypatch.setenv("PORTSAFE_RANGE", f"{block[0]}-{block[-1]}")
        monkeypatch.setenv("PORTSAFE_EXCLUDE", f"{block[0]},{block[1]}")
        with portsafe.reserve_port() as r:
            assert r.port == block[2]
        with pytest.raises(portsafe.NoFreePortError):
            portsafe.reserve_port(ports=block[:2])  # PORTSAFE_EXCLUDE applies to ports= too

    def test_garbage_collected_reservation_warns_and_releases(self):
        """An unreleased Reservation that is collected warns and frees its port."""
        r = portsafe.reserve_port()
        port = r.port
        with pytest.warns(ResourceWarning, match="unreleased"):
            del r  # CPython frees it here; elsewhere gc.collect() below does
        gc.collect()
        assert not _locks.table().holds(port)


class TestReservePorts:
    def test_contiguous(self):
        """contiguous=True gives p, p+1, ..., p+n-1."""
        with portsafe.reserve_ports(4, contiguous=True) as group:
            assert group.ports == list(range(group.ports[0], group.ports[0] + 4))
            assert len(group) == 4
            assert group[0].port == group.ports[0]

    def test_contiguous_skips_broken_runs(self):
        """A run with one port in use is not returned."""
        block = free_block(5)
        with bind(block[2]), portsafe.reserve_ports(2, contiguous=True, ports=block) as g:
            assert block[2] not in g.ports

    def test_all_or_nothing(self):
        """When not all n fit, nothing is left held."""
        block = free_block(4)
        with portsafe.reserve_port(ports=[block[0]]):  # 4 candidates, only 3 free
            before = _locks.table().held_count
            with pytest.raises(portsafe.NoFreePortError, match="found only 3"):
                portsafe.reserve_ports(4, ports=block)
            with pytest.raises(portsafe.NoFreePortError):
                portsafe.reserve_ports(4, ports=block, contiguous=True)
            assert _locks.table().held_count == before

    @staticmethod
    def shard_block(size: int) -> range:
        """*size* ports nobody holds now, in one shard file (contiguous)."""
        with portsafe.reserve_port() as r:
            first = (r.port >> _locks.SHARD_BITS) << _locks.SHARD_BITS
        return free_block(size, range(max(first, 1024), first + 256))

    @staticmethod
    def spy_unlocks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
        calls: list[tuple[int, ...]] = []
        real = _locks._unlock_port

        def unlock(fd: int, port: int, *length: int) -> int:
            calls.append((port, *length))
            return real(fd, port, *length)

        monkeypatch.setattr(_locks, "_unlock_port", unlock)
        return calls

    @posix_only
    @pytest.mark.files
    def test_group_release_is_one_unlock_over_its_span(self, monkeypatch):
        """A group that is all this process holds in its shard file is released by one
        unlock over its span; a lock between its ports is another process's, and stays."""
        block = self.shard_block(5)
        holder = Holder(ports=[block[2], block[2] + 1])
        try:
            group = portsafe.reserve_ports(2, ports=[block[0], block[4]])
            table = _locks.table()
            assert table.held[block[0]].count == 2  # the shard's only ports of this process
            calls = self.spy_unlocks(monkeypatch)
            group.release()
            assert calls == [(block[0], 5)]
            assert kernel_holders([block[0], block[2], block[4]]) == [0, holder.proc.pid, 0]
            assert not table.holds(block[0])
            assert not table.holds(block[4])
            with portsafe.reserve_ports(2, ports=[block[0], block[4]]):
                pass  # free again for this process, too
        finally:
            holder.close()

    @posix_only
    @pytest.mark.files
    def test_group_release_keeps_this_process_other_ports(self, monkeypatch):
        """With another port of this process between a group's ports, each of the group's
        ports is unlocked on its own: the other stays held."""
        block = self.shard_block(5)
        with portsafe.reserve_port(ports=[block[2]]) as kept:
            group = portsafe.reserve_ports(2, ports=[block[0], block[4]])
            calls = self.spy_unlocks(monkeypatch)
            group.release()
            assert sorted(calls) == [(block[0],), (block[4],)]
            assert kernel_holders([block[0], kept.port, block[4]]) == [0, os.getpid(), 0]
            assert _locks.table().holds(kept.port)

    @pytest.mark.files
    @posix_only
    @pytest.mark.parametrize("listed", ["another port", "a port twice"])
    def test_release_all_spans_only_exactly_the_shards_ports(self, listed):
        """release_all of as many ports as this process holds in a shard, but not those
        ports (one it does not hold, or one twice), unlocks port by port: a port of this
        process between them stays held."""
        block = self.shard_block(5)
        with portsafe.reserve_ports(2, ports=[block[0], block[2]]):
            table = _locks.table()
            table.release_all([block[0], block[4] if listed == "another port" else block[0]])
            assert kernel_holders([block[0], block[2]]) == [0, os.getpid()]
            assert table.holds(block[2])

    def test_huge_n_gets_the_documented_error(self):
        """n=-10**5000 cannot be printed: the message says so instead of failing."""
        with pytest.raises(portsafe.InvalidSettingError, match="an int of 16610 bits"):
            portsafe.reserve_ports(-10**5000)

    @pytest.mark.parametrize("contiguous", [False, True])
    def test_impossible_request_fails_at_once(self, contiguous, monkeypatch):
        """More ports than there are candidates: an error before anything is locked."""
        tried = []
        monkeypatch.setattr(_locks.LockTable, "try_acquire",
                            lambda *args: tried.append(args) or False)
        with pytest.raises(portsafe.NoFreePortError, match=r"only \d+ candidate ports") as caught:
            portsafe.reserve_ports(10**9, contiguous=contiguous)
        assert tried == []
        assert caught.value.attempts == 0


class TestExhaustion:
    def test_bounded_attempts_and_message(self):
        """G5: every candidate is tried once, then an error naming the range."""
        block = free_block(5)
        with portsafe.reserve_ports(5, ports=block), \
                pytest.raises(portsafe.NoFreePortError) as info:
            portsafe.reserve_port(ports=block)
        error = info.value
        assert error.attempts == error.candidates == 5
        assert f"ports={block[0]}-{block[-1]}" in str(error)
        assert isinstance(error, OSError)
        assert isinstance(error, portsafe.PortsafeError)

    def test_held_by_other_process(self):
        """Ports another process holds are counted as such in the error."""
        block = free_block(3)
        holder = Holder(n=3, ports=[block[0], block[-1] + 1])
        try:
            with pytest.raises(portsafe.NoFreePortError, match="3 held by portsafe"):
                portsafe.reserve_port(ports=block)
        finally:
            holder.close()
        with portsafe.reserve_ports(3, ports=block):
            pass  # released when the holder exited normally

    def test_ephemeral_fallback_warns(self, monkeypatch):
        """An ephemeral range covering almost everything falls back, with a warning."""
        monkeypatch.setitem(_ranges._cache, "ephemeral", ((1024, 65000), "test"))
        monkeypatch.setattr("portsafe._core.reserve._warned", set())
        monkeypatch.setattr(_ranges, "_candidates", {})
        monkeypatch.setattr("portsafe._core.reserve._hot", {})  # the default request's cache of it
        with pytest.warns(RuntimeWarning, match="ephemeral range 1024-65000"), \
                portsafe.reserve_port() as r:
            assert 1024 <= r.port <= 65535


class TestBadInput:
    @pytest.mark.parametrize(("kwargs", "error", "match"), [
        ({"family": socket.AF_UNIX}, portsafe.InvalidSettingError, "family must be"),
        ({"family": "inet"}, TypeError, "family must be an int"),
        ({"socktype": socket.SOCK_RAW}, portsafe.InvalidSettingError, "socktype must be"),
        ({"ports": []}, portsafe.InvalidSettingError, "ports is empty"),
        ({"ports": [0]}, portsafe.InvalidSettingError, "outside 1..65535"),
        ({"ports": [70000]}, portsafe.InvalidSettingError, "outside 1..65535"),
        ({"ports": "8080"}, TypeError, "iterable of ints"),
        ({"ports": [8080.0]}, TypeError, "must contain ints"),
        ({"exclude": 5}, TypeError, "exclude must be"),
        ({"host": 127}, TypeError, "host must be"),
        ({"host": "192.0.2.1"}, portsafe.AddressNotAvailableError, "not an address"),
    ])
    def test_rejected_with_clear_error(self, kwargs, error, match):
        """Bad arguments raise TypeError/ValueError naming the value; nothing is held."""
        before = _locks.table().held_count
        with pytest.raises(error, match=match):
            portsafe.reserve_port(**kwargs)
        assert _locks.table().held_count == before

    @pytest.mark.parametrize(("n", "error"), [(0, ValueError), (-1, ValueError),
                                              ("2", TypeError), (True, TypeError)])
    def test_bad_count(self, n, error):
        """reserve_ports needs a positive int."""
        with pytest.raises(error):
            portsafe.reserve_ports(n)

    @pytest.mark.parametrize("value", ["abc", "20000-10000", "0-5", "1-70000"])
    def test_bad_environment(self, monkeypatch, value):
        """A malformed PORTSAFE_RANGE names the variable."""
        monkeypatch.setenv("PORTSAFE_RANGE", value)
        with pytest.raises(portsafe.InvalidSettingError, match="PORTSAFE_RANGE"):
            portsafe.reserve_port()


class TestThreads:
    @staticmethod
    def run_together(work, count: int = 8) -> None:
        """Run *work(index)* in *count* threads that start together; wait for them all."""
        barrier = threading.Barrier(count)

        def start(index: int) -> None:
            barrier.wait()
            work(index)

        threads = [threading.Thread(target=start, args=(index,)) for index in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def test_threads_never_share(self):
        """G1 across threads: 8 threads x 100 live reservations, all distinct."""
        results: list[list[portsafe.Reservation]] = []

        def work(_: int) -> None:
            results.append([portsafe.reserve_port() for _ in range(100)])

        self.run_together(work)
        ports = [r.port for batch in results for r in batch]
        try:
            assert len(ports) == 800
            assert len(set(ports)) == 800
        finally:
            for batch in results:
                for r in batch:
                    r.release()

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="asks /proc or F_GETLK")
    def test_threads_churning_hold_real_locks(self):
        """G1 across threads while the home shard moves: 8 threads reserving (one port and
        three at a time) and releasing at random; every port held at the end is distinct
        and locked by this process, as the kernel says (not only portsafe's own map)."""
        import random

        kept: list[list[portsafe.Reservation | portsafe.ReservationGroup]] = []

        def work(seed: int) -> None:
            pick = random.Random(seed)
            mine: list[portsafe.Reservation | portsafe.ReservationGroup] = []
            for _ in range(300):
                if mine and pick.random() < 0.45:
                    mine.pop(pick.randrange(len(mine))).release()
                else:
                    mine.append(portsafe.reserve_ports(3) if pick.random() < 0.3
                                else portsafe.reserve_port())
            kept.append(mine)

        self.run_together(work)
        held = [port for mine in kept for item in mine for port in
                (item.ports if isinstance(item, portsafe.ReservationGroup) else [item.port])]
        try:
            assert len(kept) == 8
            assert len(set(held)) == len(held)
            holders = kernel_holders(held)
            assert [port for port, pid in zip(held, holders, strict=True)
                    if pid != os.getpid()] == []
        finally:
            for mine in kept:
                for item in mine:
                    item.release()


@posix_only
class TestProcessLifetime:
    def test_sigkill_releases_at_once(self):
        """G4: a holder killed with SIGKILL frees its ports, with nothing stale."""
        holder = Holder(n=3)
        ports = holder.ports
        with pytest.raises(portsafe.NoFreePortError):
            portsafe.reserve_port(ports=ports)
        holder.kill9()
        with portsafe.reserve_ports(3, ports=ports) as group:
            assert sorted(group.ports) == sorted(ports)

    def test_fork_child_does_not_hold_parents_ports(self):
        """A fork child holds none of its parent's reservations and cannot free them."""
        with portsafe.reserve_port() as r:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child
                code = 0
                try:
                    if not r.released:
                        code |= 1  # the child must see the reservation as not its own
                    r.release()  # must not free the parent's port
                    try:
                        portsafe.reserve_port(ports=[r.port]).release()
                        code |= 2  # the parent's lock must stop the child
                    except portsafe.NoFreePortError:
                        pass
                finally:
                    os.write(write, bytes([code]))
                    os._exit(0)
            os.close(write)
            answer = os.read(read, 1)
            os.close(read)
            os.waitpid(pid, 0)
            assert answer == b"\x00"
            assert not r.released
            holder_check = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(f"""
                    import portsafe
                    try:
                        portsafe.reserve_port(ports=[{r.port}])
                    except portsafe.NoFreePortError:
                        print("held")
                """)], capture_output=True, text=True, check=True)
            assert holder_check.stdout.strip() == "held"

    def test_exec_releases(self, tmp_path):
        """exec() closes the lock files, releasing the ports (documented)."""
        marker = tmp_path / "port"
        script = textwrap.dedent(f"""
            import os, sys, portsafe
            r = portsafe.reserve_port()
            open({str(marker)!r}, "w").write(str(r.port))
            os.execv(sys.executable, [sys.executable, "-c", "import sys; sys.stdin.read()"])
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
        try:
            for _ in range(500):
                if marker.exists() and marker.read_text():
                    break
                proc.wait(0.01) if proc.poll() is not None else None
                threading.Event().wait(0.01)
            port = int(marker.read_text())
            for _ in range(500):  # until the exec has happened and the lock is gone
                try:
                    portsafe.reserve_port(ports=[port]).release()
                    break
                except portsafe.NoFreePortError:
                    threading.Event().wait(0.01)
            else:
                pytest.fail("the port stayed held after exec")
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)

    @pytest.mark.files
    def test_many_reservations_with_low_fd_limit(self):
        """10,000 live reservations in one process with RLIMIT_NOFILE at 1024."""
        script = textwrap.dedent("""
            import os, resource, portsafe
            from portsafe._locking import files as _locks
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
            before = len(os.listdir("/proc/self/fd"))
            held = [portsafe.reserve_port() for _ in range(10000)]
            assert len({r.port for r in held}) == 10000
            print(len(os.listdir("/proc/self/fd")) - before, _locks.table().open_fds)
            for r in held:
                r.release()
        """)
        if not os.path.isdir("/proc/self/fd"):
            pytest.skip("needs /proc")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, check=True)
        extra_fds, lock_files = map(int, result.stdout.split())
        assert lock_files <= 256  # one per shard at most
        assert extra_fds <= lock_files + 3  # and the directory and its announcement


@posix_only
@pytest.mark.files
class TestUsers:
    def test_other_user_is_kept_out_and_can_reserve(self):
        """G1 across users: another uid sees our locks and takes its own (mode 1777/666)."""
        if os.getuid() != 0:
            pytest.skip("needs root to run a child as another user")
        # not under pytest's tmp_path: its parent is private to this user
        shared = Path(tempfile.mkdtemp(prefix="portsafe-users-"))
        shared.chmod(0o1777)
        script = textwrap.dedent("""
            import json, os, sys, portsafe
            port = int(sys.argv[1])
            portsafe.reserve_port().release()  # import everything while still root
            os.setgid(65534)
            os.setuid(65534)
            try:
                portsafe.reserve_port(ports=[port]).release()
                refused = False
            except portsafe.NoFreePortError:
                refused = True
            with portsafe.reserve_port() as own:
                print(json.dumps([refused, own.port]), flush=True)
                sys.stdin.read()
        """)
        env = dict(os.environ, PORTSAFE_LOCK_DIR=str(shared))
        mine = subprocess.Popen([sys.executable, HOLDER], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert mine.stdout is not None
        [port] = json.loads(mine.stdout.readline())
        other = subprocess.Popen([sys.executable, "-c", script, str(port)], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert other.stdout is not None
            refused, own = json.loads(other.stdout.readline())
            assert refused, "another user got a port we hold"
            lister = subprocess.run(
                [sys.executable, "-c", ("import json; from portsafe._locking import files "
                 "as _locks; print(json.dumps(_locks.holders()))")],
                env=env, capture_output=True, text=True, check=True)
            assert [own, other.pid] in json.loads(lister.stdout)
        finally:
            for proc in (mine, other):
                assert proc.stdin is not None
                assert proc.stdout is not None
                proc.stdin.close()
                proc.wait(timeout=30)
                proc.stdout.close()
            shutil.rmtree(shared, ignore_errors=True)
        assert other.returncode == 0


class TestHolders:
    def test_lists_other_process_with_pid(self):
        """holders() names the pid holding each port (portsafe list)."""
        holder = Holder(n=2)
        try:
            found = dict(_locks.holders())
            for port in holder.ports:
                assert found[port] == holder.proc.pid
        finally:
            holder.close()

    def test_lists_own_reservations(self):
        """This process's own reservations are listed too."""
        with portsafe.reserve_port() as r:
            assert (r.port, os.getpid()) in _locks.holders()


@pytest.mark.files
class TestLockDir:
    def test_does_not_follow_tmpdir(self, tmp_path):
        """The lock directory is the same whatever TMPDIR says."""
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        env.pop("PORTSAFE_LOCK_DIR", None)
        out = subprocess.run([sys.executable, "-c",
                              "from portsafe._locking.files import lock_dir; print(lock_dir())"],
                             env=env, capture_output=True, text=True, check=True).stdout
        assert str(tmp_path) not in out
        assert out.strip() == _locks.lock_dir() or "PORTSAFE_LOCK_DIR" in os.environ

    def test_explicit_dir_is_used(self, tmp_path):
        """PORTSAFE_LOCK_DIR moves the lock files."""
        directory = tmp_path / "locks"
        env = {**os.environ, "PORTSAFE_LOCK_DIR": str(directory)}
        subprocess.run([sys.executable, "-c", "import portsafe; portsafe.reserve_port()"],
                       env=env, check=True)
        assert any(name.startswith("ports-") for name in os.listdir(directory))

    def test_changing_lock_dir_mid_process(self, tmp_path, monkeypatch):
        """A new PORTSAFE_LOCK_DIR is used at once; held ports stay in their own directory."""
        first, second = tmp_path / "first", tmp_path / "second"
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(first))
        held = portsafe.reserve_port()
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(second))
        shard = held.port >> 8
        block = range(max(shard << 8, 1024), (shard + 1) << 8)  # same shard as `held`
        with portsafe.reserve_port(ports=block, exclude=[held.port]) as other:
            assert (other.port, os.getpid()) in _locks.holders()  # in the second dir
            assert (held.port, os.getpid()) not in _locks.holders()
            assert _locks.shard_name(shard) in os.listdir(second)
        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(first))
        assert (held.port, os.getpid()) in _locks.holders()
        held.release()
        assert (held.port, os.getpid()) not in _locks.holders()

    @posix_only
    def test_symlinked_dir_refused(self, tmp_path):
        """A symlink where the shared directory should be is refused."""
        target = tmp_path / "elsewhere"
        target.mkdir()
        link = tmp_path / "portsafe-locks"
        link.symlink_to(target)
        with pytest.raises(portsafe.LockDirError, match="symbolic link"):
            _lockdir.open_lockdir(str(link), explicit=False)
        assert os.listdir(target) == []

    @posix_only
    def test_foreign_private_dir_refused(self, tmp_path):
        """A directory of another user that is not sticky is refused."""
        directory = tmp_path / "portsafe-locks"
        directory.mkdir(mode=0o700)
        if os.getuid() == 0:
            os.chown(directory, 12345, 12345)
        else:
            pytest.skip("needs root to make a directory owned by someone else")
        with pytest.raises(portsafe.LockDirError, match="not sticky"):
            _lockdir.open_lockdir(str(directory), explicit=False)

    @posix_only
    def test_created_shared_with_sticky_bit(self, tmp_path):
        """A new directory is made 1777 despite the umask, its files 666."""
        directory = tmp_path / "portsafe-locks"
        old = os.umask(0o077)
        try:
            _lockdir.open_lockdir(str(directory), explicit=False).close()
        finally:
            os.umask(old)
        assert directory.stat().st_mode & 0o7777 == 0o1777
        assert (directory / _locks.shard_name(82)).stat().st_mode & 0o777 == 0o666

    @posix_only
    def test_symlinked_lock_file_skipped(self, tmp_path):
        """A symlink planted as a shard file is not followed: the shard is skipped."""
        victim = tmp_path / "victim"
        victim.write_text("do not touch")
        lockdir = _lockdir.open_lockdir(str(tmp_path / "locks"), explicit=True)
        (tmp_path / "locks" / _locks.shard_name(80)).unlink()
        (tmp_path / "locks" / _locks.shard_name(80)).symlink_to(victim)
        try:
            assert lockdir.open_shard(80) is None
            assert "cannot be opened" in lockdir.poisoned[80]
        finally:
            lockdir.close()
        assert victim.read_text() == "do not touch"

    @posix_only
    def test_hard_linked_lock_file_skipped(self, tmp_path):
        """A shard file with a second hard link is skipped."""
        lockdir = _lockdir.open_lockdir(str(tmp_path / "locks"), explicit=True)
        os.link(tmp_path / "locks" / _locks.shard_name(81), tmp_path / "second-name")
        try:
            assert lockdir.open_shard(81) is None
            assert "hard links" in lockdir.poisoned[81]
        finally:
            lockdir.close()


class TestHotPath:
    def test_no_getpid_per_reservation(self, monkeypatch):
        """The pid comes from a fork hook: a reservation and its release ask no kernel."""
        portsafe.reserve_port().release()

        def boom() -> int:
            raise AssertionError("getpid() called on the hot path")

        monkeypatch.setattr(os, "getpid", boom)
        r = portsafe.reserve_port()
        assert not r.released
        r.release()
        assert r.released

    def test_crowded_home_shard_is_left(self, monkeypatch, tmp_path):
        """A walk that passed more than _CROWDED taken ports starts elsewhere next time."""
        from portsafe._core import probe as _probe
        from portsafe._core import walk as _walk

        monkeypatch.setenv("PORTSAFE_LOCK_DIR", str(tmp_path))
        monkeypatch.setattr(_walk, "_CROWDED", 0)
        block = free_block(2)
        with portsafe.reserve_port(ports=[block[0]]):
            for _ in range(20):
                search = _walk.Search(_ranges.explicit_candidates(block),
                                      _probe.targets(None, socket.AF_INET, socket.SOCK_STREAM),
                                      frozenset(), _locks.table().current())
                [port] = search.take(1)
                search.table.release(port)
                cursor = _walk._cursor
                if search.held:
                    assert cursor is None
                else:
                    assert cursor is not None
                    assert (cursor.where, cursor.key) == (search.directory, port >> 8)


@posix_only
class TestPrivilegedPorts:
    def test_unprivileged_user_is_told_about_privileges(self):
        """Ports below 1024 as a non-root user: the error says privileges, not 'in use'."""
        if os.getuid() != 0:
            pytest.skip("needs root to run a child as uid 65534")
        shared = Path(tempfile.mkdtemp(prefix="portsafe-privileged-"))
        shared.chmod(0o1777)
        script = textwrap.dedent("""
            import os, portsafe
            portsafe.reserve_port().release()  # import everything while still root
            os.setgid(65534)
            os.setuid(65534)
            try:
                portsafe.reserve_port(ports=range(80, 90))
            except portsafe.NoFreePortError as exc:
                print(exc)
        """)
        env = dict(os.environ, PORTSAFE_LOCK_DIR=str(shared))
        try:
            result = subprocess.run([sys.executable, "-c", script], env=env,
                                    capture_output=True, text=True, check=True)
        finally:
            shutil.rmtree(shared, ignore_errors=True)
        if not result.stdout.strip():
            pytest.skip("uid 65534 may bind ports below 1024 here (ip_unprivileged_port_start)")
        assert "10 refused by the OS for lack of privilege" in result.stdout
        assert "0 in use" in result.stdout
        assert "CAP_NET_BIND_SERVICE" in result.stdout

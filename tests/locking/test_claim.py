"""The claim (``portsafe._locking.claim``): every outcome of the lock-file claim, which
leaves nothing behind but a claimed lock; the compiled module's bind-check agrees with it;
the compiled module is used only when it is of this version's contract."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import portsafe
from portsafe._core import probe as _probe
from portsafe._core import walk as _walk
from portsafe._locking import claim as _claim
from portsafe._locking import files as _locks
from portsafe._locking.claim import CLAIMED, HELD, LOCK_ERROR, NO_SOCKET, REFUSED

try:
    from portsafe._locking import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_speedups is None,
                             reason="portsafe._locking._speedups is not built here")
needs_ipv6 = pytest.mark.skipif(not _probe.ipv6_available(), reason="no IPv6 on this host")

#: The environment before any test's private lock directory: the shared one's.
SHARED_ENV = dict(os.environ)
TCP4 = ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", (), ()),)


Runner = Callable[[int, int, tuple[Any, ...]], int]


@pytest.fixture
def run() -> Runner:
    """claim(lock_fd, port, steps): the lock-file claim."""
    return _claim.claim_py


def c_check(port: int, steps: tuple[Any, ...]) -> int:
    """The compiled bind-check of *steps* on *port* (through ``claim_name``, which binds the
    port's name first): its code, 0 when every bind succeeded (the name is let go)."""
    plan = _speedups.compile(steps)
    assert plan is not None, steps
    code: int = _speedups.claim_name(port, plan, 0)
    if code & 15 == CLAIMED:
        os.close(code >> 8)
        return CLAIMED
    return code


@pytest.fixture
def lock_file(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "shard", os.O_RDWR | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


def locked_elsewhere(path: Path, port: int) -> bool:
    """Whether another process finds byte *port* of *path* locked."""
    code = ("import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))\n"
            "except OSError:\n    print('locked')\nelse:\n    print('free')\n")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(port)],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip() == "locked"


@pytest.fixture
def port() -> Iterator[int]:
    """A port reserved for the whole test, in the shared lock directory: the test binds
    it outside any reservation of its own, and no other portsafe user may take it then."""
    with portsafe.reserve_port() as r:
        yield r.port


class TestOutcomes:
    def test_claimed_leaves_the_lock_held_and_the_port_unbound(
            self, run: Runner, lock_file: int, tmp_path: Path, port: int) -> None:
        assert run(lock_file, port, TCP4) == CLAIMED
        assert locked_elsewhere(tmp_path / "shard", port)
        with socket.socket() as server:  # the probe's socket is closed: bindable
            server.bind(("127.0.0.1", port))
        assert _claim.unlock(lock_file, port) == 0
        assert not locked_elsewhere(tmp_path / "shard", port)

    def test_held_elsewhere(self, run: Runner, tmp_path: Path, port: int) -> None:
        path = tmp_path / "shard"
        path.touch()
        holder = subprocess.Popen(
            [sys.executable, "-c", ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
             " fcntl.lockf(fd, fcntl.LOCK_EX, 1, int(sys.argv[2])); print('held', flush=True);"
             " sys.stdin.read()"), str(path), str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"
            fd = os.open(path, os.O_RDWR)
            try:
                assert run(fd, port, TCP4) == HELD
            finally:
                os.close(fd)
        finally:
            holder.communicate("")

    def test_in_use_unlocks(self, run: Runner, lock_file: int, tmp_path: Path) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            port = busy.getsockname()[1]
            assert run(lock_file, port, TCP4) == REFUSED | errno.EADDRINUSE << 8
        assert not locked_elsewhere(tmp_path / "shard", port)

    def test_the_failing_step_is_named(self, run: Runner, lock_file: int) -> None:
        steps = (*TCP4, (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", (), ()))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
            busy.bind(("127.0.0.1", 0))
            port = busy.getsockname()[1]
            assert run(lock_file, port, steps) == REFUSED | 1 << 4 | errno.EADDRINUSE << 8

    def test_an_address_of_no_interface(self, run: Runner, port: int) -> None:
        steps = ((socket.AF_INET, socket.SOCK_STREAM, "192.0.2.1", (), ()),)  # TEST-NET-1
        assert run(-1, port, steps) == REFUSED | errno.EADDRNOTAVAIL << 8

    def test_a_failing_option(self, run: Runner, lock_file: int, tmp_path: Path, port: int) -> None:
        steps = ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", (), ((socket.SOL_SOCKET,
                                                                        99999, 1),)),)
        code = run(lock_file, port, steps)
        assert code & 15 == REFUSED
        assert code >> 8 == errno.ENOPROTOOPT
        assert not locked_elsewhere(tmp_path / "shard", port)

    def test_no_socket(self, run: Runner, lock_file: int, tmp_path: Path, port: int) -> None:
        steps = ((socket.AF_INET, 999, "127.0.0.1", (), ()),)  # no such socket type
        code = run(lock_file, port, steps)
        assert code & 15 == NO_SOCKET
        assert code >> 8 in (errno.EINVAL, errno.EPROTONOSUPPORT)
        assert not locked_elsewhere(tmp_path / "shard", port)

    def test_a_lock_call_that_fails(self, run: Runner, port: int) -> None:
        fd = os.open(os.devnull, os.O_RDONLY)
        os.close(fd)  # a closed descriptor: EBADF
        assert run(fd, port, TCP4) == LOCK_ERROR | errno.EBADF << 8

    def test_no_lock_only_binds(self, run: Runner, port: int) -> None:
        assert run(-1, port, TCP4) == CLAIMED

    @needs_ipv6
    def test_dual_stack_with_its_option_sees_an_ipv4_holder(self, run: Runner) -> None:
        steps = tuple((socket.AF_INET6, kind, "::", (), ((socket.IPPROTO_IPV6,
                                                           socket.IPV6_V6ONLY, 0),))
                      for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM))
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            assert run(-1, busy.getsockname()[1], steps) == REFUSED | errno.EADDRINUSE << 8

    @needs_ipv6
    def test_ipv6_with_flowinfo_and_scope(self, run: Runner, port: int) -> None:
        steps = ((socket.AF_INET6, socket.SOCK_STREAM, "::1", (0, 0), ()),)
        assert run(-1, port, steps) == CLAIMED


@pytest.mark.skipif(not _claim.SPAN_UNLOCK, reason="POSIX record locks")
def test_unlock_over_a_span(lock_file: int, tmp_path: Path) -> None:
    """unlock(fd, port, length) drops this process's locks on those bytes, and only
    those: a byte it holds no lock on is no error."""
    for port in (20000, 20002, 20003, 20005):
        assert _claim.claim_py(lock_file, port, ()) == CLAIMED
    unlock = _claim.unlock_py
    assert unlock(lock_file, 20000, 4) == 0
    assert [locked_elsewhere(tmp_path / "shard", port) for port in range(20000, 20006)] == \
        [False, False, False, False, False, True]
    assert unlock(lock_file, 20005) == 0
    assert not locked_elsewhere(tmp_path / "shard", 20005)


class TestAgreement:
    @pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
    @pytest.mark.parametrize(("family", "address"), [
        (socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::1"),
        (socket.AF_INET6, "::")])
    @pytest.mark.parametrize("reuse", [False, True])
    def test_every_holder_is_seen_alike(self, kind: int, family: int, address: str,
                                        reuse: bool) -> None:
        """The compiled bind-check (Linux) gives the Python claim's answer for the probe of
        every request kind."""
        if family == socket.AF_INET6 and not _probe.ipv6_available():
            pytest.skip("no IPv6 on this host")
        with socket.socket(family, kind) as holder:
            if reuse:
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind((address, 0))
            port = holder.getsockname()[1]
            for request in ((None, socket.AF_INET, 0), (None, socket.AF_UNSPEC, 0),
                            ("", socket.AF_INET, kind), (None, socket.AF_INET6, kind)):
                if request[1] != socket.AF_INET and not _probe.ipv6_available():
                    continue
                steps = _probe.targets(*request).steps
                answers = {_claim.claim_py(-1, port, steps)}
                if _claim.IMPLEMENTATION == "c":
                    answers.add(c_check(port, steps))
                assert len(answers) == 1, (request, answers)


@needs_c
class TestCompiled:
    def test_declines_what_it_does_not_run(self) -> None:
        assert _speedups.compile(((socket.AF_INET6, 1, "fe80::1%lo", (0, 0), ()),)) is None
        assert _speedups.compile(((socket.AF_INET, 1, "localhost", (), ()),)) is None
        assert _speedups.compile(((socket.AF_UNIX, 1, "/tmp/x", (), ()),)) is None
        run, plan = _claim.compile_name_plan(((socket.AF_INET, 1, "localhost", (), ()),))
        assert run is _claim.claim_py
        assert plan[0][2] == "localhost"

    def test_bad_arguments_raise(self) -> None:
        plan = _speedups.compile(TCP4)
        assert plan is not None
        with pytest.raises(TypeError):
            _speedups.claim_name(0, b"short", 0)
        with pytest.raises(ValueError, match="port"):
            _speedups.claim_name(70000, plan, 0)
        with pytest.raises(TypeError):
            _speedups.compile([TCP4[0]])  # type: ignore[arg-type]

    @pytest.mark.names
    def test_in_use_here(self) -> None:
        assert ("python" if os.environ.get("PORTSAFE_PURE_PYTHON")
                                         == "1" else "c") == _claim.IMPLEMENTATION


class TestPurePython:
    def test_the_setting_selects_the_python_version(self) -> None:
        code = "from portsafe._locking import claim as _claim; print(_claim.IMPLEMENTATION)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PORTSAFE_PURE_PYTHON": "1"}, check=True)
        assert done.stdout.strip() == "python"

    def test_a_bad_value_is_an_error_that_says_what_to_do(self) -> None:
        code = "import portsafe; portsafe.reserve_port()"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PORTSAFE_PURE_PYTHON": "maybe"}, check=False)
        assert done.returncode != 0
        assert "PORTSAFE_PURE_PYTHON='maybe'" in done.stderr


@pytest.mark.usefixtures("private_lock_dir")
class TestHotPath:
    """The walk of ``reserve_port`` and ``reserve_ports`` (``_walk.Search.take``) goes on
    from where the last call left off (``_walk.Cursor``) and keeps G5: each candidate is
    claimed at most once per call, and one found not free is counted once."""

    PORTS = range(0)

    @pytest.fixture(autouse=True)
    def block(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Two free ports as the default candidates (PORTSAFE_RANGE): one CandidateSet
        for every call, whose walk goes on from call to call."""
        with portsafe.reserve_ports(2, contiguous=True) as group:
            first = group.ports[0]
        monkeypatch.setattr(self, "PORTS", range(first, first + 2))
        monkeypatch.setenv("PORTSAFE_RANGE", f"{first}-{first + 1}")

    @staticmethod
    def claims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
        """Every port the lock table is asked to claim from now on."""
        table = _locks.table()
        real = table.try_claim
        tried: list[int] = []

        def spy(port: int, where: object, claim: Any) -> int:
            tried.append(port)
            return real(port, where, claim)

        monkeypatch.setattr(table, "try_claim", spy)
        return tried

    def next_candidate(self) -> int:
        for _ in range(2):
            portsafe.reserve_port().release()  # the walk is in progress
        cursor = _walk._cursor
        assert cursor is not None
        assert list(cursor.candidates.shard(cursor.key)) == list(self.PORTS)
        return cursor.ports[cursor.index]

    def test_goes_on_where_the_last_call_left_off(self) -> None:
        expected = self.next_candidate()
        with portsafe.reserve_port() as r:
            assert r.port == expected

    def test_passes_a_busy_candidate_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        busy_port = self.next_candidate()
        tried = self.claims(monkeypatch)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", busy_port))
            with portsafe.reserve_port() as r:
                assert r.port != busy_port
        assert tried == [busy_port, r.port]

    def test_every_candidate_counted_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.next_candidate()
        tried = self.claims(monkeypatch)
        with socket.socket() as one, socket.socket() as two:
            one.bind(("127.0.0.1", self.PORTS[0]))
            two.bind(("127.0.0.1", self.PORTS[1]))
            with pytest.raises(portsafe.NoFreePortError, match="tried 2, 0 held") as caught:
                portsafe.reserve_port()
        assert caught.value.attempts == 2
        assert sorted(tried) == list(self.PORTS)  # each claimed once, in one call

    def test_reserve_ports_claims_each_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.next_candidate()
        tried = self.claims(monkeypatch)
        with portsafe.reserve_ports(2) as group:
            assert sorted(group.ports) == list(self.PORTS)
        assert sorted(tried) == list(self.PORTS)

    def test_reserve_ports_passes_a_busy_candidate_once(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """All or nothing, each candidate claimed once per call."""
        busy_port = self.next_candidate()
        tried = self.claims(monkeypatch)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", busy_port))
            with portsafe.reserve_ports(1) as group:
                assert group.ports[0] != busy_port
            assert tried == [busy_port, group.ports[0]]
            del tried[:]
            with pytest.raises(portsafe.NoFreePortError, match="found only 1") as caught:
                portsafe.reserve_ports(2)
        assert caught.value.attempts == 2
        assert sorted(tried) == list(self.PORTS)
        assert not any(_locks.table().holds(port) for port in self.PORTS)  # none kept


@pytest.mark.names
class TestContract:
    """The C module is used only when it is of this version's contract."""

    @pytest.mark.parametrize("api", [None, 3, 5])
    def test_a_module_of_another_version_is_not_used(self, api: int | None) -> None:
        """A compiled module left from another portsafe version (of another contract: its
        ``API``, 1 before there was one) is passed over whole: the Python version runs,
        nothing is half C, and nothing is called with arguments it does not take."""
        code = ("import sys, types\n"
                "old = types.ModuleType('portsafe._locking._speedups')\n"
                "old.compile = old.claim_name = print\n"
                f"if {api!r} is not None: old.API = {api!r}\n"
                "sys.modules['portsafe._locking._speedups'] = old\n"
                "from portsafe._locking import claim as _claim\n"
                "from portsafe._cli import doctor as _doctor\n"
                "print(_claim.IMPLEMENTATION, _claim.compile_name_plan(())[0] is _claim.claim_py)\n"
                "print(_doctor.check_speedups().detail)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={k: v for k, v in os.environ.items()
                                               if k != "PORTSAFE_PURE_PYTHON"})
        first, said = done.stdout.splitlines()
        assert first.split() == ["python", "True"]
        assert "from another portsafe version" in said
        assert "reinstall portsafe" in said
        assert f"contract {api or 1}, not {_claim._API}" in said  # no API: contract 1

    def test_the_built_module_is_of_this_contract(self) -> None:
        if _speedups is None:
            pytest.skip("the C module is not built here")
        assert _speedups.API == _claim._API

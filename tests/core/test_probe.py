"""The probe (G3): what it binds, the dual-stack shortcut, and its argument checks."""

from __future__ import annotations

import _socket
import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.pure import pure_claim

import portsafe
from portsafe._core import probe as _probe
from portsafe._locking import claim as _claim

needs_ipv6 = pytest.mark.skipif(not _probe.ipv6_available(), reason="no IPv6 on this host")

BOTH = (socket.SOCK_STREAM, socket.SOCK_DGRAM)


def per_address(port: int, kind: int, host: str | None = None) -> int:
    """The probe without the shortcut: 127.0.0.1 (or 0.0.0.0) and ::1 (or ::), each bound."""
    targets = _probe.targets(host, socket.AF_UNSPEC, kind)
    return _probe.is_free(port, tuple(targets))  # a plain tuple: no plan, every target


def shortcut(port: int, kind: int, host: str | None = None) -> int:
    """The probe as reserve_port runs it (one dual-stack bind where that is stricter)."""
    return _probe.is_free(port, _probe.targets(host, socket.AF_UNSPEC, kind))


class Holders:
    """Sockets that hold one port in every way a server or a client might."""

    @staticmethod
    def make(family: int, kind: int, address: str, *, reuse: bool = False,
             listen: bool = False, v6only: bool | None = None,
             port: int = 0) -> socket.socket:
        sock = socket.socket(family, kind)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((address, port))
        if listen:
            sock.listen()
        return sock

    CASES = tuple(
        (kind, family, address, reuse, listen, v6only)
        for kind in BOTH
        for family, addresses in ((socket.AF_INET, ("127.0.0.1", "0.0.0.0", "127.0.0.2")),
                                  (socket.AF_INET6, ("::1", "::")))
        for address in addresses
        for reuse in (False, True)
        for listen in ((False, True) if kind == socket.SOCK_STREAM else (False,))
        for v6only in ((None,) if family == socket.AF_INET else (None, True, False))
    )


@needs_ipv6
class TestDualStackShortcut:
    def test_is_used_for_both_families(self):
        """AF_UNSPEC on loopback or wildcard: one [::] bind per socket type."""
        if not _probe.dual_stack_is_stricter():
            pytest.skip("this kernel's dual-stack bind is not stricter: shortcut off")
        for host in (None, "localhost", ""):
            plan = _probe.targets(host, socket.AF_UNSPEC, 0).plan
            assert [(bind[0], bind[2], bind[4]) for bind in plan] == [
                (socket.AF_INET6, "::", True)] * 2

    def test_not_used_for_one_family_or_a_named_address(self):
        """A single family, or host='127.0.0.1', binds exactly what was asked."""
        for host, family in ((None, socket.AF_INET), (None, socket.AF_INET6),
                             ("127.0.0.1", socket.AF_UNSPEC)):
            plan = _probe.targets(host, family, socket.SOCK_STREAM).plan
            assert not any(bind[4] for bind in plan)

    @pytest.mark.parametrize(("kind", "family", "address", "reuse", "listen", "v6only"),
                             Holders.CASES)
    @pytest.mark.parametrize("host", [None, ""], ids=["loopback", "wildcard"])
    def test_busy_per_address_means_busy_dual(self, host, kind, family, address, reuse,
                                              listen, v6only):
        """Provably at least as strict: wherever a per-address probe says busy, so does
        the dual-stack one, for every kind of holder on this kernel."""
        try:
            holder = Holders.make(family, kind, address, reuse=reuse, listen=listen,
                                  v6only=v6only)
        except OSError as exc:
            pytest.skip(f"cannot bind {address}: {exc}")
        with holder:
            port = holder.getsockname()[1]
            busy = per_address(port, kind, host)
            if host == "" or address != "127.0.0.2":
                assert busy  # the test bites (127.0.0.2 is free for a loopback probe)
            if busy:
                assert shortcut(port, kind, host)

    @pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
    def test_time_wait_is_seen(self, address):
        """A TIME_WAIT left by a closed connection counts as in use, as before."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.create_server((address, 0), family=family) as server:
            port = server.getsockname()[1]
            client = socket.create_connection((address, port))
            conn, _ = server.accept()
            conn.close()  # the server side closes first: its port enters TIME_WAIT
            client.close()
        assert per_address(port, socket.SOCK_STREAM) == errno.EADDRINUSE
        assert shortcut(port, socket.SOCK_STREAM) == errno.EADDRINUSE

    def test_off_when_the_kernel_check_fails(self, monkeypatch):
        """Where the one-time check fails, every address is bound, as before."""
        monkeypatch.setattr(_probe, "_dual", None)
        monkeypatch.setattr(_probe, "_dual_conflicts", lambda *args: False)
        monkeypatch.setattr(_probe, "_cache", {})
        plan = _probe.targets(None, socket.AF_UNSPEC, 0).plan
        assert [bind[2] for bind in plan] == ["127.0.0.1", "127.0.0.1", "::1", "::1"]
        assert not any(bind[4] for bind in plan)

    def test_reservation_still_says_loopback(self):
        """The shortcut changes what is bound, not what the reservation reports."""
        with portsafe.reserve_port(family=socket.AF_UNSPEC, socktype=0) as r:
            assert r.host == "127.0.0.1"
            for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                for kind in BOTH:
                    with socket.socket(family, kind) as sock:
                        sock.bind((address, r.port))


V6ONLY_OFF = ("setsockopt", socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


class Recorded:
    """A real socket that writes down every call the probe makes on it."""

    def __init__(self, calls: list[tuple[Any, ...]], family: int, kind: int) -> None:
        self._sock = _socket.socket(family, kind)
        self._calls = calls
        calls.append(("socket", family, kind))

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self._calls.append(("setsockopt", level, name, value))
        self._sock.setsockopt(level, name, value)

    def bind(self, address: tuple[Any, ...]) -> None:
        self._calls.append(("bind", address))
        self._sock.bind(address)

    def close(self) -> None:
        self._calls.append(("close",))
        self._sock.close()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every socket call of the probe (the proof's included), from a fresh proof on."""
    made: list[tuple[Any, ...]] = []
    pure_claim(monkeypatch)  # the Python claim, whose sockets can be recorded
    monkeypatch.setattr(_claim, "_new_socket",
                        lambda family, kind: Recorded(made, family, kind))
    monkeypatch.setattr(_probe, "_dual", None)
    return made


def options_per_bind(calls: list[tuple[Any, ...]]) -> list[tuple[int, bool]]:
    """(socket type, IPV6_V6ONLY set to 0 first) per [::] bind, checking each bind is
    socket + (setsockopt) + bind + close and nothing else."""
    found: list[tuple[int, bool]] = []
    index = 0
    while index < len(calls):
        head = calls[index]
        assert head[0] == "socket", calls
        option = calls[index + 1] == V6ONLY_OFF
        bind, close = calls[index + 1 + option:index + 3 + option]
        assert bind[0] == "bind", calls
        assert close == ("close",), calls
        if head[1] == socket.AF_INET6 and bind[1][0] == "::":
            found.append((head[2], option))
        index += 3 + option
    return found


@needs_ipv6
class TestDualStackOption:
    """Every dual-stack bind sets IPV6_V6ONLY to 0 itself, even where new sockets start
    dual-stack: net.ipv6.bindv6only can change under a running process, and a v6-only
    [::] socket would miss every IPv4 holder."""

    def test_set_on_every_dual_bind(self, calls: list[tuple[Any, ...]]) -> None:
        if not _probe.dual_stack_is_stricter():
            pytest.skip("this kernel's dual-stack bind is not stricter: shortcut off")
        proof = options_per_bind(calls)
        assert len(proof) == 8  # two families x two types x (plain, SO_REUSEADDR)
        assert all(option for _, option in proof)  # the proof binds as the plan does
        with portsafe.reserve_port(family=socket.AF_UNSPEC, socktype=0) as r:
            del calls[:]
            assert _probe.is_free(r.port, _probe.targets(None, socket.AF_UNSPEC, 0)) == 0
        assert options_per_bind(calls) == [(kind, True) for kind in BOTH]

    def test_a_socket_that_comes_out_v6only_is_still_caught(
            self, monkeypatch: pytest.MonkeyPatch, calls: list[tuple[Any, ...]]) -> None:
        """As if bindv6only were set to 1 after the proof: every new AF_INET6 socket is
        v6-only, and the probe still sees IPv4 holders."""
        assert _probe.dual_stack_is_stricter() in (True, False)  # proven under the default

        def v6only(family: int, kind: int) -> Recorded:
            made = Recorded(calls, family, kind)
            if family == socket.AF_INET6:  # what bindv6only=1 gives every new socket
                made._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            return made

        pure_claim(monkeypatch)
        monkeypatch.setattr(_claim, "_new_socket", v6only)
        for kind in BOTH:
            with Holders.make(socket.AF_INET, kind, "127.0.0.1") as holder:
                port = holder.getsockname()[1]
                assert shortcut(port, kind) == errno.EADDRINUSE

    @pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("unshare") is None
                        or shutil.which("ip") is None or os.environ.get("PORTSAFE_IN_NETNS")
                        == "1", reason="needs Linux network namespaces (unshare, ip)")
    def test_bindv6only_1_in_a_network_namespace(self, tmp_path: Path) -> None:
        """A private network namespace (loopback only) with net.ipv6.bindv6only=1: the
        plan sets the option, and this file's dual-stack tests (56 kinds of holder,
        TIME_WAIT) pass there too."""
        here = Path(__file__)
        code = (
            "import socket\n"
            "from portsafe._core import probe as _probe\n"
            "assert _probe.dual_stack_is_stricter()\n"
            "probes = _probe.targets(None, socket.AF_UNSPEC, 0)\n"
            "assert [s[4] for s in probes.steps] == [((socket.IPPROTO_IPV6,"
            " socket.IPV6_V6ONLY, 0),)] * 2\n"
            "print('planned')\n"
        )
        env = {**os.environ, "PORTSAFE_IN_NETNS": "1", "PORTSAFE_LOCK_DIR": str(tmp_path),
               "PYTHONPATH": os.pathsep.join(
                   [str(Path(portsafe.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
        script = ("ip link set lo up && sysctl -qw net.ipv6.bindv6only=1 && "
                  '[ "$(cat /proc/sys/net/ipv6/bindv6only)" = 1 ] || exit 77; '
                  '"$0" -c "$1" && exec "$0" -m pytest -q -p no:cacheprovider "$2" '
                  '-k TestDualStack')
        try:
            done = subprocess.run(["unshare", "-n", "sh", "-c", script, sys.executable, code,
                                   str(here)], env=env, capture_output=True, text=True,
                                  timeout=120, check=False)
        except OSError as exc:
            pytest.skip(f"cannot run unshare: {exc}")
        if done.returncode == 77 or "unshare failed" in done.stderr or (
                done.returncode != 0 and "Operation not permitted" in done.stderr):
            pytest.skip(f"no private network namespace here: {done.stderr.strip()[:200]}")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "planned" in done.stdout
        assert " passed" in done.stdout, done.stdout
        assert " failed" not in done.stdout, done.stdout


class TestArguments:
    @pytest.mark.parametrize(("first", "then", "name"), [
        (socket.AF_INET, 2.0, "family"), (socket.AF_UNSPEC, False, "family"),
        (socket.AF_INET, True, "family")])
    def test_cache_never_skips_the_family_check(self, first, then, name):
        """2.0 == AF_INET and False == AF_UNSPEC hash alike: still a TypeError, every call."""
        _probe.targets(None, first, socket.SOCK_STREAM)
        with pytest.raises(TypeError, match=f"{name} must be an int"):
            _probe.targets(None, then, socket.SOCK_STREAM)
        with pytest.raises(TypeError, match=f"{name} must be an int"):
            portsafe.reserve_port(family=then)

    def test_cache_never_skips_the_socktype_check(self):
        """socktype=1.0 after SOCK_STREAM is refused too."""
        portsafe.reserve_port().release()
        with pytest.raises(TypeError, match="socktype must be an int"):
            portsafe.reserve_port(socktype=1.0)

    def test_int_enums_and_plain_ints_are_fine(self):
        """socket.AF_INET and 2 are the same request."""
        assert _probe.targets(None, 2, 1) == _probe.targets(None, socket.AF_INET,
                                                             socket.SOCK_STREAM)

    @pytest.mark.parametrize("host", ["a" * 300, "x." + "b" * 64, "\udcff"])
    def test_malformed_host_name(self, host):
        """A name no resolver can take gets InvalidSettingError, not UnicodeError."""
        with pytest.raises(portsafe.InvalidSettingError, match="not a valid host name"):
            portsafe.reserve_port(host=host)

    def test_long_host_name_is_shortened_in_the_message(self):
        """The message quotes the start of a long name, not all 300 characters."""
        with pytest.raises(portsafe.InvalidSettingError) as caught:
            _probe.targets("a" * 300, socket.AF_INET, socket.SOCK_STREAM)
        assert len(str(caught.value)) < 250

    @pytest.mark.parametrize("name", ["host", "family", "socktype"])
    def test_huge_int_argument_gets_the_documented_error(self, name):
        """10**5000 cannot be printed (int_max_str_digits): the message must still be made."""
        error = TypeError if name == "host" else portsafe.InvalidSettingError
        with pytest.raises(error, match="an int of 16610 bits"):
            portsafe.reserve_port(**{name: 10**5000})

    def test_huge_port_gets_the_documented_error(self):
        """ports=[10**5000] is out of range, said without printing the number."""
        with pytest.raises(portsafe.InvalidSettingError, match=r"bits> is outside 1\.\.65535"):
            portsafe.reserve_port(ports=[10**5000])

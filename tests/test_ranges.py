"""Port ranges per OS, settings parsing and the candidate order (G2)."""

from __future__ import annotations

import random

import pytest

import portsafe
from portsafe import _locks, _ranges


class TestParsers:
    def test_port_list(self):
        """Commas, spaces, single ports and ranges."""
        assert _ranges.parse_port_list("8080, 9000-9002 20000") == [
            (8080, 8080), (9000, 9002), (20000, 20000)]
        assert _ranges.parse_port_list("") == []

    @pytest.mark.parametrize("text", ["x", "1-", "5-3", "0", "65536", "80-70000"])
    def test_port_list_errors_name_the_setting(self, text):
        """Errors name the setting and the bad item."""
        with pytest.raises(portsafe.InvalidSettingError, match="PORTSAFE_EXCLUDE"):
            _ranges.parse_port_list(text, what="PORTSAFE_EXCLUDE")

    def test_linux_range(self):
        """/proc/sys/net/ipv4/ip_local_port_range is two tab-separated numbers."""
        assert _ranges.parse_linux_port_range("32768\t60999\n") == (32768, 60999)

    def test_macos_sysctl(self):
        """sysctl -n prints first and last on two lines."""
        assert _ranges.parse_sysctl_range("49152\n65535\n") == (49152, 65535)

    def test_windows_netsh(self):
        """netsh gives a start port and a count."""
        text = ("\r\nProtocol tcp Dynamic Port Range\r\n---------------------------------\r\n"
                "Start Port      : 49152\r\nNumber of Ports : 16384\r\n")
        assert _ranges.parse_netsh_dynamic_ports(text) == (49152, 65535)

    def test_windows_netsh_other_language(self):
        """Only the numbers matter, not the (localised) labels."""
        text = "Port de début : 10000\nNombre de ports : 1000\n"
        assert _ranges.parse_netsh_dynamic_ports(text) == (10000, 10999)

    def test_services(self):
        """Port numbers of /etc/services, comments and aliases ignored."""
        text = "# comment\nhttp\t80/tcp\twww # WorldWideWeb\nhttp 80/udp\nbad line\nx 7x/tcp\n"
        assert _ranges.parse_services(text) == frozenset({80})


class TestQueryByPlatform:
    def test_unreadable_os_setting_falls_back_to_default(self, monkeypatch):
        """When the OS cannot be asked, each platform's documented default is used."""
        monkeypatch.setattr(_ranges, "_read", lambda path: None)
        monkeypatch.setattr(_ranges, "_run", lambda args: None)
        assert _ranges._query_ephemeral("linux")[0] == (32768, 60999)
        assert _ranges._query_ephemeral("darwin")[0] == (49152, 65535)
        assert _ranges._query_ephemeral("win32")[0] == (49152, 65535)
        assert "default" in _ranges._query_ephemeral("darwin")[1]

    def test_macos_and_windows_ask_their_tools(self, monkeypatch):
        """macOS asks sysctl, Windows asks netsh."""
        calls = []

        def run(args):
            calls.append(args[0])
            return "10000\n20000\n" if args[0] == "sysctl" else "Start : 1500\nCount : 500\n"

        monkeypatch.setattr(_ranges, "_run", run)
        assert _ranges._query_ephemeral("darwin") == (
            (10000, 20000), "sysctl net.inet.ip.portrange.first net.inet.ip.portrange.last")
        assert _ranges._query_ephemeral("win32")[0] == (1500, 1999)
        assert calls == ["sysctl", "netsh"]

    def test_garbage_output_falls_back(self, monkeypatch):
        """Unparseable tool output is never a silent wrong range."""
        monkeypatch.setattr(_ranges, "_run", lambda args: "garbage")
        assert _ranges._query_ephemeral("darwin") == (
            (49152, 65535), "default for darwin (could not read the OS setting)")

    def test_flock_layouts(self):
        """F_GETLK struct layouts per platform (l_start then l_len in each)."""
        assert _locks.flock_layout("linux") == ("hhqqi4x", 0, 2, 4)
        assert _locks.flock_layout("darwin") == ("qqihh", 3, 0, 2)
        assert _locks.flock_layout("freebsd14") == ("qqihhi", 3, 0, 2)


class TestCandidates:
    def test_default_excludes_ephemeral_reserved_and_dev_ports(self):
        """G2: no ephemeral, reserved, services or dev-server port is a default candidate."""
        low, high = portsafe.ephemeral_port_range()
        reserved = _ranges._expand(_ranges._reserved_with_source()[0])
        ports = {p for shard in _ranges.default_candidates().shards.values() for p in shard}
        assert ports
        assert not any(low <= p <= high for p in ports)
        assert not ports & reserved
        assert not ports & _ranges.COMMON_DEV_PORTS
        assert not ports & _ranges._services_ports()
        assert min(ports) >= 1024

    def test_reserved_ports_are_skipped(self, monkeypatch):
        """ip_local_reserved_ports is honoured."""
        monkeypatch.setitem(_ranges._cache, "reserved", ([(20000, 20999)], "test"))
        monkeypatch.delenv("PORTSAFE_RANGE", raising=False)
        candidates = _ranges._build_default_candidates()
        ports = {p for shard in candidates.shards.values() for p in shard}
        assert not any(20000 <= p <= 20999 for p in ports)

    def test_permutation_visits_each_once(self):
        """The order is a permutation: every candidate once, none twice."""
        candidates = _ranges.CandidateSet(range(1000, 3000), "test")
        rng = random.Random(1)
        order = list(candidates.order(rng, home=None))
        assert sorted(order) == list(range(1000, 3000))

    def test_order_is_random_not_first_fit(self):
        """Two scanners do not start from the same port."""
        candidates = _ranges.CandidateSet(range(1000, 30000), "test")
        firsts = {next(candidates.order(random.Random(seed), None)) for seed in range(20)}
        assert len(firsts) > 15

    def test_order_starts_in_home_shard(self):
        """The process keeps using the lock file it has open."""
        candidates = _ranges.CandidateSet(range(1000, 30000), "test")
        order = list(candidates.order(random.Random(2), home=50))
        first_shard = {p >> _ranges.SHARD_BITS for p in order[:256]}
        assert first_shard == {50}

    def test_describe_ranges_is_json_ready(self):
        """describe_ranges() feeds `portsafe ranges --json`."""
        import json

        info = _ranges.describe_ranges()
        assert json.loads(json.dumps(info)) == info
        assert info["ephemeral"]["range"] == list(portsafe.ephemeral_port_range())

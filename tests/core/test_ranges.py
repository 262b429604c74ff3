"""Port ranges per OS, settings parsing and the candidate order (G2)."""

from __future__ import annotations

import random

import pytest

import portsafe
from portsafe._core import ranges as _ranges
from portsafe._locking import recordlock as _locks
from portsafe._locking.fileformat import SHARD_BITS


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
        first_shard = {p >> SHARD_BITS for p in order[:256]}
        assert first_shard == {50}

    def test_describe_ranges_is_json_ready(self):
        """describe_ranges() feeds `portsafe ranges --json`."""
        import json

        info = _ranges.describe_ranges()
        assert json.loads(json.dumps(info)) == info
        assert info["ephemeral"]["range"] == list(portsafe.ephemeral_port_range())


class TestLazyCandidates:
    def test_first_walk_builds_one_shard(self, monkeypatch):
        """The first reservation builds the shard it walks, not all ~36,000 candidates."""
        monkeypatch.setattr(_ranges, "_candidates", {})
        monkeypatch.delenv("PORTSAFE_RANGE", raising=False)
        candidates = _ranges.default_candidates()
        next(candidates.order(random.Random(3), home=None))
        assert len(candidates._built) == 1

    def test_same_ports_as_eager_expansion(self, monkeypatch):
        """Lazy shards hold exactly the ports the eager set arithmetic gives (G2)."""
        monkeypatch.setitem(_ranges._cache, "reserved", ([(20000, 20999), (40000, 40000)],
                                                         "test"))
        monkeypatch.setenv("PORTSAFE_EXCLUDE", "25000-25100,3000")
        monkeypatch.delenv("PORTSAFE_RANGE", raising=False)
        low, high = portsafe.ephemeral_port_range()
        expected = (set(range(1024, 65536)) - set(range(low, high + 1))
                    - set(range(20000, 21000)) - {40000} - set(range(25000, 25101))
                    - _ranges._services_ports() - _ranges.COMMON_DEV_PORTS - {3000})
        candidates = _ranges._build_default_candidates()
        walked = list(candidates.order(random.Random(4), home=None))
        assert len(walked) == len(set(walked)) == candidates.count == len(expected)
        assert set(walked) == expected
        assert all(port in candidates for port in expected)
        assert 20500 not in candidates
        assert 3000 not in candidates

    def test_overlapping_range_setting_walks_each_port_once(self, monkeypatch):
        """G5: PORTSAFE_RANGE items that overlap or share a shard give each port once."""
        monkeypatch.setenv("PORTSAFE_RANGE", "20000-20300,20100-20400,20401,20450-20460")
        candidates = _ranges._build_default_candidates()
        walked = list(candidates.order(random.Random(5), home=20100 >> SHARD_BITS))
        expected = (set(range(20000, 20402)) | set(range(20450, 20461))) \
            - _ranges._services_ports() - _ranges.COMMON_DEV_PORTS
        assert sorted(walked) == sorted(expected)

    def test_excluded_ports_are_not_yielded(self):
        """The per-call exclude set is honoured by the lazy walk."""
        candidates = _ranges.CandidateSet(range(1000, 1600), "test")
        walked = list(candidates.order(random.Random(6), None, frozenset(range(1000, 1500))))
        assert sorted(walked) == list(range(1500, 1600))

    def test_walk_matches_order(self):
        """walk() gives one shard's permutation for callers that loop themselves."""
        candidates = _ranges.CandidateSet(range(1024, 1280), "test")
        items, start, stride = candidates.walk(random.Random(7), 4)
        visited = [items[(start + i * stride) % len(items)] for i in range(len(items))]
        assert sorted(visited) == list(range(1024, 1280))
        assert list(candidates.rest(random.Random(7), 4)) == []


class TestExplicitCache:
    def test_same_range_is_built_once(self):
        """ports=range(...) is validated and built once, then looked up."""
        first = _ranges.explicit_candidates(range(30000, 30300))
        assert _ranges.explicit_candidates(range(30000, 30300)) is first
        assert first.count == 300

    def test_other_iterables_by_their_set(self):
        """A list, a tuple and a generator of the same ports share one entry."""
        first = _ranges.explicit_candidates([20001, 20002, 20003])
        assert _ranges.explicit_candidates((20003, 20002, 20001)) is first
        assert _ranges.explicit_candidates(p for p in (20001, 20002, 20003)) is first

    @pytest.mark.parametrize("bad", [[20001.0], [True], ["20001"], [[20001]]])
    def test_cache_never_skips_the_type_check(self, bad):
        """8080.0 and True equal 8080 and 1: a cached entry must not let them through."""
        _ranges.explicit_candidates([20001])
        _ranges.explicit_candidates([1])
        with pytest.raises(TypeError, match="must contain ints"):
            _ranges.explicit_candidates(bad)

    def test_env_exclude_is_part_of_the_key(self, monkeypatch):
        """Changing PORTSAFE_EXCLUDE mid-process applies to a cached ports= set."""
        assert _ranges.explicit_candidates(range(30000, 30010)).count == 10
        monkeypatch.setenv("PORTSAFE_EXCLUDE", "30000-30004")
        assert _ranges.explicit_candidates(range(30000, 30010)).count == 5

    def test_cache_is_bounded(self):
        """Ever-new sets do not grow memory without end."""
        for start in range(2000, 2000 + 3 * _ranges._EXPLICIT_MAX):
            _ranges.explicit_candidates([start])
        assert len(_ranges._explicit) <= _ranges._EXPLICIT_MAX

    @pytest.mark.parametrize(("ports", "match"), [
        (range(10), "outside 1..65535"), (range(65530, 65540), "outside 1..65535"),
        (range(5, 5), "ports is empty")])
    def test_ranges_are_still_validated(self, ports, match):
        """A range is checked once (its ends), and an empty one is refused."""
        with pytest.raises(portsafe.InvalidSettingError, match=match):
            _ranges.explicit_candidates(ports)

    def test_stepped_range(self):
        """A range with a step gives exactly its members."""
        candidates = _ranges.explicit_candidates(range(30000, 30100, 7))
        assert sorted(candidates.order(random.Random(8), None)) == list(range(30000, 30100, 7))

"""Which port numbers portsafe may hand out, and in what order it tries them.

The OS is asked at run time, never a frozen table: the ephemeral range the kernel uses
for ``bind(0)`` and ``connect()`` (G2 keeps us out of it), the ports an administrator
reserved, and the services database. Everything is read on first use and cached; the
parsers are plain functions so that the macOS and Windows paths are unit-tested on Linux.
"""

from __future__ import annotations

import math
import os
import sys

from portsafe._errors import InvalidSettingError
from portsafe._locks import SHARD_BITS
from portsafe._settings import (
    EXCLUDE,
    RANGE,
    check_port,
    exclude_ranges,
    getenv,
    lock_dir,
    parse_port_list,
    range_ranges,
)

TYPE_CHECKING = False  # typing is not imported at run time: importing portsafe stays cheap
if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Iterator

__all__ = [
    "COMMON_DEV_PORTS",
    "SHARD_BITS",
    "CandidateSet",
    "default_candidates",
    "describe_ranges",
    "ephemeral_port_range",
    "getenv",
    "parse_port_list",
]

#: Ports of development servers that are commonly running on a developer's machine (or
#: started later in the same test run) without being listed in /etc/services. Skipped by
#: default so that a reserved port never shadows them; pass ``ports=`` to get them anyway.
COMMON_DEV_PORTS: frozenset[int] = frozenset({
    1433,   # SQL Server
    1521,   # Oracle
    2181,   # ZooKeeper
    2375, 2376,  # Docker daemon
    3000, 3001,  # Node / Rails / Grafana dev servers
    3306,   # MySQL
    4000,   # Jekyll, Phoenix
    4200,   # Angular
    4317, 4318,  # OpenTelemetry collector
    4443,
    5000, 5001,  # Flask
    5173, 5174,  # Vite
    5432,   # PostgreSQL
    5601,   # Kibana
    5672,   # RabbitMQ
    5900,   # VNC
    6006,   # TensorBoard
    6379,   # Redis
    6443,   # Kubernetes API
    7000, 7001,  # Cassandra
    8000, 8008, 8080, 8081, 8088, 8443, 8888,  # HTTP dev servers, Jupyter
    8200,   # Vault
    8500,   # Consul
    9000, 9001,  # PHP-FPM, MinIO
    9090,   # Prometheus
    9092,   # Kafka
    9200, 9300,  # Elasticsearch
    9229,   # Node inspector
    11211,  # memcached
    15672,  # RabbitMQ management
    27017,  # MongoDB
})

#: Below this many candidates outside the ephemeral range, fall back to using it (G5).
MIN_CANDIDATES = 1000

_DEFAULT_EPHEMERAL = {"linux": (32768, 60999), "darwin": (49152, 65535), "win32": (49152, 65535)}
_LINUX_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_LINUX_RESERVED = "/proc/sys/net/ipv4/ip_local_reserved_ports"


# -- parsers (pure; unit-tested for every OS) ------------------------------------------


def parse_linux_port_range(text: str) -> tuple[int, int]:
    """Parse ``/proc/sys/net/ipv4/ip_local_port_range`` (``"32768\\t60999"``)."""
    low, high = (int(field) for field in text.split()[:2])
    return low, high


def parse_sysctl_range(text: str) -> tuple[int, int]:
    """Parse ``sysctl -n net.inet.ip.portrange.first net.inet.ip.portrange.last`` (BSDs)."""
    low, high = (int(field) for field in text.split()[:2])
    return low, high


def parse_netsh_dynamic_ports(text: str) -> tuple[int, int]:
    """Parse ``netsh int ipv4 show dynamicport tcp`` (Windows).

    The output names a start port and a count, in the system's language; the two numbers
    are what matter, in that order.
    """
    numbers = [int(word) for line in text.splitlines() if ":" in line
               for word in line.rsplit(":", 1)[1].split() if word.isdigit()]
    start, count = numbers[0], numbers[1]
    return start, start + count - 1


def parse_services(text: str) -> frozenset[int]:
    """Port numbers named in a services database (``/etc/services`` format)."""
    ports: set[int] = set()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            number = fields[1].partition("/")[0]
            if number.isdigit():
                ports.add(int(number))
    return frozenset(ports)


# -- reading the OS (cached) -----------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def _run(args: list[str]) -> str | None:
    import subprocess  # only on macOS/Windows, and only once: keep import cheap

    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=5,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _platform() -> str:
    return "linux" if sys.platform.startswith("linux") else sys.platform


_cache: dict[str, object] = {}
# Default candidate sets by (PORTSAFE_RANGE, PORTSAFE_EXCLUDE) as found in the environment.
_candidates: dict[tuple[object, object], CandidateSet] = {}


def _ephemeral_with_source() -> tuple[tuple[int, int], str]:
    cached = _cache.get("ephemeral")
    if cached is None:
        cached = _cache["ephemeral"] = _query_ephemeral(_platform())
    return cached  # type: ignore[return-value]


def _query_ephemeral(platform: str) -> tuple[tuple[int, int], str]:
    default = _DEFAULT_EPHEMERAL.get(platform, (49152, 65535))
    try:
        if platform == "linux":
            text = _read(_LINUX_RANGE)
            if text:
                return parse_linux_port_range(text), _LINUX_RANGE
        elif platform == "win32":
            text = _run(["netsh", "int", "ipv4", "show", "dynamicport", "tcp"])
            if text:
                return parse_netsh_dynamic_ports(text), "netsh int ipv4 show dynamicport tcp"
        else:
            names = ["net.inet.ip.portrange.first", "net.inet.ip.portrange.last"]
            text = _run(["sysctl", "-n", *names])
            if text:
                return parse_sysctl_range(text), "sysctl " + " ".join(names)
    except (ValueError, IndexError):
        pass  # unreadable output: the documented default below is the fallback
    return default, f"default for {platform} (could not read the OS setting)"


def ephemeral_port_range() -> tuple[int, int]:
    """The inclusive range the OS picks from for ``bind(0)`` and outgoing connections.

    Read from ``/proc/sys/net/ipv4/ip_local_port_range`` on Linux, sysctl
    ``net.inet.ip.portrange.first/last`` on macOS and BSDs, ``netsh`` on Windows;
    where that fails, the OS's documented default. Cached for the life of the process.

    Example:
        >>> import portsafe
        >>> low, high = portsafe.ephemeral_port_range()
        >>> 1 <= low <= high <= 65535
        True
    """
    return _ephemeral_with_source()[0]


def _reserved_with_source() -> tuple[list[tuple[int, int]], str]:
    cached = _cache.get("reserved")
    if cached is None:
        text = _read(_LINUX_RESERVED) if _platform() == "linux" else None
        try:
            cached = (parse_port_list(text or "", what=_LINUX_RESERVED),
                      _LINUX_RESERVED if text is not None else "none on this OS")
        except InvalidSettingError:
            cached = ([], f"{_LINUX_RESERVED} (unreadable)")
        _cache["reserved"] = cached
    return cached  # type: ignore[return-value]


def _services_file() -> str:
    if _platform() == "win32":
        root = os.environ.get("SYSTEMROOT", r"C:\Windows")
        return os.path.join(root, "System32", "drivers", "etc", "services")
    return "/etc/services"


def _services_ports() -> frozenset[int]:
    cached = _cache.get("services")
    if cached is None:
        cached = _cache["services"] = parse_services(_read(_services_file()) or "")
    return cached  # type: ignore[return-value]


def clear_caches() -> None:
    """Forget what was read from the OS and the environment (for tests)."""
    _cache.clear()
    _candidates.clear()


# -- the candidate set -----------------------------------------------------------------


class CandidateSet:
    """Ports to try, grouped by lock shard, with where they came from.

    ``shards`` maps ``port >> SHARD_BITS`` to that shard's candidate ports.
    """

    __slots__ = ("_keys", "_strides", "count", "description", "fallback", "shards")

    def __init__(self, ports: Iterable[int], description: str, fallback: str = "") -> None:
        shards: dict[int, list[int]] = {}
        count = 0
        for port in sorted(set(ports)):
            shards.setdefault(port >> SHARD_BITS, []).append(port)
            count += 1
        self.shards = shards
        self._keys = list(shards)
        self._strides: dict[int, list[int]] = {}
        self.count = count
        self.description = description
        self.fallback = fallback

    def order(self, rng: random.Random, home: int | None,
              excluded: frozenset[int] = frozenset()) -> Iterator[int]:
        """Every candidate not *excluded* once, in random order, shard *home* first.

        Random (two processes scanning from the same start would collide), but shard by
        shard, so a process keeps using the lock file it already has open. Each shard is
        walked from a random start with a random stride coprime to its size: a full,
        repetition-free permutation that costs two random numbers. (One flat generator:
        this is the hot path of every reservation.)
        """
        random_ = rng.random
        shards = self.shards
        for key in self._shard_order(random_, home):
            items = shards[key]
            count = len(items)
            strides = self._strides.get(count) or self._coprimes(count)
            index = int(random_() * count)
            stride = strides[int(random_() * len(strides))]
            for _ in range(count):
                port = items[index]
                if port not in excluded:
                    yield port
                index = (index + stride) % count

    def _shard_order(self, random_: Callable[[], float], home: int | None) -> Iterator[int]:
        if home in self.shards:
            yield home
        keys = self._keys
        total = len(keys)
        strides = self._strides.get(total) or self._coprimes(total)
        index = int(random_() * total)
        stride = strides[int(random_() * len(strides))]
        for _ in range(total):
            if keys[index] != home:
                yield keys[index]
            index = (index + stride) % total

    def _coprimes(self, count: int) -> list[int]:
        made = self._strides[count] = [s for s in range(1, max(count, 2))
                                       if math.gcd(s, count) == 1]
        return made


def _describe(ranges: list[tuple[int, int]]) -> str:
    return ",".join(f"{low}-{high}" if low != high else str(low) for low, high in ranges)


def _expand(ranges: Iterable[tuple[int, int]]) -> set[int]:
    ports: set[int] = set()
    for low, high in ranges:
        ports.update(range(low, high + 1))
    return ports


def env_excluded() -> frozenset[int]:
    """Ports excluded by ``PORTSAFE_EXCLUDE`` (cached per value of the variable)."""
    text = getenv(EXCLUDE)
    key = "exclude:" + text
    cached = _cache.get(key)
    if cached is None:
        cached = _cache[key] = frozenset(_expand(exclude_ranges()))
    return cached  # type: ignore[return-value]


def default_candidates() -> CandidateSet:
    """The candidates when no ``ports=`` is given (cached per environment settings).

    ``PORTSAFE_RANGE`` (default 1024-65535), less the ephemeral range and the reserved
    ports (unless ``PORTSAFE_RANGE`` names them: setting it counts as asking), the
    services database, :data:`COMMON_DEV_PORTS` and ``PORTSAFE_EXCLUDE``. When fewer than
    :data:`MIN_CANDIDATES` remain because the ephemeral range covers nearly everything,
    the ephemeral range is used too and ``fallback`` says so (G5).
    """
    data = getattr(os.environ, "_data", None)
    if type(data) is dict and os.name == "posix":  # the fast path of _getenv, inlined
        key = (data.get(b"PORTSAFE_RANGE"), data.get(b"PORTSAFE_EXCLUDE"))
    else:
        key = (getenv(RANGE), getenv(EXCLUDE))
    cached = _candidates.get(key)
    if cached is None:
        cached = _candidates[key] = _build_default_candidates()
    return cached


def _build_default_candidates() -> CandidateSet:
    configured = range_ranges()
    skip = _services_ports() | COMMON_DEV_PORTS | env_excluded()
    if configured is not None:
        ports = _expand(configured) - skip
        return CandidateSet(ports, f"PORTSAFE_RANGE={_describe(configured)}")
    (low, high), _ = _ephemeral_with_source()
    reserved = _expand(_reserved_with_source()[0])
    everything = set(range(1024, 65536)) - skip - reserved
    outside = {port for port in everything if not low <= port <= high}
    if len(outside) >= MIN_CANDIDATES:
        return CandidateSet(outside, f"1024-65535 outside the ephemeral range {low}-{high}")
    fallback = (
        f"the ephemeral range {low}-{high} leaves only {len(outside)} ports outside it; "
        f"portsafe also picks inside it, so the kernel may hand one of its ports to an "
        f"outgoing connection before your server binds it. Narrow the ephemeral range "
        f"(sysctl net.ipv4.ip_local_port_range) or set PORTSAFE_RANGE"
    )
    return CandidateSet(everything, "1024-65535 (ephemeral range included)", fallback)


def explicit_candidates(ports: Iterable[int]) -> CandidateSet:
    """Candidates from an explicit ``ports=`` argument, less ``PORTSAFE_EXCLUDE``."""
    if isinstance(ports, (str, bytes)) or not hasattr(ports, "__iter__"):
        raise TypeError(f"ports must be an iterable of ints (e.g. a range), not {ports!r}")
    chosen: set[int] = set()
    for port in ports:
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"ports must contain ints, not {port!r}")
        chosen.add(check_port(port, "ports"))
    if not chosen:
        raise InvalidSettingError("ports is empty: give at least one port, e.g. "
                                  "ports=range(20000, 20100)")
    ranges = _collapse(chosen)
    return CandidateSet(chosen - env_excluded(), f"ports={_describe(ranges)}")


def _collapse(ports: Iterable[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for port in sorted(ports):
        if ranges and ranges[-1][1] == port - 1:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges


def describe_ranges() -> dict[str, object]:
    """What portsafe picks from and why, as JSON-ready data (for ``portsafe ranges``).

    Example:
        >>> info = describe_ranges()
        >>> sorted(info)
        ['candidates', 'ephemeral', 'excluded', 'lock_dir', 'reserved']
    """
    (low, high), ephemeral_source = _ephemeral_with_source()
    reserved, reserved_source = _reserved_with_source()
    candidates = default_candidates()
    all_ports = [port for shard in candidates.shards.values() for port in shard]
    excluded_env = sorted(env_excluded())
    return {
        "ephemeral": {"range": [low, high], "source": ephemeral_source},
        "reserved": {"ranges": [list(r) for r in reserved], "source": reserved_source},
        "candidates": {
            "ranges": [list(r) for r in _collapse(all_ports)],
            "count": candidates.count,
            "source": candidates.description,
            "fallback": candidates.fallback or None,
        },
        "excluded": {
            "services": {"count": len(_services_ports()), "source": _services_file()},
            "common_dev_ports": sorted(COMMON_DEV_PORTS),
            "PORTSAFE_EXCLUDE": [list(r) for r in _collapse(excluded_env)],
        },
        "lock_dir": lock_dir(),
    }

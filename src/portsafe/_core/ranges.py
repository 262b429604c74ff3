"""Which port numbers portsafe may hand out, and in what order it tries them.

The OS is asked at run time, never a frozen table: the ephemeral range the kernel uses
for ``bind(0)`` and ``connect()`` (G2 keeps us out of it), the ports an administrator
reserved, and the services database. Everything is read on first use and cached; the
parsers are plain functions so that the macOS and Windows paths are unit-tested on Linux.
"""

from __future__ import annotations

import os
import sys

from portsafe._core.candidates import CandidateSet, collapse, describe, spans_of, subtract
from portsafe._errors import InvalidSettingError
from portsafe._settings import (
    EXCLUDE,
    RANGE,
    check_port,
    exclude_ranges,
    getenv,
    lock_dir,
    parse_port_list,
    range_ranges,
    shown,
)
from portsafe._system import read_proc

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "COMMON_DEV_PORTS",
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
    """Port numbers named in a services database (``/etc/services`` format).

    Every ``PORT/PROTOCOL`` field is the word just before a ``/``. Read by the first
    reservation of every process, so it is split at each ``/`` rather than parsed line
    by line (half the time). A number before a ``/`` in a comment (``1/29/99``) is taken
    too: one more port skipped, never one wrongly handed out.
    """
    pieces = text.split("/")
    pieces.pop()  # nothing follows the last "/"
    # the word before each "/" (a piece of blanks only has none); map and filter keep
    # the loop in C: this is in the first reservation of every process
    return frozenset(map(int, filter(str.isdecimal, [(piece.rsplit(None, 1) or ("",))[-1]
                                                     for piece in pieces])))


# -- reading the OS (cached) -----------------------------------------------------------


def _read(path: str) -> str | None:
    data = read_proc(path)
    return None if data is None else data.decode("ascii", "replace")


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


def ephemeral_with_source() -> tuple[tuple[int, int], str]:
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
    return ephemeral_with_source()[0]


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


# -- the candidate set -----------------------------------------------------------------

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
    skip = _services_ports() | COMMON_DEV_PORTS
    excluded = exclude_ranges()
    if configured is not None:
        return CandidateSet(None, f"PORTSAFE_RANGE={describe(configured)}",
                            spans=subtract(configured, excluded), skip=skip)
    (low, high), _ = ephemeral_with_source()
    everything = subtract([(1024, 65535)], [*_reserved_with_source()[0], *excluded])
    spans = subtract(everything, [(low, high)])
    outside = CandidateSet(None, f"1024-65535 outside the ephemeral range {low}-{high}",
                           spans=spans, skip=skip)
    spanned = sum(end - start + 1 for start, end in spans)
    if spanned - len(skip) >= MIN_CANDIDATES or outside.count >= MIN_CANDIDATES:
        return outside  # the first test needs no exact count: the common case counts nothing
    fallback = (
        f"the ephemeral range {low}-{high} leaves only {outside.count} ports outside it; "
        f"portsafe also picks inside it, so the kernel may hand one of its ports to an "
        f"outgoing connection before your server binds it. Narrow the ephemeral range "
        f"(sysctl net.ipv4.ip_local_port_range) or set PORTSAFE_RANGE"
    )
    return CandidateSet(None, "1024-65535 (ephemeral range included)", fallback,
                        spans=everything, skip=skip)


# Explicit ports= sets, by (the ports' cheap key, PORTSAFE_EXCLUDE): a range is its own
# key (ranges hash and compare by value), anything else its frozenset. Bounded: callers
# with ever-new sets (a fresh list per call) must not grow memory without end.
_explicit: dict[tuple[object, object], CandidateSet] = {}
_EXPLICIT_MAX = 64


def explicit_candidates(ports: Iterable[int]) -> CandidateSet:
    """Candidates from an explicit ``ports=`` argument, less ``PORTSAFE_EXCLUDE``.

    Validated and built once per distinct set of ports (cached): a caller passing the
    same ``range`` on every call pays a dictionary lookup, not a rebuild.
    """
    env = getenv(EXCLUDE)
    if type(ports) is range:
        key: object = ports
    else:
        key = _checked_frozenset(ports)
    cached = _explicit.get((key, env))
    if cached is not None:
        return cached
    if type(key) is range:
        if not key:
            _empty()
        check_port(min(key), "ports")
        check_port(max(key), "ports")
        spans = spans_of(key)
    else:
        spans = collapse(key)  # type: ignore[arg-type]
    if len(_explicit) >= _EXPLICIT_MAX:
        del _explicit[next(iter(_explicit))]
    made = _explicit[(key, env)] = CandidateSet(
        None, f"ports={describe(spans)}", spans=subtract(spans, exclude_ranges()))
    return made


def _empty() -> None:
    raise InvalidSettingError("ports is empty: give at least one port, e.g. "
                              "ports=range(20000, 20100)")


def _checked_frozenset(ports: Iterable[int]) -> frozenset[int]:
    if isinstance(ports, (str, bytes)) or not hasattr(ports, "__iter__"):
        raise TypeError(f"ports must be an iterable of ints (e.g. a range), not {shown(ports)}")
    items = ports if isinstance(ports, (list, tuple, set, frozenset)) else list(ports)
    # Checked on every call, cached or not: 8080.0 and True equal (and hash like) 8080
    # and 1, so a cache key alone would let them through.
    if not all(type(port) is int for port in items):
        for port in items:
            if not isinstance(port, int) or isinstance(port, bool):
                raise TypeError(f"ports must contain ints, not {shown(port)}")
        items = [int(port) for port in items]
    chosen = frozenset(items)
    if not chosen:
        _empty()
    check_port(min(chosen), "ports")
    check_port(max(chosen), "ports")
    return chosen


def describe_ranges() -> dict[str, object]:
    """What portsafe picks from and why, as JSON-ready data (for ``portsafe ranges``).

    Example:
        >>> info = describe_ranges()
        >>> sorted(info)
        ['candidates', 'ephemeral', 'excluded', 'lock_dir', 'reserved']
    """
    (low, high), ephemeral_source = ephemeral_with_source()
    reserved, reserved_source = _reserved_with_source()
    candidates = default_candidates()
    all_ports = [port for shard in candidates.shards.values() for port in shard]
    excluded_env = sorted(env_excluded())
    return {
        "ephemeral": {"range": [low, high], "source": ephemeral_source},
        "reserved": {"ranges": [list(r) for r in reserved], "source": reserved_source},
        "candidates": {
            "ranges": [list(r) for r in collapse(all_ports)],
            "count": candidates.count,
            "source": candidates.description,
            "fallback": candidates.fallback or None,
        },
        "excluded": {
            "services": {"count": len(_services_ports()), "source": _services_file()},
            "common_dev_ports": sorted(COMMON_DEV_PORTS),
            "PORTSAFE_EXCLUDE": [list(r) for r in collapse(excluded_env)],
        },
        "lock_dir": lock_dir(),
    }

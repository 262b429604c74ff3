"""Every environment setting portsafe reads, read and validated here, in one error style.

Each setting has one function that returns its parsed value and raises
:class:`~portsafe.InvalidSettingError` with a message of one shape::

    PORTSAFE_NAME='value': what is wrong; what to do

Values are read from the environment at call time (tests and the keeper change them
mid-process), through :func:`getenv`, which skips ``os.environ``'s per-call key encoding
on the hot path. Parsing is cached per raw value where it costs anything.

This module is part of the base: it imports nothing of portsafe but ``_errors``.
"""

from __future__ import annotations

import os
import sys

from portsafe._errors import InvalidSettingError

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "AUTO",
    "AUTO_LEASE",
    "AUTO_MAX_LEASES",
    "AUTO_MAX_LEASES_DEFAULT",
    "EXCLUDE",
    "INTERNET",
    "KEEPER_IDLE",
    "LEASE_DEFAULT",
    "LOCK_DIR",
    "PORTSERVER",
    "PURE_PYTHON",
    "RANGE",
    "auto_lease",
    "auto_max_leases",
    "auto_mode",
    "check_port",
    "default_lock_dir",
    "exclude_ranges",
    "fingerprint",
    "flag",
    "getenv",
    "invalid",
    "keeper_idle",
    "lock_dir",
    "lock_dir_is_explicit",
    "parse_port_list",
    "portserver_address",
    "range_ranges",
    "reservation_settings",
    "seconds",
    "shown",
]

AUTO = "PORTSAFE_AUTO"
AUTO_LEASE = "PORTSAFE_AUTO_LEASE"
AUTO_MAX_LEASES = "PORTSAFE_AUTO_MAX_LEASES"
EXCLUDE = "PORTSAFE_EXCLUDE"
INTERNET = "PORTSAFE_INTERNET"
KEEPER_IDLE = "PORTSAFE_KEEPER_IDLE"
LOCK_DIR = "PORTSAFE_LOCK_DIR"
PORTSERVER = "PORTSERVER_ADDRESS"
PURE_PYTHON = "PORTSAFE_PURE_PYTHON"
RANGE = "PORTSAFE_RANGE"

_WINDOWS = sys.platform == "win32"
_ENCODED = {name: name.encode() for name in (AUTO, AUTO_LEASE, AUTO_MAX_LEASES, EXCLUDE,
                                             LOCK_DIR, PORTSERVER, RANGE)}


def getenv(name: str) -> str:
    """``os.environ.get(name, "")``, in a tenth of the time where the OS allows.

    Read on every reservation; ``os.environ.get`` re-encodes the key each time.

    Example:
        >>> getenv("PORTSAFE_SURELY_UNSET")
        ''
    """
    data = getattr(os.environ, "_data", None)
    if type(data) is dict and os.name == "posix":
        value = data.get(_ENCODED.get(name) or os.fsencode(name))
        return "" if value is None else os.fsdecode(value)
    return os.environ.get(name, "")


_fingerprint_keys: dict[tuple[str, ...], list[bytes]] = {}


def fingerprint(names: tuple[str, ...]) -> tuple[object, ...]:
    """The raw values of the settings *names*, cheap to compare: the key of a cache of
    values parsed from them (auto mode checks it on every bind).

    Example:
        >>> fingerprint((AUTO_LEASE,)) == fingerprint((AUTO_LEASE,))
        True
    """
    data = getattr(os.environ, "_data", None)
    if type(data) is dict and os.name == "posix":
        keys = _fingerprint_keys.get(names)
        if keys is None:
            keys = _fingerprint_keys[names] = [os.fsencode(name) for name in names]
        return tuple(map(data.get, keys))
    return tuple(os.environ.get(name) for name in names)


def invalid(name: str, value: str, problem: str, remedy: str) -> InvalidSettingError:
    """The one error shape for a bad setting: ``NAME='value': problem; remedy``.

    Example:
        >>> print(invalid("PORTSAFE_X", "y", "not a number", "use e.g. 30"))
        PORTSAFE_X='y': not a number; use e.g. 30
    """
    return InvalidSettingError(f"{name}={value!r}: {problem}; {remedy}")


# -- port lists ------------------------------------------------------------------------


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error message: shortened, and safe for any int.

    ``repr(10**5000)`` raises ValueError (``sys.set_int_max_str_digits``); a message
    must never fail to be made.

    Example:
        >>> shown(8080), shown("a" * 100, 10), shown(10**5000)
        ('8080', "'aaaaa...", '<an int of 16610 bits>')
    """
    try:
        text = repr(value)
    except ValueError:
        bits = value.bit_length() if isinstance(value, int) else 0
        return f"<an int of {bits} bits>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_port(port: int, what: str) -> int:
    """*port* if it is in 1..65535, else InvalidSettingError naming *what*.

    Example:
        >>> check_port(8080, "ports")
        8080
    """
    if not 1 <= port <= 65535:
        raise InvalidSettingError(f"{what}: port {shown(port)} is outside 1..65535")
    return port


def parse_port_list(text: str, *, what: str = "port list") -> list[tuple[int, int]]:
    """Parse ``"8080,9000-9010 20000"`` into inclusive ``(low, high)`` ranges.

    Commas and whitespace both separate items; an item is a port or ``LOW-HIGH``.

    Raises:
        InvalidSettingError: an item is not a port, is outside 1..65535 or has low > high;
            the message starts with *what* (e.g. ``PORTSAFE_RANGE``).

    Example:
        >>> parse_port_list("8080, 9000-9002")
        [(8080, 8080), (9000, 9002)]
    """
    ranges: list[tuple[int, int]] = []
    for item in text.replace(",", " ").split():
        low_text, sep, high_text = item.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if sep else low
        except ValueError:
            raise InvalidSettingError(
                f"{what}: {item!r} is not a port or a LOW-HIGH range (e.g. 20000-29999)"
            ) from None
        check_port(low, what)
        check_port(high, what)
        if low > high:
            raise InvalidSettingError(f"{what}: range {item!r} is empty (low > high)")
        ranges.append((low, high))
    return ranges


_parsed: dict[tuple[str, str], list[tuple[int, int]] | None] = {}


def _env_ranges(name: str) -> list[tuple[int, int]] | None:
    text = getenv(name).strip()
    key = (name, text)
    if key in _parsed:
        return _parsed[key]
    made = parse_port_list(text, what=name) if text else None
    _parsed[key] = made
    return made


def range_ranges() -> list[tuple[int, int]] | None:
    """``PORTSAFE_RANGE`` as inclusive ranges, or None when unset.

    Example:
        >>> range_ranges() is None or isinstance(range_ranges(), list)
        True
    """
    return _env_ranges(RANGE)


def exclude_ranges() -> list[tuple[int, int]]:
    """``PORTSAFE_EXCLUDE`` as inclusive ranges (empty when unset).

    Example:
        >>> isinstance(exclude_ranges(), list)
        True
    """
    return _env_ranges(EXCLUDE) or []


# -- the lock directory ----------------------------------------------------------------


def default_lock_dir() -> str:
    """The lock directory when ``PORTSAFE_LOCK_DIR`` is unset: fixed, never ``TMPDIR``.

    Example:
        >>> default_lock_dir().endswith("portsafe-locks")
        True
    """
    if _WINDOWS:
        base = os.environ.get("PROGRAMDATA") or os.environ.get("ALLUSERSPROFILE") or "C:\\"
        return os.path.join(base, "portsafe-locks")
    return "/tmp/portsafe-locks"  # noqa: S108 - fixed on purpose: must not follow TMPDIR


_checked_dirs: dict[str, str] = {}


def lock_dir() -> str:
    """The lock directory in use: ``PORTSAFE_LOCK_DIR`` or the per-OS default.

    The setting must be an absolute path: a relative one would mean one directory to
    this process and another to the keeper (which runs in ``/``). It is normalised
    (``//`` and a trailing ``/`` removed), so every spelling names one directory.

    Raises:
        InvalidSettingError: ``PORTSAFE_LOCK_DIR`` is relative.

    Example:
        >>> os.path.isabs(lock_dir())
        True
    """
    configured = getenv(LOCK_DIR)  # read on every reservation: the fast way
    if not configured:
        return default_lock_dir()
    cached = _checked_dirs.get(configured)
    if cached is None:
        if not os.path.isabs(configured):
            raise invalid(LOCK_DIR, configured, "not an absolute path (each process would "
                          "resolve it from its own working directory)",
                          f"use an absolute path, e.g. {os.path.abspath(configured)}")
        cached = _checked_dirs[configured] = os.path.normpath(configured)
        if cached.startswith("//"):  # POSIX keeps a leading "//"; it is "/" on Linux
            cached = "/" + cached.lstrip("/")
    return cached


def lock_dir_is_explicit() -> bool:
    """Whether ``PORTSAFE_LOCK_DIR`` is set (the default directory is checked harder).

    Example:
        >>> isinstance(lock_dir_is_explicit(), bool)
        True
    """
    return bool(getenv(LOCK_DIR))


# -- scalars ---------------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def flag(name: str) -> bool | None:
    """A boolean setting: True for ``1/true/yes/on``, False for ``0/false/no/off``,
    None when unset or empty.

    Raises:
        InvalidSettingError: any other value.

    Example:
        >>> flag("PORTSAFE_SURELY_UNSET") is None
        True
    """
    raw = getenv(name)
    if not raw:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise invalid(name, raw, "not a boolean", "use 1 or 0 (also true/false, yes/no, on/off)")


def auto_mode() -> bool | None:
    """``PORTSAFE_AUTO``: True on, False explicitly off, None unset.

    Example:
        >>> auto_mode() in (True, False, None)
        True
    """
    return flag(AUTO)


#: Defaults of auto mode's leases: long enough for a slow server to start, few enough
#: that one busy process cannot exhaust the machine's range.
#: How long a reservation handed out for a while is held by default (seconds): the
#: keeper's leases, auto mode's and find_unused_port's.
LEASE_DEFAULT = 60.0
AUTO_MAX_LEASES_DEFAULT = 256

_auto_cache: dict[tuple[str, str], float | int] = {}


def _per_raw_value(name: str, parse: Callable[[str], float | int]) -> float | int:
    """*parse* of the setting's raw text, parsed once per value (read on every lease)."""
    raw = getenv(name)
    cached = _auto_cache.get((name, raw))
    if cached is None:
        cached = _auto_cache[(name, raw)] = parse(raw)
    return cached


def auto_lease() -> float:
    """``PORTSAFE_AUTO_LEASE``: seconds auto mode keeps a picked port reserved after its
    socket closed unused (default 60).

    Read on every lease, so it is cached per raw value.

    Raises:
        InvalidSettingError: not a finite number >= 0.

    Example:
        >>> auto_lease() >= 0
        True
    """
    return float(_per_raw_value(AUTO_LEASE, lambda _raw: seconds(AUTO_LEASE,
                                                                 LEASE_DEFAULT)))


def auto_max_leases() -> int:
    """``PORTSAFE_AUTO_MAX_LEASES``: how many leases one process keeps at most (default
    256); past it the oldest lease is released first.

    Raises:
        InvalidSettingError: not a whole number >= 1.

    Example:
        >>> auto_max_leases() >= 1
        True
    """
    return int(_per_raw_value(AUTO_MAX_LEASES, _parse_max_leases))


def _parse_max_leases(raw: str) -> int:
    text = raw.strip()
    if not text:
        return AUTO_MAX_LEASES_DEFAULT
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise invalid(AUTO_MAX_LEASES, raw, "not a whole number >= 1",
                      f"use e.g. {AUTO_MAX_LEASES_DEFAULT}")
    return value


def seconds(name: str, default: float, *, minimum: float = 0.0) -> float:
    """A duration setting in seconds (a finite number >= *minimum*), or *default*.

    Raises:
        InvalidSettingError: not a number, not finite, or below *minimum*.

    Example:
        >>> seconds("PORTSAFE_SURELY_UNSET", 30.0)
        30.0
    """
    raw = getenv(name).strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise invalid(name, raw, "not a number of seconds",
                      f"use e.g. {default:g}") from None
    if value - value != 0.0 or value < minimum:  # inf and nan; no math import at start-up
        raise invalid(name, raw, f"must be a finite number of seconds >= {minimum:g}",
                      f"use e.g. {default:g}")
    return value


def keeper_idle(default: float) -> float:
    """``PORTSAFE_KEEPER_IDLE``: seconds the lease keeper stays up with nothing to keep.

    Example:
        >>> keeper_idle(30.0) >= 0
        True
    """
    return seconds(KEEPER_IDLE, default)


def portserver_address() -> str:
    """``PORTSERVER_ADDRESS``: a port server to ask first, or ``""``.

    Example:
        >>> isinstance(portserver_address(), str)
        True
    """
    return getenv(PORTSERVER)


# -- the two settings every reservation reads -------------------------------------------

_hot: dict[tuple[object, object], tuple[str, str]] = {}


def reservation_settings() -> tuple[str, str]:
    """``(lock_dir(), portserver_address())``, looked up by their raw values.

    Every reservation reads both; decoding and checking them each time cost more than
    a lock. Each distinct pair of values is checked once (errors as those functions).

    Example:
        >>> reservation_settings() == (lock_dir(), portserver_address())
        True
    """
    data = getattr(os.environ, "_data", None)
    if type(data) is dict and os.name == "posix":
        key: tuple[object, object] = (data.get(b"PORTSAFE_LOCK_DIR"),
                                      data.get(b"PORTSERVER_ADDRESS"))
    else:
        key = (getenv(LOCK_DIR), getenv(PORTSERVER))
    found = _hot.get(key)
    if found is None:
        if len(_hot) >= 64:  # a test suite may set a new directory per test
            _hot.clear()
        found = _hot[key] = (lock_dir(), portserver_address())
    return found

"""The opt-in for tests that need the internet, and the options they pass on.

:func:`internet_enabled` reads ``PORTSAFE_INTERNET``; :func:`internet_options` checks
the ``timeout`` and ``errnos`` a test gives for ``transient_internet``.
"""

from __future__ import annotations

import os

from portsafe._errors import InvalidSettingError

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

__all__ = ["INTERNET_ENV", "INTERNET_SKIP_REASON", "internet_enabled", "internet_options"]

#: Environment variable that opts a run in to tests that need the internet.
INTERNET_ENV = "PORTSAFE_INTERNET"

INTERNET_SKIP_REASON = (
    f"needs the internet; opt in with --portsafe-internet (pytest) or {INTERNET_ENV}=1"
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def internet_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the run opted in to tests that need the internet, by ``PORTSAFE_INTERNET``.

    The answer comes from the environment only, never from probing the network (a probe
    would send traffic off the machine and make results depend on the weather).

    Args:
        environ: Where to read the variable; ``os.environ`` if omitted.

    Returns:
        ``True`` for ``1``/``true``/``yes``/``on``; ``False`` when unset or
        ``0``/``false``/``no``/``off``/empty (any case).

    Raises:
        InvalidSettingError: If the variable holds anything else.

    Example:
        >>> internet_enabled({"PORTSAFE_INTERNET": "1"})
        True
        >>> internet_enabled({})
        False
    """
    __tracebackhide__ = True
    value = (os.environ if environ is None else environ).get(INTERNET_ENV, "")
    normalized = value.strip().lower()
    if normalized in _TRUE:
        return True
    if normalized in _FALSE:
        return False
    raise InvalidSettingError(
        f"{INTERNET_ENV}={value!r} is not understood; set it to 1 to run tests that need "
        f"the internet, or to 0 (or unset it) to skip them"
    )


def internet_options(
    *, timeout: float | None = None, errnos: Iterable[int] = ()
) -> dict[str, Any]:
    """Keyword arguments for ``transient_internet``, leaving out what was not chosen.

    An empty ``errnos`` is left out rather than passed, because passing ``errnos``
    replaces ``transient_internet``'s defaults (as in CPython).

    Args:
        timeout: Socket default timeout inside the test, or ``None`` for the default.
        errnos: errno values to treat as transient instead of the defaults (as in CPython).

    Returns:
        A dict to pass as ``**kwargs``.

    Raises:
        TypeError: If ``timeout`` is not a number or ``errnos`` holds a non-int.

    Example:
        >>> internet_options(timeout=5)
        {'timeout': 5.0}
    """
    __tracebackhide__ = True
    options: dict[str, Any] = {}
    if timeout is not None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
        options["timeout"] = float(timeout)
    codes = tuple(errnos)
    for code in codes:
        if not isinstance(code, int) or isinstance(code, bool):
            raise TypeError(f"errnos must hold ints such as errno.ECONNRESET, not {code!r}")
    if codes:
        options["errnos"] = codes
    return options

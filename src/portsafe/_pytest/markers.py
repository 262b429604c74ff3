"""The pytest plugin's markers: what they mean, when they skip, and name clashes.

Plain functions, testable without a pytest run; :mod:`portsafe.pytest_plugin` calls
them from its hooks. Nothing of portsafe's reservation machinery is imported here
until a marked test asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from typing import NoReturn

__all__ = [
    "MARKERS",
    "declared_marker_names",
    "internet_marker_options",
    "markers_to_register",
    "skip_at_item",
    "skip_reason",
]

#: The markers portsafe registers, by name, with the text ``pytest --markers`` shows.
MARKERS: dict[str, str] = {
    "requires_internet": (
        "requires_internet(resource_name='network', *, timeout=None, errnos=()): skip "
        "unless the run opts in with --portsafe-internet or PORTSAFE_INTERNET=1; when it "
        "runs, transient network errors become skips (portsafe)."
    ),
    "requires_unix_socket": (
        "requires_unix_socket: skip when AF_UNIX sockets cannot be bound here (portsafe)."
    ),
    "requires_ipv6": "requires_ipv6: skip when IPv6 loopback (::1) cannot be bound (portsafe).",
}


def declared_marker_names(lines: list[str]) -> set[str]:
    """The marker names declared by ``markers`` ini lines (``name(args): help``).

    Args:
        lines: The value of ``config.getini("markers")``.

    Returns:
        The set of names.

    Example:
        >>> sorted(declared_marker_names(["slow: slow tests", "net(host): needs host"]))
        ['net', 'slow']
    """
    names = set()
    for line in lines:
        name = line.split(":", 1)[0].split("(", 1)[0].strip()
        if name:
            names.add(name)
    return names


def markers_to_register(declared: set[str]) -> tuple[dict[str, str], list[str]]:
    """Split portsafe's markers into those to register and those someone else declared.

    Args:
        declared: Marker names already declared by the project or other plugins.

    Returns:
        ``(to_register, clashing)``: the markers portsafe owns for this run (name ->
        help text) and the sorted names it must leave alone.

    Example:
        >>> owned, clashing = markers_to_register({"requires_ipv6"})
        >>> sorted(owned), clashing
        (['requires_internet', 'requires_unix_socket'], ['requires_ipv6'])
    """
    owned = {name: text for name, text in MARKERS.items() if name not in declared}
    return owned, sorted(set(MARKERS) - set(owned))


def internet_marker_options(mark: pytest.Mark) -> tuple[str, dict[str, object]]:
    """The ``transient_internet`` arguments a ``requires_internet`` marker asks for.

    Args:
        mark: The marker, e.g. ``requires_internet("pypi.org", timeout=10)``.

    Returns:
        ``(resource_name, keyword_arguments)``.

    Raises:
        TypeError: If the marker has arguments it does not understand.

    Example:
        >>> internet_marker_options(pytest.mark.requires_internet("pypi.org").mark)
        ('pypi.org', {})
    """
    from portsafe.testing import internet_options  # lazily: keep plugin import cheap

    args = list(mark.args)
    kwargs = dict(mark.kwargs)
    if "resource_name" in kwargs:
        args.insert(0, kwargs.pop("resource_name"))
    unknown = sorted(set(kwargs) - {"timeout", "errnos"})
    if len(args) > 1 or unknown:
        raise TypeError(
            "requires_internet takes one resource name and the keywords timeout= and "
            f"errnos=; got args={tuple(mark.args)!r}, kwargs={mark.kwargs!r}"
        )
    name = args[0] if args else "network"
    if not isinstance(name, str):
        raise TypeError(f"requires_internet's resource name must be a str, not {name!r}")
    timeout = kwargs.get("timeout")
    errnos = kwargs.get("errnos", ())
    return name, internet_options(timeout=timeout, errnos=errnos)


def skip_reason(marker_names: set[str], *, internet_opt_in: bool) -> str | None:
    """Why a test carrying these (portsafe-owned) markers must be skipped, if it must.

    Args:
        marker_names: The portsafe markers on the test.
        internet_opt_in: Whether ``--portsafe-internet`` was given.

    Returns:
        The skip reason, or ``None`` to run the test.

    Raises:
        InvalidSettingError: If ``PORTSAFE_INTERNET`` holds a value it cannot parse.

    Example:
        >>> skip_reason({"requires_internet"}, internet_opt_in=True) is None
        True
    """
    from portsafe import testing  # lazily: keep plugin import cheap

    if "requires_internet" in marker_names and not (
        internet_opt_in or testing.internet_enabled()
    ):
        return testing.INTERNET_SKIP_REASON
    if "requires_unix_socket" in marker_names and not testing.unix_sockets_available():
        return testing.UNIX_SKIP_REASON
    if "requires_ipv6" in marker_names and not testing.ipv6_available():
        return testing.IPV6_SKIP_REASON
    return None


def skip_at_item(reason: str) -> NoReturn:
    """Skip the running test, reported at the test's location as a skip marker would be.

    ``pytest.skip`` would blame the plugin's file in the ``-rs`` summary.

    Example:
        >>> try:
        ...     skip_at_item("no IPv6")
        ... except pytest.skip.Exception as exc:
        ...     print(exc.msg)
        no IPv6
    """
    raise pytest.skip.Exception(reason, _use_item_location=True)

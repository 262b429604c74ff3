"""The pytest plugin's fixture names, and which other plugins define the same ones.

portsafe's fixtures are named ``reserved_*`` because ``free_tcp_port`` and
``free_udp_port`` are anyio's (a dependency of httpx, starlette and fastapi): with two
plugins defining one name, which fixture a test gets depends on plugin load order.
:func:`clashing_plugins` finds another *plugin* defining one of portsafe's names, so
the plugin can say so once. A ``conftest.py`` that defines one is the project's own
choice (and wins over every plugin), so conftests are not reported.
"""

from __future__ import annotations

import os
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["FIXTURE_NAMES", "clash_message", "clashing_plugins", "fixture_names"]

#: Every fixture portsafe's plugin defines.
FIXTURE_NAMES: tuple[str, ...] = (
    "reserved_tcp_port",
    "reserved_udp_port",
    "reserved_port_factory",
    "reserved_tcp_port_session",
    "reserved_udp_port_session",
    "reserved_port_factory_session",
    "tcp_listener",
)


def _namespace(holder: object) -> dict[str, object]:
    # Read raw class and module dicts, as pytest does, so that no property of a plugin
    # object runs just because portsafe looked.
    if isinstance(holder, types.ModuleType):
        return dict(vars(holder))
    klass = holder if isinstance(holder, type) else type(holder)
    namespace: dict[str, object] = {}
    for base in reversed(klass.__mro__):
        namespace.update(vars(base))
    return namespace


def fixture_names(holder: object, *, ignore: Iterable[object] = ()) -> set[str]:
    """The names of the fixtures a plugin (module, class or instance) defines.

    Args:
        holder: The plugin object.
        ignore: Fixture objects that do not count (portsafe's own, when another
            module re-exports them).

    Example:
        >>> import pytest, types
        >>> plugin = types.ModuleType("plugin")
        >>> plugin.f = pytest.fixture(lambda: 1, name="reserved_tcp_port")
        >>> sorted(fixture_names(plugin))
        ['reserved_tcp_port']
    """
    try:
        from _pytest.fixtures import getfixturemarker  # pytest's own test, 7.0 to 9.x
    except ImportError:  # pragma: no cover - a pytest without it: report nothing
        return set()
    skipped = list(ignore)
    names = set()
    for attr, obj in _namespace(holder).items():
        if any(obj is own for own in skipped):
            continue
        try:
            marker = getfixturemarker(obj)
        except Exception:  # noqa: BLE001 - an odd attribute must not break the run
            marker = None
        if marker is not None:
            names.add(marker.name or attr)
    return names


def _is_conftest(plugin: object) -> bool:
    return os.path.basename(str(getattr(plugin, "__file__", None) or "")) == "conftest.py"


def clashing_plugins(
    plugins: Iterable[tuple[str, object]],
    names: Iterable[str] = FIXTURE_NAMES,
    *,
    ignore: Iterable[object] = (),
) -> list[tuple[str, list[str]]]:
    """Other plugins that define fixtures with portsafe's names (conftests excepted).

    Args:
        plugins: ``(name, plugin)`` pairs, as ``config.pluginmanager.list_name_plugin()``
            returns them (a blocked plugin's object is ``None``).
        names: The fixture names to look for.
        ignore: portsafe's own fixture objects and plugin modules, which never clash.

    Returns:
        ``(plugin name, sorted clashing fixture names)`` for each such plugin, sorted.

    Example:
        >>> import pytest, types
        >>> anyio_like = types.ModuleType("anyio_like")
        >>> anyio_like.free_tcp_port = pytest.fixture(lambda: 1, name="free_tcp_port")
        >>> anyio_like.mine = pytest.fixture(lambda: 1, name="reserved_udp_port")
        >>> clashing_plugins([("anyio_like", anyio_like)])
        [('anyio_like', ['reserved_udp_port'])]
    """
    wanted = set(names)
    skipped = list(ignore)
    found = []
    for name, plugin in plugins:
        if plugin is None or _is_conftest(plugin) or any(plugin is own for own in skipped):
            continue
        clashes = sorted(fixture_names(plugin, ignore=skipped) & wanted)
        if clashes:
            found.append((name, clashes))
    return sorted(found)


def clash_message(clashes: list[tuple[str, list[str]]]) -> str:
    """The one warning for every clash found by :func:`clashing_plugins`.

    Example:
        >>> print(clash_message([("other", ["reserved_tcp_port"])]))  # doctest: +ELLIPSIS
        portsafe: plugin 'other' also defines fixture(s) reserved_tcp_port; ...
    """
    parts = [f"plugin {name!r} also defines fixture(s) {', '.join(fixtures)}"
             for name, fixtures in clashes]
    return (
        f"portsafe: {'; '.join(parts)}; which one a test gets depends on the order "
        "plugins load. Disable one (-p no:NAME), or define the fixture in your "
        "conftest.py to choose."
    )

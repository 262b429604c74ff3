"""``portsafe ranges``: where portsafe picks ports from, and why.

``describe_ranges()`` told as readable lines (no ``None``, no brackets, no dict reprs);
``--json`` prints it as it is.
"""

from __future__ import annotations

import json

from portsafe._cli.exits import EXIT_OK

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import argparse

__all__ = ["ranges_text", "ranges_verb", "spans_text"]


def spans_text(pairs: list[list[int]], limit: int = 8) -> str:
    """Port spans as ``LO-HI`` (a single port alone), at most *limit* of them.

    Example:
        >>> spans_text([[5000, 5009], [6000, 6000]]), spans_text([])
        ('5000-5009, 6000', 'none')
    """
    shown = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in pairs[:limit])
    more = f", ... ({len(pairs)} spans)" if len(pairs) > limit else ""
    return (shown + more) or "none"


def _value(value: object) -> str:  # noqa: PLR0911 - one return per kind of value
    """One value as a person reads it: no ``None``, no brackets, no dict reprs."""
    if value is None or value in ([], {}):
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
            return spans_text([list(v) for v in value])
        if len(value) == 2 and all(isinstance(v, int) for v in value) and value[0] <= value[1]:
            return f"{value[0]}-{value[1]}"
        items = ", ".join(_value(v) for v in value[:12])
        return items + (f", ... ({len(value)} in all)" if len(value) > 12 else "")
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')} {_value(v)}" for k, v in value.items())
    return str(value)


def _summary(info: dict[str, object]) -> str:
    """A ``{"range"/"ranges"/"count", "source", ...}`` entry on one line."""
    parts = []
    for key in ("count", "range", "ranges"):
        if key in info:
            shown = _value(info[key])
            parts.append(f"{shown} ports" if key == "count" else shown)
    if "count" in info and len(parts) > 1:
        parts[0] += ":"
    if info.get("source"):
        parts.append(f"(from {info['source']})")
    for key, value in info.items():
        if key not in ("range", "ranges", "count", "source") and value is not None:
            parts.append(f"[{key.replace('_', ' ')}: {_value(value)}]")
    return " ".join(parts)


def ranges_text(info: dict[str, object]) -> list[str]:
    """``describe_ranges()`` as readable lines.

    Example:
        >>> ranges_text({"lock_dir": "/tmp/x", "reserved": {"ranges": [], "source": "/p"},
        ...              "excluded": {"services": {"count": 264, "source": "/etc/services"},
        ...                           "PORTSAFE_EXCLUDE": []}})
        ['lock dir: /tmp/x', 'reserved: none (from /p)', 'excluded:', \
'  services: 264 ports (from /etc/services)', '  PORTSAFE_EXCLUDE: none']
    """
    lines = []
    for key, value in info.items():
        label = key.replace("_", " ") if key.islower() else key
        if isinstance(value, dict) and any(k in value for k in ("range", "ranges", "count")):
            lines.append(f"{label}: {_summary(value)}")
        elif isinstance(value, dict):
            lines.append(f"{label}:")
            for sub_key, sub in value.items():
                sub_label = sub_key.replace("_", " ") if sub_key.islower() else sub_key
                text = _summary(sub) if isinstance(sub, dict) else _value(sub)
                lines.append(f"  {sub_label}: {text}")
        else:
            lines.append(f"{label}: {_value(value)}")
    return lines


def ranges_verb(args: argparse.Namespace) -> int:
    """``portsafe ranges``: where portsafe picks ports from, and why.

    Example:
        >>> import argparse
        >>> ranges_verb(argparse.Namespace(json=False))  # doctest: +SKIP
        0
    """
    from portsafe._core.ranges import describe_ranges

    info = describe_ranges()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print("\n".join(ranges_text(info)))
    return EXIT_OK

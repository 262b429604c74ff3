"""The command line's looking-around verbs: ``list``, ``who``, ``ranges``, and ``serve``.

Text output is for people (no Python reprs); ``--json`` is for programs.

Reservations are read from where they are held: on Linux the ports' names
(``_locking.holders``: pid, and the uid of another user's holder whose process cannot be
read), elsewhere the lock files (``_locks.holders()``: pid only).
"""

from __future__ import annotations

import json
import socket

from portsafe._cli.main import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, error
from portsafe._errors import KeeperError

TYPE_CHECKING = False  # typing is not imported at run time: keep imports cheap
if TYPE_CHECKING:
    import argparse

    from portsafe._locking.holders import Holder

__all__ = ["list_verb", "ranges_text", "ranges_verb", "serve_verb", "who_verb"]


def _command_of(pid: int | None) -> str | None:
    if pid is None:
        return None
    from portsafe._system import command_line

    text = " ".join(command_line(pid).split())  # one line, even for `python -m "..."`
    return None if text == "?" else text


def _reservations(only: int | None = None) -> list[Holder]:
    """Every reservation on this machine (or of port *only*), sorted by port."""
    from portsafe import _platform as backend
    from portsafe._locking import holders

    if backend.NAMES:
        return holders.holders(only)
    from portsafe._locking import files as _locks

    # pid 0: the lock's holder is in another pid namespace, or the OS does not say.
    return [holders.Holder(port, pid or None, None, 0) for port, pid in _locks.holders()
            if only is None or port == only]


def _holder_text(holder: Holder, command: str | None) -> str:
    """``pid 42 (sleep 9)``, or who holds it where its process cannot be read."""
    if holder.pid is None:
        return holder.describe()
    return f"pid {holder.pid} ({command or '?'})"


def _keeper_leases() -> tuple[int | None, dict[int, dict[str, object]]]:
    from portsafe._services import keeper_client as _keeper_client

    try:
        reply = _keeper_client.call({"op": "list"}, start=False, timeout=2.0)
    except (KeeperError, OSError, ValueError):
        return None, {}
    leases = reply.get("leases")
    pid = reply.get("pid")
    if not isinstance(leases, list):
        return None, {}
    return (pid if isinstance(pid, int) else None,
            {int(item["port"]): item for item in leases if isinstance(item, dict)})


def list_verb(args: argparse.Namespace) -> int:
    """``portsafe list``: every reservation on this machine, with pid and command.

    Example:
        >>> import argparse
        >>> list_verb(argparse.Namespace(json=True))  # doctest: +SKIP
        0
    """
    keeper, leases = _keeper_leases()
    rows, shown = [], []
    for holder in _reservations():
        lease = leases.get(holder.port)
        command = _command_of(holder.pid)
        if holder.pid is not None and holder.pid == keeper:
            command = f"your lease keeper: {command or '?'}"
        rows.append({"port": holder.port, "pid": holder.pid, "uid": holder.uid,
                     "command": command,
                     "lease_expires_in": lease.get("expires_in") if lease else None})
        shown.append(holder.describe() if holder.pid is None else command or "?")
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no ports are reserved through portsafe on this machine")
        return EXIT_OK
    print(f"{'PORT':>5}  {'PID':>7}  {'LEASE':>6}  COMMAND")
    for row, text in zip(rows, shown, strict=True):
        expires = row["lease_expires_in"]
        lease_text = f"{float(expires):.0f}s" if isinstance(expires, (int, float)) else "-"
        pid_text = "?" if row["pid"] is None else row["pid"]
        print(f"{row['port']:>5}  {pid_text:>7}  {lease_text:>6}  {text}")
    return EXIT_OK


def _describe(holder: object) -> str:
    state, pid = getattr(holder, "state", ""), getattr(holder, "pid", None)
    if pid is None and state == "TIME_WAIT":
        return "TIME_WAIT (no process: a closed connection the kernel keeps for a while)"
    return f"{state} {holder.describe()}"  # type: ignore[attr-defined]


def _who_one(port: int, holders_of: dict[int, list[Holder]]) -> tuple[dict[str, object],
                                                                      list[str]]:
    from portsafe._net.who import who_holds

    reserved, reserved_lines = [], []
    for holder in holders_of.get(port, []):
        command = _command_of(holder.pid)
        reserved.append({"pid": holder.pid, "uid": holder.uid, "command": command})
        reserved_lines.append(f"port {port}: reserved by {_holder_text(holder, command)}")
    holders = who_holds(port, socktype=0)
    sockets = [{"pid": h.pid, "command": h.command, "state": h.state, "host": h.host,
                "port": h.port, "family": "ipv6" if h.family == socket.AF_INET6 else "ipv4",
                "socktype": "udp" if h.socktype == socket.SOCK_DGRAM else "tcp"}
               for h in holders]
    lines = []
    if not reserved and not sockets:
        lines.append(f"port {port}: nobody holds it (no reservation, no socket seen)")
    lines.extend(reserved_lines)
    for h in holders:
        kind = "udp" if h.socktype == socket.SOCK_DGRAM else "tcp"
        host = f"[{h.host}]" if ":" in h.host else h.host
        lines.append(f"port {port}: {kind} {host}:{h.port} {_describe(h)}")
    return {"port": port, "reserved_by": reserved, "sockets": sockets}, lines


def who_verb(args: argparse.Namespace) -> int:
    """``portsafe who PORT...``: the reservation and the sockets on each port.

    Exit 0 if anybody holds any of the ports (like ``grep``), else 1.

    Example:
        >>> import argparse
        >>> who_verb(argparse.Namespace(port=[1], json=False))  # doctest: +SKIP
        1
    """
    holders_of: dict[int, list[Holder]] = {}
    for holder in _reservations(args.port[0] if len(args.port) == 1 else None):
        holders_of.setdefault(holder.port, []).append(holder)
    infos, found = [], False
    for port in args.port:
        info, lines = _who_one(port, holders_of)
        infos.append(info)
        found = found or bool(info["reserved_by"] or info["sockets"])
        if not args.json:
            print("\n".join(lines))
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2))
    return EXIT_OK if found else EXIT_NOT_FOUND


def _spans(pairs: list[list[int]], limit: int = 8) -> str:
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
            return _spans([list(v) for v in value])
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


def serve_verb(args: argparse.Namespace) -> int:
    """``portsafe serve``: a port server speaking portpicker's protocol.

    Example:
        >>> import argparse  # see tests/cli/test_cli.py::TestServeVerb
    """
    from portsafe._services.portserver import ServerAddressInUseError, serve

    ports = range(args.range[0], args.range[1] + 1) if args.range else None
    try:
        serve(args.address, ports=ports, verbose=args.verbose)
    except ServerAddressInUseError as exc:
        error(str(exc.strerror))
        return EXIT_ERROR
    return EXIT_OK


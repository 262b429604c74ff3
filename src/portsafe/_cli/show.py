"""The command line's verbs that show who holds ports: ``list`` and ``who``.

Text output is for people (no Python reprs); ``--json`` is for programs.

Reservations are read from where they are held: on Linux the ports' names
(:mod:`portsafe._locking.holders`: pid, and the uid of another user's holder whose
process cannot be read), elsewhere the lock files (:mod:`portsafe._locking.files`: pid
only).
"""

from __future__ import annotations

import json
import socket

from portsafe._cli.exits import EXIT_NOT_FOUND, EXIT_OK
from portsafe._errors import KeeperError

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import argparse

    from portsafe._locking.holders import Holder

__all__ = ["list_verb", "who_verb"]


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
    from portsafe._locking import files

    # pid 0: the lock's holder is in another pid namespace, or the OS does not say.
    return [holders.Holder(port, pid or None, None, 0) for port, pid in files.holders()
            if only is None or port == only]


def _holder_text(holder: Holder, command: str | None) -> str:
    """``pid 42 (sleep 9)``, or who holds it where its process cannot be read."""
    if holder.pid is None:
        return holder.describe()
    return f"pid {holder.pid} ({command or '?'})"


def _keeper_leases() -> tuple[int | None, dict[int, dict[str, object]]]:
    from portsafe._services import keeper_client

    try:
        reply = keeper_client.call({"op": "list"}, start=False, timeout=2.0)
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

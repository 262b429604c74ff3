"""Who holds which port's name (Linux): the kernel's unix sockets, their owners, their
processes.

A port is held by a name (``_locking.names``): a ``SOCK_DGRAM`` unix socket bound to
``names.name(port)``. This module reads, without binding anything, which names are bound
in this network namespace and by whom. Three sources, each read without privileges:

1. **netlink** ``sock_diag`` (``SOCK_DIAG_BY_FAMILY`` for ``AF_UNIX``, as ``ss -x`` asks):
   every unix socket's inode, type, name (``UDIAG_SHOW_NAME``) and owner's uid
   (``UDIAG_SHOW_UID``, Linux 5.3+). Binary, so no socket name can fake an entry.
2. ``/proc/net/unix``, where netlink is refused (a seccomp filter, a kernel without
   ``unix_diag``): the same sockets as text, without uids. A name may hold any byte, a
   newline too, so another user could forge a line there; where netlink answers, it is
   asked about each such line and has the last word. For one port (``only``) this file is
   read first, as its lines are cheap to skip, and netlink is asked about that socket
   (without ``/proc``, netlink's whole list is read instead).
3. ``/proc/<pid>/fd/*`` (``socket:[<inode>]``): which process has each socket open. A
   user may read their own processes' (root: every process's); the others are skipped,
   and the scan ends as soon as every socket asked about is found.

Rules:

* A :class:`Holder` has the port and inode always; the uid where netlink answered; the
  pid where a process with the socket open could be read. Another user's holder, read
  as a non-root user, has a uid and no pid: "another user (uid N)".
* The answer is a snapshot read in pieces (the kernel makes both tables a page at a
  time): while other names are bound and released, one held throughout may in rare
  cases be missed. Nothing decides a reservation from it: binding the name does.
* Nothing here raises for what it cannot read: a source that fails gives what it has.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct

from portsafe._locking import names

__all__ = ["Holder", "holder_of", "holders", "processes_of"]

_PROC = "/proc"
_SHOWN = names.SHOWN_PREFIX.encode()
_NAME_LENGTH = len(names.PREFIX) + 3

# netlink and sock_diag (linux/netlink.h, linux/sock_diag.h, linux/unix_diag.h).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_MULTI, _NLM_F_DUMP = 0x1, 0x2, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_NAME, _UDIAG_SHOW_UID = 0x1, 0x40
_UNIX_DIAG_NAME, _UNIX_DIAG_UID = 0, 7
_NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: find the socket by inode alone
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_REQUEST = struct.Struct("=BBHIIIII")  # struct unix_diag_req
_MESSAGE = struct.Struct("=BBBxIII")  # struct unix_diag_msg
_ATTRIBUTE = struct.Struct("=HH")  # struct nlattr
_ERROR = struct.Struct("=i")  # struct nlmsgerr's error
_TIMEOUT = 5.0  # the kernel answers at once; this only bounds a broken sandbox
_BUFFER = 1 << 16


@dataclasses.dataclass(frozen=True)
class Holder:
    """A port's name, bound: by whom, as far as this process may know.

    Attributes:
        port: The port whose name is bound.
        pid: A process that has the socket open (the first found, where a child forked
            outside Python shares it with its parent), or None where none could be read.
        uid: The uid owning the socket, from netlink; None where netlink is refused.
        inode: The socket's inode (``socket:[inode]`` in ``/proc/<pid>/fd``).

    Example:
        >>> Holder(port=8000, pid=None, uid=0, inode=4242).port
        8000
    """

    port: int
    pid: int | None
    uid: int | None
    inode: int

    def describe(self, me: int | None = None) -> str:
        """Who holds the name, in a few words: ``pid 42``, ``another user (uid 0)``.

        Args:
            me: The uid counted as "you" (default: this process's effective uid).

        Example:
            >>> Holder(8000, 42, 0, 1).describe(), Holder(8000, None, 0, 1).describe(me=7)
            ('pid 42', 'another user (uid 0)')
        """
        if self.pid is not None:
            return f"pid {self.pid}"
        if self.uid is None:
            return "a process portsafe cannot see"
        if self.uid != (os.geteuid() if me is None else me):
            return f"another user (uid {self.uid})"
        return f"a process of yours portsafe cannot see (uid {self.uid})"


def holders(only: int | None = None) -> list[Holder]:
    """Every port held by a name in this network namespace, or only port *only*'s.

    Sorted by port. Empty where nothing can be read (no ``/proc``, netlink refused).

    Example:
        >>> import socket
        >>> with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        ...     sock.bind(names.name(1))  # port 1: below what portsafe hands out
        ...     [(h.port, h.pid == os.getpid()) for h in holders(1)]
        [(1, True)]
    """
    bound = _bound() if only is None else _bound_one(only)
    pids = processes_of(set(bound)) if bound else {}
    found = [Holder(port, pids[inode][0] if inode in pids else None, uid, inode)
             for inode, (port, uid) in bound.items()]
    found.sort(key=lambda holder: (holder.port, holder.inode))
    return found


def holder_of(port: int) -> Holder | None:
    """Who holds *port*'s name, or None if it is not bound (as far as can be read).

    Example:
        >>> holder_of(1) is None  # port 1: below what portsafe hands out
        True
    """
    found = holders(port)
    return found[0] if found else None


def processes_of(inodes: set[int], *, every: bool = False,
                 proc: str | None = None) -> dict[int, list[int]]:
    """The pids that have each socket of *inodes* open, from ``/proc/<pid>/fd``.

    Processes that cannot be read (another user's, without privileges; one that just
    exited) are skipped. Unless *every*, the scan stops once each inode has a pid: this
    process is read first, then the others from the newest.

    Example:
        >>> import socket
        >>> with socket.socket() as sock:
        ...     inode = os.fstat(sock.fileno()).st_ino
        ...     processes_of({inode}) == {inode: [os.getpid()]}
        True
    """
    found: dict[int, list[int]] = {}
    missing = set(inodes)
    proc = _PROC if proc is None else proc
    try:
        # This process first (it asks most often about its own ports), then the newest
        # first: holders are mostly recent test processes, and the oldest processes of
        # a machine (its daemons) hold many descriptors and rarely a port's name.
        me = os.getpid()
        pids = sorted((int(entry) for entry in os.listdir(proc) if entry.isdigit()),
                      key=lambda pid: (pid != me, -pid))
    except OSError:
        return found
    for pid in pids:
        directory = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(directory)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{directory}/{fd}")
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            try:
                inode = int(target[8:-1])
            except ValueError:
                continue
            if inode in inodes:
                pids_of = found.setdefault(inode, [])
                if pid not in pids_of:
                    pids_of.append(pid)
                missing.discard(inode)
        if not missing and not every:
            break
    return found


# -- the tables -----------------------------------------------------------------------


def _bound() -> dict[int, tuple[int, int | None]]:
    """inode -> (port, uid) of every bound name; uid None where netlink is refused."""
    answer = _diag()
    if answer is not None:
        return answer
    return {inode: (port, None) for inode, port in (_proc_unix(None) or {}).items()}


def _bound_one(port: int) -> dict[int, tuple[int, int | None]]:
    """inode -> (port, uid) of *port*'s name, if bound: at most one entry unless a
    forged line of ``/proc/net/unix`` is believed for want of netlink."""
    listed = _proc_unix(port)
    if listed is None:  # no /proc: netlink alone
        return {inode: found for inode, found in (_diag() or {}).items() if found[0] == port}
    bound: dict[int, tuple[int, int | None]] = {}
    for inode in listed:
        answer = _diag(inode)
        if answer is None:  # netlink refused: the line as read
            bound[inode] = (port, None)
        elif answer.get(inode, (None,))[0] == port:
            bound[inode] = answer[inode]
    return bound


def _proc_unix(only: int | None) -> dict[int, int] | None:
    """inode -> port of the names ``/proc/net/unix`` lists (only *only*'s, if given);
    None without ``/proc``."""
    wanted = None if only is None else b"@" + names.name(only)[1:]
    found: dict[int, int] = {}
    try:
        with open(f"{_PROC}/net/unix", "rb") as table:
            for line in table:
                if _SHOWN not in line:
                    continue
                # Num RefCount Protocol Flags Type St Inode Path; an unbound socket has
                # no path, and a name with a space in it is not one of ours.
                fields = line.split()
                if len(fields) != 8 or fields[4] != b"0002":
                    continue
                if wanted is not None and fields[7] != wanted:
                    continue
                port = names.port_of(fields[7].decode("latin-1"))
                if port is not None and fields[6].isdigit():
                    found[int(fields[6])] = port
    except OSError:  # no /proc
        return None
    return found


def _diag(inode: int = 0) -> dict[int, tuple[int, int | None]] | None:
    """inode -> (port, uid) of the bound names netlink reports: all of them, or socket
    *inode* alone (if it is one). None where netlink is refused."""
    flags = _NLM_F_REQUEST if inode else _NLM_F_REQUEST | _NLM_F_DUMP
    request = _REQUEST.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, inode,
                            _UDIAG_SHOW_NAME | _UDIAG_SHOW_UID, _NO_COOKIE, _NO_COOKIE)
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):  # AttributeError: no AF_NETLINK (not Linux)
        return None
    found: dict[int, tuple[int, int | None]] = {}
    with sock:
        try:
            sock.settimeout(_TIMEOUT)
            sock.sendto(_HEADER.pack(_HEADER.size + _REQUEST.size, _SOCK_DIAG_BY_FAMILY,
                                     flags, 1, 0) + request, (0, 0))
            while True:
                data = sock.recv(_BUFFER)
                done = _parse(data, found)
                if done is not None:
                    break
        except (OSError, struct.error):  # a timeout too; struct.error: a short message
            return None
    if done == -errno.ENOENT and inode:
        # Socket *inode* is gone, or this kernel has no unix_diag: a dump tells which.
        everything = _diag()
        if everything is None:
            return None
        return {inode: everything[inode]} if inode in everything else {}
    if done:
        return None
    return found


def _parse(data: bytes, found: dict[int, tuple[int, int | None]]) -> int | None:
    """Read the netlink messages in *data* into *found*. Returns None to read on, 0 at
    the end of the answer, or an error's negative errno."""
    if not data:
        return -errno.EIO
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, flags, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            return -errno.EIO
        body = offset + _HEADER.size
        if kind == _NLMSG_DONE:
            return 0
        if kind == _NLMSG_ERROR:
            return _ERROR.unpack_from(data, body)[0] or -errno.EIO
        if kind == _SOCK_DIAG_BY_FAMILY:
            _message(data[body:offset + length], found)
            if not flags & _NLM_F_MULTI:  # the one answer to an exact request
                return 0
        offset += (length + 3) & ~3
    return None


def _message(message: bytes, found: dict[int, tuple[int, int | None]]) -> None:
    """One socket's ``unix_diag_msg`` and its attributes, into *found* if one of ours."""
    _, kind, _, inode, _, _ = _MESSAGE.unpack_from(message)
    if kind != socket.SOCK_DGRAM:
        return
    name, uid = b"", None
    offset = _MESSAGE.size
    while offset + _ATTRIBUTE.size <= len(message):
        length, attribute = _ATTRIBUTE.unpack_from(message, offset)
        if length < _ATTRIBUTE.size:
            break
        value = message[offset + _ATTRIBUTE.size:offset + length]
        attribute &= 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
        if attribute == _UNIX_DIAG_NAME:
            name = value
        elif attribute == _UNIX_DIAG_UID and len(value) == 4:
            uid = struct.unpack("=I", value)[0]
        offset += (length + 3) & ~3
    if len(name) == _NAME_LENGTH and name.startswith(names.PREFIX):
        port = names.port_of("@" + name[1:].decode("latin-1"))
        if port is not None:
            found[inode] = (port, uid)


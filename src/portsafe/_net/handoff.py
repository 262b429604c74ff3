"""Never release: bind in the test, hand the listening socket to the server.

:func:`listen` binds and listens, by default on a port portsafe reserves outside the
kernel's ephemeral range (so a full ephemeral range does not stop it, and no outgoing
connection competes for it), held until the bind. :func:`spawn` starts a server process
that inherits the sockets the way systemd socket activation passes them: at fds 3, 4,
... with ``LISTEN_FDS``, ``LISTEN_PID`` and ``LISTEN_FDNAMES`` set, which gunicorn,
uvicorn (``--fd``), hypercorn and any ``sd_listen_fds()`` server read.
:func:`listen_fds` is the receiving side for servers written in Python. The port is
never closed between the test choosing it and the server serving it, so no other
process can take it: there is no race to lose.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

from portsafe._errors import AddressNotAvailableError, InvalidSettingError
from portsafe._net.bindreserved import bind_reserved
from portsafe._net.checks import bind_error, check_backlog, check_family, resolve
from portsafe._settings import shown

TYPE_CHECKING = False  # see portsafe/__init__.py

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

    from portsafe._core.reservation import Reservation

__all__ = ["listen", "listen_fds", "spawn"]

SD_LISTEN_FDS_START = 3
_NAME_OK = frozenset(chr(c) for c in range(0x21, 0x7F)) - {":"}


def _port_and_host(port: object) -> tuple[int | None, str | None]:
    if port is None:
        return None, None
    if isinstance(port, bool):
        raise TypeError(f"port must be an int, a portsafe.Reservation or None, not "
                        f"{shown(port)}")
    if isinstance(port, int):
        if not 0 <= port <= 65535:
            raise InvalidSettingError(f"port must be in 0..65535 (0 = any), not {shown(port)}")
        return port, None
    number = getattr(port, "port", None)
    if not isinstance(number, int):
        raise TypeError(f"port must be an int, a portsafe.Reservation or None, not "
                        f"{shown(port)}")
    if getattr(port, "released", False):
        raise InvalidSettingError(
            f"reservation of port {number} was already released, so another process may "
            "hold it now; bind it while the reservation is held"
        )
    host = getattr(port, "host", None)
    return number, host if isinstance(host, str) and host else None


def listen(
    host: str | None = None,
    port: int | Reservation | None = None,
    *,
    family: socket.AddressFamily | None = None,
    backlog: int | None = None,
    dual_stack: bool = False,
    reuse_address: bool = True,
) -> socket.socket:
    """Return a TCP socket bound to ``host``/``port`` and already listening.

    By default the port is one portsafe reserves, as :func:`portsafe.reserve_port` would
    (outside the kernel's ephemeral range, so neither a full ephemeral range nor an
    outgoing connection gets in the way), held only until the socket is bound. Since
    the socket stays open nobody else can take the port: pass the socket itself to the
    server (in process, or to a child with :func:`spawn`). Connections made before the
    server calls ``accept()`` wait in the backlog, so there is nothing to wait for either.

    Args:
        host: Address to bind. Default: the reservation's host if ``port`` is a
            reservation, else ``"127.0.0.1"`` (``"::1"`` for ``AF_INET6``, ``"::"`` with
            ``dual_stack``). ``""`` binds all interfaces.
        port: ``None`` (default) for a port portsafe reserves; ``0`` for the kernel's
            choice from its ephemeral range; a port number; or a held
            :class:`portsafe.Reservation` (bound while the reservation is held). If a
            program that does not use portsafe binds the reserved port first, another
            is reserved (up to 5 in all); where portsafe cannot reserve one
            (no free candidate, an unusable lock directory) the kernel picks, as with
            ``0``.
        family: ``socket.AF_INET`` or ``socket.AF_INET6``; default: from ``host``.
        backlog: ``listen()`` backlog; default ``socket.SOMAXCONN``.
        dual_stack: Accept IPv4 and IPv6 on one ``AF_INET6`` socket (``IPV6_V6ONLY``
            off). Only meaningful with a wildcard host; default host becomes ``"::"``.
        reuse_address: Set ``SO_REUSEADDR`` on POSIX (as asyncio and trio do), so a
            port with connections in ``TIME_WAIT`` can be bound. On Windows the socket
            gets ``SO_EXCLUSIVEADDRUSE`` instead, which stops others from stealing it.

    Returns:
        A blocking, listening ``socket.socket`` (a context manager; close it when done).

    Raises:
        TypeError: ``port`` is neither an int nor a reservation, ``host`` not a str,
            ``family`` or ``backlog`` not an int.
        portsafe.InvalidSettingError: a port out of range, a released reservation, a
            family other than ``AF_INET``/``AF_INET6``, a backlog out of range, a
            malformed host (a NUL in it, too long a name), or ``dual_stack`` with an
            IPv4 host or family.
        portsafe.AddressInUseError: the port is taken (the message names who holds it),
            the kernel's ephemeral range is full with ``port=0`` (the message names the
            range), or programs outside portsafe took every port reserved for it.
        portsafe.AddressNotAvailableError: the host is not an address of this machine,
            does not resolve for the family, or the OS lacks the family (no IPv6, no
            dual-stack sockets).
        PermissionError: a port below 1024 without the privilege to bind it.
        OSError: any other bind or listen failure.

    Nothing is left open (or held) when an error is raised. The default port costs one
    reservation more than ``port=0``: tens of microseconds.

    Example:
        >>> import socket, portsafe
        >>> with portsafe.listen() as server:
        ...     host, port = server.getsockname()[:2]
        ...     with socket.create_connection((host, port)) as client:
        ...         conn, _ = server.accept()
        ...         conn.close()
        >>> host
        '127.0.0.1'
    """
    number, reserved_host = _port_and_host(port)
    if family is not None:
        family = check_family(family)
    if host is None:
        host = reserved_host
    if host is None:
        host = "::" if dual_stack else "::1" if family == socket.AF_INET6 else "127.0.0.1"
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {shown(host)}")
    if family is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if dual_stack:
        if family != socket.AF_INET6:
            raise InvalidSettingError(
                f"dual_stack=True needs an IPv6 host such as '::', not {shown(host)}"
            )
        if not socket.has_dualstack_ipv6():
            raise AddressNotAvailableError(
                errno.EAFNOSUPPORT,
                "this OS has no dual-stack sockets; call listen() once per family instead",
            )
    backlog = check_backlog(backlog)
    address = tuple(resolve(host or None, number or 0, family, socket.AI_PASSIVE)[0][4])
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise AddressNotAvailableError(
            exc.errno, f"cannot create an {family.name} socket ({exc.strerror}); this "
            "host lacks that family: use an IPv4 host such as '127.0.0.1'") from exc
    try:
        if os.name == "nt":
            if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        elif reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Set explicitly so the result does not depend on the bindv6only sysctl.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        if number is None:
            bind_reserved(sock, address, host, dual_stack)
        else:
            try:
                sock.bind(address)
            except OSError as exc:
                raise bind_error(exc, host, number) from exc
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_fds(*, unset_environment: bool = True) -> list[socket.socket]:
    """Return the sockets this process inherited through ``LISTEN_FDS`` (systemd style).

    The receiving side of :func:`spawn` (and of systemd socket activation) for servers
    written in Python. Like ``sd_listen_fds()``, it returns nothing unless
    ``LISTEN_PID`` is this process's pid, so a grandchild that inherited the variables
    does not mistake fds 3, 4, ... for its own; and it marks the fds close-on-exec.

    Args:
        unset_environment: Remove ``LISTEN_FDS``, ``LISTEN_PID`` and ``LISTEN_FDNAMES``
            from ``os.environ`` so child processes do not see them (default).

    Returns:
        The sockets at fds 3, 4, ..., family and type detected from each fd; an empty
        list when nothing was passed to this process.

    Raises:
        portsafe.InvalidSettingError: ``LISTEN_FDS`` or ``LISTEN_PID`` is not a number.

    Example:
        >>> import portsafe
        >>> portsafe.listen_fds()  # in a process that was not given sockets
        []
    """
    raw_pid = os.environ.get("LISTEN_PID", "")
    raw_count = os.environ.get("LISTEN_FDS", "")
    if unset_environment:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if not raw_pid or not raw_count:
        return []
    try:
        pid, count = int(raw_pid), int(raw_count)
    except ValueError:
        raise InvalidSettingError(
            f"LISTEN_PID={raw_pid!r} and LISTEN_FDS={raw_count!r} must be numbers; "
            "unset them or fix whatever set them"
        ) from None
    if pid != os.getpid() or count <= 0:
        return []
    sockets: list[socket.socket] = []
    try:
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
            os.set_inheritable(fd, False)
            sockets.append(socket.socket(fileno=fd))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@functools.lru_cache(maxsize=1)
def _wrapper_source() -> str:
    return Path(__file__).with_name("fdexec.py").read_text(encoding="utf-8")


def _fileno(sock: object) -> int:
    if isinstance(sock, bool):
        raise TypeError(f"sockets must hold sockets or fd numbers, not {sock!r}")
    if isinstance(sock, int):
        return sock
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        raise TypeError(f"sockets must hold sockets or fd numbers, not {sock!r}")
    fd = fileno()
    if not isinstance(fd, int) or fd < 0:
        raise InvalidSettingError(f"socket {sock!r} is closed; pass an open socket")
    return fd


def _check_names(names: Iterable[str] | None, count: int) -> list[str]:
    if names is None:
        return ["unknown"] * count  # what sd_listen_fds_with_names() reports when unset
    if isinstance(names, str):
        raise TypeError(f"names must be a list of str, not the str {names!r}")
    checked = list(names)
    if len(checked) != count:
        raise InvalidSettingError(
            f"names has {len(checked)} entries for {count} sockets; give one name per socket"
        )
    for name in checked:
        if not isinstance(name, str):
            raise TypeError(f"names must be str, not {name!r}")
        if not name or len(name) > 255 or not set(name) <= _NAME_OK:
            raise InvalidSettingError(
                f"socket name {name!r} is not a valid LISTEN_FDNAMES entry: use 1-255 "
                "printable ASCII characters without ':' or spaces"
            )
    return checked


def _fill_placeholders(arg: object, count: int) -> object:
    if not isinstance(arg, str) or "{fd" not in arg:
        return arg
    arg = arg.replace("{fd}", str(SD_LISTEN_FDS_START))
    for index in range(count):
        arg = arg.replace(f"{{fd{index}}}", str(SD_LISTEN_FDS_START + index))
    return arg


def spawn(
    args: str | os.PathLike[str] | Sequence[str | bytes | os.PathLike[str]],
    sockets: socket.socket | Sequence[socket.socket | int] = (),
    *,
    names: Iterable[str] | None = None,
    **popen_kwargs: Any,
) -> subprocess.Popen[Any]:
    """Start a server process that inherits ``sockets`` at fds 3, 4, ... (systemd style).

    The child finds ``sockets[i]`` at fd ``3 + i`` with ``LISTEN_FDS`` (the count),
    ``LISTEN_PID`` (its own pid) and ``LISTEN_FDNAMES`` (the names, ``:``-joined) in its
    environment, which is what gunicorn, uvicorn ``--fd``, hypercorn and
    ``sd_listen_fds()`` expect. No other descriptor leaks into it (``close_fds``).
    In ``args``, ``{fd}`` becomes ``3`` and ``{fdN}`` becomes ``3 + N``, for servers
    that take the fd number on the command line (``uvicorn --fd {fd}``).
    The sockets are handed over by a tiny exec wrapper (``python -I -S``, which then
    ``exec``s ``args`` keeping its pid) because ``pass_fds`` alone cannot move fds or
    know the child's pid, and ``preexec_fn`` is unsafe with threads. Like ``Popen``,
    ``spawn`` raises if ``args[0]`` cannot be executed.

    The parent keeps its copies; closing them (once the child runs) does not affect the
    child. Connections made before the server calls ``accept()`` wait in the backlog.

    Args:
        args: The command, as a list (or a single program path).
        sockets: The sockets (or fd numbers) to pass, in order; a lone socket is fine.
        names: One ``LISTEN_FDNAMES`` name per socket; default ``"unknown"`` each.
        **popen_kwargs: Passed to ``subprocess.Popen`` (``env``, ``cwd``, ``stdout``,
            ``executable``, ...). ``pass_fds`` may add fds kept at their numbers (not in
            3 .. 2 + len(sockets)). ``shell=True`` and ``close_fds=False`` are refused.

    Returns:
        The ``subprocess.Popen`` of the server (its pid is the server's pid).

    Raises:
        TypeError: ``sockets`` holds something that is neither a socket nor an int.
        portsafe.InvalidSettingError: no sockets, bad ``names``, a closed socket, or a
            refused ``Popen`` option.
        NotImplementedError: on Windows, which has no fd inheritance of this kind; use
            ``portsafe.reserve_port()`` and pass the number (``--port``) instead.
        OSError: the program could not be executed (``FileNotFoundError``, ...).

    Example:
        >>> import subprocess, sys, portsafe
        >>> with portsafe.listen() as sock:
        ...     code = "import portsafe; print(portsafe.listen_fds()[0].getsockname()[0])"
        ...     proc = portsafe.spawn([sys.executable, "-c", code], [sock], text=True,
        ...                           stdout=subprocess.PIPE)
        ...     print(proc.communicate()[0].strip())
        127.0.0.1
    """
    if os.name == "nt" or sys.platform == "win32":
        raise NotImplementedError(
            "spawn() needs POSIX fd inheritance; on Windows reserve a port with "
            "portsafe.reserve_port() and pass the number to the server (--port N)"
        )
    if isinstance(sockets, socket.socket):
        sockets = [sockets]
    fds = [_fileno(sock) for sock in sockets]
    if not fds:
        raise InvalidSettingError(
            "spawn() needs at least one socket to pass; use subprocess.Popen for none"
        )
    fdnames = _check_names(names, len(fds))
    _check_popen_kwargs(popen_kwargs, len(fds))
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    argv = [_fill_placeholders(arg, len(fds)) for arg in args]
    if not argv:
        raise InvalidSettingError("args is empty; give the command to run")
    if not sys.executable:
        raise InvalidSettingError(
            "spawn() runs its exec wrapper with sys.executable, which is empty in this "
            "embedded interpreter; start the server from a regular Python"
        )
    base_env = popen_kwargs.pop("env", None)
    env = dict(os.environ if base_env is None else base_env)
    env.pop("LISTEN_PID", None)  # the wrapper sets it to the server's own pid
    env["LISTEN_FDS"] = str(len(fds))
    env["LISTEN_FDNAMES"] = ":".join(fdnames)
    return _launch(fds, argv, env, popen_kwargs)


def _check_popen_kwargs(popen_kwargs: dict[str, Any], count: int) -> None:
    if popen_kwargs.get("shell"):
        raise InvalidSettingError(
            "spawn() does not take shell=True: pass an argument list, so that LISTEN_PID "
            "is the pid of the server itself and not of a shell"
        )
    if popen_kwargs.pop("close_fds", True) is not True:
        raise InvalidSettingError("spawn() always closes other fds; drop close_fds=False")
    targets = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)
    clobbered = sorted(set(popen_kwargs.get("pass_fds", ())) & set(targets))
    if clobbered:
        raise InvalidSettingError(
            f"pass_fds {clobbered} would be replaced by the sockets at fds "
            f"{targets.start}..{targets.stop - 1}; pass them as sockets instead"
        )


def _launch(
    fds: list[int], argv: list[Any], env: dict[Any, Any], popen_kwargs: dict[str, Any]
) -> subprocess.Popen[Any]:
    import fcntl  # POSIX only: listen() must stay importable on Windows

    executable = popen_kwargs.pop("executable", None)
    extra = tuple(popen_kwargs.pop("pass_fds", ()))
    lc_ctype = env.get("LC_CTYPE")
    # Copies at fds >= 3 + count: the wrapper moves them down without clobbering any.
    floor = SD_LISTEN_FDS_START + len(fds)
    held: list[int] = []
    read_end, write_end = os.pipe()
    try:
        held.append(fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, floor))
        os.close(write_end)
        write_end = -1
        # extend() keeps the copies made so far if one fails, so finally closes them.
        held.extend(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds)
        sources = held[1:]
        wrapper = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _wrapper_source(),
            str(len(fds)),
            str(held[0]),
            "-" if lc_ctype is None else f"={lc_ctype}",
            "1" if popen_kwargs.get("restore_signals", True) else "0",
            "" if executable is None else os.fsdecode(executable),
            *(str(fd) for fd in sources),
            *argv,
        ]
        proc: subprocess.Popen[Any] = subprocess.Popen(
            wrapper, env=env, close_fds=True, pass_fds=(*held, *extra), **popen_kwargs
        )
        for fd in held:
            os.close(fd)
        held.clear()
        failure = _read_all(read_end)
    finally:
        for fd in held:
            os.close(fd)
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)
    if failure:
        with proc:  # reaps the wrapper and closes any pipes the caller asked for
            pass
        code = int(failure) if failure.isdigit() else errno.ENOEXEC
        raise OSError(code, os.strerror(code), os.fsdecode(executable or argv[0]))
    return proc


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 64):
        chunks.append(chunk)
    return b"".join(chunks).decode("ascii", errors="replace")

"""Talking to the lease keeper, and starting it: the client half, kept cheap to import.

``PORT=$(portsafe)`` runs this module and nothing heavier: raw ``_socket`` (not the
``socket`` module, whose enum set-up costs more than the whole exchange), no
``subprocess``, no ``json`` until a reply arrives.

Finding the keeper (Linux): the abstract names
``@portsafe-keeper<PROTOCOL>-<uid>-<hash>-<i>``, ``i`` = 0..7, are tried in order. They
are per user and, like every abstract name, per network namespace, which is where the
keeper's reservations (names too) live; the hash is of the settings that change what it
reserves (``PORTSAFE_RANGE``, ``PORTSAFE_EXCLUDE``), and the protocol number keeps a
keeper of another layout (an older portsafe, which held lock files) from being asked.
Abstract names carry no permissions, so a name held by another user (``SO_PEERCRED`` of
the listener) is skipped: a squatter costs one name, and taking all of them makes
``portsafe`` fail loudly instead of printing an unheld port.

Elsewhere (no abstract names: macOS, the BSDs, and the file backend's test channel on
Linux) the keeper listens on one socket in a ``0700`` directory of the user's; there the
lock directory is part of the hash too, since the keeper locks in it.

Starting it: the client *binds and listens on the free name itself*, then hands the
listening socket to a detached keeper it starts (double fork, ``exec``). Binding is the
lock: of 200 clients starting at once, one wins and starts one keeper; the others'
connections wait in that socket's backlog until the keeper answers. A keeper that
stops (idle, killed) between a client's connect and its reply costs a retry.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys

from portsafe._errors import KeeperError, KeeperNotRunningError

__all__ = [
    "DEFAULT_IDLE",
    "PROTOCOL",
    "SquattedError",
    "call",
    "call_line",
    "connect",
    "keeper_address",
    "keeper_addresses",
    "peer",
    "raw_address",
]

# Part of the address: a keeper speaking another protocol (another portsafe version)
# is never asked. 3: reservations are names on Linux (2 held lock files there).
PROTOCOL = 3
DEFAULT_IDLE = 30.0
NAMES = 8  # abstract names tried before giving up on squatters
MAX_REPLY = 1 << 20
_LINUX = sys.platform.startswith("linux")
_SELFTEST = "_PORTSAFE_SELFTEST_FILE_BACKEND"  # _platform.SELFTEST


def _abstract() -> bool:
    """``_platform.ABSTRACT``, without importing it (nor ``socket``) unless its
    test channel is asked for: the bare ``portsafe`` call stays this module alone."""
    if not _LINUX:
        return False
    if os.environ.get(_SELFTEST, "") != "1":
        return True
    from portsafe import _platform as backend  # validates the channel (raises if misused)

    return backend.ABSTRACT


def _config_hash(abstract: bool) -> str:
    from portsafe import _settings

    # The ranges as written (the keeper validates them when it reserves); where the
    # keeper locks in a lock directory, that directory normalised ("/x/" and "/x" are
    # one keeper; a relative one raises). Names have no directory: none on Linux.
    settings = [str(PROTOCOL)]
    settings += [_settings.getenv(name) for name in (_settings.RANGE, _settings.EXCLUDE)]
    if not abstract:
        settings.append(_settings.lock_dir() if _settings.lock_dir_is_explicit() else "")
        # A path is seen from every network namespace; the keeper's bind checks are not
        # (Linux's test channel: one keeper per namespace, as abstract names give).
        try:
            netns = os.stat("/proc/self/ns/net")
            settings.append(f"{netns.st_dev}:{netns.st_ino}")
        except OSError:  # no network namespaces here (macOS, the BSDs)
            pass
    blob = "\0".join(settings).encode(errors="surrogateescape")
    try:  # the bare C module: hashlib would load OpenSSL, a few ms
        from _sha2 import sha256  # type: ignore[import-not-found]  # 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found]  # 3.10-3.11
        except ImportError:  # pragma: no cover - a build without the builtin module
            from hashlib import sha256
    return str(sha256(blob).hexdigest()[:12])


_MAX_PATH = 103  # bytes of a socket path, NUL excluded (macOS: 104 with it, Linux 108)


def _private_dir() -> str:
    """The user's ``0700`` directory for the keeper's path socket (no abstract names)."""
    import contextlib
    import stat

    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"  # noqa: S108 - checked below
    path = os.path.join(base, f"portsafe-keeper-{os.getuid()}")
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
    except OSError as exc:
        raise KeeperError(exc.errno, f"cannot make the lease keeper's directory {path} "
                          f"({exc.strerror}); set XDG_RUNTIME_DIR to a directory of yours"
                          ) from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise KeeperError(
            f"{path} must be a directory owned by you with mode 0700 (found mode "
            f"{stat.filemode(st.st_mode)}, owner uid {st.st_uid}); remove it and retry"
        )
    return path


def keeper_addresses() -> list[str]:
    """Return the addresses this user's keeper may listen on, in the order tried.

    Returns:
        ``@portsafe-keeper<PROTOCOL>-<uid>-<hash>-<i>`` for i in 0..7 where there are
        abstract names (Linux), else one path in a private directory.

    Raises:
        KeeperError: The private directory is unsafe (not ours, or not 0700), cannot be
            made, or makes too long a socket path.
        portsafe.InvalidSettingError: ``PORTSAFE_LOCK_DIR`` is relative (where the
            keeper locks in a lock directory).

    Example:
        >>> len(keeper_addresses()) >= 1
        True
    """
    abstract = _abstract()
    if abstract:
        base = f"@portsafe-keeper{PROTOCOL}-{os.getuid()}-{_config_hash(abstract)}"
        return [f"{base}-{i}" for i in range(NAMES)]
    path = os.path.join(_private_dir(), f"{_config_hash(abstract)}.sock")
    if len(os.fsencode(path)) > _MAX_PATH:
        raise KeeperError(errno.ENAMETOOLONG, f"the lease keeper's socket path {path} is "
                          f"longer than unix sockets allow ({_MAX_PATH} bytes); set "
                          f"XDG_RUNTIME_DIR to a shorter directory of yours")
    return [path]


def keeper_address() -> str:
    """Return the first address this user's keeper is looked for at.

    Example:
        >>> keeper_address().startswith((f"@portsafe-keeper{PROTOCOL}-", "/"))
        True
    """
    return keeper_addresses()[0]


def raw_address(address: str) -> str:
    return "\0" + address[1:] if address.startswith("@") else address


def peer(sock: _socket.socket) -> tuple[int | None, int | None]:
    option = getattr(_socket, "SO_PEERCRED", None)
    if option is None:  # pragma: no cover - macOS: the directory's mode protects us
        return None, None
    raw = sock.getsockopt(_socket.SOL_SOCKET, option, 12)
    return (int.from_bytes(raw[0:4], sys.byteorder, signed=True) or None,
            int.from_bytes(raw[4:8], sys.byteorder, signed=True))


class SquattedError(Exception):
    def __init__(self, pid: int | None, uid: int) -> None:
        super().__init__(pid, uid)
        self.pid, self.uid = pid, uid


def connect(address: str, timeout: float) -> _socket.socket:
    """A connection to our own keeper at *address*; SquattedError if another user's."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(raw_address(address))
        _check_owner(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def _check_owner(sock: _socket.socket) -> None:
    pid, uid = peer(sock)
    if uid is not None and uid != os.getuid():
        raise SquattedError(pid, uid)


def _exchange(sock: _socket.socket, request: bytes) -> bytes:
    try:
        sock.sendall(request)
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_REPLY:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    return data


_FAST_PREFIX = b'{"ok": true, "ports": ['


def _decode(data: bytes, address: str) -> dict[str, object]:
    if data.startswith(_FAST_PREFIX):
        # The common answer, read without importing json (the keeper writes it so).
        ports, sep, rest = data[len(_FAST_PREFIX):].partition(b"]")
        pid = rest.partition(b'"pid": ')[2].partition(b",")[0]
        if sep and pid.isdigit() and ports.replace(b", ", b"").isdigit():
            return {"ok": True, "ports": [int(p) for p in ports.split(b", ")],
                    "pid": int(pid)}
    import json

    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        # Empty: the keeper stopped (idle) or died between our connect and its answer.
        raise ConnectionResetError(errno.ECONNRESET, f"the keeper at {address} sent no answer")
    return reply


def _settings_check() -> None:
    """Fail on a bad PORTSAFE_KEEPER_IDLE here, with exit 2, not in a detached keeper."""
    from portsafe import _settings

    _settings.keeper_idle(DEFAULT_IDLE)


def call(request: dict[str, object], *, start: bool = True,
         timeout: float = 10.0) -> dict[str, object]:
    """Send one request to this user's keeper, starting it first if needed.

    Args:
        request: The JSON request (``{"op": "reserve" | "release" | "list" | "ping", ...}``).
        start: Start a keeper if none is running.
        timeout: Seconds for the whole call, start included.

    Returns:
        The keeper's JSON reply; ``reply["ok"]`` says whether it succeeded.

    Raises:
        KeeperNotRunningError: No keeper runs and *start* is false.
        KeeperError: The keeper could not be started, reached or trusted.
        portsafe.InvalidSettingError: ``PORTSAFE_KEEPER_IDLE`` or ``PORTSAFE_LOCK_DIR``
            is bad.

    Example:
        >>> call({"op": "ping"})["ok"]  # doctest: +SKIP
        True
    """
    import json

    line = (json.dumps(request) + "\n").encode()
    return call_line(line, start=start, timeout=timeout)


def call_line(line: bytes, *, start: bool, timeout: float) -> dict[str, object]:
    import time

    addresses = keeper_addresses()
    deadline = time.monotonic() + timeout
    squatters: list[SquattedError] = []
    last: OSError | None = None
    started = 0
    delay = 0.005
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        free: str | None = None
        squatters.clear()
        for address in addresses:
            try:
                sock = connect(address, left)
            except SquattedError as exc:
                squatters.append(exc)
                continue
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                free = free or address
                last = exc
                continue
            except OSError as exc:  # a full backlog timed out, ...
                last = exc
                break
            try:
                return _decode(_exchange(sock, line), address)
            except OSError as exc:  # it stopped meanwhile: look again
                last = exc
                break
        else:
            if free is None:
                raise _squatted_error(squatters)
            if not start:
                raise KeeperNotRunningError(errno.ECONNREFUSED, "no lease keeper is running")
            if started >= 3:  # each start failed: give up with the last reason
                break
            from portsafe._services.keeper_start import start as start_keeper

            _settings_check()  # a bad PORTSAFE_KEEPER_IDLE fails here, not in the keeper
            try:
                if start_keeper(free, deadline - time.monotonic()):
                    started += 1
                    continue
            except KeeperError as exc:
                started += 1
                last = exc
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    if started >= 3:
        raise KeeperError(errno.ECHILD, f"could not start the lease keeper (3 tries): {last}")
    raise KeeperError(errno.ETIMEDOUT, f"the lease keeper did not answer in {timeout:g} s"
                      f" (last error: {last})")


def _squatted_error(squatters: list[SquattedError]) -> KeeperError:
    who = ", ".join(sorted({f"pid {s.pid} of uid {s.uid}" for s in squatters}))
    return KeeperError(
        errno.EADDRINUSE,
        f"every lease keeper address of yours is held by another user ({who}); ask them "
        "to stop, or ask an administrator",
    )

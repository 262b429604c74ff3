"""The lease keeper: holds reservations for ``portsafe reserve`` after the command exits.

A reservation is a lock held by a process, and it cannot be handed to another process;
a port printed by a command that then exits would be held by no one. So
``PORT=$(portsafe)`` asks a *keeper* to reserve the port and hold it for a lease.

Theory of operation:

1. One keeper per user and per lock configuration (``PORTSAFE_LOCK_DIR``,
   ``PORTSAFE_RANGE``, ``PORTSAFE_EXCLUDE``: a keeper with other settings would lock in
   the wrong place). It listens on ``@portsafe-keeper-<uid>-<hash>`` in the Linux
   abstract namespace, elsewhere on a socket in a ``0700`` directory of the user's.
2. It is started on demand, detached: a new session, ``/`` as working directory and
   ``/dev/null`` as stdio, so it never holds the caller's terminal or pipes open. Two
   keepers racing to start: the second finds the address taken and leaves.
3. Each side checks the other is the same user (``SO_PEERCRED``): abstract names carry
   no permissions, so another user could squat the name; the client then refuses it.
4. The keeper reserves through the public core (``reserve_ports``) and releases each
   port when its lease ends or on ``release``; it exits once it has held nothing for
   ``PORTSAFE_KEEPER_IDLE`` seconds (default 30). Killed, it loses its leases, and the
   kernel releases the locks.
5. Requests are one JSON object per connection and line; answers likewise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time

from portsafe._errors import PortsafeError
from portsafe._unixserver import RequestLoop, bind_unix, peer_credentials, unix_address

TYPE_CHECKING = False  # typing is not imported at run time: keep imports cheap
if TYPE_CHECKING:
    from portsafe._reserve import Reservation

__all__ = ["KeeperError", "KeeperNotRunningError", "call", "keeper_address"]

PROTOCOL = 1
DEFAULT_IDLE = 30.0
_CONFIG_VARS = ("PORTSAFE_LOCK_DIR", "PORTSAFE_RANGE", "PORTSAFE_EXCLUDE")
_FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "both": socket.AF_UNSPEC}
_SOCKTYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "both": 0}
MAX_REQUEST = 4096
MAX_REPLY = 1 << 20


class KeeperError(PortsafeError, OSError):
    """Raised when the lease keeper cannot be reached, started or trusted.

    ``portsafe reserve`` then falls back to printing an unheld port with a warning;
    ``portsafe run`` needs no keeper.
    """


class KeeperNotRunningError(KeeperError):
    """Raised by :func:`call` with ``start=False`` when no keeper is running."""


def _config_hash() -> str:
    settings = {name: os.environ.get(name, "") for name in _CONFIG_VARS}
    settings["protocol"] = str(PROTOCOL)
    blob = json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _private_dir() -> str:
    """The user's ``0700`` directory for the keeper's path socket (non-Linux)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"  # noqa: S108 - checked below
    path = os.path.join(base, f"portsafe-keeper-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise KeeperError(
            f"{path} must be a directory owned by you with mode 0700 (found mode "
            f"{stat.filemode(st.st_mode)}, owner uid {st.st_uid}); remove it and retry"
        )
    return path


def keeper_address() -> str:
    """Return this user's keeper address for the current lock settings.

    Returns:
        ``@portsafe-keeper-<uid>-<hash>`` on Linux, else a path in a private directory.

    Raises:
        KeeperError: The private directory is unsafe (not ours, or not 0700).

    Example:
        >>> keeper_address().startswith(("@portsafe-keeper-", "/"))
        True
    """
    platform = sys.platform  # not narrowed by mypy: this runs on macOS too
    if platform.startswith("linux"):
        return f"@portsafe-keeper-{os.getuid()}-{_config_hash()}"
    return os.path.join(_private_dir(), f"{_config_hash()}.sock")


def _call_once(address: str, request: dict[str, object], timeout: float) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(unix_address(address))
        pid, uid = peer_credentials(sock)
        if uid is not None and uid != os.getuid():
            raise KeeperError(
                f"the keeper address {address} is held by pid {pid} of uid {uid}, not "
                "by you; ask its owner to stop it, or use `portsafe run`"
            )
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_REPLY:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        raise KeeperError(f"the keeper at {address} sent no valid answer") from None
    if not isinstance(reply, dict):
        raise KeeperError(f"the keeper at {address} sent no valid answer")
    return reply


def _launch() -> None:
    idle = os.environ.get("PORTSAFE_KEEPER_IDLE", str(DEFAULT_IDLE))
    # The keeper runs in "/" (it must not pin the caller's directory), so a relative
    # sys.path entry would not find this very portsafe: name its directory explicitly.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "portsafe._keeper", "--daemon", "--idle", idle],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd="/", close_fds=True, timeout=30, check=False, env=env,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise KeeperError(f"could not start the lease keeper: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise KeeperError(f"could not start the lease keeper: {why}")


def call(request: dict[str, object], *, start: bool = True,
         timeout: float = 5.0) -> dict[str, object]:
    """Send one request to this user's keeper, starting it first if needed.

    Args:
        request: The JSON request (``{"op": "reserve" | "release" | "list" | "ping", ...}``).
        start: Start a keeper if none is running.
        timeout: Seconds for the exchange.

    Returns:
        The keeper's JSON reply; ``reply["ok"]`` says whether it succeeded.

    Raises:
        KeeperNotRunningError: No keeper runs and *start* is false.
        KeeperError: The keeper could not be started, reached or trusted.

    Example:
        >>> call({"op": "ping"})["ok"]  # doctest: +SKIP
        True
    """
    address = keeper_address()
    try:
        return _call_once(address, request, timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        if not start:
            raise KeeperNotRunningError(exc.errno, "no lease keeper is running") from None
    except KeeperError:
        raise
    except OSError as exc:
        raise KeeperError(exc.errno, f"the lease keeper at {address} failed: {exc}") from None
    _launch()
    try:
        return _call_once(address, request, timeout)
    except KeeperError:
        raise
    except OSError as exc:
        raise KeeperError(exc.errno, f"the lease keeper at {address} failed: {exc}") from None


# --- the keeper process ----------------------------------------------------------------


class Keeper:
    """The keeper's lease book.

    Args:
        idle: Seconds to stay alive holding nothing.

    Example:
        >>> k = Keeper(idle=1.0)
        >>> json.loads(k.handle(b'{"op": "ping"}', None, None) or b"")["ok"]
        True
    """

    def __init__(self, *, idle: float) -> None:
        self.idle = idle
        self.leases: dict[int, tuple[Reservation, float, int | None]] = {}
        self.last_active = time.monotonic()
        self.stop: object = None  # set to the loop's stop() by main()

    def handle(self, line: bytes, pid: int | None, uid: int | None) -> bytes | None:
        """Answer one JSON request line; refuse other users silently.

        Args:
            line: The request.
            pid: The sender's pid, if known.
            uid: The sender's uid, if known.

        Returns:
            The JSON reply line, or None to drop the connection.

        Example:
            See the class docstring.
        """
        if uid is not None and uid != os.getuid():
            return None
        self.last_active = time.monotonic()
        try:
            reply = self._dispatch(_parse_request(line), pid)
        except PortsafeError as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            reply = {"ok": False, "kind": type(exc).__name__, "error": message}
            if hasattr(exc, "candidates"):
                reply["candidates"] = exc.candidates
        except (ValueError, TypeError, KeyError) as exc:
            reply = {"ok": False, "kind": "InvalidSettingError", "error": str(exc)}
        return json.dumps(reply).encode() + b"\n"

    def _dispatch(self, request: dict[str, object], pid: int | None) -> dict[str, object]:
        op = request.get("op")
        now = time.monotonic()
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "protocol": PROTOCOL}
        if op == "list":
            leases = [{"port": port, "expires_in": round(max(exp - now, 0.0), 3),
                       "requester": who} for port, (_r, exp, who) in sorted(self.leases.items())]
            return {"ok": True, "pid": os.getpid(), "leases": leases}
        if op == "release":
            port = request["port"]
            entry = self.leases.pop(port, None) if isinstance(port, int) else None
            if entry is not None:
                entry[0].release()
            return {"ok": True, "released": entry is not None}
        if op == "reserve":
            return self._reserve(request, pid, now)
        raise ValueError(f"unknown request {op!r}")

    def _reserve(self, request: dict[str, object], pid: int | None,
                 now: float) -> dict[str, object]:
        from portsafe._reserve import reserve_ports  # keep startup cheap

        n, lease, lo_hi = request.get("n", 1), request.get("lease"), request.get("range")
        if not isinstance(n, int) or not isinstance(lease, (int, float)) or lease <= 0:
            raise ValueError("reserve needs an int n and a positive lease")
        ports = None
        if lo_hi is not None:
            if not (isinstance(lo_hi, list) and len(lo_hi) == 2
                    and all(isinstance(x, int) for x in lo_hi)):
                raise ValueError("range must be [low, high]")
            ports = range(lo_hi[0], lo_hi[1] + 1)
        host = request.get("host")
        group = reserve_ports(
            n, contiguous=bool(request.get("contiguous", False)),
            host=host if isinstance(host, str) else None,
            family=_FAMILIES[str(request.get("family", "ipv4"))],
            socktype=_SOCKTYPES[str(request.get("socktype", "tcp"))], ports=ports,
        )
        for reservation in group:
            self.leases[reservation.port] = (reservation, now + float(lease), pid)
        return {"ok": True, "ports": list(group.ports), "pid": os.getpid(),
                "expires_in": float(lease)}

    def tick(self) -> None:
        """Release expired leases; stop the keeper once idle long enough.

        Example:
            >>> Keeper(idle=60.0).tick()
        """
        now = time.monotonic()
        for port in [p for p, (_r, exp, _w) in self.leases.items() if exp <= now]:
            self.leases.pop(port)[0].release()
            self.last_active = now
        if not self.leases and now - self.last_active >= self.idle and callable(self.stop):
            self.stop()


def _parse_request(line: bytes) -> dict[str, object]:
    request = json.loads(line)
    if not isinstance(request, dict):
        raise TypeError("request must be a JSON object")
    return request


def _serve(keeper: Keeper, listener: socket.socket) -> None:
    loop = RequestLoop(listener, keeper.handle, max_request=MAX_REQUEST, timeout=5.0,
                       tick=keeper.tick, tick_interval=0.25)
    keeper.stop = loop.stop
    loop.run()


def main(argv: list[str] | None = None) -> int:
    """Run a keeper: ``python -m portsafe._keeper [--daemon] [--idle SECONDS]``.

    With ``--daemon``, fork a detached keeper and return once it listens (exit 0, also
    when another keeper already does), or exit 1 with the reason on stderr.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code.

    Example:
        Started for you by ``portsafe reserve``; you never need to run it.
    """
    args = sys.argv[1:] if argv is None else argv
    idle = float(args[args.index("--idle") + 1]) if "--idle" in args else DEFAULT_IDLE
    address = keeper_address()
    if "--daemon" not in args:
        guard = _claim_path(address)
        try:
            with contextlib.closing(bind_unix(address, mode=0o600)) as listener:
                _serve(Keeper(idle=idle), listener)
        finally:
            if guard is not None:
                os.close(guard)
        return 0
    read_end, write_end = os.pipe()
    if os.fork() != 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as status:
            message = status.read().decode(errors="replace")
        if message in ("ok", "busy"):
            return 0
        print(message or "the keeper died while starting", file=sys.stderr)
        return 1
    os.close(read_end)
    os._exit(_daemon(address, idle, write_end))


def _daemon(address: str, idle: float, status_fd: int) -> int:
    """The forked keeper: detach, claim the address, report on *status_fd*, serve."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    try:
        guard = _claim_path(address)
        listener = bind_unix(address, mode=0o600)
    except PortsafeError:  # another keeper won the race to start: the caller uses it
        os.write(status_fd, b"busy")
        return 0
    except OSError as exc:
        os.write(status_fd, f"cannot listen on {address}: {exc}".encode())
        return 1
    os.write(status_fd, b"ok")
    os.close(status_fd)
    try:
        with contextlib.closing(listener):
            _serve(Keeper(idle=idle), listener)
    except BaseException:  # noqa: BLE001 - a detached daemon has nowhere to report to
        return 1
    finally:
        if guard is not None:
            with contextlib.suppress(OSError):
                os.unlink(address)
            os.close(guard)
    return 0


def _claim_path(address: str) -> int | None:
    """Lock ``<path>.lock`` for the keeper's life (path addresses only), so that two
    keepers starting at once cannot both decide the socket file is stale."""
    if address.startswith("@"):
        return None
    import fcntl  # POSIX only

    fd = os.open(address + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise KeeperError("another keeper is starting") from None
    return fd


if __name__ == "__main__":
    sys.exit(main())

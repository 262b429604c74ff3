"""``portsafe doctor``: check what portsafe relies on, and say what to do about it.

Each check is a plain function returning a :class:`CheckResult` (name, ok, detail,
advice), built from ``os``/``stat``/``fcntl`` inspection and the public helpers
(``_settings.lock_dir()``, ``_ranges.describe_ranges()``), so that checks can be added
or adapted as the lock directory's format evolves. :data:`CHECKS` lists them in the
order they run; ``portsafe doctor`` exits 0 only if every one is ok.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys

TYPE_CHECKING = False  # typing is not imported at run time: keep imports cheap
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

__all__ = ["CHECKS", "CheckResult", "doctor_verb", "run_checks"]

# File systems whose record locks are local to one machine or emulated (NFS with a
# working lockd is coordinated across clients, but only while the lock daemons agree).
_NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs",
               "lustre", "afs", "sshfs")
_TMPFILES_DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/local/lib/tmpfiles.d",
                  "/usr/lib/tmpfiles.d", "/lib/tmpfiles.d")
_CRON_CLEANERS = ("/etc/cron.daily/tmpreaper", "/etc/cron.daily/tmpwatch")
_SHARD_PREFIX = "ports-"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one doctor check.

    Attributes:
        name: Short identifier, e.g. ``"lock_dir.trust"``.
        ok: True when nothing needs doing.
        detail: What was found, in words.
        advice: What to do about it (empty when ok).

    Example:
        >>> CheckResult("x", True, "fine").ok
        True
    """

    name: str
    ok: bool
    detail: str
    advice: str = ""


def _lock_dir(path: str | None) -> str:
    if path is not None:
        return path
    from portsafe import _settings

    return _settings.lock_dir()


def _who(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_setting(path: str | None = None) -> CheckResult:
    """``PORTSAFE_LOCK_DIR`` (if set) is usable: an absolute path.

    Example:
        >>> check_setting("/tmp/x").ok
        True
    """
    name = "lock_dir.setting"
    try:
        where = _lock_dir(path)
    except ValueError as exc:
        return CheckResult(name, False, str(exc), "set PORTSAFE_LOCK_DIR to an absolute path")
    return CheckResult(name, True, f"lock directory: {where}")


def check_path(path: str | None = None) -> CheckResult:
    """The lock directory is a real directory (not a symlink), or does not exist yet.

    Example:
        >>> check_path("/nonexistent/portsafe").ok
        True
    """
    name = "lock_dir.path"
    where = _lock_dir(path)
    try:
        info = os.lstat(where)
    except FileNotFoundError:
        return CheckResult(name, True, f"{where} does not exist yet; the first reservation "
                           "creates it")
    except OSError as exc:
        return CheckResult(name, False, f"cannot inspect {where}: {exc.strerror}",
                           "set PORTSAFE_LOCK_DIR to a directory you can reach")
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(where)
        return CheckResult(name, False, f"{where} is a symlink (to {target}): whoever can "
                           "change it can redirect every user's locks",
                           f"remove the link, or set PORTSAFE_LOCK_DIR={target}")
    if not stat.S_ISDIR(info.st_mode):
        return CheckResult(name, False, f"{where} is not a directory "
                           f"({stat.filemode(info.st_mode)})",
                           "remove it (portsafe recreates it), or set PORTSAFE_LOCK_DIR")
    return CheckResult(name, True, f"{where} is a directory")


def _writers(info: os.stat_result) -> list[str]:
    """Who besides the owner may create, delete or rename entries in a directory."""
    mode = info.st_mode
    sticky = bool(mode & stat.S_ISVTX)
    found = []
    if mode & stat.S_IWOTH and not sticky:
        found.append("every user")
    if mode & stat.S_IWGRP and not sticky:
        found.append(f"group {info.st_gid}")
    return found


def check_trust(path: str | None = None) -> CheckResult:
    """Nobody but you and root can remove or replace the lock directory or its files.

    The directory and every parent must be owned by root or you, and writable by others
    only with the sticky bit (as ``/tmp``). Another owner can deny service (delete
    the files and so drop every holder's exclusion); a non-sticky writable directory
    lets every such user do it.

    Example:
        >>> check_trust("/").ok
        True
    """
    name = "lock_dir.trust"
    where = _lock_dir(path)
    me = os.getuid() if hasattr(os, "getuid") else 0
    problems = []
    current = where
    while True:
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            problems.append(f"cannot inspect {current}: {exc.strerror}")
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            if info.st_uid not in (0, me):
                problems.append(f"{current} belongs to {_who(info.st_uid)}, who can remove "
                                "or replace what is in it")
            others = _writers(info)
            if others:
                problems.append(f"{current} (mode {stat.filemode(info.st_mode)}) lets "
                                f"{' and '.join(others)} delete or rename its entries")
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    if problems:
        return CheckResult(name, False, "; ".join(problems),
                           "use a directory owned by root or you, writable by others only "
                           "with the sticky bit (chmod 1777, like /tmp), or set "
                           "PORTSAFE_LOCK_DIR to one")
    return CheckResult(name, True, f"{where} and its parents are owned by root or you, and "
                       "no other user can delete or rename entries in them")


def check_files(path: str | None = None) -> CheckResult:
    """Every lock file is a plain file with one link that every user can lock (0666).

    Example:
        >>> check_files("/nonexistent/portsafe").ok
        True
    """
    name = "lock_dir.files"
    where = _lock_dir(path)
    try:
        names = sorted(n for n in os.listdir(where) if n.startswith(_SHARD_PREFIX))
    except FileNotFoundError:
        return CheckResult(name, True, "no lock files yet")
    except OSError as exc:
        return CheckResult(name, False, f"cannot list {where}: {exc.strerror}",
                           "make it readable, or set PORTSAFE_LOCK_DIR")
    bad = []
    owners: set[int] = set()
    for entry in names:
        try:
            info = os.lstat(os.path.join(where, entry))
        except OSError:
            continue  # removed meanwhile
        owners.add(info.st_uid)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            bad.append(f"{entry} is not a plain file with one link "
                       f"({stat.filemode(info.st_mode)}, {info.st_nlink} links)")
        elif stat.S_IMODE(info.st_mode) & 0o666 != 0o666:
            bad.append(f"{entry} has mode {stat.filemode(info.st_mode)} (owner "
                       f"{_who(info.st_uid)}): other users cannot lock it")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad)} in all)" if len(bad) > 5 else "")
        return CheckResult(name, False, shown,
                           "remove those files when no portsafe process runs (they are "
                           "recreated with mode 0666), or set PORTSAFE_LOCK_DIR")
    who = ", ".join(_who(uid) for uid in sorted(owners)) or "nobody yet"
    return CheckResult(name, True, f"{len(names)} lock files, all plain and lockable by "
                       f"every user (created by {who})")


def _tmpfiles_rules(where: str) -> tuple[list[str], list[str]]:
    """(age-based cleaning rules covering *where*, exclusion rules covering it)."""
    cleaning: list[str] = []
    excluded: list[str] = []
    seen: set[str] = set()
    for directory in _TMPFILES_DIRS:
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith(".conf") or entry in seen:
                continue  # an earlier directory's file of that name overrides it
            seen.add(entry)
            try:
                with open(os.path.join(directory, entry), encoding="utf-8",
                          errors="replace") as conf:
                    lines = conf.read().splitlines()
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) < 2 or fields[0].startswith("#"):
                    continue
                kind, target = fields[0].rstrip("!-=~^+"), fields[1]
                covers = where == target or where.startswith(target.rstrip("/") + "/")
                if not covers:
                    continue
                source = f"{directory}/{entry}: {line.strip()}"
                if kind in ("x", "X"):
                    excluded.append(source)
                elif kind in ("d", "D", "e", "v", "q", "Q") and len(fields) >= 6 \
                        and fields[5] not in ("-", "0"):
                    cleaning.append(source)
    return cleaning, excluded


def check_tmp_cleaner(path: str | None = None) -> CheckResult:
    """No age-based tmp cleaner deletes the lock files (they are never written, so they
    look old): systemd-tmpfiles rules, tmpreaper, tmpwatch.

    Example:
        >>> check_tmp_cleaner("/nonexistent/portsafe").name
        'lock_dir.tmp_cleaner'
    """
    name = "lock_dir.tmp_cleaner"
    where = os.path.abspath(_lock_dir(path))
    cleaning, excluded = _tmpfiles_rules(where)
    cron = [p for p in _CRON_CLEANERS if os.path.exists(p)]
    if excluded and not cron:
        return CheckResult(name, True, f"excluded from systemd-tmpfiles cleaning ({excluded[0]})")
    if not cleaning and not cron:
        return CheckResult(name, True, "no age-based tmp cleaner covers it")
    found = cleaning[:2] + cron
    return CheckResult(
        name, False,
        f"an age-based tmp cleaner covers {where}: {'; '.join(found)}. Lock files are "
        "never written, so they look old; deleting one while ports are held lets a second "
        "process take a held port",
        f"exclude it: echo 'x {where}' > /etc/tmpfiles.d/portsafe.conf (and for tmpreaper"
        "/tmpwatch, add it to their protected paths), or set PORTSAFE_LOCK_DIR to a "  # noqa: S108
        "directory no cleaner touches")


def _mount_of(where: str) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding *where* (Linux)."""
    best = ("", "unknown")
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
            lines = info.read().splitlines()
    except OSError:
        return best
    real = os.path.realpath(where)
    for line in lines:
        left, _sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail:
            continue
        point = fields[4].replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) \
                and len(point) >= len(best[0]):
            best = (point, tail[0])
    return best


def _probe_dir(where: str) -> str | None:
    """A directory on the lock directory's file system where a probe file may go: its
    parent if on the same file system (the shared directory itself is left alone), else
    the directory."""
    def usable(path: str) -> bool:
        return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)

    parent = os.path.dirname(where) or "/"
    try:
        same = os.stat(parent).st_dev == os.stat(where).st_dev
    except OSError:
        same = True  # no directory yet: it will be created in the parent
    if same and usable(parent):
        return parent
    return where if usable(where) else None


def _lockf(fd: int, kind: int, start: int, *, query: bool = False) -> int | None:
    """Set (or, with *query*, test) a one-byte record lock; the holder's pid if any."""
    import fcntl
    import struct

    # struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
    layout = "hhqqi" if sys.platform.startswith("linux") else "qqihh"
    if layout == "hhqqi":
        raw = struct.pack(layout, kind, os.SEEK_SET, start, 1, 0)
    else:  # BSD/macOS order: l_start, l_len, l_pid, l_type, l_whence
        raw = struct.pack(layout, start, 1, 0, kind, os.SEEK_SET)
    out = fcntl.fcntl(fd, fcntl.F_GETLK if query else fcntl.F_SETLK, raw)
    if not query:
        return None
    if layout == "hhqqi":
        l_type, _w, _s, _l, pid = struct.unpack(layout, out)
    else:
        _s, _l, pid, l_type, _w = struct.unpack(layout, out)
    return None if l_type == fcntl.F_UNLCK else int(pid)


def _locks_work(probe: str) -> str | None:
    """None if a lock taken by a child is seen by this process and dropped when the
    child dies; else what went wrong."""
    import fcntl

    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        ready_r, ready_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                _lockf(fd, fcntl.F_WRLCK, 7)
                os.write(ready_w, b"y")
            except OSError as exc:
                os.write(ready_w, f"n{exc.strerror}".encode())
                code = 1
            os.read(done_r, 1)
            os._exit(code)
        os.close(ready_w)
        os.close(done_r)
        try:
            said = os.read(ready_r, 4096).decode(errors="replace")
            if not said.startswith("y"):
                return f"taking a record lock failed: {said[1:] or 'no answer'}"
            seen = _lockf(fd, fcntl.F_WRLCK, 7, query=True)
            if seen != pid:
                return (f"a lock held by process {pid} is reported as held by {seen}"
                        if seen else f"a lock held by process {pid} is not seen by others")
        finally:
            os.write(done_w, b"x")
            os.close(done_w)
            os.close(ready_r)
            os.waitpid(pid, 0)
        if _lockf(fd, fcntl.F_WRLCK, 7, query=True) is not None:
            return "a lock outlived the process that held it"
        return None
    finally:
        os.close(fd)
        os.unlink(probe)


def check_record_locks(path: str | None = None) -> CheckResult:
    """Record locks work on the lock directory's file system: a lock taken in a child
    process is seen by the parent (``F_GETLK``) and gone once the child exits.

    Example:
        >>> check_record_locks("/tmp").name
        'lock_dir.record_locks'
    """
    name = "lock_dir.record_locks"
    where = _lock_dir(path)
    if not hasattr(os, "fork"):  # pragma: no cover - Windows uses other locks
        return CheckResult(name, True, "not tested on this OS (no fork)")
    point, fstype = _mount_of(where)
    on = f"{fstype} file system at {point}" if point else "its file system"
    directory = _probe_dir(where)
    if directory is None:
        return CheckResult(name, True, f"not tested: neither {where} nor its parent is "
                           "writable by you")
    probe = os.path.join(directory, f".portsafe-doctor-{os.getpid()}")
    try:
        problem = _locks_work(probe)
    except OSError as exc:
        problem = f"the test failed: {exc.strerror or exc}"
    if problem is not None:
        return CheckResult(name, False, f"record locks do not work on {on}: {problem}",
                           "set PORTSAFE_LOCK_DIR to a directory on a local file system "
                           "(e.g. under /tmp or /run)")
    if fstype.split(".")[0] in _NETWORK_FS or fstype.startswith("fuse"):
        return CheckResult(name, False, f"record locks work here, but {on} is a network or "
                           "user-space file system: processes on other machines, or "
                           "behind another mount of it, may not see them",
                           "set PORTSAFE_LOCK_DIR to a directory on a local file system")
    return CheckResult(name, True, f"record locks work on {on} (a child's lock is seen, "
                       "and dropped when it exits)")


def _ranges() -> dict[str, object]:
    from portsafe._ranges import describe_ranges

    return describe_ranges()


def check_ephemeral(path: str | None = None) -> CheckResult:
    """The kernel's ephemeral range is known, and leaves room for candidates.

    Example:
        >>> check_ephemeral().name
        'ranges.ephemeral'
    """
    name = "ranges.ephemeral"
    try:
        info = _ranges()
    except ValueError as exc:
        return CheckResult(name, False, str(exc), "fix the PORTSAFE_* setting it names")
    eph = info.get("ephemeral")
    if not isinstance(eph, dict) or not eph.get("range"):
        return CheckResult(name, False, "the ephemeral range is unknown",
                           "set PORTSAFE_RANGE to ports outside it")
    low, high = eph["range"]
    return CheckResult(name, True, f"{low}-{high} (from {eph.get('source')}): the kernel "
                       "hands these out to outgoing connections, so portsafe avoids them")


def check_reserved(path: str | None = None) -> CheckResult:
    """The ports reserved from the ephemeral range (``ip_local_reserved_ports``).

    Example:
        >>> check_reserved().name
        'ranges.reserved'
    """
    name = "ranges.reserved"
    try:
        reserved = _ranges().get("reserved")
    except ValueError as exc:
        return CheckResult(name, False, str(exc), "fix the PORTSAFE_* setting it names")
    spans = reserved.get("ranges") if isinstance(reserved, dict) else None
    source = reserved.get("source") if isinstance(reserved, dict) else None
    if not spans:
        return CheckResult(name, True, f"none (from {source or 'the OS'})")
    shown = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in spans[:8])
    return CheckResult(name, True, f"{shown} (from {source}): never handed out by the "
                       "kernel, usable by portsafe")


def check_candidates(path: str | None = None) -> CheckResult:
    """There are enough candidate ports, from the OS's own ranges (no fallback).

    Example:
        >>> check_candidates().name
        'ranges.candidates'
    """
    name = "ranges.candidates"
    try:
        info = _ranges().get("candidates")
    except ValueError as exc:
        return CheckResult(name, False, str(exc), "fix the PORTSAFE_* setting it names")
    if not isinstance(info, dict):
        return CheckResult(name, False, "no candidate ports", "set PORTSAFE_RANGE")
    count, fallback = info.get("count"), info.get("fallback")
    if not isinstance(count, int) or count < 100:
        return CheckResult(name, False, f"only {count} candidate ports "
                           f"({info.get('source')})",
                           "widen PORTSAFE_RANGE, or narrow the ephemeral range "
                           "(sysctl net.ipv4.ip_local_port_range)")
    if fallback:
        return CheckResult(name, False, f"{count} candidates, from a fallback: {fallback}",
                           "set PORTSAFE_RANGE to ports outside the ephemeral range")
    return CheckResult(name, True, f"{count} candidate ports ({info.get('source')})")


def check_keeper(path: str | None = None) -> CheckResult:
    """Your lease keeper's settings are valid, and no other user squats its addresses.

    Example:
        >>> check_keeper().name
        'keeper'
    """
    from portsafe import _keeper_client as kc
    from portsafe import _settings

    name = "keeper"
    try:
        idle = _settings.keeper_idle(kc.DEFAULT_IDLE)
        addresses = kc.keeper_addresses()
    except (ValueError, OSError) as exc:
        return CheckResult(name, False, str(exc), "fix the setting or directory it names")
    squatters, mine = [], None
    for address in addresses:
        try:
            sock = kc._connect(address, 2.0)
        except kc._SquattedError as exc:
            squatters.append(f"{address} by pid {exc.pid} of {_who(exc.uid)}")
            continue
        except OSError:
            continue
        sock.close()
        mine = mine or address
    state = f"running at {mine}" if mine else "not running (started on demand)"
    if squatters:
        return CheckResult(name, False, f"keeper {state}; held by another user: "
                           f"{'; '.join(squatters)}",
                           "portsafe skips these names, but ask that user (or an "
                           "administrator) to stop those processes")
    return CheckResult(name, True, f"keeper {state}; idles out after {idle:g} s")


def check_port_server(path: str | None = None) -> CheckResult:
    """``PORTSERVER_ADDRESS``, if set, is served by root or you (another user's server
    could hand out ports that others hold).

    Example:
        >>> check_port_server().name
        'port_server'
    """
    from portsafe import _keeper_client as kc
    from portsafe import _settings

    name = "port_server"
    address = _settings.portserver_address()
    if not address:
        return CheckResult(name, True, "PORTSERVER_ADDRESS is not set")
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(kc._raw(address))
        pid, uid = kc._peer(sock)
    except OSError as exc:
        return CheckResult(name, False, f"PORTSERVER_ADDRESS={address}: nothing answers "
                           f"({exc.strerror or exc})",
                           "start the server (`portsafe serve`) or unset PORTSERVER_ADDRESS")
    finally:
        sock.close()
    me = os.getuid()
    if uid is not None and uid not in (0, me):
        return CheckResult(name, False, f"PORTSERVER_ADDRESS={address} is served by pid "
                           f"{pid} of {_who(uid)}, not by root or you",
                           "unset PORTSERVER_ADDRESS, or use a server run by root or you")
    return CheckResult(name, True, f"PORTSERVER_ADDRESS={address} is served by pid {pid}"
                       f" of {_who(uid) if uid is not None else 'an unknown user'}")


CHECKS: tuple[Callable[[str | None], CheckResult], ...] = (
    check_setting, check_path, check_trust, check_files, check_tmp_cleaner,
    check_record_locks, check_ephemeral, check_reserved, check_candidates, check_keeper,
    check_port_server,
)


def run_checks(path: str | None = None) -> list[CheckResult]:
    """Run every check in :data:`CHECKS`; a check that crashes is reported, not raised.

    Args:
        path: The lock directory to check (default: the one in use).

    Returns:
        One result per check, in order.

    Example:
        >>> all(isinstance(r, CheckResult) for r in run_checks("/nonexistent/x"))
        True
    """
    results: list[CheckResult] = []
    for check in CHECKS:
        if check is not check_setting and results and not results[0].ok and path is None:
            lock_checks = check.__name__ in ("check_path", "check_trust", "check_files",
                                             "check_tmp_cleaner", "check_record_locks")
            if lock_checks:
                continue  # no usable directory to look at
        try:
            results.append(check(path))
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the rest
            label = check.__name__.removeprefix("check_")
            results.append(CheckResult(label, False, f"the check failed: "
                                       f"{type(exc).__name__}: {exc}", "report this bug"))
    return results


def doctor_verb(args: argparse.Namespace) -> int:
    """``portsafe doctor``: print each check (``--json``: as data); exit 0 if all ok.

    Example:
        >>> import argparse
        >>> doctor_verb(argparse.Namespace(json=True))  # doctest: +SKIP
        0
    """
    results = run_checks()
    healthy = all(r.ok for r in results)
    if args.json:
        import json

        print(json.dumps({"ok": healthy, "checks": [dataclasses.asdict(r) for r in results]},
                         indent=2))
    else:
        for r in results:
            print(f"{'ok  ' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
            if r.advice:
                print(f"      -> {r.advice}")
        print("all is well" if healthy else
              f"{sum(not r.ok for r in results)} problem(s) found")
    return 0 if healthy else 1


"""``portsafe doctor``'s lock-directory checks: setting, path, trust, files, tmp cleaners.

Plain functions, one per check, each returning a :class:`CheckResult`, from ``os`` and
``stat`` inspection only, so that checks for a new lock-directory format can be added
next to them.
"""

from __future__ import annotations

import os
import stat

from portsafe._cli.checks import CheckResult, user_text

__all__ = ["check_files", "check_format", "check_path", "check_setting",
           "check_tmp_cleaner", "check_trust"]

_TMPFILES_DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/local/lib/tmpfiles.d",
                  "/usr/lib/tmpfiles.d", "/lib/tmpfiles.d")
_CRON_CLEANERS = ("/etc/cron.daily/tmpreaper", "/etc/cron.daily/tmpwatch")
_SHARD_PREFIX = "ports-"


def _lock_dir(path: str | None) -> str:
    if path is not None:
        return path
    from portsafe import _settings

    return _settings.lock_dir()


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
    """The lock directory is a real directory (not a symlink), or does not exist yet, and
    none of the system's own (``/``, ``/tmp``, ``/usr``...), which portsafe refuses.

    Example:
        >>> check_path("/nonexistent/portsafe").ok
        True
        >>> check_path("/").ok
        False
    """
    from portsafe._errors import LockDirError
    from portsafe._locking.systemdirs import refuse_system_directory

    name = "lock_dir.path"
    where = _lock_dir(path)
    try:
        refuse_system_directory(where)
    except LockDirError as exc:
        return CheckResult(name, False, f"portsafe refuses it: {exc.strerror}",
                           "set PORTSAFE_LOCK_DIR to a directory of its own")
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
                problems.append(f"{current} belongs to {user_text(info.st_uid)}, who can remove "
                                "or replace what is in it")
            others = _writers(info)
            if others:
                refused = " (portsafe refuses it)" if current == where and \
                    "every user" in others else ""
                problems.append(f"{current} (mode {stat.filemode(info.st_mode)}) lets "
                                f"{' and '.join(others)} delete or rename its entries"
                                f"{refused}")
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
                       f"{user_text(info.st_uid)}): other users cannot lock it")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad)} in all)" if len(bad) > 5 else "")
        return CheckResult(name, False, shown,
                           "remove those files when no portsafe process runs (they are "
                           "recreated with mode 0666), or set PORTSAFE_LOCK_DIR")
    who = ", ".join(user_text(uid) for uid in sorted(owners)) or "nobody yet"
    return CheckResult(name, True, f"{len(names)} lock files, all plain and lockable by "
                       f"every user (created by {who})")


def check_format(path: str | None = None) -> CheckResult:
    """The directory's format marker: this version's format, with its generation.

    Example:
        >>> check_format("/nonexistent/portsafe").ok
        True
    """
    from portsafe._errors import LockDirError
    from portsafe._locking import fileformat as _lockformat

    name = "lock_dir.format"
    where = _lock_dir(path)
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _lockformat.NOFOLLOW
    try:
        fd = os.open(where, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return CheckResult(name, True, "not made yet: the first reservation makes it complete")
    except OSError as exc:
        return CheckResult(name, False, f"cannot open {where}: {exc.strerror}",
                           "see lock_dir.path and lock_dir.trust above")
    try:
        try:
            marker = _lockformat.read_marker(fd, where)
        except LockDirError as exc:
            return CheckResult(name, False, exc.strerror or str(exc),
                               "use the portsafe version that made it, or remove the "
                               "directory when no portsafe process runs")
        if marker is None:
            return CheckResult(name, True, f"no {_lockformat.MARKER} yet (made by portsafe "
                               f"0.1.0, or being completed): the next reservation completes "
                               f"it in place, sharing it with 0.1.0 processes")
    finally:
        os.close(fd)
    return CheckResult(name, True, f"format {_lockformat.FORMAT}, generation "
                       f"{marker.generation}")


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

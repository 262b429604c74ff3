"""One call's walk over the candidates: lock, verify, count why others were passed over.

The walk visits one shard at a time (:meth:`CandidateSet.walk`), the home shard first,
in a plain loop with no generator between it and the first candidate: this is the hot
path of every reservation. Each candidate is tried at most once per call (G5), and a
failure says how many were held, in use, or refused for lack of privilege.
"""

from __future__ import annotations

import errno
import os
import random

from portsafe._core.probe import refusal
from portsafe._errors import LockDirError, NoFreePortError
from portsafe._locking import files as _locks
from portsafe._locking.claim import CHANGED, HELD
from portsafe._locking.fileformat import SHARD_BITS
from portsafe._locking.nametable import NAMESPACE

TYPE_CHECKING = False  # typing is not imported at run time: importing portsafe stays cheap
if TYPE_CHECKING:
    from typing import Any

    from portsafe._core import probe as _probe
    from portsafe._core.candidates import CandidateSet
    from portsafe._locking.files import LockDir, LockTable, Table
    from portsafe._locking.nametable import Namespace

__all__ = ["Search", "claim_next", "first_free", "rng"]

rng = random.Random()  # noqa: S311 - spreading picks, not secrecy
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=rng.seed)  # siblings must not pick in lockstep

_DENIED = errno.EACCES  # a port below ip_unprivileged_port_start, without the privilege

# Where this process's last walk succeeded: (lock directory, shard). The next walk starts
# there: its lock file is open and the kernel's lock list of it is in the CPU's cache (a
# cold one cost more than the rest of a reservation with 30,000 held). A walk that had to
# pass more than _CROWDED taken ports there moves on to a random shard next time.
_home: tuple[object, int] | None = None
_CROWDED = 32

# The walk of the home shard in progress, for reserve_port's next call to go on with:
# [lock directory, candidate set, shard, ports, stride, next index]. Going on with one
# random cycle (random start, random coprime stride) visits every candidate of the shard
# before any twice, as a fresh random start per call would not; and it costs no random
# numbers per call. Each call still tries a candidate at most once (G5).
_cursor: list[Any] | None = None


class Search:
    """One call's walk over the candidates, counting why each one was passed over.

    The walk is one loop over one shard at a time (:meth:`CandidateSet.walk`), the home
    shard first, with no generator between it and the first candidate: this is the hot
    path of every reservation. Each candidate is tried at most once (G5).

    Example:
        >>> from portsafe._core import probe as _probe, ranges as _ranges
        >>> search = Search(_ranges.explicit_candidates(range(30000, 30010)),
        ...                 _probe.targets(None, 2, 1), frozenset(), _locks.table().current())
        >>> ports = search.take(2)
        >>> len(ports), search.attempts >= 2
        (2, True)
        >>> for port in ports: _ = search.table.release(port)
    """

    __slots__ = ("attempts", "candidates", "denied", "directory", "excluded", "held",
                 "in_use", "probes", "table")

    def __init__(self, candidates: CandidateSet, probes: _probe.Probes,
                 excluded: frozenset[int], directory: LockDir | Namespace) -> None:
        self.candidates = candidates
        self.probes = probes
        self.excluded = excluded
        self.table = _locks.table()
        self.directory = directory
        self.attempts = self.held = self.in_use = self.denied = 0

    def take(self, n: int, walked: int | None = None, taken: list[int] | None = None,
             visited: int = 0) -> list[int]:
        """Lock and verify up to *n* ports, in walk order; nothing else is left held.

        *walked*: a home shard :func:`first_free` already walked (it is skipped).
        *taken*, *visited*: what ``_reserve``'s one-call way took, and how many candidates
        of the walk in progress it visited: the walk goes on after them.
        """
        candidates = self.candidates
        if taken is None:
            taken = []
        cursor = _cursor
        if walked is not None or cursor is None or cursor[1] is not candidates or \
                cursor[0] is not self.directory:
            cursor = None
        last = _home
        home = last[1] if last is not None and last[0] == self.directory else None
        if walked is not None:
            home = walked
        elif visited and cursor is not None:
            home = cursor[2]  # the one-call way's walk: go on with it
        if cursor is not None and cursor[2] != home:
            cursor = None
        try:
            if walked is None and home in candidates.shard_keys and \
                    self._take_in(home, n, taken, cursor, visited if cursor else 0):
                return taken
            for key in candidates.rest(rng, home):  # made only when home falls short
                if self._take_in(key, n, taken):
                    return taken
        except BaseException:
            for port in taken:
                self.table.release(port)
            raise
        return taken

    def _take_in(self, key: int, n: int, taken: list[int],
                 cursor: list[Any] | None = None, visited: int = 0) -> bool:
        """Walk shard *key*, adding what it locks and verifies to *taken*; True at *n*.

        *cursor*: the walk of *key* in progress (``_cursor``), to go on with; *visited*:
        how many of its candidates this call has already tried (they are not again).
        """
        global _home, _cursor
        if cursor is not None:
            items, stride, index = cursor[3], cursor[4], cursor[5]
        else:
            items, index, stride = self.candidates.walk(rng, key)
        count = len(items)
        table, directory, probes, excluded = self.table, self.directory, self.probes, \
            self.excluded
        try_claim, claim, steps = table.try_claim, probes.claim, probes.steps
        attempts = held = in_use = denied = 0
        try:
            for _ in range(count - visited):
                port = items[index]
                index = (index + stride) % count
                if port in excluded:
                    continue
                attempts += 1
                code = try_claim(port, directory, claim)
                if code:  # nothing held: why not?
                    busy = refusal(code, steps)
                    if busy < 0:
                        held += 1
                    elif busy == _DENIED:
                        denied += 1
                    else:
                        in_use += 1
                    continue
                taken.append(port)
                if len(taken) == n:
                    if held + in_use + denied <= _CROWDED:
                        _home = (directory, key)
                        if cursor is not None:
                            cursor[5] = index
                        else:
                            _cursor = [directory, self.candidates, key, items, stride, index]
                    else:
                        _home = _cursor = None
                    return True
            return False
        finally:
            self.attempts += attempts
            self.held += held
            self.in_use += in_use
            self.denied += denied

    def take_run(self, n: int) -> list[int]:
        """Lock and verify *n* contiguous ports ``p .. p+n-1``, or nothing."""
        candidates, excluded, table = self.candidates, self.excluded, self.table
        for start in self.candidates.order(rng, None, excluded):
            run = range(start, start + n)
            if not all(port in candidates and port not in excluded for port in run):
                continue
            taken: list[int] = []
            try:
                for port in run:
                    if not self._take_one(port):
                        break
                    taken.append(port)
            except BaseException:
                for port in taken:
                    table.release(port)
                raise
            if len(taken) == n:
                return taken
            for port in taken:
                table.release(port)
        return []

    def _take_one(self, port: int) -> bool:
        code = self.table.try_claim(port, self.directory, self.probes.claim)
        if not code:
            self.attempts += 1
            return True
        self.passed(code)
        return False

    def passed(self, code: int) -> None:
        """Count one candidate tried and found not free, by its claim's *code*."""
        self.attempts += 1
        busy = refusal(code, self.probes.steps)
        if busy < 0:
            self.held += 1
        elif busy == _DENIED:
            self.denied += 1
        else:
            self.in_use += 1

    def failure(self, wanted: str, found: int = 0) -> NoFreePortError | LockDirError:
        """The error for a walk that found too few: LockDirError when no candidate's
        lock file was usable, else NoFreePortError with the counts."""
        candidates = self.candidates
        # skipped (poisoned) lock files: raise LockDirError only if nothing was usable
        shards = candidates.shards
        unusable = self.table.unusable(self.directory, shards)
        if unusable and len(unusable) == len(shards):
            if TYPE_CHECKING:
                assert isinstance(self.directory, LockDir)
            return _locks.unusable_error(self.directory, unusable)
        partial = f", found only {found}" if found else ""
        excluded = len(self.excluded)
        where = ", ".join(sorted({f"{host}" for _, _, host, _ in self.probes}))
        denied = (f", {self.denied} refused by the OS for lack of privilege (ports below "
                  f"1024, or net.ipv4.ip_unprivileged_port_start on Linux, need root or "
                  f"CAP_NET_BIND_SERVICE: choose higher ports)") if self.denied else ""
        return NoFreePortError(
            f"no {wanted} among {candidates.count} candidate ports ({candidates.description}"
            f"{f', {excluded} excluded by exclude=' if excluded else ''}): tried "
            f"{self.attempts}{partial}, {self.held} held by portsafe reservations (this "
            f"process's included), "
            f"{self.in_use} in use on {where}{denied}. Release reservations you no longer "
            f"need, or widen the range (ports=..., PORTSAFE_RANGE)",
            attempts=self.attempts, candidates=candidates.count)

    def too_many(self, n: int, contiguous: bool) -> NoFreePortError:
        """*n* is more than there are candidates: fail before locking anything."""
        candidates = self.candidates
        return NoFreePortError(
            f"cannot reserve {n} {'contiguous ' if contiguous else ''}ports: there are only "
            f"{candidates.count} candidate ports ({candidates.description}); ask for fewer, "
            f"or widen the range (ports=..., PORTSAFE_RANGE)",
            attempts=0, candidates=candidates.count)


def claim_next(table: Table, path: str, candidates: CandidateSet,
               probes: _probe.Probes) -> int:
    """``reserve_port``'s hot path: the home shard's next candidate, claimed in one call
    that checks the lock directory by descriptor too, when everything is as the last
    call left it (the same directory, watched, the same walk and home shard).

    Returns the port, now held; 0 when that does not apply (nothing was tried: ask
    :func:`first_free`, after ``LockTable.current``); or minus the claim's code when the
    candidate was not free: the walk has moved past it, and ``first_free(..., tried=)``
    goes on from there and counts it (G5: no candidate is tried twice in a call).

    Example:
        >>> from portsafe._core import probe as _probe, ranges as _ranges
        >>> t, cands = _locks.table(), _ranges.explicit_candidates(range(30000, 30010))
        >>> claim_next(t, _locks.lock_dir(), cands, _probe.targets(None, 2, 1)) >= -15
        True
    """
    cursor = _cursor
    if cursor is None or cursor[1] is not candidates:
        return 0
    if cursor[0] is NAMESPACE:  # names: the claim is the whole check
        items: list[int] = cursor[3]
        index: int = cursor[5]
        port = items[index]
        code = table.try_claim(port, NAMESPACE, probes.claim)
        cursor[5] = (index + cursor[4]) % len(items)
        return -code if code else port
    if TYPE_CHECKING:
        assert isinstance(table, LockTable)
    return _claim_next_file(table, path, cursor, probes)


def _claim_next_file(table: LockTable, path: str, cursor: list[Any],
                     probes: _probe.Probes) -> int:
    """:func:`claim_next` with lock files: the claim checks the directory too."""
    directory = table._last_dir
    if cursor[0] is not directory or path is not table._last_path or directory is None:
        return 0
    ctime = directory.watch_ctime
    items: list[int] = cursor[3]
    index: int = cursor[5]
    port = items[index]
    home = table._home
    if not ctime or directory.broken or home is None or home.lockdir is not directory or \
            home.index != port >> SHARD_BITS:
        return 0
    run, plan = probes.claim
    with table._mutex:
        if port in table.held or table._home is not home:  # another thread moved it: its
            return 0  # file may be closed, and its descriptor's number another file's now
        code = run(home.fd, port, plan, directory.fd, ctime)
        if not code:
            table.held[port] = home
            home.count += 1
        elif code == HELD:
            table._missed(home)  # the flood check's counters: under the mutex
    if code == CHANGED:
        return 0
    cursor[5] = (index + cursor[4]) % len(items)
    return -code if code else port


def first_free(candidates: CandidateSet, probes: _probe.Probes,
               excluded: frozenset[int], directory: LockDir | Namespace,
               tried: int = 0) -> int | Search:
    """One free port, locked and verified: ``reserve_port``'s walk. Else the Search that
    found none, with its counts, to raise its :meth:`Search.failure`.

    The common case (the home shard's next candidate is free) makes no Search: its
    walk is inlined here. G5 holds: the home shard is walked once, then the others.
    *tried*: the code of the candidate :func:`claim_next` found not free (the walk goes
    on after it, and counts it).

    Example:
        >>> from portsafe._core import probe as _probe, ranges as _ranges
        >>> port = first_free(_ranges.explicit_candidates(range(30000, 30010)),
        ...                   _probe.targets(None, 2, 1), frozenset(), _locks.table().current())
        >>> 30000 <= port < 30010
        True
        >>> _locks.table().release(port)
        True
    """
    global _home, _cursor
    cursor = _cursor
    if cursor is None or cursor[1] is not candidates or cursor[0] is not directory:
        last = _home
        if last is None or last[0] != directory or last[1] not in candidates.shard_keys:
            search = Search(candidates, probes, excluded, directory)
            taken = search.take(1)
            return taken[0] if taken else search
        ports, start, step = candidates.walk(rng, last[1])
        cursor = _cursor = [directory, candidates, last[1], ports, step, start]
    key: int = cursor[2]
    items: list[int] = cursor[3]
    stride: int = cursor[4]
    index: int = cursor[5]
    count = len(items)
    table = _locks.table()
    try_claim, claim = table.try_claim, probes.claim
    attempts = held = in_use = denied = 0
    visits = count
    if tried:  # claim_next's candidate, counted here
        attempts, visits, busy = 1, count - 1, refusal(tried, probes.steps)
        if busy < 0:
            held = 1
        elif busy == _DENIED:
            denied = 1
        else:
            in_use = 1
    for _ in range(visits):
        port = items[index]
        index = (index + stride) % count
        if port in excluded:
            continue
        attempts += 1
        code = try_claim(port, directory, claim)
        if not code:
            cursor[5] = index
            if attempts - 1 > _CROWDED:  # passed that many taken ports here
                _home = _cursor = None
            return port
        busy = refusal(code, probes.steps)  # nothing held: why not?
        if busy < 0:
            held += 1
        elif busy == _DENIED:
            denied += 1
        else:
            in_use += 1
    _cursor = None
    search = Search(candidates, probes, excluded, directory)
    search.attempts, search.held, search.in_use, search.denied = attempts, held, in_use, denied
    taken = search.take(1, walked=key)
    return taken[0] if taken else search

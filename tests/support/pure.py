"""Run this process's claims in Python for one test, where a test records what they do."""

from __future__ import annotations

import pytest

from portsafe._core import probe as _probe
from portsafe._core import reserve as _reserve
from portsafe._locking import claim as _claim


def pure_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every probe plan compiled from now on (and the cached ones dropped) run the
    pure-Python claim of ``portsafe._locking.claim``, whose sockets and lock calls go through
    module attributes a test can patch; the C version's calls cannot be seen from here."""
    monkeypatch.setattr(_claim, "_compile", _claim._compile_py)
    monkeypatch.setattr(_probe, "_cache", {})
    monkeypatch.setattr(_reserve, "_default_probes", None)


def count_locks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """:func:`pure_claim`, and the list every port the claims try to lock is appended to."""
    locked: list[int] = []
    real = _claim.LOCKF
    assert real is not None

    def counting(fd: int, command: int, length: int, port: int) -> None:
        if command == _claim.EXCLUSIVE:
            locked.append(port)
        real(fd, command, length, port)

    pure_claim(monkeypatch)
    monkeypatch.setattr(_claim, "LOCKF", counting)
    return locked

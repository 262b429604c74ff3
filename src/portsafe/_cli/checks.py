"""What every ``portsafe doctor`` check returns, :class:`CheckResult`, and how a check
names a user.

Each check module (``doctor_names``, ``doctor_lockdir``, ``doctor_locks``,
``doctor_common``) builds its results from this one class, so ``portsafe doctor`` prints
and serializes them all alike.
"""

from __future__ import annotations

import dataclasses

__all__ = ["CheckResult", "user_text"]


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


def user_text(uid: int) -> str:
    """A user as a check's detail names it: ``uid 0 (root)``, or just ``uid N``.

    Example:
        >>> user_text(0)
        'uid 0 (root)'
    """
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"

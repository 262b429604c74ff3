"""What both lock tables answer about the ports this process holds."""

from __future__ import annotations

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["HeldPorts"]


class HeldPorts:
    """The ports this process holds, as both lock tables keep them: ``held`` maps each
    to what holds it (a descriptor for names, a shard file for lock files).

    Example:
        >>> from portsafe._locking.files import table
        >>> table().holds(1), table().held_count >= 0
        (False, True)
    """

    held: Mapping[int, object]

    def holds(self, port: int) -> bool:
        """Whether this process holds *port*."""
        return port in self.held

    @property
    def held_count(self) -> int:
        """How many ports this process holds."""
        return len(self.held)

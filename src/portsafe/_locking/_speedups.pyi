"""The compiled half of portsafe._locking.names' claim (see portsafe._locking.claim for
the plan and result codes)."""

_Option = tuple[int, int, int]
_Step = tuple[int, int, str, tuple[int, ...], tuple[_Option, ...]]

API: int

def compile(steps: tuple[_Step, ...], /) -> bytes | None: ...
def claim_name(port: int, plan: bytes, high: int, /) -> int: ...

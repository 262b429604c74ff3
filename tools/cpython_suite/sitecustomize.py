"""Install portsafe's module aliases in every process started with this dir on PYTHONPATH.

Does nothing unless PORTSAFE_CPYTHON_REPLACE is set (see _portsafe_alias.py). Any
sitecustomize this one shadows (later on sys.path) still runs.
"""

import os
import sys

if os.environ.get("PORTSAFE_CPYTHON_REPLACE"):
    import _portsafe_alias

    _portsafe_alias.install()


def _chain() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_chain()
del _chain

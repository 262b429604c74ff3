"""Helpers shared by the port-server tests: addresses, and waiting for a server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from portsafe import _server


def server_name() -> str:
    """A fresh abstract-namespace address."""
    return f"@portsafe-test-{uuid.uuid4().hex[:12]}"


def wait_listening(address: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on *address* (without sending a pid)."""
    target = _server.unix_address(address)
    for _ in range(400):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(target)
            except OSError:
                time.sleep(0.025)
                continue
        return
    raise AssertionError(f"nothing listens on {address!r}")


def portpicker_portserver() -> Path | None:
    """Google's portserver.py as installed with portpicker, if it is."""
    script = Path(sys.executable).parent / "portserver.py"
    if not script.exists():
        script = Path(shutil.which("portserver.py") or "/nonexistent")
    return script if script.exists() else None

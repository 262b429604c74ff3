"""The exec wrapper behind :func:`portsafe.spawn`; runs as ``python -I -S -c <this file>``.

Why a wrapper at all: ``subprocess`` keeps ``pass_fds`` at their parent numbers and
cannot set ``LISTEN_PID`` to the child's pid (unknown until fork); ``preexec_fn`` could
do both but is unsafe in a threaded parent. So the child first runs this file, which
moves the sockets to 3, 4, ..., sets ``LISTEN_PID`` to its own pid and ``exec``s the
server, which keeps that pid.

Why Python and not ``/bin/sh -c 'exec 3<&N ...'``: dash (Debian's ``/bin/sh``) only
accepts single-digit descriptors in redirections (``exec 11<&0`` -> "exec: 11: not
found"), and a test process easily has fds above 9. Python handles any fd number and
lets exec failures travel back to the parent like ``subprocess`` does.

It runs with ``-I -S`` (no site, no ``PYTHON*`` variables: fast, and the user's
environment cannot change how the wrapper behaves) and touches nothing but what it must:
Python's start-up coerces a C locale by setting ``LC_CTYPE`` and ignores ``SIGPIPE`` /
``SIGXFSZ``, so both are undone before ``exec``.

argv: ``count errpipe lc_ctype restore_signals executable src_fd... target_args...``
where ``lc_ctype`` is ``-`` (unset) or ``=value`` and ``executable`` may be empty.
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> None:
    """Move the inherited sockets to 3, 4, ..., set ``LISTEN_PID`` and exec the target."""
    count, errpipe = int(argv[1]), int(argv[2])
    lc_ctype, restore_signals, executable = argv[3], argv[4] == "1", argv[5]
    sources = [int(fd) for fd in argv[6 : 6 + count]]
    args = argv[6 + count :]
    # The parent placed every source at >= 3 + count, so no move clobbers another source.
    for index, fd in enumerate(sources):
        os.dup2(fd, 3 + index, inheritable=True)
    for fd in sources:
        os.close(fd)
    os.set_inheritable(errpipe, False)  # so the parent reads EOF once exec succeeds
    env = dict(os.environ)
    if lc_ctype == "-":
        env.pop("LC_CTYPE", None)
    else:
        env["LC_CTYPE"] = lc_ctype[1:]
    env["LISTEN_PID"] = str(os.getpid())
    if restore_signals:
        for name in ("SIGPIPE", "SIGXFSZ"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        if executable:
            os.execve(executable, args, env)  # noqa: S606 - exec'ing the server is the job
        else:
            os.execvpe(args[0], args, env)  # noqa: S606 - PATH lookup as Popen does
    except OSError as exc:
        os.write(errpipe, f"{exc.errno or 0}".encode())
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv)

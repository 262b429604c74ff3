"""Run a command under a seccomp filter that refuses unix sockets, as a sandbox may.

    python tests/children/seccomp.py COMMAND [ARG ...]

Installs a filter that makes ``socket(AF_UNIX, ...)`` fail with EPERM (as a container's or
a snap's profile may), then execs COMMAND: portsafe there cannot bind the names that
hold reservations on Linux. Exits 77 where seccomp filters cannot be installed, or on a
machine other than x86_64 and aarch64.
"""

import ctypes
import os
import platform
import socket
import struct
import sys

NR_SOCKET = {"x86_64": 41, "aarch64": 198}[platform.machine()]
ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]  # AUDIT_ARCH_*
LOAD, JUMP_IF_EQUAL, RETURN = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM

def op(code, k, true=0, false=0):
    return struct.pack("=HBBI", code, true, false, k)

program = b"".join([
    op(LOAD, 4), op(JUMP_IF_EQUAL, ARCH, 1, 0), op(RETURN, ALLOW),  # seccomp_data.arch
    op(LOAD, 0), op(JUMP_IF_EQUAL, NR_SOCKET, 0, 3),  # .nr
    op(LOAD, 16), op(JUMP_IF_EQUAL, socket.AF_UNIX, 0, 1),  # .args[0]: the domain
    op(RETURN, EPERM), op(RETURN, ALLOW),
])

class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

code = ctypes.create_string_buffer(program)
prog = Program(len(program) // 8, ctypes.cast(code, ctypes.c_void_p))
libc = ctypes.CDLL(None, use_errno=True)
ulong = ctypes.c_ulong
if (libc.prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)) != 0  # PR_SET_NO_NEW_PRIVS
        or libc.prctl(22, ulong(2), ctypes.byref(prog), ulong(0), ulong(0)) != 0):
    sys.exit(77)  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER refused
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
except PermissionError:
    pass
else:
    sys.exit(77)
os.execvp(sys.argv[1], sys.argv[1:])

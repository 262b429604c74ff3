/* portsafe._locking._speedups: one candidate's claim (hold its name, bind-check) in one
 * call, in C.
 *
 * The optional compiled half of the name claim: portsafe/_locking/claim.py documents the
 * plan and result codes, portsafe/_locking/names.py holds the pure-Python version with the
 * same results (tests/locking/test_claim.py runs both against each other). Built on Linux
 * only, where reservations are names; elsewhere, or where it is not built, or with
 * PORTSAFE_PURE_PYTHON=1, portsafe runs the Python version.
 *
 * Every call here makes only non-blocking system calls (socket, setsockopt, bind, close,
 * fcntl) and keeps the GIL: callers hold portsafe's own mutex around a claim, and nothing
 * here runs Python code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <limits.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Results of claim_name(), as in claim.py: kind | step << 4 | errno << 8. */
#define CLAIMED 0
#define HELD 1      /* the name is someone else's */
#define REFUSED 2   /* a setsockopt or bind failed (errno, step): in use, or worse */
#define NO_SOCKET 3 /* socket() failed (errno, step) */
#define LOCK_ERROR 4 /* socket() or bind() of the name failed otherwise (errno) */

#define MAX_OPTIONS 4

/* One bind of a plan, fixed size so that a plan is a plain array in a bytes object. */
typedef struct {
    int family;
    int type;
    int options;
    int option[MAX_OPTIONS][3]; /* level, name, value */
    socklen_t length;
    union {
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } address;
} step_t;

static int
as_int(PyObject *obj, int *out)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < INT_MIN || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value out of range for a C int");
        return -1;
    }
    *out = (int)value;
    return 0;
}

/* compile(steps) -> bytes | None: _probe's steps as claim_name() runs them; None for any it
 * cannot (a host that is not a numeric address, such as one with a %scope, or another
 * family), which then take the Python way. */
static PyObject *
speedups_compile(PyObject *module, PyObject *steps)
{
    if (!PyTuple_Check(steps)) {
        PyErr_SetString(PyExc_TypeError, "steps must be a tuple");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(steps);
    PyObject *result = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(step_t));
    if (result == NULL) {
        return NULL;
    }
    step_t *plan = (step_t *)PyBytes_AS_STRING(result);
    memset(plan, 0, count * sizeof(step_t));
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(steps, i);
        step_t *step = &plan[i];
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 5) {
            PyErr_SetString(PyExc_TypeError, "a step is (family, type, host, rest, options)");
            goto error;
        }
        PyObject *host = PyTuple_GET_ITEM(item, 2);
        PyObject *rest = PyTuple_GET_ITEM(item, 3);
        PyObject *options = PyTuple_GET_ITEM(item, 4);
        if (as_int(PyTuple_GET_ITEM(item, 0), &step->family) < 0 ||
                as_int(PyTuple_GET_ITEM(item, 1), &step->type) < 0) {
            goto error;
        }
        if (!PyUnicode_Check(host) || !PyTuple_Check(rest) || !PyTuple_Check(options)) {
            PyErr_SetString(PyExc_TypeError, "a step is (family, type, host, rest, options)");
            goto error;
        }
        const char *name = PyUnicode_AsUTF8(host);
        if (name == NULL) {
            goto error;
        }
        Py_ssize_t extra = PyTuple_GET_SIZE(rest);
        Py_ssize_t set = PyTuple_GET_SIZE(options);
        if (set > MAX_OPTIONS || strchr(name, '%') != NULL) {
            goto declined;
        }
        if (step->family == AF_INET && extra == 0) {
            step->length = sizeof(struct sockaddr_in);
            step->address.in.sin_family = AF_INET;
            if (inet_pton(AF_INET, name, &step->address.in.sin_addr) != 1) {
                goto declined;
            }
        }
        else if (step->family == AF_INET6 && (extra == 0 || extra == 2)) {
            int flowinfo = 0, scope = 0;
            if (extra == 2 && (as_int(PyTuple_GET_ITEM(rest, 0), &flowinfo) < 0 ||
                               as_int(PyTuple_GET_ITEM(rest, 1), &scope) < 0)) {
                goto error;
            }
            step->length = sizeof(struct sockaddr_in6);
            step->address.in6.sin6_family = AF_INET6;
            step->address.in6.sin6_flowinfo = htonl((uint32_t)flowinfo);
            step->address.in6.sin6_scope_id = (uint32_t)scope;
            if (inet_pton(AF_INET6, name, &step->address.in6.sin6_addr) != 1) {
                goto declined;
            }
        }
        else {
            goto declined;
        }
        step->options = (int)set;
        for (Py_ssize_t k = 0; k < set; k++) {
            PyObject *option = PyTuple_GET_ITEM(options, k);
            if (!PyTuple_Check(option) || PyTuple_GET_SIZE(option) != 3) {
                PyErr_SetString(PyExc_TypeError, "an option is (level, name, value)");
                goto error;
            }
            for (int j = 0; j < 3; j++) {
                if (as_int(PyTuple_GET_ITEM(option, j), &step->option[k][j]) < 0) {
                    goto error;
                }
            }
        }
    }
    return result;
declined:
    Py_DECREF(result);
    Py_RETURN_NONE;
error:
    Py_DECREF(result);
    return NULL;
}

/* Bind and close each of the *count* steps of *plan* on *port*: CLAIMED, or the code of
 * the first that failed (REFUSED or NO_SOCKET, with its step and errno). */
static long
check_binds(const step_t *plan, Py_ssize_t count, long port)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        const step_t *step = &plan[i];
        int sock = socket(step->family, step->type | SOCK_CLOEXEC, 0);
        if (sock < 0) {
            return NO_SOCKET | (long)i << 4 | (long)errno << 8;
        }
        int code = 0;
        for (int k = 0; k < step->options && !code; k++) {
            int value = step->option[k][2];
            if (setsockopt(sock, step->option[k][0], step->option[k][1], &value,
                           sizeof(value)) != 0) {
                code = errno;
            }
        }
        if (!code) {
            union {
                struct sockaddr_in in;
                struct sockaddr_in6 in6;
            } address;
            memcpy(&address, &step->address, sizeof(address));
            if (step->family == AF_INET) {
                address.in.sin_port = htons((uint16_t)port);
            }
            else {
                address.in6.sin6_port = htons((uint16_t)port);
            }
            if (bind(sock, (struct sockaddr *)&address, step->length) != 0) {
                code = errno;
            }
        }
        close(sock);
        if (code) {
            return REFUSED | (long)i << 4 | (long)code << 8;
        }
    }
    return CLAIMED;
}

/* The abstract name of a held port, as _locking/names.py makes it: "\0portsafe1:" and the
 * port in three six-bit digits of ALPHABET, most significant first. */
static const char ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
#define NAME_PREFIX "\0portsafe1:"
#define NAME_PREFIX_LENGTH (sizeof(NAME_PREFIX) - 1)
#define LOW_FDS 256 /* a held name at or above this descriptor is moved to *high* */

/* claim_name(port, plan, high) -> int: bind *port*'s name with a new SOCK_DGRAM socket,
 * then bind and close each step of *plan* on *port*. Claimed: the socket's descriptor
 * << 8 (kind CLAIMED), moved to the lowest free descriptor from *high* when it is at or
 * above LOW_FDS and *high* is above 0 (where that fails it stays). Else, with nothing
 * left open: HELD (the name is bound: someone holds the port), LOCK_ERROR with the errno
 * of socket() or bind() of the name, or the failed step's code (REFUSED or NO_SOCKET). */
static PyObject *
speedups_claim_name(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "claim_name(port, plan, high)");
        return NULL;
    }
    long port = PyLong_AsLong(args[0]);
    long high = PyLong_AsLong(args[2]);
    if ((port == -1 || high == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (port < 0 || port > 65535 || high < 0 || high > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "port must be 0-65535, high a descriptor");
        return NULL;
    }
    if (!PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[1]) % sizeof(step_t)) {
        PyErr_SetString(PyExc_TypeError, "plan must come from compile()");
        return NULL;
    }
    const step_t *plan = (const step_t *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t count = PyBytes_GET_SIZE(args[1]) / (Py_ssize_t)sizeof(step_t);

    struct sockaddr_un address;
    memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    memcpy(address.sun_path, NAME_PREFIX, NAME_PREFIX_LENGTH);
    address.sun_path[NAME_PREFIX_LENGTH] = ALPHABET[port >> 12];
    address.sun_path[NAME_PREFIX_LENGTH + 1] = ALPHABET[(port >> 6) & 63];
    address.sun_path[NAME_PREFIX_LENGTH + 2] = ALPHABET[port & 63];
    socklen_t length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                                   NAME_PREFIX_LENGTH + 3);

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return PyLong_FromLong(LOCK_ERROR | (long)errno << 8);
    }
    if (bind(fd, (struct sockaddr *)&address, length) != 0) {
        int failed = errno;
        close(fd);
        return PyLong_FromLong(failed == EADDRINUSE ? HELD : LOCK_ERROR | (long)failed << 8);
    }
    long code = check_binds(plan, count, port);
    if (code != CLAIMED) {
        close(fd);
        return PyLong_FromLong(code);
    }
    if (fd >= LOW_FDS && high > 0 && fd < high) {
        int moved = fcntl(fd, F_DUPFD_CLOEXEC, (int)high);
        if (moved >= 0) {
            close(fd);
            fd = moved;
        }
    }
    return PyLong_FromLong((long)fd << 8);
}

static PyMethodDef speedups_methods[] = {
    {"compile", speedups_compile, METH_O,
     "compile(steps) -> bytes | None: a probe plan as claim_name() runs it."},
    {"claim_name", (PyCFunction)(void (*)(void))speedups_claim_name, METH_FASTCALL,
     "claim_name(port, plan, high) -> int: hold a port's name and bind-check the port."},
    {NULL, NULL, 0, NULL},
};

/* The version of this module's contract with claim.py, which uses the module only when
 * it is the one it expects: a module built from another portsafe version (an editable
 * install not rebuilt) is left unused, not called with arguments it does not take.
 * 4: compile() and claim_name() only. */
#define API 4

static int
speedups_exec(PyObject *module)
{
    return PyModule_AddIntConstant(module, "API", API);
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "portsafe._locking._speedups",
    .m_doc = "One candidate's name claim (hold its name, bind-check) in one call; see "
             "portsafe._locking.names.",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}

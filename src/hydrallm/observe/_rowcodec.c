/* The journal's steps on every request in C (the encoder, the usage slice, `Appender`):
   optional, with the same functions in Python (hydrallm/observe/rowcodec.py) used when
   this module is not built.

   encode(obj) -> bytes
       `marshal.dumps(obj)` for what the journal queues (tuples and lists of None, bools,
       ints that fit in 32 bits, floats, str and bytes), readable by `marshal.loads`; but
       with no table of objects already written (marshal looks up every object another
       reference holds, and the status page holds the newest rows' values): ~25 machine
       instructions a value instead of ~140.  Anything else (a larger int, another type,
       nesting deeper than 8) raises ValueError, and the caller uses `marshal` instead.

   rows_message(rows) -> bytes
       The spooled message of the queue's rows (`marshal.dumps(("rows", rows))`), each
       row encoded at its request by `Appender` (bytes) or a tuple encoded here.

   usage_slice(body) -> bytes | None
       The part of a whole response body from its last `"usage"` (else its last
       `"amazon-bedrock-invocationMetrics"`), at most CARRY bytes; None when neither is
       there.  As `hydrallm.observe.usage.usage_slice`, in one call (`bytes.rfind` parses
       its arguments the old way: ~0.25k instructions before it searches). */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memrchr */
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <structmember.h> /* T_BOOL, READONLY (Python 3.11) */

#define CARRY (16 * 1024)
#define MAX_DEPTH 8

/* The output: written first into the caller's buffer on the C stack (a row is a few hundred
   bytes), moved to the heap only if it outgrows it; made a bytes object once, at the end
   (`done`).  (A bytes object made at 4 kB and shrunk at the end was ~0.7k instructions of
   malloc, realloc and free a row.) */
typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char heap; /* data was allocated here (PyMem) */
} Out;

static int
grow(Out *out, Py_ssize_t more)
{
    Py_ssize_t cap = out->cap * 2;
    if (cap < out->len + more) {
        cap = out->len + more;
    }
    char *data;
    if (out->heap) {
        data = PyMem_Realloc(out->data, (size_t)cap);
    }
    else {
        data = PyMem_Malloc((size_t)cap);
        if (data != NULL) {
            memcpy(data, out->data, (size_t)out->len);
        }
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    out->data = data;
    out->cap = cap;
    out->heap = 1;
    return 0;
}

static inline int
reserve(Out *out, Py_ssize_t more)
{
    return out->len + more <= out->cap ? 0 : grow(out, more);
}

static inline char *
at(Out *out)
{
    return out->data + out->len;
}

static void
release(Out *out)
{
    if (out->heap) {
        PyMem_Free(out->data);
        out->heap = 0;
    }
}

/* The bytes written (NULL and an exception when `failed`); the buffer let go either way. */
static PyObject *
done(Out *out, int failed)
{
    PyObject *bytes = failed ? NULL : PyBytes_FromStringAndSize(out->data, out->len);
    release(out);
    return bytes;
}

static inline void
put_u32(char *p, uint32_t n)
{
    p[0] = (char)(n & 0xff);
    p[1] = (char)((n >> 8) & 0xff);
    p[2] = (char)((n >> 16) & 0xff);
    p[3] = (char)((n >> 24) & 0xff);
}

static int
put_sized(Out *out, char type, const char *data, Py_ssize_t n)
{
    if (n > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "too long");
        return -1;
    }
    if (reserve(out, 5 + n) < 0) {
        return -1;
    }
    char *p = at(out);
    p[0] = type;
    put_u32(p + 1, (uint32_t)n);
    memcpy(p + 5, data, (size_t)n);
    out->len += 5 + n;
    return 0;
}

static int put_other(Out *out, PyObject *v, int depth);

/* A value that is not a container, written at once (1), or 0 when it is not one of them
   (or -1 and an exception).  Inline, in the order of how often a row holds them: a row's
   26 values are written with no call each. */
static inline int
put_scalar(Out *out, PyObject *v)
{
    PyTypeObject *type = Py_TYPE(v);
    if (type == &PyUnicode_Type && PyUnicode_IS_ASCII(v)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(v);
        if (n < 256) {
            if (reserve(out, 2 + n) < 0) {
                return -1;
            }
            char *p = at(out);
            p[0] = 'z'; /* TYPE_SHORT_ASCII */
            p[1] = (char)n;
            memcpy(p + 2, PyUnicode_DATA(v), (size_t)n);
            out->len += 2 + n;
            return 1;
        }
        return 0;
    }
    if (v == Py_None || v == Py_True || v == Py_False) {
        if (reserve(out, 1) < 0) {
            return -1;
        }
        *at(out) = v == Py_None ? 'N' : (v == Py_True ? 'T' : 'F');
        out->len += 1;
        return 1;
    }
    if (type == &PyFloat_Type) {
        if (reserve(out, 9) < 0) {
            return -1;
        }
        char *p = at(out);
        p[0] = 'g'; /* TYPE_BINARY_FLOAT: the IEEE double, little-endian */
#if PY_LITTLE_ENDIAN
        double d = PyFloat_AS_DOUBLE(v);
        memcpy(p + 1, &d, 8);
#else
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(v), p + 1, 1) < 0) {
            return -1;
        }
#endif
        out->len += 9;
        return 1;
    }
    if (type == &PyLong_Type) {
        int overflow = 0;
        long x = PyLong_AsLongAndOverflow(v, &overflow);
        if (overflow || x > 0x7fffffffL || x < -0x7fffffffL - 1) {
            PyErr_SetString(PyExc_ValueError, "an int larger than 32 bits");
            return -1;
        }
        if (x == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (reserve(out, 5) < 0) {
            return -1;
        }
        char *p = at(out);
        p[0] = 'i'; /* TYPE_INT */
        put_u32(p + 1, (uint32_t)(int32_t)x);
        out->len += 5;
        return 1;
    }
    return 0;
}

static int
put_items(Out *out, PyObject *const *items, Py_ssize_t n, char small, char big, int depth)
{
    if (depth >= MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "nested too deep");
        return -1;
    }
    if (n > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "too long");
        return -1;
    }
    if (reserve(out, 5) < 0) {
        return -1;
    }
    char *p = at(out);
    if (small && n < 256) {
        p[0] = small;
        p[1] = (char)n;
        out->len += 2;
    }
    else {
        p[0] = big;
        put_u32(p + 1, (uint32_t)n);
        out->len += 5;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int r = put_scalar(out, items[i]);
        if (r < 0 || (r == 0 && put_other(out, items[i], depth + 1) < 0)) {
            return -1;
        }
    }
    return 0;
}

/* A value `put_scalar` does not write: a longer or non-ASCII str, bytes, or a tuple or
   list of values (nested up to MAX_DEPTH). */
static int
put_other(Out *out, PyObject *v, int depth)
{
    int r;
    if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(v);
        if (PyUnicode_IS_ASCII(v)) {
            return put_sized(out, 'a', (const char *)PyUnicode_DATA(v), n); /* TYPE_ASCII */
        }
        /* As marshal writes it: UTF-8, lone surrogates passed through. */
        PyObject *utf8 = PyUnicode_AsEncodedString(v, "utf8", "surrogatepass");
        if (utf8 == NULL) {
            return -1;
        }
        r = put_sized(out, 'u', PyBytes_AS_STRING(utf8), PyBytes_GET_SIZE(utf8));
        Py_DECREF(utf8);
        return r;
    }
    if (PyTuple_Check(v)) { /* a NamedTuple too: written as the plain tuple it is */
        return put_items(out, &PyTuple_GET_ITEM(v, 0), PyTuple_GET_SIZE(v), ')', '(', depth);
    }
    if (PyList_CheckExact(v)) {
        return put_items(out, &PyList_GET_ITEM(v, 0), PyList_GET_SIZE(v), 0, '[', depth);
    }
    if (PyBytes_CheckExact(v)) {
        return put_sized(out, 's', PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)); /* TYPE_STRING */
    }
    PyErr_Format(PyExc_ValueError, "a %.80s", Py_TYPE(v)->tp_name);
    return -1;
}

/* Any value the journal writes. */
static int
put(Out *out, PyObject *v, int depth)
{
    int r = put_scalar(out, v);
    return r < 0 ? -1 : (r > 0 ? 0 : put_other(out, v, depth));
}

#define STACK_BYTES 1024

static PyObject *
encode(PyObject *Py_UNUSED(module), PyObject *obj)
{
    char stack[STACK_BYTES];
    Out out = {stack, 0, STACK_BYTES, 0};
    return done(&out, put(&out, obj, 0) < 0);
}

/* rows_message(rows) -> bytes: `marshal.dumps(("rows", rows))` for the queue's rows, each
   one encoded at its request (bytes, by Appender: copied as they are) or a row's values
   (a tuple: encoded here).  ValueError as `encode`. */
static PyObject *
rows_message(PyObject *Py_UNUSED(module), PyObject *rows)
{
    if (!PyList_CheckExact(rows)) {
        PyErr_SetString(PyExc_TypeError, "rows_message() takes a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(rows);
    /* Room for the rows already encoded, at once (the batch is tens of kB). */
    Py_ssize_t size = 13;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(rows, i);
        size += PyBytes_CheckExact(item) ? PyBytes_GET_SIZE(item) : 0;
    }
    char stack[STACK_BYTES];
    Out out = {stack, 0, STACK_BYTES, 0};
    if (reserve(&out, size) < 0) {
        return NULL;
    }
    char *p = at(&out);
    memcpy(p, ")\x02z\x04rows[", 9);
    put_u32(p + 9, (uint32_t)n);
    out.len += 13;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(rows, i);
        if (PyBytes_CheckExact(item)) {
            Py_ssize_t m = PyBytes_GET_SIZE(item);
            if (reserve(&out, m) < 0) {
                return done(&out, 1);
            }
            memcpy(at(&out), PyBytes_AS_STRING(item), (size_t)m);
            out.len += m;
        }
        else if (put(&out, item, 1) < 0) {
            return done(&out, 1);
        }
    }
    return done(&out, 0);
}

/* The last occurrence of `needle` (m bytes) in `h` (n bytes), or -1. */
static Py_ssize_t
last(const char *h, Py_ssize_t n, const char *needle, Py_ssize_t m)
{
    const char first = needle[0];
#ifdef __GLIBC__
    /* memrchr: the C library's vectorised search for the needle's first byte. */
    Py_ssize_t end = n - m + 1; /* where the needle may start: [0, end) */
    while (end > 0) {
        const char *p = memrchr(h, first, (size_t)end);
        if (p == NULL) {
            return -1;
        }
        /* JSON holds many quotes: the next byte first, then the call (m >= 2). */
        if (p[1] == needle[1] && memcmp(p, needle, (size_t)m) == 0) {
            return p - h;
        }
        end = p - h;
    }
#else
    for (Py_ssize_t i = n - m; i >= 0; i--) {
        if (h[i] == first && memcmp(h + i, needle, (size_t)m) == 0) {
            return i;
        }
    }
#endif
    return -1;
}

static PyObject *
usage_slice(PyObject *Py_UNUSED(module), PyObject *body)
{
    if (!PyBytes_CheckExact(body)) {
        PyErr_SetString(PyExc_TypeError, "usage_slice() takes bytes");
        return NULL;
    }
    const char *h = PyBytes_AS_STRING(body);
    Py_ssize_t n = PyBytes_GET_SIZE(body);
    static const char usage[] = "\"usage\"";
    static const char bedrock[] = "\"amazon-bedrock-invocationMetrics\"";
    Py_ssize_t i = last(h, n, usage, sizeof(usage) - 1);
    if (i < 0) {
        i = last(h, n, bedrock, sizeof(bedrock) - 1);
        if (i < 0) {
            Py_RETURN_NONE;
        }
    }
    Py_ssize_t end = n - i < CARRY ? n : i + CARRY;
    return PyBytes_FromStringAndSize(h + i, end - i);
}

/* Appender(queue, batch, full, slow): the journal's `request` for the usual row.  Called
   with a request's values (a tuple in RequestEvent's field order): while `plain` is set,
   one with no error (field 17) and no trail (field 21) is encoded (as `encode`) and the
   bytes appended to `queue` (a deque), and `full()` is called when the queue's length becomes a multiple of `batch`;
   any other row, or any row while `plain` is unset, goes to `slow(row)`.  What
   `JournalSink.request` does in Python, less the Python call (~1k instructions). */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *queue;
    PyObject *append; /* queue.append, bound once */
    PyObject *full;
    PyObject *slow;
    Py_ssize_t batch;
    char plain;
} Appender;

#define ERROR_FIELD 17
#define TRAIL_FIELD 21

static PyObject *
appender_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Appender *self = (Appender *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "Appender takes one row");
        return NULL;
    }
    PyObject *row = args[0];
    if (!self->plain || !PyTuple_Check(row) || PyTuple_GET_SIZE(row) <= TRAIL_FIELD
        || PyTuple_GET_ITEM(row, ERROR_FIELD) != Py_None
        || PyTuple_GET_ITEM(row, TRAIL_FIELD) != Py_None) {
        return PyObject_Vectorcall(self->slow, args, 1, NULL);
    }
    /* Encoded now, while its values are in the cache (and then let go): queued as bytes. */
    PyObject *encoded = encode(NULL, row);
    if (encoded == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            return NULL;
        }
        PyErr_Clear(); /* a value left to marshal: Python queues the row as it is */
        return PyObject_Vectorcall(self->slow, args, 1, NULL);
    }
    PyObject *done = PyObject_Vectorcall(self->append, &encoded, 1, NULL);
    Py_DECREF(encoded);
    if (done == NULL) {
        return NULL;
    }
    Py_DECREF(done);
    Py_ssize_t n = PyObject_Size(self->queue);
    if (n < 0) {
        return NULL;
    }
    if (n % self->batch == 0) {
        return PyObject_CallNoArgs(self->full);
    }
    Py_RETURN_NONE;
}

static PyObject *
appender_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *queue, *full, *slow;
    Py_ssize_t batch;
    static char *kwlist[] = {"queue", "batch", "full", "slow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnOO:Appender", kwlist, &queue, &batch, &full,
                                     &slow)) {
        return NULL;
    }
    if (batch < 1) {
        PyErr_SetString(PyExc_ValueError, "batch must be at least 1");
        return NULL;
    }
    if (!PyCallable_Check(full) || !PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "full and slow must be callable");
        return NULL;
    }
    PyObject *append = PyObject_GetAttrString(queue, "append");
    if (append == NULL) {
        return NULL;
    }
    Appender *self = (Appender *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(append);
        return NULL;
    }
    self->vectorcall = appender_call;
    self->queue = Py_NewRef(queue);
    self->append = append;
    self->full = Py_NewRef(full);
    self->slow = Py_NewRef(slow);
    self->batch = batch;
    self->plain = 0;
    return (PyObject *)self;
}

static int
appender_traverse(PyObject *op, visitproc visit, void *arg)
{
    Appender *self = (Appender *)op;
    Py_VISIT(self->queue);
    Py_VISIT(self->append);
    Py_VISIT(self->full);
    Py_VISIT(self->slow);
    return 0;
}

static int
appender_clear(PyObject *op)
{
    Appender *self = (Appender *)op;
    Py_CLEAR(self->queue);
    Py_CLEAR(self->append);
    Py_CLEAR(self->full);
    Py_CLEAR(self->slow);
    return 0;
}

static void
appender_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    appender_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyMemberDef appender_members[] = {
    {"plain", T_BOOL, offsetof(Appender, plain), 0, "Rows may be queued as they are."},
    {"batch", T_PYSSIZET, offsetof(Appender, batch), READONLY, "full() at each multiple."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject AppenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hydrallm.observe._rowcodec.Appender",
    .tp_basicsize = sizeof(Appender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The journal's request() for the usual row (see _rowcodec.c).",
    .tp_new = appender_new,
    .tp_traverse = appender_traverse,
    .tp_clear = appender_clear,
    .tp_dealloc = appender_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Appender, vectorcall),
    .tp_members = appender_members,
};

static PyMethodDef methods[] = {
    {"encode", encode, METH_O, "marshal.dumps(obj) for the journal's rows, with no reference table."},
    {"rows_message", rows_message, METH_O, "The spooled message of the queue's rows."},
    {"usage_slice", usage_slice, METH_O, "The part of a whole body that states its usage, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_rowcodec",
    .m_doc = "The journal's per-request steps in C (optional).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__rowcodec(void)
{
    if (PyType_Ready(&AppenderType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "CARRY", CARRY) < 0
        || PyModule_AddObjectRef(m, "Appender", (PyObject *)&AppenderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

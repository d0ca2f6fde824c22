/* A client's websocket frame read from a server's buffer: pdwire/wsframes.py's read_frame.
 *
 * Per token frame a master reads a final, masked binary frame: its head, the unmasking and
 * the copy are done here in one pass instead of a dozen Python operations and two slices.
 * The result is exactly the Python function's (the tests compare the two on every split,
 * length form and mutation they try).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum { INCOMPLETE, BINARY, TEXT, OTHER, REFUSED };

static PyObject *result(int kind, PyObject *payload, Py_ssize_t stop) {
    /* steals payload (NULL: None) */
    PyObject *t = PyTuple_New(3);
    PyObject *k = PyLong_FromLong(kind), *s = PyLong_FromSsize_t(stop);
    if (t == NULL || k == NULL || s == NULL) {
        Py_XDECREF(t);
        Py_XDECREF(k);
        Py_XDECREF(s);
        Py_XDECREF(payload);
        return NULL;
    }
    if (payload == NULL) payload = Py_NewRef(Py_None);
    PyTuple_SET_ITEM(t, 0, k);
    PyTuple_SET_ITEM(t, 1, payload);
    PyTuple_SET_ITEM(t, 2, s);
    return t;
}

static PyObject *unmasked(const unsigned char *p, Py_ssize_t n, const unsigned char mask[4]) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) return NULL;
    unsigned char *q = (unsigned char *)PyBytes_AS_STRING(out);
    uint64_t key;
    unsigned char k8[8];
    for (int i = 0; i < 8; i++) k8[i] = mask[i & 3];
    memcpy(&key, k8, 8);
    Py_ssize_t i = 0;
#ifdef __SSE2__
    __m128i key16 = _mm_set1_epi64x((long long)key);
    for (; i + 16 <= n; i += 16) {
        __m128i w = _mm_loadu_si128((const __m128i *)(p + i));
        _mm_storeu_si128((__m128i *)(q + i), _mm_xor_si128(w, key16));
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= key;
        memcpy(q + i, &w, 8);
    }
    for (; i < n; i++) q[i] = p[i] ^ mask[i & 3];
    return out;
}

PyDoc_STRVAR(read_frame_doc,
"read_frame(buf, pos, limit) -> (kind, payload or None, stop)\n\n"
"See pdwire/wsframes.py.");

static PyObject *read_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read_frame(buf, pos, limit)");
        return NULL;
    }
    const unsigned char *buf;
    Py_ssize_t end;
    if (PyBytes_CheckExact(args[0])) {
        buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        end = PyBytes_GET_SIZE(args[0]);
    } else if (PyByteArray_CheckExact(args[0])) {
        buf = (const unsigned char *)PyByteArray_AS_STRING(args[0]);
        end = PyByteArray_GET_SIZE(args[0]);
    } else {
        PyErr_SetString(PyExc_TypeError, "buf must be bytes or bytearray");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    if (pos < 0 || pos > end) {
        PyErr_SetString(PyExc_ValueError, "pos outside buf");
        return NULL;
    }
    int has_limit = args[2] != Py_None;
    long long limit = 0;
    if (has_limit) {
        limit = PyLong_AsLongLong(args[2]);
        if (limit == -1 && PyErr_Occurred()) return NULL;
    }
    Py_ssize_t avail = end - pos;
    const unsigned char *h = buf + pos;
    if (avail < 6) return result(INCOMPLETE, NULL, pos);
    uint64_t length = h[1] & 0x7F;
    Py_ssize_t mask_at;
    if (length == 126) {
        if (avail < 8) return result(INCOMPLETE, NULL, pos);
        length = (uint64_t)h[2] << 8 | h[3];
        mask_at = 4;
    } else if (length == 127) {
        if (avail < 14) return result(INCOMPLETE, NULL, pos);
        length = 0;
        for (int i = 2; i < 10; i++) length = length << 8 | h[i];
        mask_at = 10;
    } else {
        mask_at = 2;
    }
    if (!(h[1] & 0x80) || (has_limit && (limit < 0 || length > (uint64_t)limit)))
        return result(REFUSED, NULL, pos);
    Py_ssize_t start = mask_at + 4;  /* avail >= start: the head's length was checked */
    if (length > (uint64_t)(avail - start)) return result(INCOMPLETE, NULL, pos);
    Py_ssize_t stop = pos + start + (Py_ssize_t)length;
    int kind;
    if (h[0] == 0x82) kind = BINARY;
    else if (h[0] == 0x81) kind = TEXT;
    else return result(OTHER, NULL, stop);
    PyObject *payload = unmasked(h + start, (Py_ssize_t)length, h + mask_at);
    if (payload == NULL) return NULL;
    return result(kind, payload, stop);
}

static PyMethodDef methods[] = {
    {"read_frame", (PyCFunction)(void (*)(void))read_frame, METH_FASTCALL, read_frame_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot module_slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pdwire._wsframes",
    "A client's websocket frames read from a server's buffer.", 0, methods, module_slots,
    NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wsframes(void) { return PyModuleDef_Init(&module_def); }

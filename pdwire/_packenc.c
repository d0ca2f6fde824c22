/* A node's TOKEN_PACKS message pickled in one pass: pdwire/nativepickle.py's NativeNamed.
 *
 * The per-step path of a simulated node: ``(ObjType.TOKEN_PACKS, [(sub_req_id, text,
 * metadata, FinishStatus), ...][, load])`` written as CPython's C pickler (protocol 4, one
 * frame) writes it with LightLLM's module and name for our classes, as LightLLM's own
 * ``pickle.dumps`` does and as ``pdwire.fastpickle.dumps`` does in Python (its twin: the
 * tests compare the three on every message they try). It runs no Python code: no
 * ``reducer_override`` per FinishStatus, no checks in Python.
 *
 * What it writes as pickle does: None, bool, int (up to 64 bits, BININT1/BININT2/BININT/LONG1),
 * float, str, bytes, tuple, list, dict, the one ctypes struct class (FinishStatus, reduced as
 * ``_ctypes._unpickle(cls, (obj.__dict__, bytes(obj)))``) and the one enum (ObjType, reduced
 * as ``cls(value)``), classes and functions by reference (module, name: the strings given,
 * memoized as strings), with the C pickler's memo: MEMOIZE after every str, bytes, tuple,
 * list, dict, reduced object and global, a memo reference for an object seen before (by
 * identity). ``dumps`` returns None, and the caller takes the slower path, for what it does
 * not vouch for: any other type (a subclass too), an int past 64 bits, a str with lone
 * surrogates, a struct with instance attributes, a list of more than 1,000 items or a dict
 * of 1,000 or more (pickle batches them otherwise), a tuple reached again through its own
 * items, nesting past MAX_DEPTH, a container changed while written, a message past one
 * 64 KiB frame, and a call made while one is running (from a finalizer).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEAD 11                 /* PROTO 4, FRAME and its 8-byte length */
#define BODY_MAX 65535          /* a body (STOP included) of 64 KiB would be two frames */
#define OUT_CAP (HEAD + BODY_MAX)
#define BATCH 1000              /* pickle's batch of list and dict items */
#define MAX_DEPTH 32            /* containers and reduced objects within one another */
#define MEMO_MIN 256            /* slots of the memo's hash table (a power of 2) */

enum { OK = 0, DECLINE = 1, ERROR = -1 };

typedef struct {
    PyObject *key;
    uint32_t index;
    uint32_t gen;               /* the slot is used in this call only if gen is the call's */
} slot;

typedef struct {
    PyObject_HEAD
    PyObject *unpickle, *unpickle_module, *unpickle_name;
    PyObject *status_cls, *status_module, *status_name;
    PyObject *enum_cls, *enum_module, *enum_name;
    PyObject *value_attr;       /* "_value_" */
    unsigned char *out;         /* OUT_CAP bytes */
    Py_ssize_t pos;
    slot *table;
    size_t cap;                 /* slots in table */
    PyObject **held;            /* the objects memoized, a reference each, until the end */
    size_t held_len, held_cap;
    uint32_t memo_len;          /* memo indices given (objects and fresh temporaries) */
    uint32_t gen;
    int depth, busy;
} Encoder;

/* -- output ------------------------------------------------------------------------------ */

static inline int put(Encoder *e, const void *data, Py_ssize_t n) {
    if (n > OUT_CAP - e->pos) return DECLINE;  /* past one frame */
    memcpy(e->out + e->pos, data, (size_t)n);
    e->pos += n;
    return OK;
}

static inline int put1(Encoder *e, unsigned char op) {
    if (e->pos >= OUT_CAP) return DECLINE;
    e->out[e->pos++] = op;
    return OK;
}

static int put_op_len(Encoder *e, unsigned char op, const void *data, Py_ssize_t n) {
    /* op, n as one byte, data; n < 256 */
    unsigned char head[2] = {op, (unsigned char)n};
    int rc = put(e, head, 2);
    return rc ? rc : put(e, data, n);
}

static int put_op_len4(Encoder *e, unsigned char op, const void *data, Py_ssize_t n) {
    /* op, n as 4 bytes little-endian, data; n fits since the output is capped */
    if (n > BODY_MAX) return DECLINE;
    uint32_t u = (uint32_t)n;
    unsigned char head[5] = {op, u & 0xff, u >> 8 & 0xff, u >> 16 & 0xff, u >> 24};
    int rc = put(e, head, 5);
    return rc ? rc : put(e, data, n);
}

/* -- memo -------------------------------------------------------------------------------- */

static inline size_t slot_of(const Encoder *e, PyObject *obj) {
    uint64_t h = (uint64_t)(uintptr_t)obj * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & (e->cap - 1);
}

static long memo_find(const Encoder *e, PyObject *obj) {
    for (size_t i = slot_of(e, obj);; i = (i + 1) & (e->cap - 1)) {
        const slot *s = &e->table[i];
        if (s->gen != e->gen) return -1;
        if (s->key == obj) return (long)s->index;
    }
}

static int memo_grow(Encoder *e) {
    size_t cap = e->cap * 2;
    slot *table = PyMem_Calloc(cap, sizeof(slot));
    if (table == NULL) {
        PyErr_NoMemory();
        return ERROR;
    }
    slot *old = e->table;
    size_t old_cap = e->cap;
    e->table = table;
    e->cap = cap;
    for (size_t j = 0; j < old_cap; j++) {
        if (old[j].gen != e->gen) continue;
        size_t i = slot_of(e, old[j].key);
        while (table[i].gen == e->gen) i = (i + 1) & (cap - 1);
        table[i] = old[j];
    }
    PyMem_Free(old);
    return OK;
}

static int memo_skip(Encoder *e) {
    /* MEMOIZE for a temporary pickle makes and drops (a reduced object's arguments): no
     * later object can be it, so it gets an index and no slot */
    e->memo_len++;
    return put1(e, 0x94);
}

static int memo_put(Encoder *e, PyObject *obj) {
    if (put1(e, 0x94)) return DECLINE;
    if ((e->held_len + 1) * 2 > e->cap && memo_grow(e)) return ERROR;
    if (e->held_len == e->held_cap) {
        size_t n = e->held_cap * 2;
        PyObject **held = PyMem_Realloc(e->held, n * sizeof(PyObject *));
        if (held == NULL) {
            PyErr_NoMemory();
            return ERROR;
        }
        e->held = held;
        e->held_cap = n;
    }
    size_t i = slot_of(e, obj);
    while (e->table[i].gen == e->gen) i = (i + 1) & (e->cap - 1);
    e->table[i] = (slot){obj, e->memo_len++, e->gen};
    e->held[e->held_len++] = Py_NewRef(obj);  /* as pickle's memo: its id stays its own */
    return OK;
}

static int memo_get(Encoder *e, long index) {
    if (index < 256) {
        unsigned char op[2] = {'h', (unsigned char)index};  /* BINGET */
        return put(e, op, 2);
    }
    uint32_t u = (uint32_t)index;
    unsigned char op[5] = {'j', u & 0xff, u >> 8 & 0xff, u >> 16 & 0xff, u >> 24};
    return put(e, op, 5);  /* LONG_BINGET */
}

/* -- values ------------------------------------------------------------------------------ */

static int save(Encoder *e, PyObject *obj);

static int failed(void) {
    /* a look-up that raised: out of memory is an error, anything else is not vouched for */
    if (PyErr_ExceptionMatches(PyExc_MemoryError)) return ERROR;
    PyErr_Clear();
    return DECLINE;
}

static int save_long1(Encoder *e, uint64_t bits, int negative) {
    /* LONG1: two's complement, little-endian, as few bytes as pickle's encode_long keeps */
    uint64_t magnitude = negative ? ~bits + 1 : bits;
    int nbits = 0;
    while (nbits < 64 && magnitude >> nbits) nbits++;
    int n = (nbits >> 3) + 1;
    unsigned char raw[9];
    for (int i = 0; i < n; i++) raw[i] = i < 8 ? bits >> (8 * i) & 0xff : (negative ? 0xff : 0);
    if (negative && n > 1 && raw[n - 1] == 0xff && (raw[n - 2] & 0x80)) n--;
    return put_op_len(e, 0x8a, raw, n);
}

static int save_int(Encoder *e, PyObject *obj) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return ERROR;
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(obj);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();  /* past 64 bits */
            return DECLINE;
        }
        return save_long1(e, u, 0);
    }
    if (overflow < 0) return DECLINE;
    if (v >= 0 && v <= 0xff) {
        unsigned char op[2] = {'K', (unsigned char)v};
        return put(e, op, 2);
    }
    if (v >= 0 && v <= 0xffff) {
        unsigned char op[3] = {'M', v & 0xff, v >> 8};
        return put(e, op, 3);
    }
    if (v >= INT32_MIN && v <= INT32_MAX) {
        uint32_t u = (uint32_t)(int32_t)v;
        unsigned char op[5] = {'J', u & 0xff, u >> 8 & 0xff, u >> 16 & 0xff, u >> 24};
        return put(e, op, 5);
    }
    return save_long1(e, (uint64_t)v, v < 0);
}

static int save_float(Encoder *e, PyObject *obj) {
    unsigned char op[9] = {'G'};
    if (PyFloat_Pack8(PyFloat_AS_DOUBLE(obj), (char *)op + 1, 0) < 0) return ERROR;
    return put(e, op, 9);
}

static int save_str(Encoder *e, PyObject *obj) {
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(obj, &n);
    if (utf8 == NULL) {
        PyErr_Clear();  /* lone surrogates: pickle's "surrogatepass" is left to it */
        return DECLINE;
    }
    int rc = n < 256 ? put_op_len(e, 0x8c, utf8, n) : put_op_len4(e, 'X', utf8, n);
    return rc ? rc : memo_put(e, obj);
}

static int save_bytes(Encoder *e, PyObject *obj) {
    Py_ssize_t n = PyBytes_GET_SIZE(obj);
    const char *data = PyBytes_AS_STRING(obj);
    int rc = n < 256 ? put_op_len(e, 'C', data, n) : put_op_len4(e, 'B', data, n);
    return rc ? rc : memo_put(e, obj);
}

static int save_tuple(Encoder *e, PyObject *obj) {
    Py_ssize_t n = PyTuple_GET_SIZE(obj);
    if (n == 0) return put1(e, ')');  /* EMPTY_TUPLE, not memoized */
    int rc = n > 3 ? put1(e, '(') : OK;
    for (Py_ssize_t i = 0; i < n && rc == OK; i++) rc = save(e, PyTuple_GET_ITEM(obj, i));
    if (rc) return rc;
    if (memo_find(e, obj) >= 0) return DECLINE;  /* reached through its items: POP and BINGET */
    static const unsigned char ops[4] = {'t', 0x85, 0x86, 0x87};  /* TUPLE, TUPLE1-3 */
    rc = put1(e, ops[n > 3 ? 0 : n]);
    return rc ? rc : memo_put(e, obj);
}

static int save_list(Encoder *e, PyObject *obj) {
    int rc = put1(e, ']');
    if (rc || (rc = memo_put(e, obj))) return rc;
    Py_ssize_t n = PyList_GET_SIZE(obj);
    if (n == 0) return OK;
    if (n > BATCH) return DECLINE;
    if (n > 1 && (rc = put1(e, '('))) return rc;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyList_GET_SIZE(obj) != n) return DECLINE;
        PyObject *item = Py_NewRef(PyList_GET_ITEM(obj, i));
        rc = save(e, item);
        Py_DECREF(item);
        if (rc) return rc;
    }
    if (PyList_GET_SIZE(obj) != n) return DECLINE;
    return put1(e, n > 1 ? 'e' : 'a');  /* APPENDS, APPEND */
}

static int save_dict(Encoder *e, PyObject *obj) {
    int rc = put1(e, '}');
    if (rc || (rc = memo_put(e, obj))) return rc;
    Py_ssize_t n = PyDict_GET_SIZE(obj);
    if (n == 0) return OK;
    if (n >= BATCH) return DECLINE;
    if (n > 1 && (rc = put1(e, '('))) return rc;
    Py_ssize_t pos = 0, seen = 0;
    PyObject *key, *value;
    while (PyDict_Next(obj, &pos, &key, &value)) {
        if (++seen > n) return DECLINE;
        Py_INCREF(key);
        Py_INCREF(value);
        rc = save(e, key);
        if (rc == OK) rc = save(e, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc) return rc;
    }
    if (seen != n || PyDict_GET_SIZE(obj) != n) return DECLINE;
    return put1(e, n > 1 ? 'u' : 's');  /* SETITEMS, SETITEM */
}

static int save_global(Encoder *e, PyObject *obj, PyObject *module, PyObject *name) {
    long hit = memo_find(e, obj);
    if (hit >= 0) return memo_get(e, hit);
    int rc = save(e, module);
    if (rc || (rc = save(e, name)) || (rc = put1(e, 0x93))) return rc;  /* STACK_GLOBAL */
    return memo_put(e, obj);
}

static int save_reduced(Encoder *e, PyObject *obj) {
    /* REDUCE, then the object memoized (unless its arguments reached it: declined) */
    int rc = put1(e, 'R');
    if (rc) return rc;
    return memo_find(e, obj) >= 0 ? DECLINE : memo_put(e, obj);
}

static int save_status(Encoder *e, PyObject *obj) {
    /* _ctypes._unpickle, (cls, (obj.__dict__, bytes(obj))), REDUCE */
    PyObject *dict = PyObject_GenericGetDict(obj, NULL);
    if (dict == NULL) return failed();
    /* the struct keeps its __dict__: borrowed from here on (held once memoized) */
    int rc = PyDict_GET_SIZE(dict) ? DECLINE : OK;
    if (rc == OK) rc = save_global(e, e->unpickle, e->unpickle_module, e->unpickle_name);
    if (rc == OK) rc = save_global(e, e->status_cls, e->status_module, e->status_name);
    if (rc == OK) rc = save(e, dict);
    Py_DECREF(dict);
    if (rc) return rc;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return failed();
    /* bytes of 0 or 1 byte are shared objects (memo references): left to pickle */
    rc = view.len >= 2 && view.len < 256 ? put_op_len(e, 'C', view.buf, view.len) : DECLINE;
    PyBuffer_Release(&view);
    if (rc || (rc = memo_skip(e))) return rc;
    static const unsigned char pairs[4] = {0x86, 0x94, 0x86, 0x94};  /* TUPLE2 MEMOIZE, twice */
    if ((rc = put(e, pairs, 4))) return rc;
    e->memo_len += 2;
    return save_reduced(e, obj);
}

static int save_member(Encoder *e, PyObject *obj) {
    /* cls, (obj._value_,), REDUCE */
    int rc = save_global(e, e->enum_cls, e->enum_module, e->enum_name);
    if (rc) return rc;
    PyObject *value = PyObject_GetAttr(obj, e->value_attr);
    if (value == NULL) return failed();
    rc = save(e, value);
    Py_DECREF(value);
    if (rc || (rc = put1(e, 0x85)) || (rc = memo_skip(e))) return rc;  /* TUPLE1 */
    return save_reduced(e, obj);
}

static int save(Encoder *e, PyObject *obj) {
    PyTypeObject *type = Py_TYPE(obj);
    if (obj == Py_None) return put1(e, 'N');
    if (obj == Py_True) return put1(e, 0x88);  /* NEWTRUE */
    if (obj == Py_False) return put1(e, 0x89);  /* NEWFALSE */
    if (type == &PyLong_Type) return save_int(e, obj);
    if (type == &PyFloat_Type) return save_float(e, obj);
    long hit = memo_find(e, obj);
    if (hit >= 0) return memo_get(e, hit);
    if (type == &PyUnicode_Type) return save_str(e, obj);
    if (type == &PyBytes_Type) return save_bytes(e, obj);
    if (e->depth >= MAX_DEPTH) return DECLINE;
    e->depth++;
    int rc;
    if (type == &PyDict_Type) rc = save_dict(e, obj);
    else if (type == &PyList_Type) rc = save_list(e, obj);
    else if (type == &PyTuple_Type) rc = save_tuple(e, obj);
    else if ((PyObject *)type == e->status_cls) rc = save_status(e, obj);
    else if ((PyObject *)type == e->enum_cls) rc = save_member(e, obj);
    else rc = DECLINE;  /* another type, or a class or function not seen before */
    e->depth--;
    return rc;
}

/* -- the type ---------------------------------------------------------------------------- */

static PyObject *Encoder_dumps(Encoder *e, PyObject *message) {
    if (e->out == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder not initialized");
        return NULL;
    }
    if (e->busy) Py_RETURN_NONE;  /* called from a finalizer run while writing */
    e->busy = 1;
    if (++e->gen == 0) {  /* the stamps wrapped: every slot is free again */
        memset(e->table, 0, e->cap * sizeof(slot));
        e->gen = 1;
    }
    e->pos = HEAD;
    e->memo_len = 0;
    e->depth = 0;
    int rc = save(e, message);
    if (rc == OK) rc = put1(e, '.');
    PyObject *result = NULL;
    if (rc == OK) {
        uint64_t n = (uint64_t)(e->pos - HEAD);
        unsigned char *h = e->out;
        h[0] = 0x80, h[1] = 4, h[2] = 0x95;  /* PROTO 4, FRAME */
        for (int i = 0; i < 8; i++) h[3 + i] = n >> (8 * i) & 0xff;
        result = PyBytes_FromStringAndSize((const char *)e->out, e->pos);
    } else if (rc == DECLINE) {
        result = Py_NewRef(Py_None);
    }
    size_t held = e->held_len;
    e->held_len = 0;
    for (size_t i = 0; i < held; i++) Py_DECREF(e->held[i]);
    e->busy = 0;
    return result;
}

static int Encoder_init(Encoder *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"unpickle", "unpickle_name", "struct", "struct_name",
                             "enum", "enum_name", NULL};
    PyObject *refs[3][3];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O(UU)O(UU)O(UU):Encoder", kwlist,
                                     &refs[0][0], &refs[0][1], &refs[0][2], &refs[1][0],
                                     &refs[1][1], &refs[1][2], &refs[2][0], &refs[2][1],
                                     &refs[2][2]))
        return -1;
    if (!PyType_Check(refs[1][0]) || !PyType_Check(refs[2][0])) {
        PyErr_SetString(PyExc_TypeError, "struct and enum must be classes");
        return -1;
    }
    for (int i = 0; i < 3; i++)
        for (int j = 1; j < 3; j++)
            if (!PyUnicode_CheckExact(refs[i][j])) {
                PyErr_SetString(PyExc_TypeError, "a module or name is not a str");
                return -1;
            }
    PyObject **fields[3][3] = {
        {&e->unpickle, &e->unpickle_module, &e->unpickle_name},
        {&e->status_cls, &e->status_module, &e->status_name},
        {&e->enum_cls, &e->enum_module, &e->enum_name},
    };
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) Py_XSETREF(*fields[i][j], Py_NewRef(refs[i][j]));
    if (e->value_attr == NULL && (e->value_attr = PyUnicode_InternFromString("_value_")) == NULL)
        return -1;
    if (e->out == NULL && (e->out = PyMem_Malloc(OUT_CAP)) == NULL) goto nomem;
    if (e->table == NULL && (e->table = PyMem_Calloc(MEMO_MIN, sizeof(slot))) == NULL)
        goto nomem;
    e->cap = e->cap ? e->cap : MEMO_MIN;
    if (e->held == NULL && (e->held = PyMem_Malloc(MEMO_MIN * sizeof(PyObject *))) == NULL)
        goto nomem;
    e->held_cap = e->held_cap ? e->held_cap : MEMO_MIN;
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

static int Encoder_traverse(Encoder *e, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(e));
    Py_VISIT(e->unpickle);
    Py_VISIT(e->status_cls);
    Py_VISIT(e->enum_cls);
    return 0;
}

static int Encoder_clear(Encoder *e) {
    Py_CLEAR(e->unpickle);
    Py_CLEAR(e->status_cls);
    Py_CLEAR(e->enum_cls);
    return 0;
}

static void Encoder_dealloc(Encoder *e) {
    PyTypeObject *type = Py_TYPE(e);
    PyObject_GC_UnTrack(e);
    Encoder_clear(e);
    Py_CLEAR(e->unpickle_module);
    Py_CLEAR(e->unpickle_name);
    Py_CLEAR(e->status_module);
    Py_CLEAR(e->status_name);
    Py_CLEAR(e->enum_module);
    Py_CLEAR(e->enum_name);
    Py_CLEAR(e->value_attr);
    PyMem_Free(e->out);
    PyMem_Free(e->table);
    PyMem_Free(e->held);
    type->tp_free((PyObject *)e);
    Py_DECREF(type);
}

PyDoc_STRVAR(dumps_doc,
"dumps(message) -> bytes | None\n\n"
"``message`` as LightLLM's pickle.dumps(..., protocol=4) writes it, or None: see the module.");

static PyMethodDef Encoder_methods[] = {
    {"dumps", (PyCFunction)Encoder_dumps, METH_O, dumps_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Encoder_doc,
"Encoder(unpickle, unpickle_name, struct, struct_name, enum, enum_name)\n\n"
"Messages of one ctypes struct class and one enum, each name a (module, name) pair of\n"
"str; see pdwire/nativepickle.py.");

static PyType_Slot Encoder_slots[] = {
    {Py_tp_doc, (void *)Encoder_doc},
    {Py_tp_init, Encoder_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Encoder_dealloc},
    {Py_tp_traverse, Encoder_traverse},
    {Py_tp_clear, Encoder_clear},
    {Py_tp_methods, Encoder_methods},
    {0, NULL},
};

static PyType_Spec Encoder_spec = {
    "pdwire._packenc.Encoder", sizeof(Encoder), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Encoder_slots,
};

static int exec_module(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &Encoder_spec, NULL);
    if (type == NULL) return -1;
    int rc = PyModule_AddObjectRef(module, "Encoder", type);
    Py_DECREF(type);
    return rc;
}

static struct PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, exec_module},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pdwire._packenc",
    "LightLLM TOKEN_PACKS messages pickled in one pass, as pickle writes them.", 0, NULL,
    module_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__packenc(void) { return PyModuleDef_Init(&module_def); }

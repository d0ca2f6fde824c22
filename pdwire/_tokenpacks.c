/* A node's TOKEN_PACKS frame, decoded in one pass over its opcodes, running no code.
 *
 * The per-token path of a master: ``(ObjType.TOKEN_PACKS, [(sub_req_id, text, metadata,
 * FinishStatus), ...][, load])`` as LightLLM's pickler (protocol 4) and ours write it. This
 * reads the opcodes itself, as ``pdwire/safepickle.py`` does, but only the ones that frame
 * uses, and only where it uses them; anything else (another message, another opcode or shape,
 * a limit reached) returns None and the caller decodes with safepickle, which has the last
 * word and explains a refusal. So this accepts a subset of what safepickle accepts, and builds
 * the same values (the tests compare the two on every frame they try).
 *
 * What it builds: str, int, float, bool, None, dicts with str or int keys and lists of those,
 * nested at most 3 deep (the metadata's limit), the entries' 4-tuples and the message tuple.
 * The two globals it names are resolved to markers: ObjType(int) becomes the member from the
 * caller's map, _ctypes._unpickle(FinishStatus, ({}, 4 bytes)) the instance the caller's map
 * (or function) gives. A memo reference (BINGET) may push only a scalar or a marker again, so
 * no container is reached twice; keys are str or int, so hashing costs their length; the
 * frame's size, the dicts' sizes and the nesting are capped before they are paid.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_MARKS 16
#define MAX_HEIGHT 3       /* plain containers: metadata dict -> dict -> dict -> scalars */

enum kind {
    K_SCALAR,   /* str, int, float, bool, None */
    K_PLAIN,    /* a dict or list of plain values; height in the parallel array */
    K_EMPTYLIST,/* an empty list: plain, or the entries list */
    K_ENTRIES,  /* a non-empty list of entries */
    K_ENTRY,    /* (int, str, dict, FinishStatus) */
    K_TUPLE,    /* any other tuple */
    K_OBJARGS,  /* (int,): ObjType's arguments */
    K_STATE,    /* ({}, 4 bytes): a FinishStatus's state */
    K_STATUSARGS, /* (FinishStatus, state): _ctypes._unpickle's arguments */
    K_BYTES,    /* a FinishStatus's bytes */
    K_OBJTYPE,  /* the ObjType class */
    K_STATUSCLS,/* the FinishStatus class */
    K_UNPICKLE, /* _ctypes._unpickle */
    K_MEMBER,   /* an ObjType member */
    K_STATUS,   /* a FinishStatus */
    K_TOP,      /* the whole message */
};

typedef struct {
    PyObject **obj;
    unsigned char *kind;
    unsigned char *height;
    Py_ssize_t len, cap;
} slots;

typedef struct {
    const unsigned char *p, *end;
    slots stack, memo;
    Py_ssize_t marks[MAX_MARKS];
    int nmarks;
    /* the caller's configuration */
    PyObject *objtype_module, *objtype_name, *status_module, *status_name;
    PyObject *obj_types;   /* dict: int -> ObjType member */
    PyObject *statuses;    /* dict: 4 bytes -> FinishStatus (a hit needs no call) */
    PyObject *status_fn;   /* callable: 4 bytes -> FinishStatus, or raises */
    Py_ssize_t max_dict_items, max_int_bytes;  /* safepickle's limits, so never past them */
} reader;

static int slots_push(slots *s, PyObject *o, int kind, int height) {
    /* steals o */
    if (o == NULL) return -1;
    if (s->len == s->cap) {
        Py_ssize_t cap = s->cap ? s->cap * 2 : 64;
        PyObject **obj = PyMem_Realloc(s->obj, cap * sizeof(PyObject *));
        if (obj == NULL) { Py_DECREF(o); return -1; }
        s->obj = obj;
        unsigned char *k = PyMem_Realloc(s->kind, cap);
        if (k == NULL) { Py_DECREF(o); return -1; }
        s->kind = k;
        unsigned char *h = PyMem_Realloc(s->height, cap);
        if (h == NULL) { Py_DECREF(o); return -1; }
        s->height = h;
        s->cap = cap;
    }
    s->obj[s->len] = o;
    s->kind[s->len] = (unsigned char)kind;
    s->height[s->len] = (unsigned char)height;
    s->len++;
    return 0;
}

static void slots_free(slots *s) {
    for (Py_ssize_t i = 0; i < s->len; i++) Py_DECREF(s->obj[i]);
    PyMem_Free(s->obj);
    PyMem_Free(s->kind);
    PyMem_Free(s->height);
}

/* Drop the stack's items from ``from`` on. */
static void stack_cut(reader *r, Py_ssize_t from) {
    for (Py_ssize_t i = from; i < r->stack.len; i++) Py_DECREF(r->stack.obj[i]);
    r->stack.len = from;
}

static int need(reader *r, Py_ssize_t n) { return r->end - r->p >= n; }

/* Where the items an opcode may take start: above the last MARK, as pickle's own fence. */
static Py_ssize_t fence(reader *r) { return r->nmarks ? r->marks[r->nmarks - 1] : 0; }

/* Pop the last MARK: the items above it start there; the container below must be above the
 * previous mark. */
static Py_ssize_t pop_mark(reader *r) {
    if (r->nmarks == 0) return -1;
    return r->marks[--r->nmarks];
}

/* May a value of this kind and height go into a dict or plain list? */
static int plain_value(int kind, int height) {
    if (kind == K_SCALAR) return 1;
    if (kind == K_PLAIN || kind == K_EMPTYLIST) return height < MAX_HEIGHT;
    return 0;
}

static int push_str(reader *r, Py_ssize_t n) {
    if (n < 0 || !need(r, n)) return -1;
    PyObject *s = PyUnicode_DecodeUTF8((const char *)r->p, n, "surrogatepass");
    r->p += n;
    if (s == NULL) return -1;
    return slots_push(&r->stack, s, K_SCALAR, 0);
}

static int op_setitems(reader *r, Py_ssize_t start) {
    /* stack[start - 1] is the dict, then key, value pairs */
    if (start - 1 < fence(r) || start > r->stack.len || (r->stack.len - start) % 2) return -1;
    Py_ssize_t d = start - 1;
    PyObject *dict = r->stack.obj[d];
    if (r->stack.kind[d] != K_PLAIN || !PyDict_CheckExact(dict)) return -1;
    int height = r->stack.height[d];
    for (Py_ssize_t i = start; i < r->stack.len; i += 2) {
        PyObject *key = r->stack.obj[i];
        if (r->stack.kind[i] != K_SCALAR || !(PyUnicode_CheckExact(key) || PyLong_CheckExact(key)))
            return -1;
        int vk = r->stack.kind[i + 1], vh = r->stack.height[i + 1];
        if (!plain_value(vk, vh)) return -1;
        if (vh + 1 > height) height = vh + 1;
        if (PyDict_SetItem(dict, key, r->stack.obj[i + 1]) < 0) return -1;
        if (PyDict_GET_SIZE(dict) > r->max_dict_items) return -1;
    }
    r->stack.height[d] = (unsigned char)height;
    stack_cut(r, start);
    return 0;
}

static int op_appends(reader *r, Py_ssize_t start) {
    if (start - 1 < fence(r) || start > r->stack.len) return -1;
    Py_ssize_t l = start - 1;
    PyObject *list = r->stack.obj[l];
    int kind = r->stack.kind[l];
    if (!PyList_CheckExact(list) || (kind != K_PLAIN && kind != K_EMPTYLIST && kind != K_ENTRIES))
        return -1;
    int height = r->stack.height[l];
    for (Py_ssize_t i = start; i < r->stack.len; i++) {
        int vk = r->stack.kind[i], vh = r->stack.height[i];
        if (vk == K_ENTRY) {
            if (kind == K_PLAIN) return -1;
            kind = K_ENTRIES;
        } else {
            if (kind == K_ENTRIES || !plain_value(vk, vh)) return -1;
            kind = K_PLAIN;
            if (vh + 1 > height) height = vh + 1;
        }
        if (PyList_Append(list, r->stack.obj[i]) < 0) return -1;
    }
    r->stack.kind[l] = (unsigned char)kind;
    r->stack.height[l] = (unsigned char)height;
    stack_cut(r, start);
    return 0;
}

/* The kind of a fresh tuple of the stack's items from ``start`` on. */
static int tuple_kind(reader *r, Py_ssize_t start) {
    Py_ssize_t n = r->stack.len - start;
    unsigned char *k = r->stack.kind + start;
    PyObject **o = r->stack.obj + start;
    if (n == 4 && k[0] == K_SCALAR && PyLong_CheckExact(o[0]) && k[1] == K_SCALAR
        && PyUnicode_CheckExact(o[1]) && k[2] == K_PLAIN && PyDict_CheckExact(o[2])
        && k[3] == K_STATUS)
        return K_ENTRY;
    if (n == 1 && k[0] == K_SCALAR && PyLong_CheckExact(o[0])) return K_OBJARGS;
    if (n == 2 && k[0] == K_PLAIN && PyDict_CheckExact(o[0]) && PyDict_GET_SIZE(o[0]) == 0
        && k[1] == K_BYTES)
        return K_STATE;
    if (n == 2 && k[0] == K_STATUSCLS && k[1] == K_STATE) return K_STATUSARGS;
    if ((n == 2 || n == 3) && k[0] == K_MEMBER && (k[1] == K_ENTRIES || k[1] == K_EMPTYLIST)
        && (n == 2 || (k[2] == K_PLAIN && PyDict_CheckExact(o[2]))))
        return K_TOP;
    return K_TUPLE;
}

static int op_tuple(reader *r, Py_ssize_t start) {
    if (start < fence(r) || start > r->stack.len) return -1;
    Py_ssize_t n = r->stack.len - start;
    int kind = tuple_kind(r, start);
    PyObject *t = PyTuple_New(n);
    if (t == NULL) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = r->stack.obj[start + i];
        Py_INCREF(o);
        PyTuple_SET_ITEM(t, i, o);
    }
    stack_cut(r, start);
    return slots_push(&r->stack, t, kind, 0);
}

static int op_stack_global(reader *r) {
    Py_ssize_t n = r->stack.len;
    if (n - 2 < fence(r) || r->stack.kind[n - 1] != K_SCALAR || r->stack.kind[n - 2] != K_SCALAR)
        return -1;
    PyObject *module = r->stack.obj[n - 2], *name = r->stack.obj[n - 1];
    if (!PyUnicode_CheckExact(module) || !PyUnicode_CheckExact(name)) return -1;
    int kind;
    if (PyUnicode_Compare(module, r->objtype_module) == 0
        && PyUnicode_Compare(name, r->objtype_name) == 0)
        kind = K_OBJTYPE;
    else if (PyUnicode_Compare(module, r->status_module) == 0
             && PyUnicode_Compare(name, r->status_name) == 0)
        kind = K_STATUSCLS;
    else if (PyUnicode_CompareWithASCIIString(module, "_ctypes") == 0
             && PyUnicode_CompareWithASCIIString(name, "_unpickle") == 0)
        kind = K_UNPICKLE;
    else
        return -1;
    stack_cut(r, n - 2);
    Py_INCREF(Py_None);  /* a marker's value is never used: only its kind */
    return slots_push(&r->stack, Py_None, kind, 0);
}

static int op_reduce(reader *r) {
    Py_ssize_t n = r->stack.len;
    if (n - 2 < fence(r)) return -1;
    int callable = r->stack.kind[n - 2], args_kind = r->stack.kind[n - 1];
    PyObject *args = r->stack.obj[n - 1];
    PyObject *result;
    int kind;
    if (callable == K_OBJTYPE && args_kind == K_OBJARGS) {
        result = PyDict_GetItemWithError(r->obj_types, PyTuple_GET_ITEM(args, 0));
        if (result == NULL) return -1;
        Py_INCREF(result);
        kind = K_MEMBER;
    } else if (callable == K_UNPICKLE && args_kind == K_STATUSARGS) {
        PyObject *raw = PyTuple_GET_ITEM(PyTuple_GET_ITEM(args, 1), 1);
        result = PyDict_GetItemWithError(r->statuses, raw);
        if (result != NULL) {
            Py_INCREF(result);
        } else {
            if (PyErr_Occurred()) return -1;
            result = PyObject_CallOneArg(r->status_fn, raw);  /* checks it; raises if unknown */
            if (result == NULL) return -1;
        }
        kind = K_STATUS;
    } else {
        return -1;
    }
    stack_cut(r, n - 2);
    return slots_push(&r->stack, result, kind, 0);
}

static int read_long1(reader *r) {
    if (!need(r, 1)) return -1;
    Py_ssize_t n = *r->p++;
    if (n > r->max_int_bytes || !need(r, n)) return -1;
    PyObject *v;
    if (n == 0) {
        v = PyLong_FromLong(0);
    } else {
#if PY_VERSION_HEX >= 0x030D0000
        v = PyLong_FromNativeBytes(r->p, (size_t)n, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
        v = _PyLong_FromByteArray(r->p, (size_t)n, 1, 1);
#endif
    }
    r->p += n;
    return slots_push(&r->stack, v, K_SCALAR, 0);
}

/* 0: decoded, the result on the stack; -1: not this path's frame (or an error set). */
static int run(reader *r) {
    if (!need(r, 2) || r->p[0] != 0x80 || r->p[1] < 2 || r->p[1] > 5) return -1;
    r->p += 2;
    while (r->p < r->end) {
        unsigned char op = *r->p++;
        Py_ssize_t n = r->stack.len, start;
        switch (op) {
        case 0x95: /* FRAME: a length the reader need not trust; the data's end bounds us */
            if (!need(r, 8)) return -1;
            r->p += 8;
            break;
        case 0x8c: /* SHORT_BINUNICODE */
            if (!need(r, 1)) return -1;
            n = *r->p++;
            if (push_str(r, n) < 0) return -1;
            break;
        case 'X': /* BINUNICODE */
            if (!need(r, 4)) return -1;
            n = (Py_ssize_t)((uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16
                             | (uint32_t)r->p[3] << 24);
            r->p += 4;
            if (push_str(r, n) < 0) return -1;
            break;
        case 'K': /* BININT1 */
            if (!need(r, 1)) return -1;
            if (slots_push(&r->stack, PyLong_FromLong(r->p[0]), K_SCALAR, 0) < 0) return -1;
            r->p += 1;
            break;
        case 'M': /* BININT2 */
            if (!need(r, 2)) return -1;
            if (slots_push(&r->stack, PyLong_FromLong(r->p[0] | r->p[1] << 8), K_SCALAR, 0) < 0)
                return -1;
            r->p += 2;
            break;
        case 'J': { /* BININT */
            if (!need(r, 4)) return -1;
            int32_t v = (int32_t)((uint32_t)r->p[0] | (uint32_t)r->p[1] << 8
                                  | (uint32_t)r->p[2] << 16 | (uint32_t)r->p[3] << 24);
            r->p += 4;
            if (slots_push(&r->stack, PyLong_FromLong(v), K_SCALAR, 0) < 0) return -1;
            break;
        }
        case 0x8a: /* LONG1 */
            if (read_long1(r) < 0) return -1;
            break;
        case 'G': /* BINFLOAT */
            if (!need(r, 8)) return -1;
            {
                double d = PyFloat_Unpack8((const char *)r->p, 0);
                if (d == -1.0 && PyErr_Occurred()) return -1;
                r->p += 8;
                if (slots_push(&r->stack, PyFloat_FromDouble(d), K_SCALAR, 0) < 0) return -1;
            }
            break;
        case 'N':
            Py_INCREF(Py_None);
            if (slots_push(&r->stack, Py_None, K_SCALAR, 0) < 0) return -1;
            break;
        case 0x88:
            Py_INCREF(Py_True);
            if (slots_push(&r->stack, Py_True, K_SCALAR, 0) < 0) return -1;
            break;
        case 0x89:
            Py_INCREF(Py_False);
            if (slots_push(&r->stack, Py_False, K_SCALAR, 0) < 0) return -1;
            break;
        case 'C': /* SHORT_BINBYTES: only a FinishStatus's 4 bytes */
            if (!need(r, 1) || r->p[0] != 4 || !need(r, 5)) return -1;
            if (slots_push(&r->stack, PyBytes_FromStringAndSize((const char *)r->p + 1, 4),
                           K_BYTES, 0) < 0)
                return -1;
            r->p += 5;
            break;
        case '}':
            if (slots_push(&r->stack, PyDict_New(), K_PLAIN, 1) < 0) return -1;
            break;
        case ']':
            if (slots_push(&r->stack, PyList_New(0), K_EMPTYLIST, 1) < 0) return -1;
            break;
        case '(':
            if (r->nmarks == MAX_MARKS) return -1;
            r->marks[r->nmarks++] = n;
            break;
        case 'u':
            if ((start = pop_mark(r)) < 0 || op_setitems(r, start) < 0) return -1;
            break;
        case 's':
            if (op_setitems(r, n - 2) < 0) return -1;
            break;
        case 'e':
            if ((start = pop_mark(r)) < 0 || op_appends(r, start) < 0) return -1;
            break;
        case 'a':
            if (op_appends(r, n - 1) < 0) return -1;
            break;
        case 't':
            if ((start = pop_mark(r)) < 0 || op_tuple(r, start) < 0) return -1;
            break;
        case 0x85: case 0x86: case 0x87: /* TUPLE1..3 */
            if (op_tuple(r, n - (op - 0x84)) < 0) return -1;
            break;
        case 0x93:
            if (op_stack_global(r) < 0) return -1;
            break;
        case 'R':
            if (op_reduce(r) < 0) return -1;
            break;
        case 0x94: /* MEMOIZE */
            if (n - 1 < fence(r)) return -1;
            Py_INCREF(r->stack.obj[n - 1]);
            if (slots_push(&r->memo, r->stack.obj[n - 1], r->stack.kind[n - 1],
                           r->stack.height[n - 1]) < 0)
                return -1;
            break;
        case 'h': case 'j': { /* BINGET, LONG_BINGET: a scalar or a class again, never a container */
            Py_ssize_t i;
            if (op == 'h') {
                if (!need(r, 1)) return -1;
                i = *r->p++;
            } else {
                if (!need(r, 4)) return -1;
                i = (Py_ssize_t)((uint32_t)r->p[0] | (uint32_t)r->p[1] << 8
                                 | (uint32_t)r->p[2] << 16 | (uint32_t)r->p[3] << 24);
                r->p += 4;
            }
            if (i >= r->memo.len) return -1;
            int kind = r->memo.kind[i];
            PyObject *o = r->memo.obj[i];
            if (!(kind == K_SCALAR || kind == K_BYTES || kind == K_OBJTYPE || kind == K_STATUSCLS
                  || kind == K_UNPICKLE))
                return -1;
            Py_INCREF(o);
            if (slots_push(&r->stack, o, kind, 0) < 0) return -1;
            break;
        }
        case '.': /* STOP */
            return (r->p == r->end && n == 1 && r->nmarks == 0 && r->stack.kind[0] == K_TOP) ? 0
                                                                                           : -1;
        default:
            return -1;
        }
    }
    return -1;
}

PyDoc_STRVAR(decode_doc,
"decode(data, config) -> (member, entries, load or None) or None\n\n"
"config: (objtype_module, objtype_name, status_module, status_name, obj_types,\n"
"statuses, status_fn, max_bytes, max_dict_items, max_int_bytes); see\n"
"pdwire/fastdecode.py.");

static PyObject *decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyTuple_CheckExact(args[1])
        || PyTuple_GET_SIZE(args[1]) != 10) {
        PyErr_SetString(PyExc_TypeError, "decode(data: bytes, config: tuple of 10)");
        return NULL;
    }
    PyObject *config = args[1];
    reader r;
    memset(&r, 0, sizeof r);
    for (int i = 0; i < 4; i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(config, i))) {
            PyErr_SetString(PyExc_TypeError, "config: the classes' names must be str");
            return NULL;
        }
    }
    r.objtype_module = PyTuple_GET_ITEM(config, 0);
    r.objtype_name = PyTuple_GET_ITEM(config, 1);
    r.status_module = PyTuple_GET_ITEM(config, 2);
    r.status_name = PyTuple_GET_ITEM(config, 3);
    r.obj_types = PyTuple_GET_ITEM(config, 4);
    r.statuses = PyTuple_GET_ITEM(config, 5);
    r.status_fn = PyTuple_GET_ITEM(config, 6);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(PyTuple_GET_ITEM(config, 7));
    if (max_bytes == -1 && PyErr_Occurred()) return NULL;
    r.max_dict_items = PyLong_AsSsize_t(PyTuple_GET_ITEM(config, 8));
    if (r.max_dict_items == -1 && PyErr_Occurred()) return NULL;
    r.max_int_bytes = PyLong_AsSsize_t(PyTuple_GET_ITEM(config, 9));
    if (r.max_int_bytes == -1 && PyErr_Occurred()) return NULL;
    if (!PyDict_CheckExact(r.obj_types) || !PyDict_CheckExact(r.statuses)
        || !PyCallable_Check(r.status_fn)) {
        PyErr_SetString(PyExc_TypeError, "config: obj_types and statuses dicts, a status_fn");
        return NULL;
    }
    if (PyBytes_GET_SIZE(args[0]) > max_bytes) Py_RETURN_NONE;
    r.p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    r.end = r.p + PyBytes_GET_SIZE(args[0]);

    PyObject *result = NULL;
    if (run(&r) == 0) {
        PyObject *top = r.stack.obj[0];
        PyObject *load = PyTuple_GET_SIZE(top) == 3 ? PyTuple_GET_ITEM(top, 2) : Py_None;
        result = PyTuple_Pack(3, PyTuple_GET_ITEM(top, 0), PyTuple_GET_ITEM(top, 1), load);
    }
    slots_free(&r.stack);
    slots_free(&r.memo);
    if (result == NULL) {
        /* any failure, a refused shape or an error raised while building: safepickle decides */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL, decode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot module_slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pdwire._tokenpacks",
    "LightLLM TOKEN_PACKS frames decoded in one pass, running no code.", 0, methods,
    module_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tokenpacks(void) { return PyModuleDef_Init(&module_def); }

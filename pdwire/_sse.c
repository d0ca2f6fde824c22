/* LightLLM's client stream events for a list of token entries, built in one pass (and
 * OpenAI's text chunks, below).
 *
 * The same bytes as the Python path of ``pdwire/sse.py`` (which stays the reference): per
 * entry ``(request_id, text, meta, status)`` the event
 *   data:{"token":{"id":..,"text":..,"logprob":..,"special":..,"count_output_tokens":..,
 *   "prompt_tokens":..}<the status's tail>
 * where the token dict is what ``orjson.dumps`` writes for it. Values are written here as
 * orjson writes them: None, bool, int within 64 bits, str (orjson's escapes, raw UTF-8) and
 * integral floats below 1e15; any other float is written by the caller's ``orjson.dumps``
 * itself (its shortest round-trip format differs between orjson versions and from repr).
 * Anything else (another value type or a subclass, an int beyond 64 bits, a str with a lone
 * surrogate, an entry that is not an exact 4-tuple of int, str, dict and FinishStatus, a
 * status of another class) returns None, and the caller takes the Python path, which writes
 * the same bytes or raises what orjson raises. Nothing before that ran code of the entries'
 * objects (a node's metadata keys are str or int, which compare in C), so nothing is done
 * twice.
 *
 * ``text_chunk`` writes an OpenAI stream's text chunk for entries that end nothing, the bytes
 * of ``OpenAIStream.chunk`` (pdmaster/api/openai_relay.py, the reference): the stream's bytes
 * around the JSON string of the entries' texts joined, written as orjson writes a str; it
 * declines (None) an entry of other types, a status of another class or not 0, a count before
 * an entry that is not an int (Python adds 1 to it) and a lone surrogate, before anything is
 * changed: it changes nothing, and gives the caller the counts to set.
 *
 * Work and memory are linear in the entries' size; no state is kept between calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define DECLINE 1   /* not this path's input: the caller takes the Python path */

typedef struct {
    PyObject *id, *logprob, *special, *count_output_tokens, *prompt_tokens, *status, *one;
} module_state;

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
    char small[1024];
} writer;

/* An empty writer over its own small buffer. */
static void writer_init(writer *w) {
    w->buf = w->small;
    w->len = 0;
    w->cap = sizeof w->small;
}

/* Room for n more bytes; -1 with MemoryError set. */
static int reserve(writer *w, Py_ssize_t n) {
    if (n <= w->cap - w->len) return 0;
    if (n > PY_SSIZE_T_MAX / 2 - w->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = w->cap * 2 > w->len + n ? w->cap * 2 : w->len + n;
    char *buf;
    if (w->buf == w->small) {
        buf = PyMem_Malloc(cap);
        if (buf != NULL) memcpy(buf, w->small, w->len);
    } else {
        buf = PyMem_Realloc(w->buf, cap);
    }
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->buf = buf;
    w->cap = cap;
    return 0;
}

static int put(writer *w, const char *s, Py_ssize_t n) {
    if (reserve(w, n) < 0) return -1;
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    return 0;
}

#define PUT_LITERAL(w, s) put((w), (s), (Py_ssize_t)sizeof(s) - 1)

/* What follows a backslash for a char below 0x80 that JSON (as orjson writes it) escapes;
 * 'u' for \u00XX. */
static const unsigned char ESCAPE[128] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    0, 0, '"', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '\\', 0, 0, 0,
};

static const char HEX[] = "0123456789abcdef";

/* A str's characters as orjson writes them inside its quotes: 0, DECLINE (a surrogate:
 * orjson refuses it) or -1. */
static int write_chars(writer *w, PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n > (PY_SSIZE_T_MAX / 2 - 2) / 6) {
        PyErr_NoMemory();
        return -1;
    }
    if (reserve(w, 2 + 6 * n) < 0) return -1;  /* the most a char takes: \u00XX */
    unsigned char *o = (unsigned char *)w->buf + w->len;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            unsigned char e = ESCAPE[c];
            if (e == 0) {
                *o++ = (unsigned char)c;
            } else {
                *o++ = '\\';
                *o++ = e;
                if (e == 'u') {
                    *o++ = '0';
                    *o++ = '0';
                    *o++ = HEX[c >> 4];
                    *o++ = HEX[c & 0xf];
                }
            }
        } else if (c < 0x800) {
            *o++ = (unsigned char)(0xc0 | c >> 6);
            *o++ = (unsigned char)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            if (c >= 0xd800 && c <= 0xdfff) return DECLINE;
            *o++ = (unsigned char)(0xe0 | c >> 12);
            *o++ = (unsigned char)(0x80 | (c >> 6 & 0x3f));
            *o++ = (unsigned char)(0x80 | (c & 0x3f));
        } else {
            *o++ = (unsigned char)(0xf0 | c >> 18);
            *o++ = (unsigned char)(0x80 | (c >> 12 & 0x3f));
            *o++ = (unsigned char)(0x80 | (c >> 6 & 0x3f));
            *o++ = (unsigned char)(0x80 | (c & 0x3f));
        }
    }
    w->len = (char *)o - w->buf;
    return 0;
}

/* A str as orjson writes it: 0, DECLINE or -1. */
static int write_str(writer *w, PyObject *s) {
    int rc;
    if ((rc = PUT_LITERAL(w, "\"")) != 0 || (rc = write_chars(w, s)) != 0) return rc;
    return PUT_LITERAL(w, "\"");
}

static int write_u64(writer *w, unsigned long long v, int negative) {
    char digits[24];
    char *p = digits + sizeof digits;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (negative) *--p = '-';
    return put(w, p, digits + sizeof digits - p);
}

/* An int as orjson writes it (it takes -2**63 .. 2**64-1): 0, DECLINE or -1. */
static int write_int(writer *w, PyObject *v) {
    int overflow;
    long long i = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow == 0) {
        if (i == -1 && PyErr_Occurred()) return -1;
        return write_u64(w, i < 0 ? 0ULL - (unsigned long long)i : (unsigned long long)i, i < 0);
    }
    if (overflow < 0) return DECLINE;
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return DECLINE;
    }
    return write_u64(w, u, 0);
}

/* A float: an integral one below 1e15 here (its digits are the shortest round trip, and every
 * orjson and repr write it as digits and ".0"); any other by the caller's orjson.dumps. */
static int write_float(writer *w, PyObject *v, PyObject *dumps) {
    double d = PyFloat_AS_DOUBLE(v);
    if (fabs(d) < 1e15 && d == (double)(long long)d) {
        long long i = (long long)d;
        if (write_u64(w, i < 0 ? 0ULL - (unsigned long long)i : (unsigned long long)i,
                      signbit(d) != 0) < 0)
            return -1;
        return PUT_LITERAL(w, ".0");
    }
    PyObject *text = PyObject_CallOneArg(dumps, v);
    if (text == NULL) return -1;
    int rc = PyBytes_CheckExact(text)
                 ? put(w, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
                 : DECLINE;
    Py_DECREF(text);
    return rc;
}

/* A metadata value: 0, DECLINE or -1. */
static int write_value(writer *w, PyObject *v, PyObject *dumps) {
    if (v == Py_None) return PUT_LITERAL(w, "null");
    if (v == Py_True) return PUT_LITERAL(w, "true");
    if (v == Py_False) return PUT_LITERAL(w, "false");
    if (PyLong_CheckExact(v)) return write_int(w, v);
    if (PyFloat_CheckExact(v)) return write_float(w, v, dumps);
    if (PyUnicode_CheckExact(v)) return write_str(w, v);
    return DECLINE;
}

/* ``,"key":`` and meta.get(key, fallback) as orjson writes it. */
static int write_field(writer *w, const char *head, Py_ssize_t head_len, PyObject *meta,
                       PyObject *key, PyObject *fallback, PyObject *dumps) {
    if (put(w, head, head_len) < 0) return -1;
    PyObject *v = PyDict_GetItemWithError(meta, key);
    if (v == NULL) {
        if (PyErr_Occurred()) return -1;
        v = fallback;
    }
    return write_value(w, v, dumps);
}

#define FIELD(w, head, meta, key, fallback, dumps) \
    write_field((w), (head), (Py_ssize_t)sizeof(head) - 1, (meta), (key), (fallback), (dumps))

/* One entry's event: 0, DECLINE or -1. */
static int write_event(writer *w, module_state *st, PyObject *entry, PyObject *status_type,
                       PyObject *tails, PyObject *default_tail, PyObject *dumps) {
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) return DECLINE;
    PyObject *text = PyTuple_GET_ITEM(entry, 1), *meta = PyTuple_GET_ITEM(entry, 2);
    PyObject *status = PyTuple_GET_ITEM(entry, 3);
    if (!PyUnicode_CheckExact(text) || !PyDict_CheckExact(meta)
        || Py_TYPE(status) != (PyTypeObject *)status_type)
        return DECLINE;
    int rc;
    if ((rc = FIELD(w, "data:{\"token\":{\"id\":", meta, st->id, Py_None, dumps)) != 0
        || (rc = PUT_LITERAL(w, ",\"text\":")) != 0 || (rc = write_str(w, text)) != 0
        || (rc = FIELD(w, ",\"logprob\":", meta, st->logprob, Py_None, dumps)) != 0
        || (rc = FIELD(w, ",\"special\":", meta, st->special, Py_False, dumps)) != 0
        || (rc = FIELD(w, ",\"count_output_tokens\":", meta, st->count_output_tokens, Py_None,
                       dumps)) != 0
        || (rc = FIELD(w, ",\"prompt_tokens\":", meta, st->prompt_tokens, Py_None, dumps)) != 0
        || (rc = PUT_LITERAL(w, "}")) != 0)
        return rc;
    PyObject *value = PyObject_GetAttr(status, st->status);  /* a ctypes field: runs no code */
    if (value == NULL) return -1;
    PyObject *tail = PyDict_GetItemWithError(tails, value);
    Py_DECREF(value);
    if (tail == NULL) {
        if (PyErr_Occurred()) return -1;
        tail = default_tail;
    }
    if (!PyBytes_CheckExact(tail)) return DECLINE;
    return put(w, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
}

PyDoc_STRVAR(events_doc,
"events(entries, config) -> bytes or None\n\n"
"entries: a list of (request_id, text, meta, status); config: (status_type, tails,\n"
"default_tail, dumps) where tails maps a status value to the bytes after an event's token\n"
"and dumps is orjson.dumps. None: take the Python path (see pdwire/sse.py).");

static PyObject *events(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_CheckExact(args[1]) || PyTuple_GET_SIZE(args[1]) != 4
        || !PyType_Check(PyTuple_GET_ITEM(args[1], 0))
        || !PyDict_CheckExact(PyTuple_GET_ITEM(args[1], 1))
        || !PyBytes_CheckExact(PyTuple_GET_ITEM(args[1], 2))
        || !PyCallable_Check(PyTuple_GET_ITEM(args[1], 3))) {
        PyErr_SetString(PyExc_TypeError,
                        "events(entries, (status_type, tails: dict, default_tail: bytes, dumps))");
        return NULL;
    }
    PyObject *entries = args[0];
    if (!PyList_CheckExact(entries)) Py_RETURN_NONE;
    PyObject *status_type = PyTuple_GET_ITEM(args[1], 0);
    PyObject *tails = PyTuple_GET_ITEM(args[1], 1);
    PyObject *default_tail = PyTuple_GET_ITEM(args[1], 2);
    PyObject *dumps = PyTuple_GET_ITEM(args[1], 3);
    module_state *st = PyModule_GetState(module);

    writer w;
    writer_init(&w);
    int rc = 0;
    /* the size is read again each time: a key's __eq__ (not a str or int key's) could run
     * code that changes the list, so each entry is held while it is written */
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(entries); i++) {
        PyObject *entry = PyList_GET_ITEM(entries, i);
        Py_INCREF(entry);
        rc = write_event(&w, st, entry, status_type, tails, default_tail, dumps);
        Py_DECREF(entry);
    }
    PyObject *result;
    if (rc == 0) {
        result = PyBytes_FromStringAndSize(w.buf, w.len);
    } else if (rc == DECLINE) {
        result = Py_NewRef(Py_None);
    } else {
        result = NULL;
    }
    if (w.buf != w.small) PyMem_Free(w.buf);
    return result;
}

/* The hex digits of size (not 0) and CRLF at head: how many bytes. */
static int chunk_head(char *head, size_t size) {
    int digits = 0;
    for (size_t left = size; left != 0; left >>= 4) digits++;
    for (int i = digits - 1, shift = 0; i >= 0; i--, shift += 4)
        head[i] = "0123456789abcdef"[(size >> shift) & 0xF];
    head[digits] = '\r';
    head[digits + 1] = '\n';
    return digits + 2;
}

/* status is of status_type with the value 0 (ends nothing): 1, 0 (DECLINE's case) or -1. */
static int status_zero(module_state *st, PyObject *status, PyObject *status_type) {
    if (Py_TYPE(status) != (PyTypeObject *)status_type) return 0;
    PyObject *value = PyObject_GetAttr(status, st->status);  /* a ctypes field: runs no code */
    if (value == NULL) return -1;
    int overflow = 0;
    int zero = PyLong_CheckExact(value) && PyLong_AsLongAndOverflow(value, &overflow) == 0
               && overflow == 0;
    Py_DECREF(value);
    return PyErr_Occurred() ? -1 : zero;
}

/* One entry's text into w and its counts into *count, *prompt (references the caller holds):
 * 0, DECLINE or -1. */
static int take_text(writer *w, module_state *st, PyObject *entry, PyObject *status_type,
                     PyObject **count, PyObject **prompt) {
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) return DECLINE;
    PyObject *text = PyTuple_GET_ITEM(entry, 1), *meta = PyTuple_GET_ITEM(entry, 2);
    if (!PyUnicode_CheckExact(text) || !PyDict_CheckExact(meta)) return DECLINE;
    if (status_type != Py_None) {
        int zero = status_zero(st, PyTuple_GET_ITEM(entry, 3), status_type);
        if (zero != 1) return zero < 0 ? -1 : DECLINE;
    }
    /* Python works out count + 1 even where the metadata has the count: an int's sum runs
     * no code, anything else's might */
    if (!PyLong_CheckExact(*count)) return DECLINE;
    PyObject *v = PyDict_GetItemWithError(meta, st->count_output_tokens);
    if (v != NULL) {
        Py_SETREF(*count, Py_NewRef(v));
    } else if (PyErr_Occurred()) {
        return -1;
    } else {
        PyObject *next = PyNumber_Add(*count, st->one);
        if (next == NULL) return -1;
        Py_SETREF(*count, next);
    }
    v = PyDict_GetItemWithError(meta, st->prompt_tokens);
    if (v != NULL) {
        Py_SETREF(*prompt, Py_NewRef(v));
    } else if (PyErr_Occurred()) {
        return -1;
    }
    return write_chars(w, text);
}

PyDoc_STRVAR(text_chunk_doc,
"text_chunk(entries, count, prompt, head, tail, status_type, framed)\n"
"    -> (body, count, prompt) or None\n\n"
"An OpenAI stream's chunk for token entries that end nothing (no stop strings to hold text\n"
"back): body is head + the JSON string of the entries' texts joined + tail, or b\"\" if\n"
"they are empty; framed as one HTTP/1.1 chunk if framed. count and prompt are the token\n"
"counts before the entries and come back after them: each entry's meta \"count_output_tokens\"\n"
"(else the count before it plus one) and \"prompt_tokens\" (else the one before it).\n"
"status_type: every entry's status must be of this class, with status 0; None: the caller\n"
"checked that. None: the Python path (pdmaster/api/openai_relay.py, the reference).");

static PyObject *text_chunk(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyBytes_CheckExact(args[3]) || !PyBytes_CheckExact(args[4])
        || (args[5] != Py_None && !PyType_Check(args[5]))) {
        PyErr_SetString(PyExc_TypeError,
                        "text_chunk(entries, count, prompt, head: bytes, tail: bytes, "
                        "status_type: type | None, framed)");
        return NULL;
    }
    PyObject *entries = args[0], *head = args[3], *tail = args[4], *status_type = args[5];
    int framed = PyObject_IsTrue(args[6]);
    if (framed < 0) return NULL;
    if (!PyList_CheckExact(entries)) Py_RETURN_NONE;
    module_state *st = PyModule_GetState(module);
    PyObject *count = Py_NewRef(args[1]), *prompt = Py_NewRef(args[2]);

    writer w;
    writer_init(&w);
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(entries); i++) {
        PyObject *entry = PyList_GET_ITEM(entries, i);
        Py_INCREF(entry);
        rc = take_text(&w, st, entry, status_type, &count, &prompt);
        Py_DECREF(entry);
    }
    PyObject *body = NULL, *result = NULL;
    if (rc == DECLINE) {
        result = Py_NewRef(Py_None);
    } else if (rc == 0 && w.len == 0) {
        body = PyBytes_FromStringAndSize(NULL, 0);
    } else if (rc == 0) {
        Py_ssize_t n_head = PyBytes_GET_SIZE(head), n_tail = PyBytes_GET_SIZE(tail);
        if (w.len > PY_SSIZE_T_MAX / 2 - n_head - n_tail - 64) {
            PyErr_NoMemory();
        } else {
            Py_ssize_t size = n_head + 1 + w.len + 1 + n_tail;
            char frame[2 * sizeof(size_t) + 2];
            int n_frame = framed ? chunk_head(frame, (size_t)size) : 0;
            body = PyBytes_FromStringAndSize(NULL, n_frame + size + (framed ? 2 : 0));
            if (body != NULL) {
                char *p = PyBytes_AS_STRING(body);
                memcpy(p, frame, (size_t)n_frame);
                p += n_frame;
                memcpy(p, PyBytes_AS_STRING(head), (size_t)n_head);
                p += n_head;
                *p++ = '"';
                memcpy(p, w.buf, (size_t)w.len);
                p += w.len;
                *p++ = '"';
                memcpy(p, PyBytes_AS_STRING(tail), (size_t)n_tail);
                p += n_tail;
                if (framed) {
                    *p++ = '\r';
                    *p++ = '\n';
                }
            }
        }
    }
    if (body != NULL) {
        result = PyTuple_Pack(3, body, count, prompt);
        Py_DECREF(body);
    }
    Py_DECREF(count);
    Py_DECREF(prompt);
    if (w.buf != w.small) PyMem_Free(w.buf);
    return result;
}

PyDoc_STRVAR(http_chunk_doc,
"http_chunk(body: bytes) -> bytes\n\n"
"body framed as one HTTP/1.1 chunk: its length in hex, CRLF, body, CRLF (body not empty:\n"
"an empty chunk ends a chunked body).");

static PyObject *http_chunk(PyObject *module, PyObject *body) {
    if (!PyBytes_CheckExact(body) || PyBytes_GET_SIZE(body) == 0) {
        PyErr_SetString(PyExc_TypeError, "http_chunk(body): body must be non-empty bytes");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(body);
    char head[2 * sizeof(size_t) + 2];
    int n_head = chunk_head(head, (size_t)size);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n_head + size + 2);
    if (out == NULL) return NULL;
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, head, (size_t)n_head);
    memcpy(p + n_head, PyBytes_AS_STRING(body), (size_t)size);
    p[n_head + size] = '\r';
    p[n_head + size + 1] = '\n';
    return out;
}

static PyMethodDef methods[] = {
    {"events", (PyCFunction)(void (*)(void))events, METH_FASTCALL, events_doc},
    {"http_chunk", (PyCFunction)http_chunk, METH_O, http_chunk_doc},
    {"text_chunk", (PyCFunction)(void (*)(void))text_chunk, METH_FASTCALL, text_chunk_doc},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module) {
    module_state *st = PyModule_GetState(module);
    if ((st->id = PyUnicode_InternFromString("id")) == NULL
        || (st->logprob = PyUnicode_InternFromString("logprob")) == NULL
        || (st->special = PyUnicode_InternFromString("special")) == NULL
        || (st->count_output_tokens = PyUnicode_InternFromString("count_output_tokens")) == NULL
        || (st->prompt_tokens = PyUnicode_InternFromString("prompt_tokens")) == NULL
        || (st->status = PyUnicode_InternFromString("status")) == NULL
        || (st->one = PyLong_FromLong(1)) == NULL)
        return -1;
    return 0;
}

static int traverse(PyObject *module, visitproc visit, void *arg) {
    return 0;  /* the state holds only str and int objects: no cycle can go through them */
}

static int clear(PyObject *module) {
    module_state *st = PyModule_GetState(module);
    if (st != NULL) {
        Py_CLEAR(st->id);
        Py_CLEAR(st->logprob);
        Py_CLEAR(st->special);
        Py_CLEAR(st->count_output_tokens);
        Py_CLEAR(st->prompt_tokens);
        Py_CLEAR(st->status);
        Py_CLEAR(st->one);
    }
    return 0;
}

static void free_module(void *module) { clear((PyObject *)module); }

static struct PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, exec_module},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pdwire._sse",
    "LightLLM's client stream events and OpenAI's text chunks built in one pass (see "
    "pdwire/sse.py).",
    sizeof(module_state), methods, module_slots, traverse, clear, free_module,
};

PyMODINIT_FUNC PyInit__sse(void) { return PyModuleDef_Init(&module_def); }

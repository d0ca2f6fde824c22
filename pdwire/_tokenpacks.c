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
 *
 * Per entry this is the frame's cost, so: an empty dict or list is only built once its items
 * are known (presized, or never, for a FinishStatus's state), a FinishStatus's bytes and
 * argument tuples are markers carrying its 4 bytes, a tuple takes its items without reference
 * counting, the memo keeps only what a BINGET may push, and short ASCII strings (metadata
 * keys, class names, common texts) come from a small cache of the decoder's, so a key's hash
 * is computed once, not per frame. The cache is bounded and holds only str, which nothing can
 * change: what a frame decodes to does not depend on what came before. The keys its readers
 * look up (``keys``) are pinned in it as interned strings: their dict lookups then match by
 * identity, not by comparing the strings' bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_MARKS 16
#define MAX_HEIGHT 3       /* plain containers: metadata dict -> dict -> dict -> scalars */
#define LOCAL_SLOTS 256    /* the stack and the memo of a usual frame live on the C stack */
#define STR_CACHE 256      /* short ASCII strings kept across frames (a power of 2) */
#define STR_CACHE_LEN 40   /* the longest string cached */
#define TEMPLATES 4        /* dict shapes a frame repeats: metadata, and in it logprobs' */
#define TEMPLATE_KEYS 16

enum kind {
    K_SCALAR,   /* str, int, float, bool, None */
    K_PLAIN,    /* a non-empty dict or list of plain values; its height */
    K_EMPTYDICT,/* an empty dict, not built yet (obj NULL) */
    K_EMPTYLIST,/* an empty list, not built yet (obj NULL): plain, or the entries list */
    K_ENTRIES,  /* a non-empty list of entries */
    K_ENTRY,    /* (int, str, dict, FinishStatus) */
    K_OBJARGS,  /* (int,): ObjType's arguments; obj is the int */
    K_STATE,    /* ({}, 4 bytes): a FinishStatus's state; the bytes in raw */
    K_STATUSARGS, /* (FinishStatus, state): _ctypes._unpickle's arguments; the bytes in raw */
    K_BYTES,    /* a FinishStatus's 4 bytes, in raw */
    K_OBJTYPE,  /* the ObjType class */
    K_STATUSCLS,/* the FinishStatus class */
    K_UNPICKLE, /* _ctypes._unpickle */
    K_MEMBER,   /* an ObjType member */
    K_STATUS,   /* a FinishStatus */
    K_TOP,      /* the whole message, as returned: (member, entries, load or None) */
    K_OTHER,    /* memo only: a value no BINGET may push */
};

typedef struct {
    PyObject *obj;          /* owned; NULL for the kinds that are markers only */
    unsigned char kind, height;
    uint32_t raw;           /* a FinishStatus's 4 bytes; K_TOP: the message's length */
} slot;

typedef struct {
    slot *s;
    Py_ssize_t len, cap;
    slot *local;            /* the initial buffer, on the C stack */
} slots;

typedef struct {
    PyObject *str;          /* an exact, ASCII str */
    uint64_t hash;
    int pinned;             /* one of ``keys``: never replaced */
} cached_str;

typedef struct {
    PyObject_HEAD
    PyObject *objtype_module, *objtype_name, *status_module, *status_name;
    PyObject *ctypes_module, *unpickle_name;
    PyObject *obj_types;   /* dict: int -> ObjType member */
    PyObject *statuses;    /* dict: 4 bytes -> FinishStatus (a hit needs no call) */
    PyObject *status_fn;   /* callable: 4 bytes -> FinishStatus, or raises */
    PyObject *slow;        /* callable: data -> what decode_or_slow returns where decode declines */
    Py_ssize_t max_bytes, max_dict_items, max_int_bytes;
    unsigned lengths;      /* bit n: a message of n items is this version's */
    cached_str strs[STR_CACHE];
} Decoder;

/* A dict the frame built, whose keys the next dicts of its shape repeat (each entry's
 * metadata): such a dict is a copy of it with the values that differ set, not n inserts. */
typedef struct {
    PyObject *dict;        /* owned; NULL: none */
    Py_ssize_t n;          /* its n distinct keys, in order, and the values they were given */
    PyObject *keys[TEMPLATE_KEYS], *values[TEMPLATE_KEYS];  /* borrowed from dict */
} template;

typedef struct {
    const unsigned char *p, *end;
    slots stack, memo;
    Py_ssize_t marks[MAX_MARKS + 1];  /* marks[0]: the bottom, a fence of 0 */
    int nmarks;
    Decoder *d;
    PyObject *status;      /* the frame's last FinishStatus from the statuses map, and its bytes */
    uint32_t status_raw;
    template templates[TEMPLATES];
    int next_template;     /* the one a new shape replaces */
} reader;

static int grow(slots *s) {
    Py_ssize_t cap = s->cap * 2;
    slot *n;
    if (s->s == s->local) {
        n = PyMem_Malloc(cap * sizeof(slot));
        if (n != NULL) memcpy(n, s->s, s->len * sizeof(slot));
    } else {
        n = PyMem_Realloc(s->s, cap * sizeof(slot));
    }
    if (n == NULL) { PyErr_NoMemory(); return -1; }
    s->s = n;
    s->cap = cap;
    return 0;
}

/* Steals o, which may be NULL only for a marker (checked by the caller). */
static inline int push(slots *s, PyObject *o, int kind, int height, uint32_t raw) {
    if (s->len == s->cap && grow(s) < 0) { Py_XDECREF(o); return -1; }
    slot *t = &s->s[s->len++];
    t->obj = o;
    t->kind = (unsigned char)kind;
    t->height = (unsigned char)height;
    t->raw = raw;
    return 0;
}

static inline int push_obj(slots *s, PyObject *o, int kind) {
    if (o == NULL) return -1;
    return push(s, o, kind, 0, 0);
}

static void slots_free(slots *s) {
    for (Py_ssize_t i = 0; i < s->len; i++) Py_XDECREF(s->s[i].obj);
    if (s->s != s->local) PyMem_Free(s->s);
}

/* Drop the stack's items from ``from`` on. */
static void stack_cut(reader *r, Py_ssize_t from) {
    for (Py_ssize_t i = from; i < r->stack.len; i++) Py_XDECREF(r->stack.s[i].obj);
    r->stack.len = from;
}

static inline int need(reader *r, Py_ssize_t n) { return r->end - r->p >= n; }

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Where the items an opcode may take start: above the last MARK, as pickle's own fence. */
static inline Py_ssize_t fence(reader *r) { return r->marks[r->nmarks]; }

static inline Py_ssize_t pop_mark(reader *r) {
    if (r->nmarks == 0) return -1;
    return r->marks[r->nmarks--];
}

/* May a value of this kind and height go into a dict or plain list? */
static inline int plain_value(int kind, int height) {
    if (kind == K_SCALAR) return 1;
    if (kind == K_PLAIN || kind == K_EMPTYLIST || kind == K_EMPTYDICT) return height < MAX_HEIGHT;
    return 0;
}

/* A slot's value, an empty container built now if it was not yet; NULL on error. */
static inline PyObject *value(slot *t) {
    if (t->obj == NULL) {
        if (t->kind == K_EMPTYDICT) t->obj = PyDict_New();
        else if (t->kind == K_EMPTYLIST) t->obj = PyList_New(0);
    }
    return t->obj;
}

/* A hash of a short string's bytes (8 at a time), and whether they are all ASCII. */
static inline uint64_t str_hash(const unsigned char *p, Py_ssize_t n, int *ascii) {
    uint64_t h = (uint64_t)n * 0x9E3779B97F4A7C15ull, high = 0, w;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        high |= w;
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    if (i < n) {
        w = 0;
        memcpy(&w, p + i, (size_t)(n - i));
        high |= w;
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    *ascii = (high & 0x8080808080808080ull) == 0;
    return h;
}

static int push_str(reader *r, Py_ssize_t n) {
    if (n < 0 || !need(r, n)) return -1;
    const unsigned char *p = r->p;
    r->p += n;
    if (n <= STR_CACHE_LEN) {
        int ascii;
        uint64_t h = str_hash(p, n, &ascii);
        if (ascii) {
            cached_str *c = &r->d->strs[h >> 56 & (STR_CACHE - 1)];
            if (c->str != NULL && c->hash == h && PyUnicode_GET_LENGTH(c->str) == n
                && memcmp(PyUnicode_1BYTE_DATA(c->str), p, n) == 0) {
                Py_INCREF(c->str);
                return push(&r->stack, c->str, K_SCALAR, 0, 0);
            }
            PyObject *s = PyUnicode_New(n, 127);
            if (s == NULL) return -1;
            memcpy(PyUnicode_1BYTE_DATA(s), p, n);
            if (c->pinned) return push(&r->stack, s, K_SCALAR, 0, 0);
            Py_INCREF(s);
            Py_XSETREF(c->str, s);
            c->hash = h;
            return push(&r->stack, s, K_SCALAR, 0, 0);
        }
    }
    return push_obj(&r->stack, PyUnicode_DecodeUTF8((const char *)p, n, "surrogatepass"), K_SCALAR);
}

/* The template with these keys (pointers, in order), or NULL. */
static template *find_template(reader *r, slot *items, Py_ssize_t pairs) {
    for (int t = 0; t < TEMPLATES; t++) {
        template *tp = &r->templates[t];
        if (tp->dict == NULL || tp->n != pairs) continue;
        Py_ssize_t i = 0;
        while (i < pairs && items[2 * i].obj == tp->keys[i]) i++;
        if (i == pairs) return tp;
    }
    return NULL;
}

static void keep_template(reader *r, PyObject *dict, slot *items, Py_ssize_t pairs) {
    if (pairs < 2 || pairs > TEMPLATE_KEYS || PyDict_GET_SIZE(dict) != pairs) return;
    template *tp = &r->templates[r->next_template];
    r->next_template = (r->next_template + 1) % TEMPLATES;
    Py_INCREF(dict);
    Py_XSETREF(tp->dict, dict);
    tp->n = pairs;
    for (Py_ssize_t i = 0; i < pairs; i++) {
        tp->keys[i] = items[2 * i].obj;
        tp->values[i] = items[2 * i + 1].obj;
    }
}

static int op_setitems(reader *r, Py_ssize_t start) {
    /* stack[start - 1] is the dict, then key, value pairs */
    if (start - 1 < fence(r) || start > r->stack.len || (r->stack.len - start) % 2) return -1;
    slot *t = &r->stack.s[start - 1], *items = t + 1;
    Py_ssize_t pairs = (r->stack.len - start) / 2;
    int empty = t->kind == K_EMPTYDICT;
    if (!empty && (t->kind != K_PLAIN || !PyDict_CheckExact(t->obj))) return -1;
    if (pairs == 0) return 0;
    int height = t->height;
    for (Py_ssize_t i = 0; i < pairs; i++) {
        slot *k = &items[2 * i], *v = k + 1;
        if (k->kind != K_SCALAR || !(PyUnicode_CheckExact(k->obj) || PyLong_CheckExact(k->obj)))
            return -1;
        if (!plain_value(v->kind, v->height)) return -1;
        if (v->height + 1 > height) height = v->height + 1;
        if (value(v) == NULL) return -1;
    }
    PyObject *dict;
    template *tp = NULL;
    if (empty) {
        tp = find_template(r, items, pairs);
        if (tp != NULL) {
            dict = t->obj = PyDict_Copy(tp->dict);
        } else {
#if PY_VERSION_HEX < 0x030D0000
            dict = t->obj = _PyDict_NewPresized(pairs);
#else
            dict = t->obj = PyDict_New();
#endif
        }
        if (dict == NULL) return -1;
        t->kind = K_PLAIN;
    } else {
        dict = t->obj;
        for (int i = 0; i < TEMPLATES; i++) {  /* a template stays as it was made */
            if (r->templates[i].dict == dict) Py_CLEAR(r->templates[i].dict);
        }
    }
    for (Py_ssize_t i = 0; i < pairs; i++) {
        PyObject *o = items[2 * i + 1].obj;
        if (tp != NULL && o == tp->values[i]) continue;  /* the copy has it: distinct keys */
        if (PyDict_SetItem(dict, items[2 * i].obj, o) < 0) return -1;
    }
    if (PyDict_GET_SIZE(dict) > r->d->max_dict_items) return -1;
    if (empty && tp == NULL) keep_template(r, dict, items, pairs);
    t->height = (unsigned char)height;
    stack_cut(r, start);
    return 0;
}

static int op_appends(reader *r, Py_ssize_t start) {
    if (start - 1 < fence(r) || start > r->stack.len) return -1;
    slot *t = &r->stack.s[start - 1];
    int kind = t->kind;
    if (!(kind == K_EMPTYLIST || kind == K_ENTRIES
          || (kind == K_PLAIN && PyList_CheckExact(t->obj))))
        return -1;
    Py_ssize_t n = r->stack.len - start;
    if (n == 0) return 0;
    int height = t->height;
    slot *items = t + 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        int vk = items[i].kind, vh = items[i].height;
        if (vk == K_ENTRY) {
            if (kind == K_PLAIN) return -1;
            kind = K_ENTRIES;
        } else {
            if (kind == K_ENTRIES || !plain_value(vk, vh)) return -1;
            kind = K_PLAIN;
            if (vh + 1 > height) height = vh + 1;
        }
        if (value(&items[i]) == NULL) return -1;
    }
    if (t->obj == NULL) {  /* the first items: the list, built to size, takes them */
        PyObject *list = PyList_New(n);
        if (list == NULL) return -1;
        for (Py_ssize_t i = 0; i < n; i++) PyList_SET_ITEM(list, i, items[i].obj);
        r->stack.len = start;
        t->obj = list;
    } else {
        for (Py_ssize_t i = 0; i < n; i++)
            if (PyList_Append(t->obj, items[i].obj) < 0) return -1;
        stack_cut(r, start);
    }
    t->kind = (unsigned char)kind;
    t->height = (unsigned char)height;
    return 0;
}

/* A tuple of the stack's items from ``start`` on: only the shapes a token pack has. */
static int op_tuple(reader *r, Py_ssize_t start) {
    if (start < fence(r) || start > r->stack.len) return -1;
    Py_ssize_t n = r->stack.len - start;
    slot *k = r->stack.s + start;
    int kind;
    uint32_t raw = 0;
    if (n == 4 && k[0].kind == K_SCALAR && PyLong_CheckExact(k[0].obj) && k[1].kind == K_SCALAR
        && PyUnicode_CheckExact(k[1].obj)
        && (k[2].kind == K_EMPTYDICT || (k[2].kind == K_PLAIN && PyDict_CheckExact(k[2].obj)))
        && k[3].kind == K_STATUS) {
        kind = K_ENTRY;
    } else if (n == 1 && k[0].kind == K_SCALAR && PyLong_CheckExact(k[0].obj)) {
        r->stack.len = start;  /* the marker keeps the int */
        return push(&r->stack, k[0].obj, K_OBJARGS, 0, 0);
    } else if (n == 2 && k[0].kind == K_EMPTYDICT && k[1].kind == K_BYTES) {
        raw = k[1].raw;
        stack_cut(r, start);
        return push(&r->stack, NULL, K_STATE, 0, raw);
    } else if (n == 2 && k[0].kind == K_STATUSCLS && k[1].kind == K_STATE) {
        raw = k[1].raw;
        stack_cut(r, start);
        return push(&r->stack, NULL, K_STATUSARGS, 0, raw);
    } else if ((n == 2 || n == 3) && k[0].kind == K_MEMBER
               && (k[1].kind == K_ENTRIES || k[1].kind == K_EMPTYLIST)
               && (n == 2 || k[2].kind == K_EMPTYDICT
                   || (k[2].kind == K_PLAIN && PyDict_CheckExact(k[2].obj)))) {
        kind = K_TOP;
        raw = (uint32_t)n;
        if (n == 2) {  /* returned as (member, entries, None) */
            Py_INCREF(Py_None);
            if (push(&r->stack, Py_None, K_SCALAR, 0, 0) < 0) return -1;
            k = r->stack.s + start;
            n = 3;
        }
    } else {
        return -1;  /* no other tuple is part of a token pack */
    }
    PyObject *t = PyTuple_New(n);
    if (t == NULL) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = value(&k[i]);
        if (o == NULL) { Py_DECREF(t); return -1; }
    }
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(t, i, k[i].obj);
    r->stack.len = start;
    return push(&r->stack, t, kind, 0, raw);
}

/* The global a module and a name are: K_OBJTYPE, K_STATUSCLS, K_UNPICKLE, or -1. The
 * names come from the string cache, which starts with the decoder's own: mostly the very
 * objects, so those are tried first. */
static int global_kind(Decoder *d, PyObject *module, PyObject *name) {
    PyObject *known[3][2] = {{d->objtype_module, d->objtype_name},
                             {d->status_module, d->status_name},
                             {d->ctypes_module, d->unpickle_name}};
    static const int kinds[3] = {K_OBJTYPE, K_STATUSCLS, K_UNPICKLE};
    for (int i = 0; i < 3; i++)
        if (module == known[i][0] && name == known[i][1]) return kinds[i];
    for (int i = 0; i < 3; i++)
        if (PyUnicode_Compare(module, known[i][0]) == 0
            && PyUnicode_Compare(name, known[i][1]) == 0)
            return kinds[i];
    return -1;
}

static int op_stack_global(reader *r) {
    Py_ssize_t n = r->stack.len;
    if (n - 2 < fence(r) || r->stack.s[n - 1].kind != K_SCALAR
        || r->stack.s[n - 2].kind != K_SCALAR)
        return -1;
    PyObject *module = r->stack.s[n - 2].obj, *name = r->stack.s[n - 1].obj;
    if (!PyUnicode_CheckExact(module) || !PyUnicode_CheckExact(name)) return -1;
    int kind = global_kind(r->d, module, name);
    if (kind < 0) return -1;
    stack_cut(r, n - 2);
    return push(&r->stack, NULL, kind, 0, 0);
}

static PyObject *finish_status(reader *r, uint32_t raw) {
    if (r->status != NULL && r->status_raw == raw) {
        Py_INCREF(r->status);
        return r->status;
    }
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)&raw, 4);
    if (bytes == NULL) return NULL;
    PyObject *result = PyDict_GetItemWithError(r->d->statuses, bytes);
    if (result != NULL) {
        Py_INCREF(result);
        Py_INCREF(result);
        Py_XSETREF(r->status, result);  /* the map's instance: the frame's next ones share it */
        r->status_raw = raw;
    } else if (!PyErr_Occurred()) {
        result = PyObject_CallOneArg(r->d->status_fn, bytes);  /* checks it; raises if unknown */
    }
    Py_DECREF(bytes);
    return result;
}

static int op_reduce(reader *r) {
    Py_ssize_t n = r->stack.len;
    if (n - 2 < fence(r)) return -1;
    slot *callable = &r->stack.s[n - 2], *args = &r->stack.s[n - 1];
    PyObject *result;
    int kind;
    if (callable->kind == K_OBJTYPE && args->kind == K_OBJARGS) {
        result = PyDict_GetItemWithError(r->d->obj_types, args->obj);
        if (result == NULL) return -1;
        Py_INCREF(result);
        kind = K_MEMBER;
    } else if (callable->kind == K_UNPICKLE && args->kind == K_STATUSARGS) {
        result = finish_status(r, args->raw);
        if (result == NULL) return -1;
        kind = K_STATUS;
    } else {
        return -1;
    }
    stack_cut(r, n - 2);
    return push(&r->stack, result, kind, 0, 0);
}

static int read_long1(reader *r) {
    if (!need(r, 1)) return -1;
    Py_ssize_t n = *r->p++;
    if (n > r->d->max_int_bytes || !need(r, n)) return -1;
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
    return push_obj(&r->stack, v, K_SCALAR);
}

static int memoize(reader *r) {
    Py_ssize_t n = r->stack.len;
    if (n - 1 < fence(r)) return -1;
    slot *t = &r->stack.s[n - 1];
    int kind = t->kind;
    if (kind == K_SCALAR || kind == K_OBJTYPE || kind == K_STATUSCLS || kind == K_UNPICKLE) {
        Py_XINCREF(t->obj);
        return push(&r->memo, t->obj, kind, 0, t->raw);
    }
    /* never pushed again: a container, say, or a FinishStatus's bytes (safepickle takes
     * those only written out in its state) */
    return push(&r->memo, NULL, K_OTHER, 0, 0);
}

static inline int binget(reader *r, Py_ssize_t i) {
    if (i >= r->memo.len) return -1;
    slot *m = &r->memo.s[i];
    if (m->kind == K_OTHER) return -1;  /* only a scalar or a marker again, never a container */
    Py_XINCREF(m->obj);
    return push(&r->stack, m->obj, m->kind, 0, m->raw);
}

/* Every entry's FinishStatus after the first, once the two globals are in the memo:
 *   BINGET _unpickle, BINGET FinishStatus, EMPTY_DICT, MEMOIZE, SHORT_BINBYTES 4 bytes,
 *   MEMOIZE, TUPLE2, MEMOIZE, TUPLE2, MEMOIZE, REDUCE, MEMOIZE
 * (the BINGET of _unpickle read). Those 19 bytes leave the stack and the memo as the
 * opcodes one by one do: the status on the stack, 5 memo slots no BINGET may push. 1: done,
 * r->p past them; 0: not this sequence (nothing changed, the opcodes take their own way);
 * -1: error. */
#define STATUS_TAIL 17
static int status_sequence(reader *r, Py_ssize_t unpickle) {
    static const unsigned char tail[STATUS_TAIL] = {'h', 0, '}', 0x94, 'C', 4, 0, 0, 0, 0,
                                                    0x94, 0x86, 0x94, 0x86, 0x94, 'R', 0x94};
    const unsigned char *p = r->p;
    if (!need(r, STATUS_TAIL) || unpickle >= r->memo.len
        || r->memo.s[unpickle].kind != K_UNPICKLE || p[1] >= r->memo.len
        || r->memo.s[p[1]].kind != K_STATUSCLS || p[0] != tail[0]
        || memcmp(p + 2, tail + 2, 4) != 0 || memcmp(p + 10, tail + 10, 7) != 0)
        return 0;
    uint32_t raw;
    memcpy(&raw, p + 6, 4);
    PyObject *status = finish_status(r, raw);
    if (status == NULL) return -1;
    if (push(&r->stack, status, K_STATUS, 0, 0) < 0) return -1;
    for (int i = 0; i < 5; i++)
        if (push(&r->memo, NULL, K_OTHER, 0, 0) < 0) return -1;
    r->p += STATUS_TAIL;
    return 1;
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
            n = (Py_ssize_t)le32(r->p);
            r->p += 4;
            if (push_str(r, n) < 0) return -1;
            break;
        case 'K': /* BININT1 */
            if (!need(r, 1)) return -1;
            if (push_obj(&r->stack, PyLong_FromLong(r->p[0]), K_SCALAR) < 0) return -1;
            r->p += 1;
            break;
        case 'M': /* BININT2 */
            if (!need(r, 2)) return -1;
            if (push_obj(&r->stack, PyLong_FromLong(r->p[0] | r->p[1] << 8), K_SCALAR) < 0)
                return -1;
            r->p += 2;
            break;
        case 'J': /* BININT */
            if (!need(r, 4)) return -1;
            if (push_obj(&r->stack, PyLong_FromLong((int32_t)le32(r->p)), K_SCALAR) < 0)
                return -1;
            r->p += 4;
            break;
        case 0x8a: /* LONG1 */
            if (read_long1(r) < 0) return -1;
            break;
        case 'G': /* BINFLOAT */
            if (!need(r, 8)) return -1;
            {
                double d = PyFloat_Unpack8((const char *)r->p, 0);
                if (d == -1.0 && PyErr_Occurred()) return -1;
                r->p += 8;
                if (push_obj(&r->stack, PyFloat_FromDouble(d), K_SCALAR) < 0) return -1;
            }
            break;
        case 'N':
            Py_INCREF(Py_None);
            if (push(&r->stack, Py_None, K_SCALAR, 0, 0) < 0) return -1;
            break;
        case 0x88:
            Py_INCREF(Py_True);
            if (push(&r->stack, Py_True, K_SCALAR, 0, 0) < 0) return -1;
            break;
        case 0x89:
            Py_INCREF(Py_False);
            if (push(&r->stack, Py_False, K_SCALAR, 0, 0) < 0) return -1;
            break;
        case 'C': /* SHORT_BINBYTES: only a FinishStatus's 4 bytes */
            if (!need(r, 5) || r->p[0] != 4) return -1;
            {
                uint32_t raw;
                memcpy(&raw, r->p + 1, 4);
                if (push(&r->stack, NULL, K_BYTES, 0, raw) < 0) return -1;
            }
            r->p += 5;
            break;
        case '}':
            if (push(&r->stack, NULL, K_EMPTYDICT, 1, 0) < 0) return -1;
            break;
        case ']':
            if (push(&r->stack, NULL, K_EMPTYLIST, 1, 0) < 0) return -1;
            break;
        case '(':
            if (r->nmarks == MAX_MARKS) return -1;
            r->marks[++r->nmarks] = n;
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
            if (memoize(r) < 0) return -1;
            break;
        case 'h': /* BINGET */
            if (!need(r, 1)) return -1;
            start = *r->p++;
            switch (status_sequence(r, start)) {
            case 1: break;
            case 0: if (binget(r, start) < 0) return -1; break;
            default: return -1;
            }
            break;
        case 'j': /* LONG_BINGET */
            if (!need(r, 4)) return -1;
            r->p += 4;
            if (binget(r, (Py_ssize_t)le32(r->p - 4)) < 0) return -1;
            break;
        case '.': /* STOP */
            return (r->p == r->end && n == 1 && r->nmarks == 0 && r->stack.s[0].kind == K_TOP
                    && (r->d->lengths >> r->stack.s[0].raw & 1))
                       ? 0
                       : -1;
        default:
            return -1;
        }
    }
    return -1;
}

PyDoc_STRVAR(decode_or_slow_doc,
"decode_or_slow(data) -> decode(data), or where that is None, slow(data)");

static PyObject *Decoder_decode(Decoder *self, PyObject *data);

static PyObject *Decoder_decode_or_slow(Decoder *self, PyObject *data) {
    PyObject *result = Decoder_decode(self, data);
    if (result != Py_None || self->slow == NULL) return result;
    Py_DECREF(result);
    return PyObject_CallOneArg(self->slow, data);
}

PyDoc_STRVAR(decode_doc,
"decode(data) -> (member, entries, load or None) or None\n\n"
"None: not a token pack this decoder takes (decode it with safepickle).");

static PyObject *Decoder_decode(Decoder *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "decode(data: bytes)");
        return NULL;
    }
    if (PyBytes_GET_SIZE(data) > self->max_bytes) Py_RETURN_NONE;
    slot stack_local[LOCAL_SLOTS], memo_local[LOCAL_SLOTS];
    reader r;
    r.p = (const unsigned char *)PyBytes_AS_STRING(data);
    r.end = r.p + PyBytes_GET_SIZE(data);
    r.stack = (slots){stack_local, 0, LOCAL_SLOTS, stack_local};
    r.memo = (slots){memo_local, 0, LOCAL_SLOTS, memo_local};
    r.nmarks = 0;
    r.marks[0] = 0;
    r.d = self;
    r.status = NULL;
    r.status_raw = 0;
    memset(r.templates, 0, sizeof r.templates);
    r.next_template = 0;

    PyObject *result = NULL;
    if (run(&r) == 0) {
        result = r.stack.s[0].obj;
        r.stack.len = 0;  /* the result is ours now */
    }
    slots_free(&r.stack);
    slots_free(&r.memo);
    Py_XDECREF(r.status);
    for (int i = 0; i < TEMPLATES; i++) Py_XDECREF(r.templates[i].dict);
    if (result == NULL) {
        /* any failure, a refused shape or an error raised while building: safepickle decides */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return result;
}

static PyObject *str_arg(PyObject *o, const char *what) {
    if (!PyUnicode_CheckExact(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str", what);
        return NULL;
    }
    Py_INCREF(o);
    return o;
}

/* ``keys`` (a tuple of ASCII str, or NULL), interned, pinned in the string cache; a key whose
 * slot another key holds is left out (it is only slower). */
static int pin_keys(Decoder *self, PyObject *keys) {
    for (int i = 0; i < STR_CACHE; i++) self->strs[i].pinned = 0;
    Py_ssize_t count = keys == NULL ? 0 : PyTuple_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = PyTuple_GET_ITEM(keys, i);
        if (!PyUnicode_CheckExact(key)) {
            PyErr_SetString(PyExc_TypeError, "keys must be str");
            return -1;
        }
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(key, &n);
        if (utf8 == NULL) return -1;
        int ascii;
        uint64_t h = str_hash((const unsigned char *)utf8, n, &ascii);
        if (!ascii || n > STR_CACHE_LEN) continue;
        cached_str *c = &self->strs[h >> 56 & (STR_CACHE - 1)];
        if (c->pinned) continue;
        Py_INCREF(key);
        PyUnicode_InternInPlace(&key);
        Py_XSETREF(c->str, key);
        c->hash = h;
        c->pinned = 1;
    }
    return 0;
}

static int Decoder_init(Decoder *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"objtype_name", "status_name", "obj_types", "statuses", "status_fn",
                            "max_bytes", "max_dict_items", "max_int_bytes", "lengths", "slow",
                            "keys", NULL};
    PyObject *objtype, *status, *obj_types, *statuses, *status_fn, *lengths, *slow = Py_None;
    PyObject *keys = NULL;
    Py_ssize_t max_bytes, max_dict_items, max_int_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!OnnnO|$OO!:Decoder", names,
                                     &PyTuple_Type, &objtype, &PyTuple_Type, &status,
                                     &PyDict_Type, &obj_types, &PyDict_Type, &statuses,
                                     &status_fn, &max_bytes, &max_dict_items, &max_int_bytes,
                                     &lengths, &slow, &PyTuple_Type, &keys))
        return -1;
    if (PyTuple_GET_SIZE(objtype) != 2 || PyTuple_GET_SIZE(status) != 2) {
        PyErr_SetString(PyExc_TypeError, "a class's name is (module, name)");
        return -1;
    }
    if (!PyCallable_Check(status_fn) || (slow != Py_None && !PyCallable_Check(slow))) {
        PyErr_SetString(PyExc_TypeError, "status_fn (and slow) must be callable");
        return -1;
    }
    unsigned mask = 0;
    PyObject *it = PyObject_GetIter(lengths);
    if (it == NULL) return -1;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        long n = PyLong_AsLong(item);
        Py_DECREF(item);
        if (n == -1 && PyErr_Occurred()) break;
        if (n == 2 || n == 3) mask |= 1u << n;  /* a token pack has no other length */
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return -1;
    Py_CLEAR(self->objtype_module);
    Py_CLEAR(self->objtype_name);
    Py_CLEAR(self->status_module);
    Py_CLEAR(self->status_name);
    if (!(self->objtype_module = str_arg(PyTuple_GET_ITEM(objtype, 0), "a module"))
        || !(self->objtype_name = str_arg(PyTuple_GET_ITEM(objtype, 1), "a name"))
        || !(self->status_module = str_arg(PyTuple_GET_ITEM(status, 0), "a module"))
        || !(self->status_name = str_arg(PyTuple_GET_ITEM(status, 1), "a name")))
        return -1;
    if (self->ctypes_module == NULL
        && !(self->ctypes_module = PyUnicode_InternFromString("_ctypes")))
        return -1;
    if (self->unpickle_name == NULL
        && !(self->unpickle_name = PyUnicode_InternFromString("_unpickle")))
        return -1;
    Py_INCREF(obj_types);
    Py_XSETREF(self->obj_types, obj_types);
    Py_INCREF(statuses);
    Py_XSETREF(self->statuses, statuses);
    Py_INCREF(status_fn);
    Py_XSETREF(self->status_fn, status_fn);
    Py_XSETREF(self->slow, slow == Py_None ? NULL : Py_NewRef(slow));
    self->max_bytes = max_bytes;
    self->max_dict_items = max_dict_items;
    self->max_int_bytes = max_int_bytes;
    self->lengths = mask;
    PyObject *seeded[] = {self->objtype_module, self->objtype_name, self->status_module,
                          self->status_name, self->ctypes_module, self->unpickle_name};
    for (int i = 0; i < 6; i++) {  /* the string cache starts with the names frames give */
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(seeded[i], &n);
        if (utf8 == NULL) return -1;
        int ascii;
        uint64_t h = str_hash((const unsigned char *)utf8, n, &ascii);
        if (!ascii || n > STR_CACHE_LEN) continue;
        cached_str *c = &self->strs[h >> 56 & (STR_CACHE - 1)];
        Py_INCREF(seeded[i]);
        Py_XSETREF(c->str, seeded[i]);
        c->hash = h;
    }
    return pin_keys(self, keys);
}

static int Decoder_traverse(Decoder *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->obj_types);
    Py_VISIT(self->statuses);
    Py_VISIT(self->status_fn);
    Py_VISIT(self->slow);
    return 0;
}

static int Decoder_clear(Decoder *self) {
    Py_CLEAR(self->obj_types);
    Py_CLEAR(self->statuses);
    Py_CLEAR(self->status_fn);
    Py_CLEAR(self->slow);
    return 0;
}

static void Decoder_dealloc(Decoder *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Decoder_clear(self);
    Py_CLEAR(self->objtype_module);
    Py_CLEAR(self->objtype_name);
    Py_CLEAR(self->status_module);
    Py_CLEAR(self->status_name);
    Py_CLEAR(self->ctypes_module);
    Py_CLEAR(self->unpickle_name);
    for (int i = 0; i < STR_CACHE; i++) Py_CLEAR(self->strs[i].str);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)Decoder_decode, METH_O, decode_doc},
    {"decode_or_slow", (PyCFunction)Decoder_decode_or_slow, METH_O, decode_or_slow_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Decoder_doc,
"Decoder(objtype_name, status_name, obj_types, statuses, status_fn, max_bytes,\n"
"        max_dict_items, max_int_bytes, lengths, *, slow=None)\n\n"
"One LightLLM version's TOKEN_PACKS frames; see pdwire/fastdecode.py.");

static PyType_Slot Decoder_slots[] = {
    {Py_tp_doc, (void *)Decoder_doc},
    {Py_tp_init, Decoder_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Decoder_dealloc},
    {Py_tp_traverse, Decoder_traverse},
    {Py_tp_clear, Decoder_clear},
    {Py_tp_methods, Decoder_methods},
    {0, NULL},
};

static PyType_Spec Decoder_spec = {
    "pdwire._tokenpacks.Decoder", sizeof(Decoder), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Decoder_slots,
};

static int exec_module(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &Decoder_spec, NULL);
    if (type == NULL) return -1;
    int rc = PyModule_AddObjectRef(module, "Decoder", type);
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
    PyModuleDef_HEAD_INIT, "pdwire._tokenpacks",
    "LightLLM TOKEN_PACKS frames decoded in one pass, running no code.", 0, NULL,
    module_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tokenpacks(void) { return PyModuleDef_Init(&module_def); }

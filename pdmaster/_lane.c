/* The master's per-token relay in one compiled call per hand-over: ``hand_over(ready, now)``;
 * and ``deliver``, RequestTable.deliver's loop over a frame's entries.
 *
 * The Python chain stays the reference and the fallback (pdmaster/nodes/tracking.py
 * RequestState.ready -> PDSession._push -> RequestRun._push -> ChunkWriter.__call__ ->
 * encoder.chunk -> ChunkWriter._write -> http_chunk -> transport.write, then the inter-token
 * histogram and RequestState.extend_wait). For each ready request whose stream's task is
 * parked with a ``Lane`` (RequestState._lane, set while it waits in ``take``), this does that
 * chain here when the stream is in the plain case:
 *   - the wait is pending and the request has no error, with tokens queued,
 *   - no entry ends the stream (every status 0) and the request's deadline has not passed,
 *   - a v1.2.0 flow, if any, streams through,
 *   - the writer has no write pending and holds no text, the encoder is not done,
 *   - uvicorn's exchange would write the chunk at once (chunked body started, not complete,
 *     client connected, transport not paused).
 * Anything else goes to ``state.ready(now)``, the Python chain, before this changed anything:
 * every check above reads only. The LightLLM encoder is pdwire._sse's ``events`` (it changes
 * nothing and may decline too); an OpenAI stream's text chunks of plain steps are written by
 * pdwire._sse's ``text_chunk`` (from the encoder's ``lane_parts``: what OpenAIStream.chunk and
 * Generation.add do, read from and written to their slots; it may decline too, and does for a
 * stream whose chat role chunk is still to go out or whose answer is complete); any other
 * encoder's ``chunk`` is called (it may keep state), and from then on this path finishes
 * what the Python chain would do: an encoder done holds
 * the chunk and wakes the task, an exception is logged by RequestState._sink_failed (which
 * wakes the task).
 *
 * One call per hand-over; per stream a few attribute reads and one write to the socket. The
 * inter-token observations of a call go into the histogram together, at its end (or before a
 * Python chain runs), and the exchange's state is read again only once it has changed (see
 * exchange_open).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include "structmember.h"

#define MAX_BOUNDS 24  /* the inter-token histogram has 15 */

/* The __slots__ read and written per token, by offset: resolved once per class from its
 * member descriptors (each a writable object slot, else the class is not used here). */
enum { F_LANE, F_WAITER, F_ERROR, F_ITEMS, F_DEADLINE, F_SECONDS, F_SOURCE, STATE_FIELDS };
#define MAX_FIELDS STATE_FIELDS

typedef struct {
    PyTypeObject *type;  /* NULL: none resolved yet */
    Py_ssize_t offset[MAX_FIELDS];
} layout;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

typedef struct {
    PyObject *s_lane, *s_waiter, *s_error, *s_items, *s_deadline, *s_seconds, *s_last,
        *s_pending, *s_held, *s_done, *s_chunk, *s_chunked_encoding, *s_response_started,
        *s_response_complete, *s_disconnected, *s_flow, *s_write_paused, *s_transport,
        *s_write, *s_set_result, *s_ready, *s_sum, *s_counts, *s_bounds, *s_sink_failed,
        *s_status, *s_streams_through, *s_session_flow, *s_source, *s_lane_parts, *s_opening,
        *s_completion_tokens, *s_prompt_tokens, *s_gen_status, *zero;
    PyTypeObject *lane_type;
    /* the FinishStatus class whose instances' status is read from their bytes (see
     * status_class), and the last class found not to be one */
    PyTypeObject *status_type, *not_status_type;
    layout state, run, writer, session;  /* RequestState, RequestRun, ChunkWriter, PDSession */
    layout stream, gen;  /* an OpenAI stream's encoder (OpenAIStream) and its Generation */
} module_state;

/* The slots of an OpenAI stream's encoder and of its Generation read and written per chunk. */
enum { S_DONE, S_OPENING, STREAM_FIELDS };
enum { G_COUNT, G_PROMPT, G_STATUS, G_DONE, GEN_FIELDS };

typedef struct {
    PyObject_HEAD
    PyObject *session;  /* PDSession: _flow */
    PyObject *run;      /* RequestRun: _last (the inter-token clock) */
    PyObject *writer;   /* ChunkWriter: _pending, _held */
    PyObject *encoder;  /* chunk(entries) and done, when events is NULL */
    PyObject *cycle;    /* uvicorn's RequestResponseCycle */
    PyObject *cycle_dict;  /* its attributes */
    PyObject *flow;     /* its FlowControl */
    PyObject *flow_dict;
    PyObject *itl;      /* LoopHistogram */
    PyObject *itl_dict; /* its _sum */
    PyObject *counts;   /* its _counts */
    PyObject *events;   /* pdwire._sse.events, or NULL */
    PyObject *config;   /* its config */
    PyObject *http_chunk;
    PyObject *text_chunk;  /* an OpenAI stream's: pdwire._sse.text_chunk, or NULL */
    PyObject *gen;         /* its Generation */
    PyObject *head, *tail; /* its text chunk's bytes before and after the text */
    Py_ssize_t flow_off, last_off, pending_off, held_off;
    Py_ssize_t stream_off[STREAM_FIELDS], gen_off[GEN_FIELDS];
    double deadline;    /* the request's */
    double idle;        /* token_idle_timeout_s */
    PyObject *idle_obj; /* ... as a float: the wait's seconds, most of the time */
    /* the exchange as last found writable (see exchange_open): its attributes' and its
     * FlowControl's dict versions (0: not found so), and its transport then (borrowed) */
    uint64_t cycle_tag, flow_tag;
    PyObject *transport;
    Py_ssize_t nbounds;
    double bounds[MAX_BOUNDS];
} Lane;

static module_state *state_of_type(PyTypeObject *type) {
    return PyType_GetModuleState(type);
}

/* ``l`` for ``type``, whose ``names`` must be writable object slots: 0, or -1 (TypeError). */
static int resolve(layout *l, PyTypeObject *type, PyObject *const *names, int n) {
    if (l->type == type) return 0;
    Py_ssize_t offset[MAX_FIELDS];
    for (int i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttr((PyObject *)type, names[i]);
        if (d == NULL) return -1;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type);
        if (ok) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            ok = m->type == T_OBJECT_EX && !(m->flags & READONLY) && m->offset > 0;
            offset[i] = m->offset;
        }
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%s.%U is not a slot", type->tp_name, names[i]);
            return -1;
        }
    }
    Py_XSETREF(l->type, (PyTypeObject *)Py_NewRef(type));
    memcpy(l->offset, offset, sizeof(Py_ssize_t) * n);
    return 0;
}

static void set_slot(PyObject *obj, Py_ssize_t off, PyObject *value) {
    PyObject *old = SLOT(obj, off);
    SLOT(obj, off) = Py_NewRef(value);
    Py_XDECREF(old);
}

/* ------------------------------------------------------------------------------------ */

static int lane_traverse(Lane *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->session);
    Py_VISIT(self->run);
    Py_VISIT(self->writer);
    Py_VISIT(self->encoder);
    Py_VISIT(self->cycle);
    Py_VISIT(self->cycle_dict);
    Py_VISIT(self->flow);
    Py_VISIT(self->flow_dict);
    Py_VISIT(self->itl);
    Py_VISIT(self->itl_dict);
    Py_VISIT(self->counts);
    Py_VISIT(self->events);
    Py_VISIT(self->config);
    Py_VISIT(self->http_chunk);
    Py_VISIT(self->text_chunk);
    Py_VISIT(self->gen);
    return 0;
}

static int lane_clear(Lane *self) {
    Py_CLEAR(self->session);
    Py_CLEAR(self->run);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->encoder);
    Py_CLEAR(self->cycle);
    Py_CLEAR(self->cycle_dict);
    Py_CLEAR(self->flow);
    Py_CLEAR(self->flow_dict);
    Py_CLEAR(self->itl);
    Py_CLEAR(self->itl_dict);
    Py_CLEAR(self->counts);
    Py_CLEAR(self->events);
    Py_CLEAR(self->config);
    Py_CLEAR(self->http_chunk);
    Py_CLEAR(self->text_chunk);
    Py_CLEAR(self->gen);
    Py_CLEAR(self->head);
    Py_CLEAR(self->tail);
    Py_CLEAR(self->idle_obj);
    return 0;
}

static void lane_dealloc(Lane *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    lane_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

PyDoc_STRVAR(lane_doc,
"Lane(session, run, writer, encoder, cycle, itl, deadline, idle, events, config, http_chunk)\n\n"
"One stream's relay state for hand_over: its PDSession, RequestRun, ChunkWriter, encoder,\n"
"uvicorn exchange, inter-token LoopHistogram, request deadline (clock seconds), token idle\n"
"timeout; events and config: pdwire._sse's events and its config for LightLLM's stateless\n"
"encoder, or None to call encoder.chunk; http_chunk frames a body. Without events, an\n"
"encoder's lane_parts() (if it has one) may give (text_chunk, generation, head, tail): an\n"
"OpenAI stream's plain chunks are then written by pdwire._sse's text_chunk, not its chunk.");

/* obj's instance dict (a new reference): its attributes, read without a lookup in its class. */
static PyObject *instance_dict(PyObject *obj) {
    PyObject *d = PyObject_GenericGetDict(obj, NULL);
    if (d != NULL && !PyDict_CheckExact(d)) {
        Py_CLEAR(d);
        PyErr_SetString(PyExc_TypeError, "Lane: an attribute dict that is not a dict");
    }
    return d;
}

/* An OpenAI stream's parts from encoder.lane_parts(), where it has them and they fit: 0 (with
 * or without them), -1 with an exception from lane_parts. */
static int openai_parts(module_state *st, Lane *self, PyObject *encoder) {
    PyObject *method = PyObject_GetAttr(encoder, st->s_lane_parts);
    if (method == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
        PyErr_Clear();
        return 0;  /* another encoder: its chunk is called */
    }
    PyObject *parts = PyObject_CallNoArgs(method);
    Py_DECREF(method);
    if (parts == NULL) return -1;
    if (parts == Py_None) {  /* text may be held back: its chunk is called */
        Py_DECREF(parts);
        return 0;
    }
    PyObject *stream_names[STREAM_FIELDS], *gen_names[GEN_FIELDS];
    stream_names[S_DONE] = st->s_done;
    stream_names[S_OPENING] = st->s_opening;
    gen_names[G_COUNT] = st->s_completion_tokens;
    gen_names[G_PROMPT] = st->s_prompt_tokens;
    gen_names[G_STATUS] = st->s_gen_status;
    gen_names[G_DONE] = st->s_done;
    if (!PyTuple_CheckExact(parts) || PyTuple_GET_SIZE(parts) != 4
        || !PyCallable_Check(PyTuple_GET_ITEM(parts, 0))
        || !PyBytes_CheckExact(PyTuple_GET_ITEM(parts, 2))
        || !PyBytes_CheckExact(PyTuple_GET_ITEM(parts, 3))) {
        Py_DECREF(parts);
        PyErr_SetString(PyExc_TypeError,
                        "lane_parts() must give (text_chunk, generation, head: bytes, "
                        "tail: bytes) or None");
        return -1;
    }
    PyObject *gen = PyTuple_GET_ITEM(parts, 1);
    if (resolve(&st->stream, Py_TYPE(encoder), stream_names, STREAM_FIELDS) < 0
        || resolve(&st->gen, Py_TYPE(gen), gen_names, GEN_FIELDS) < 0) {
        Py_DECREF(parts);
        return -1;
    }
    self->text_chunk = Py_NewRef(PyTuple_GET_ITEM(parts, 0));
    self->gen = Py_NewRef(gen);
    self->head = Py_NewRef(PyTuple_GET_ITEM(parts, 2));
    self->tail = Py_NewRef(PyTuple_GET_ITEM(parts, 3));
    memcpy(self->stream_off, st->stream.offset, sizeof self->stream_off);
    memcpy(self->gen_off, st->gen.offset, sizeof self->gen_off);
    Py_DECREF(parts);
    return 0;
}

/* getattr(obj, name) == value, for an int value: 1, 0, or -1 with an exception */
static int attr_is(PyObject *obj, const char *name, long value) {
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (v == NULL) return -1;
    int overflow = 0;
    long got = PyLong_Check(v) ? PyLong_AsLongAndOverflow(v, &overflow) : value + 1;
    Py_DECREF(v);
    if (got == -1 && PyErr_Occurred()) return -1;
    return overflow == 0 && got == value;
}

/* Is ``type`` a ctypes Structure of one field, ``status``, a c_int at offset 0 (as pdwire's
 * FinishStatus)? 1, 0, or -1 with an exception. */
static int is_status_class(PyTypeObject *type) {
    if (type->tp_as_buffer == NULL || type->tp_as_buffer->bf_getbuffer == NULL) return 0;
    int ok = -1;
    PyObject *ctypes = NULL, *c_int = NULL, *fields = NULL, *seq = NULL, *field = NULL;
    if ((ctypes = PyImport_ImportModule("ctypes")) == NULL
        || (c_int = PyObject_GetAttrString(ctypes, "c_int")) == NULL
        || (fields = PyObject_GetAttrString((PyObject *)type, "_fields_")) == NULL
        || (seq = PySequence_Fast(fields, "_fields_")) == NULL)
        goto done;
    PyObject *item = PySequence_Fast_GET_SIZE(seq) == 1 ? PySequence_Fast_GET_ITEM(seq, 0) : NULL;
    ok = item != NULL && PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2
         && PyUnicode_Check(PyTuple_GET_ITEM(item, 0))
         && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(item, 0), "status") == 0
         && PyTuple_GET_ITEM(item, 1) == c_int;
    if (ok == 1 && (field = PyObject_GetAttrString((PyObject *)type, "status")) == NULL) ok = -1;
    if (ok == 1) ok = attr_is(field, "offset", 0);
    if (ok == 1) ok = attr_is(field, "size", (long)sizeof(int));
done:
    Py_XDECREF(ctypes);
    Py_XDECREF(c_int);
    Py_XDECREF(fields);
    Py_XDECREF(seq);
    Py_XDECREF(field);
    return ok;
}

/* The status class of the events config, if it is one (is_status_class): kept in
 * st->status_type, whose instances' status the checks read from their 4 bytes through the
 * buffer protocol, as the field's getter reads it from the same bytes (a third of the
 * instructions of getattr). A class that is not one (or whose checks raised) is read by
 * getattr. */
static void status_class(module_state *st, PyObject *config) {
    if (!PyTuple_Check(config) || PyTuple_GET_SIZE(config) == 0
        || !PyType_Check(PyTuple_GET_ITEM(config, 0)))
        return;
    PyTypeObject *type = (PyTypeObject *)PyTuple_GET_ITEM(config, 0);
    if (type == st->status_type || type == st->not_status_type) return;
    int ok = is_status_class(type);
    if (ok < 0) PyErr_Clear();
    if (ok == 1) Py_XSETREF(st->status_type, (PyTypeObject *)Py_NewRef(type));
    else Py_XSETREF(st->not_status_type, (PyTypeObject *)Py_NewRef(type));
}

static PyObject *lane_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    module_state *st = state_of_type(type);
    if (st == NULL) return NULL;
    PyObject *session, *run, *writer, *encoder, *cycle, *itl, *events, *config, *http_chunk;
    double deadline, idle;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Lane() takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOOOddOOO:Lane", &session, &run, &writer, &encoder, &cycle,
                          &itl, &deadline, &idle, &events, &config, &http_chunk))
        return NULL;
    if (events != Py_None && !PyCallable_Check(events)) {
        PyErr_SetString(PyExc_TypeError, "Lane: events must be callable or None");
        return NULL;
    }
    if (!PyCallable_Check(http_chunk)) {
        PyErr_SetString(PyExc_TypeError, "Lane: http_chunk must be callable");
        return NULL;
    }
    PyObject *run_names[] = {st->s_last}, *writer_names[] = {st->s_pending, st->s_held};
    PyObject *session_names[] = {st->s_session_flow};
    if (resolve(&st->run, Py_TYPE(run), run_names, 1) < 0
        || resolve(&st->writer, Py_TYPE(writer), writer_names, 2) < 0
        || resolve(&st->session, Py_TYPE(session), session_names, 1) < 0)
        return NULL;
    Lane *self = (Lane *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->session = Py_NewRef(session);
    self->run = Py_NewRef(run);
    self->writer = Py_NewRef(writer);
    self->encoder = Py_NewRef(encoder);
    self->cycle = Py_NewRef(cycle);
    self->itl = Py_NewRef(itl);
    self->events = events == Py_None ? NULL : Py_NewRef(events);
    self->config = Py_NewRef(config);
    self->http_chunk = Py_NewRef(http_chunk);
    self->last_off = st->run.offset[0];
    self->pending_off = st->writer.offset[0];
    self->held_off = st->writer.offset[1];
    self->flow_off = st->session.offset[0];
    self->deadline = deadline;
    self->idle = idle;
    PyObject *bounds = NULL;
    if ((self->idle_obj = PyFloat_FromDouble(idle)) == NULL
        || (self->cycle_dict = instance_dict(cycle)) == NULL
        || (self->flow = PyObject_GetAttr(cycle, st->s_flow)) == NULL
        || (self->flow_dict = instance_dict(self->flow)) == NULL
        || (self->itl_dict = instance_dict(itl)) == NULL
        || (self->counts = PyObject_GetAttr(itl, st->s_counts)) == NULL
        || (bounds = PyObject_GetAttr(itl, st->s_bounds)) == NULL)
        goto fail;
    if (!PyList_CheckExact(self->counts) || !PyTuple_CheckExact(bounds)
        || PyTuple_GET_SIZE(bounds) > MAX_BOUNDS
        || PyList_GET_SIZE(self->counts) != PyTuple_GET_SIZE(bounds) + 1) {
        PyErr_SetString(PyExc_TypeError, "Lane: itl must hold _counts (list), _bounds (tuple)");
        goto fail;
    }
    self->nbounds = PyTuple_GET_SIZE(bounds);
    for (Py_ssize_t i = 0; i < self->nbounds; i++) {
        double b = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, i));
        if (b == -1.0 && PyErr_Occurred()) goto fail;
        self->bounds[i] = b;
    }
    Py_DECREF(bounds);
    status_class(st, config);
    if (self->events == NULL && openai_parts(st, self, encoder) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
fail:
    Py_XDECREF(bounds);
    Py_DECREF(self);
    return NULL;
}

/* ------------------------------------------------------------------------------------ */

/* getattr(obj, name) is truthy: 1, 0, or -1 with an exception set. */
static int attr_true(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* dict[name] is truthy: 1, 0, or -1 (an exception set; a missing name is a KeyError).
 * *bools is cleared if the value is not a bool. */
static int item_true(PyObject *dict, PyObject *name, int *bools) {
    PyObject *v = PyDict_GetItemWithError(dict, name);  /* borrowed */
    if (v == NULL) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, name);
        return -1;
    }
    if (v == Py_True) return 1;
    if (v == Py_False) return 0;
    *bools = 0;
    Py_INCREF(v);
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* A dict's version (PEP 509): it changes whenever the dict does. Python 3.11 and 3.12 keep
 * it (3.12 deprecates it; later versions drop it); elsewhere every check reads the dict. */
#if PY_VERSION_HEX < 0x030D0000 && !defined(Py_GIL_DISABLED)
#define DICT_TAGS 1
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
static inline uint64_t dict_tag(PyObject *dict) { return ((PyDictObject *)dict)->ma_version_tag; }
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif

/* The exchange's transport, as lane->cycle_dict has it: borrowed, or NULL with an exception. */
static PyObject *exchange_transport(module_state *st, Lane *lane) {
#ifdef DICT_TAGS
    if (lane->cycle_tag != 0 && lane->cycle_tag == dict_tag(lane->cycle_dict))
        return lane->transport;  /* the dict unchanged since: it still holds it */
#endif
    PyObject *transport = PyDict_GetItemWithError(lane->cycle_dict, st->s_transport);
    if (transport == NULL && !PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, st->s_transport);
    return transport;
}

/* uvicorn's exchange would write a chunk at once: its chunked body started and not complete,
 * the client connected, the transport not paused: 1, 0 not, -1 error.
 *
 * Where these attributes were found so (all of them exact bools) and neither the exchange's
 * attributes nor its FlowControl's have changed since (their dicts' versions), they still are:
 * a disconnect or a pause (uvicorn's connection_lost, pause_writing) writes its attribute, so
 * the hand-overs after it read them all again. */
static int exchange_open(module_state *st, Lane *lane) {
    PyObject *c = lane->cycle_dict;
#ifdef DICT_TAGS
    if (lane->cycle_tag != 0 && lane->cycle_tag == dict_tag(c)
        && lane->flow_tag == dict_tag(lane->flow_dict))
        return 1;
    lane->cycle_tag = 0;
#endif
    int r, bools = 1;
    if ((r = item_true(c, st->s_chunked_encoding, &bools)) != 1) return r;
    if ((r = item_true(c, st->s_response_started, &bools)) != 1) return r;
    if ((r = item_true(c, st->s_response_complete, &bools)) != 0) return r < 0 ? -1 : 0;
    if ((r = item_true(c, st->s_disconnected, &bools)) != 0) return r < 0 ? -1 : 0;
    PyObject *flow_now = PyDict_GetItemWithError(c, st->s_flow);
    if (flow_now != lane->flow) return PyErr_Occurred() ? -1 : 0;
    if ((r = item_true(lane->flow_dict, st->s_write_paused, &bools)) != 0)
        return r < 0 ? -1 : 0;
#ifdef DICT_TAGS
    PyObject *transport = PyDict_GetItemWithError(c, st->s_transport);
    if (bools && transport != NULL) {
        lane->cycle_tag = dict_tag(c);
        lane->flow_tag = dict_tag(lane->flow_dict);
        lane->transport = transport;
    }
    PyErr_Clear();  /* a missing transport is met when the chunk is written */
#endif
    return 1;
}

/* The read-only checks: 1 the plain case, 0 not (the Python chain's way), -1 error. */
static int plain(module_state *st, Lane *lane, PyObject *state, double now, PyObject *waiter,
                 PyObject *items) {
    int r;
    PyObject *error = SLOT(state, st->state.offset[F_ERROR]);
    if (error != Py_None || !PyList_CheckExact(items) || PyList_GET_SIZE(items) == 0) return 0;
    PyObject *done = PyObject_CallMethodNoArgs(waiter, st->s_done);
    if (done == NULL) return -1;
    r = done == Py_False;  /* anything else: ready()'s own way */
    Py_DECREF(done);
    for (Py_ssize_t i = 0; r == 1 && i < PyList_GET_SIZE(items); i++) {
        PyObject *entry = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) return 0;
        PyObject *finish = PyTuple_GET_ITEM(entry, 3);
        if (Py_TYPE(finish) == st->status_type) {  /* from its bytes: see status_class */
            Py_buffer view;
            if (PyObject_GetBuffer(finish, &view, PyBUF_SIMPLE) < 0) return -1;
            int value = 1;
            if (view.len == sizeof value) memcpy(&value, view.buf, sizeof value);
            PyBuffer_Release(&view);
            r = value == 0;
            continue;
        }
        PyObject *status = PyObject_GetAttr(finish, st->s_status);
        if (status == NULL) return -1;
        int overflow = 0;
        r = PyLong_CheckExact(status) && PyLong_AsLongAndOverflow(status, &overflow) == 0
            && overflow == 0;
        Py_DECREF(status);
        if (PyErr_Occurred()) return -1;
    }
    if (r != 1) return r;
    if (!(lane->deadline - now > 0)) return 0;  /* the request's deadline passed */
    PyObject *flow = SLOT(lane->session, lane->flow_off);
    if (flow == NULL) return 0;
    if (flow != Py_None) {
        Py_INCREF(flow);
        r = attr_true(flow, st->s_streams_through);
        Py_DECREF(flow);
        if (r != 1) return r;
    }
    if (SLOT(lane->writer, lane->pending_off) != Py_None) return 0;
    PyObject *held = SLOT(lane->writer, lane->held_off);
    if (held == NULL || !PyBytes_CheckExact(held) || PyBytes_GET_SIZE(held) != 0) return 0;
    if (lane->events == NULL && lane->text_chunk == NULL
        && (r = attr_true(lane->encoder, st->s_done)) != 0)
        return r < 0 ? -1 : 0;
    return exchange_open(st, lane);
}

/* What the relays of one hand_over call share: its clock reading, the wait deadline of the
 * lanes whose wait is their idle timeout, and the inter-token observations not yet added to
 * the histogram.
 *
 * Observations are added once per call (``flush_itl``), not once per stream: the counts as
 * LoopHistogram.observe's ``+= 1`` each would make them, and the sum added to in the same
 * order, from the value it had (doubles both ways), so the same bits. Nothing reads them
 * meanwhile: they are added before any Python chain runs (``ready``, ``_sink_failed``, which
 * may observe too) and before the call returns. */
typedef struct {
    PyObject *now_obj;  /* borrowed: the call's argument */
    double now;
    PyObject *deadline; /* now + idle, for lanes of this idle timeout, or NULL */
    double deadline_idle;
    PyObject *itl_dict, *counts;  /* the histogram observed into, or NULL: none pending */
    double sum;         /* its _sum with the pending observations added */
    Py_ssize_t nbuckets;
    Py_ssize_t pending[MAX_BOUNDS + 1];
    PyObject *error;    /* the first failure to add observations (raised at the end) */
} handing;

/* The pending observations added to the histogram: 0, or -1 with an exception set (the
 * observations are dropped either way). */
static int flush_itl(module_state *st, handing *h) {
    if (h->itl_dict == NULL) return 0;
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < h->nbuckets; i++) {
        if (h->pending[i] == 0) continue;
        if (i >= PyList_GET_SIZE(h->counts)) {
            PyErr_SetString(PyExc_RuntimeError, "inter-token histogram changed its buckets");
            rc = -1;
            break;
        }
        PyObject *n = PyLong_FromSsize_t(h->pending[i]);
        PyObject *old = Py_NewRef(PyList_GET_ITEM(h->counts, i));
        PyObject *count = n == NULL ? NULL : PyNumber_Add(old, n);
        Py_DECREF(old);
        Py_XDECREF(n);
        if (count == NULL || PyList_SetItem(h->counts, i, count) < 0) rc = -1;  /* steals */
    }
    if (rc == 0) {
        PyObject *v = PyFloat_FromDouble(h->sum);
        rc = v == NULL ? -1 : PyDict_SetItem(h->itl_dict, st->s_sum, v);
        Py_XDECREF(v);
    }
    Py_CLEAR(h->itl_dict);
    Py_CLEAR(h->counts);
    return rc;
}

/* flush_itl, a failure kept for the end of the call (the hand-over goes on). */
static void flush_itl_or_keep(module_state *st, handing *h);

/* bisect_left(bounds, value), the same steps as Python's */
static Py_ssize_t bucket(const Lane *lane, double value) {
    Py_ssize_t lo = 0, hi = lane->nbounds;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (lane->bounds[mid] < value) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* RequestRun._push's inter-token observation (LoopHistogram.observe's, pending in h) and
 * its ``_last = now``, and PDSession._push's extend_wait. */
static int delivered(module_state *st, Lane *lane, PyObject *state, handing *h) {
    PyObject *last = SLOT(lane->run, lane->last_off);
    if (last == NULL) {
        PyErr_SetString(PyExc_AttributeError, "RequestRun._last");
        return -1;
    }
    double value = h->now - PyFloat_AsDouble(last);
    if (PyErr_Occurred()) return -1;
    if (h->itl_dict != lane->itl_dict || h->counts != lane->counts) {
        if (flush_itl(st, h) < 0) return -1;
        PyObject *sum = PyDict_GetItemWithError(lane->itl_dict, st->s_sum);  /* borrowed */
        if (sum == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_AttributeError, "LoopHistogram._sum");
            return -1;
        }
        double total = PyFloat_AsDouble(sum);
        if (total == -1.0 && PyErr_Occurred()) return -1;
        h->itl_dict = Py_NewRef(lane->itl_dict);
        h->counts = Py_NewRef(lane->counts);
        h->sum = total;
        h->nbuckets = lane->nbounds + 1;
        memset(h->pending, 0, sizeof h->pending);
    }
    Py_ssize_t i = bucket(lane, value);
    if (i >= h->nbuckets) {
        PyErr_SetString(PyExc_RuntimeError, "inter-token histogram changed its buckets");
        return -1;
    }
    h->pending[i]++;
    h->sum += value;
    set_slot(lane->run, lane->last_off, h->now_obj);

    double left = lane->deadline - h->now;
    PyObject *seconds, *deadline;
    if (lane->idle < left) {  /* min(idle, left): the idle timeout, as almost always */
        if (h->deadline == NULL || h->deadline_idle != lane->idle) {
            PyObject *d = PyFloat_FromDouble(h->now + lane->idle);
            if (d == NULL) return -1;
            Py_XSETREF(h->deadline, d);
            h->deadline_idle = lane->idle;
        }
        seconds = Py_NewRef(lane->idle_obj);
        deadline = Py_NewRef(h->deadline);
    } else {
        seconds = PyFloat_FromDouble(left);
        deadline = seconds == NULL ? NULL : PyFloat_FromDouble(h->now + left);
        if (deadline == NULL) {
            Py_XDECREF(seconds);
            return -1;
        }
    }
    set_slot(state, st->state.offset[F_DEADLINE], deadline);
    set_slot(state, st->state.offset[F_SECONDS], seconds);
    Py_DECREF(deadline);
    Py_DECREF(seconds);
    return 0;
}

/* The tokens went nowhere: the waiting task takes them (ready()'s end after a False). */
static int wake(module_state *st, PyObject *waiter) {
    PyObject *r = PyObject_CallMethodOneArg(waiter, st->s_set_result, Py_None);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* An OpenAI stream's chunk (OpenAIStream.chunk's and Generation.add's work for tokens that end
 * nothing), framed: 1 with *body set and the generation's counts moved on; 0 with *body
 * Py_None (borrowed) when it is not the plain case, before any change; 0 with *body NULL
 * and an exception set. */
static int openai_chunk(module_state *st, Lane *lane, PyObject *items, PyObject **body) {
    PyObject *stream = lane->encoder, *gen = lane->gen;
    *body = Py_None;
    PyObject *opening = SLOT(stream, lane->stream_off[S_OPENING]);
    if (SLOT(stream, lane->stream_off[S_DONE]) != Py_False
        || SLOT(gen, lane->gen_off[G_DONE]) != Py_False || opening == NULL
        || !PyBytes_CheckExact(opening) || PyBytes_GET_SIZE(opening) != 0)
        return 0;  /* the chat's role chunk is still to go out, or the answer is complete */
    PyObject *count = SLOT(gen, lane->gen_off[G_COUNT]);
    PyObject *prompt = SLOT(gen, lane->gen_off[G_PROMPT]);
    if (count == NULL || prompt == NULL) return 0;
    /* every status was checked (plain): 0 */
    PyObject *args[7] = {items, count, prompt, lane->head, lane->tail, Py_None, Py_True};
    PyObject *out = PyObject_Vectorcall(lane->text_chunk, args, 7, NULL);
    if (out == NULL) {
        *body = NULL;
        return 0;
    }
    if (out == Py_None) {
        Py_DECREF(out);
        return 0;
    }
    if (!PyTuple_CheckExact(out) || PyTuple_GET_SIZE(out) != 3
        || !PyBytes_CheckExact(PyTuple_GET_ITEM(out, 0))) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_TypeError, "text_chunk must give (body, count, prompt) or None");
        *body = NULL;
        return 0;
    }
    set_slot(gen, lane->gen_off[G_COUNT], PyTuple_GET_ITEM(out, 1));
    set_slot(gen, lane->gen_off[G_PROMPT], PyTuple_GET_ITEM(out, 2));
    set_slot(gen, lane->gen_off[G_STATUS], st->zero);
    *body = Py_NewRef(PyTuple_GET_ITEM(out, 0));
    Py_DECREF(out);
    return 1;
}

/* The write, once the checks passed: 1 done, 0 left to the Python chain before any change,
 * -1 error (raised after a change: the caller hands it to _sink_failed). */
static int relay(module_state *st, Lane *lane, PyObject *state, handing *h, PyObject *items,
                 PyObject *waiter) {
    PyObject *body;
    int framed = 0;
    if (lane->text_chunk != NULL) {
        if (openai_chunk(st, lane, items, &body) <= 0) return body == NULL ? -1 : 0;
        framed = 1;
    } else if (lane->events != NULL) {
        PyObject *args[2] = {items, lane->config};
        body = PyObject_Vectorcall(lane->events, args, 2, NULL);
        if (body == NULL) return -1;
        if (body == Py_None) {
            Py_DECREF(body);
            return 0;  /* values the compiled writer leaves to Python */
        }
    } else {
        body = PyObject_CallMethodOneArg(lane->encoder, st->s_chunk, items);
        if (body == NULL) return -1;
        int done = attr_true(lane->encoder, st->s_done);
        if (done != 0) {
            if (done < 0) {
                Py_DECREF(body);
                return -1;
            }
            /* ChunkWriter: the chunk that completes the answer is held for the task */
            PyObject *held = PyObject_GetAttr(lane->writer, st->s_held);
            PyObject *joined = held == NULL ? NULL : PyNumber_Add(held, body);
            Py_XDECREF(held);
            Py_DECREF(body);
            if (joined == NULL) return -1;
            int rc = PyObject_SetAttr(lane->writer, st->s_held, joined);
            Py_DECREF(joined);
            if (rc < 0) return -1;
            return wake(st, waiter) < 0 ? -1 : 2;
        }
    }
    if (!PyBytes_Check(body)) {
        Py_DECREF(body);
        PyErr_SetString(PyExc_TypeError, "a stream encoder's chunk must be bytes");
        return -1;
    }
    if (PyBytes_GET_SIZE(body) != 0) {  /* an empty chunk would end the body: none is sent */
        PyObject *chunk = framed ? body : PyObject_CallOneArg(lane->http_chunk, body);
        if (!framed) Py_DECREF(body);
        if (chunk == NULL) return -1;
        PyObject *transport = exchange_transport(st, lane);
        if (transport == NULL) {
            Py_DECREF(chunk);
            return -1;
        }
        Py_INCREF(transport);
        PyObject *r = PyObject_CallMethodOneArg(transport, st->s_write, chunk);
        Py_DECREF(transport);
        Py_DECREF(chunk);
        if (r == NULL) return -1;
        Py_DECREF(r);
    } else {
        Py_DECREF(body);
    }
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return -1;
    set_slot(state, st->state.offset[F_ITEMS], fresh);
    Py_DECREF(fresh);
    return delivered(st, lane, state, h) < 0 ? -1 : 1;
}

/* The exception being raised, taken (a new reference). */
static PyObject *raised(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value != NULL ? value : Py_NewRef(Py_None);
#endif
}

/* The exception taken by raised(), raised again (the reference is stolen). */
static void reraise(PyObject *exc) {
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    if (PyExceptionInstance_Check(exc)) PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    else PyErr_SetString(PyExc_SystemError, "an error without an exception");
    Py_DECREF(exc);
#endif
}

static void flush_itl_or_keep(module_state *st, handing *h) {
    if (flush_itl(st, h) < 0) {
        PyObject *exc = raised();
        if (h->error == NULL) h->error = exc;
        else Py_DECREF(exc);
    }
}

/* One ready request (a RequestState: st->state resolved for its class): 1 relayed here, 0
 * for the Python chain, -1 error. */
static int push(module_state *st, Lane *lane, PyObject *state, handing *h) {
    PyObject *waiter = SLOT(state, st->state.offset[F_WAITER]);
    PyObject *items = SLOT(state, st->state.offset[F_ITEMS]);
    if (waiter == NULL || waiter == Py_None || items == NULL) return 0;
    Py_INCREF(waiter);
    Py_INCREF(items);
    int r = plain(st, lane, state, h->now, waiter, items);
    if (r == 1) r = relay(st, lane, state, h, items, waiter);
    else if (r < 0) {
        PyErr_Clear();  /* nothing changed: the Python chain meets it in its own way */
        r = 0;
    } else {
        r = 0;
    }
    Py_DECREF(items);
    Py_DECREF(waiter);
    if (r >= 0) return r == 0 ? 0 : 1;
    /* as ready()'s except: logged, and the waiting task takes the tokens */
    PyObject *exc = raised();
    flush_itl_or_keep(st, h);
    PyObject *out = PyObject_CallMethodOneArg(state, st->s_sink_failed, exc);
    Py_DECREF(exc);
    if (out == NULL) return -1;
    Py_DECREF(out);
    return 1;
}

static void state_field_names(module_state *st, PyObject **names) {
    names[F_LANE] = st->s_lane;
    names[F_WAITER] = st->s_waiter;
    names[F_ERROR] = st->s_error;
    names[F_ITEMS] = st->s_items;
    names[F_DEADLINE] = st->s_deadline;
    names[F_SECONDS] = st->s_seconds;
    names[F_SOURCE] = st->s_source;
}

PyDoc_STRVAR(deliver_doc,
"deliver(by_group: dict[int, RequestState], ready: list, node, entries, best_of: int)\n\n"
"RequestTable.deliver's loop: each entry appended to the _items of the request of its group\n"
"(entry[0] // best_of * best_of) if that request listens to node (its source); a request\n"
"whose _items was empty is appended to ready.");

/* The group id of a request id: id // best_of * best_of, a new reference. */
static PyObject *group_of(PyObject *id, PyObject *best_of, long long b) {
    if (PyLong_CheckExact(id) && b > 0) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(id, &overflow);
        if (overflow == 0 && !(v == -1 && PyErr_Occurred())) {
            long long m = v % b;
            if (m < 0) m += b;  /* Python's floor */
            if (m == 0) return Py_NewRef(id);
            return PyLong_FromLongLong(v - m);
        }
        PyErr_Clear();
    }
    PyObject *q = PyNumber_FloorDivide(id, best_of);
    if (q == NULL) return NULL;
    PyObject *g = PyNumber_Multiply(q, best_of);
    Py_DECREF(q);
    return g;
}

static PyObject *deliver(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyDict_CheckExact(args[0]) || !PyList_CheckExact(args[1])
        || !PyLong_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "deliver(by_group: dict, ready: list, node, entries, best_of: int)");
        return NULL;
    }
    module_state *st = PyModule_GetState(module);
    PyObject *table = args[0], *ready = args[1], *node = args[2], *best_of = args[4];
    long long b = PyLong_AsLongLong(best_of);
    if (b == -1 && PyErr_Occurred()) return NULL;
    /* a list or tuple as it is; any other iterable as a list */
    PyObject *entries = PySequence_Fast(args[3], "deliver: entries must be iterable");
    if (entries == NULL) return NULL;
    PyObject *state_names[STATE_FIELDS];
    state_field_names(st, state_names);
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(entries); i++) {
        PyObject *entry = Py_NewRef(PySequence_Fast_GET_ITEM(entries, i));
        PyObject *id = PySequence_GetItem(entry, 0);
        PyObject *key = id == NULL ? NULL : group_of(id, best_of, b);
        Py_XDECREF(id);
        PyObject *state = key == NULL ? NULL : PyDict_GetItemWithError(table, key);
        Py_XDECREF(key);
        int rc = 0;
        if (state != NULL) {
            Py_INCREF(state);
            PyObject *source, *items;
            if (resolve(&st->state, Py_TYPE(state), state_names, STATE_FIELDS) == 0) {
                source = Py_XNewRef(SLOT(state, st->state.offset[F_SOURCE]));
                items = Py_XNewRef(SLOT(state, st->state.offset[F_ITEMS]));
                if (source == NULL || items == NULL) {
                    PyErr_SetString(PyExc_AttributeError, "RequestState.source or _items");
                }
            } else {  /* another class: by name */
                PyErr_Clear();
                source = PyObject_GetAttr(state, st->s_source);
                items = source == NULL ? NULL : PyObject_GetAttr(state, st->s_items);
            }
            if (source == NULL || items == NULL) {
                rc = -1;
            } else if (source == node) {
                rc = PyList_Check(items) ? PyList_Append(items, entry)
                                         : (PyErr_SetString(PyExc_TypeError, "_items"), -1);
                if (rc == 0 && PyList_GET_SIZE(items) == 1) rc = PyList_Append(ready, state);
            }
            Py_XDECREF(source);
            Py_XDECREF(items);
            Py_DECREF(state);
        } else if (PyErr_Occurred()) {
            rc = -1;
        }
        Py_DECREF(entry);
        if (rc < 0) {
            Py_DECREF(entries);
            return NULL;
        }
    }
    Py_DECREF(entries);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(hand_over_doc,
"hand_over(ready: list[RequestState], now: float) -> (relayed, declined)\n\n"
"RequestTable._hand_over's loop: each state's tokens relayed by its armed Lane where the\n"
"stream is in the plain case, else state.ready(now). Returns how many states were relayed\n"
"here and how many with an armed lane took the Python chain.");

static PyObject *hand_over(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "hand_over(ready: list, now: float)");
        return NULL;
    }
    module_state *st = PyModule_GetState(module);
    PyObject *ready = args[0], *now_obj = args[1];
    handing h = {.now_obj = now_obj, .now = PyFloat_AsDouble(now_obj)};
    if (h.now == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t relayed = 0, declined = 0;
    PyObject *state_names[STATE_FIELDS];
    state_field_names(st, state_names);
    int failed = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ready); i++) {
        PyObject *state = Py_NewRef(PyList_GET_ITEM(ready, i));
        int r = 0, armed = 0;
        if (resolve(&st->state, Py_TYPE(state), state_names, STATE_FIELDS) < 0) {
            PyErr_Clear();  /* not a RequestState: its own ready() */
        } else {
            PyObject *lane = SLOT(state, st->state.offset[F_LANE]);
            armed = lane != NULL && Py_TYPE(lane) == st->lane_type;
            if (armed) {
                Py_INCREF(lane);
                r = push(st, (Lane *)lane, state, &h);
                Py_DECREF(lane);
            }
        }
        relayed += r == 1;
        if (r == 0) {
            declined += armed;
            flush_itl_or_keep(st, &h);  /* the Python chain observes too */
            PyObject *out = PyObject_CallMethodOneArg(state, st->s_ready, now_obj);
            if (out == NULL) r = -1;
            Py_XDECREF(out);
        }
        Py_DECREF(state);
        if (r < 0) {
            failed = 1;
            break;
        }
    }
    if (failed) {  /* raised, after the observations pending are added */
        PyObject *exc = raised();
        flush_itl_or_keep(st, &h);
        Py_XSETREF(h.error, exc);
    } else {
        flush_itl_or_keep(st, &h);
    }
    Py_XDECREF(h.deadline);
    if (h.error != NULL) {
        reraise(h.error);
        return NULL;
    }
    return Py_BuildValue("(nn)", relayed, declined);
}

static PyMethodDef methods[] = {
    {"hand_over", (PyCFunction)(void (*)(void))hand_over, METH_FASTCALL, hand_over_doc},
    {"deliver", (PyCFunction)(void (*)(void))deliver, METH_FASTCALL, deliver_doc},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot lane_slots[] = {
    {Py_tp_doc, (void *)lane_doc},
    {Py_tp_new, lane_new},
    {Py_tp_dealloc, lane_dealloc},
    {Py_tp_traverse, lane_traverse},
    {Py_tp_clear, lane_clear},
    {0, NULL},
};

static PyType_Spec lane_spec = {
    "pdmaster._lane.Lane",
    sizeof(Lane),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    lane_slots,
};

#define INTERN(field, text) \
    if ((st->field = PyUnicode_InternFromString(text)) == NULL) return -1

static int exec_module(PyObject *module) {
    module_state *st = PyModule_GetState(module);
    INTERN(s_lane, "_lane");
    INTERN(s_waiter, "_waiter");
    INTERN(s_error, "_error");
    INTERN(s_items, "_items");
    INTERN(s_deadline, "_deadline");
    INTERN(s_seconds, "_seconds");
    INTERN(s_last, "_last");
    INTERN(s_pending, "_pending");
    INTERN(s_held, "_held");
    INTERN(s_done, "done");
    INTERN(s_chunk, "chunk");
    INTERN(s_chunked_encoding, "chunked_encoding");
    INTERN(s_response_started, "response_started");
    INTERN(s_response_complete, "response_complete");
    INTERN(s_disconnected, "disconnected");
    INTERN(s_flow, "flow");
    INTERN(s_write_paused, "write_paused");
    INTERN(s_transport, "transport");
    INTERN(s_write, "write");
    INTERN(s_set_result, "set_result");
    INTERN(s_ready, "ready");
    INTERN(s_sum, "_sum");
    INTERN(s_counts, "_counts");
    INTERN(s_bounds, "_bounds");
    INTERN(s_sink_failed, "_sink_failed");
    INTERN(s_status, "status");
    INTERN(s_streams_through, "streams_through");
    INTERN(s_session_flow, "_flow");
    INTERN(s_source, "source");
    INTERN(s_lane_parts, "lane_parts");
    INTERN(s_opening, "_opening");
    INTERN(s_completion_tokens, "completion_tokens");
    INTERN(s_prompt_tokens, "prompt_tokens");
    INTERN(s_gen_status, "_status");
    if ((st->zero = PyLong_FromLong(0)) == NULL) return -1;
    st->lane_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &lane_spec, NULL);
    if (st->lane_type == NULL) return -1;
    return PyModule_AddType(module, st->lane_type);
}

#define STATE_FIELDS(X)                                                                     \
    X(s_lane) X(s_waiter) X(s_error) X(s_items) X(s_deadline) X(s_seconds) X(s_last)       \
    X(s_pending) X(s_held) X(s_done) X(s_chunk) X(s_chunked_encoding) X(s_response_started) \
    X(s_response_complete) X(s_disconnected) X(s_flow) X(s_write_paused) X(s_transport)     \
    X(s_write) X(s_set_result) X(s_ready) X(s_sum) X(s_counts) X(s_bounds) X(s_sink_failed) \
    X(s_status) X(s_streams_through) X(s_session_flow) X(s_source) X(s_lane_parts)           \
    X(s_opening) X(s_completion_tokens) X(s_prompt_tokens) X(s_gen_status) X(zero)

static int traverse(PyObject *module, visitproc visit, void *arg) {
    module_state *st = PyModule_GetState(module);
    if (st != NULL) {
        Py_VISIT(st->lane_type);
        Py_VISIT(st->state.type);
        Py_VISIT(st->run.type);
        Py_VISIT(st->writer.type);
        Py_VISIT(st->session.type);
        Py_VISIT(st->stream.type);
        Py_VISIT(st->gen.type);
        Py_VISIT(st->status_type);
        Py_VISIT(st->not_status_type);
    }
    return 0;
}

static int clear(PyObject *module) {
    module_state *st = PyModule_GetState(module);
    if (st != NULL) {
#define CLEAR_FIELD(f) Py_CLEAR(st->f);
        STATE_FIELDS(CLEAR_FIELD)
#undef CLEAR_FIELD
        Py_CLEAR(st->lane_type);
        Py_CLEAR(st->state.type);
        Py_CLEAR(st->run.type);
        Py_CLEAR(st->writer.type);
        Py_CLEAR(st->session.type);
        Py_CLEAR(st->stream.type);
        Py_CLEAR(st->gen.type);
        Py_CLEAR(st->status_type);
        Py_CLEAR(st->not_status_type);
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
    PyModuleDef_HEAD_INIT, "pdmaster._lane",
    "The master's per-token relay, one compiled call per hand-over (see "
    "pdmaster/nodes/tracking.py).",
    sizeof(module_state), methods, module_slots, traverse, clear, free_module,
};

PyMODINIT_FUNC PyInit__lane(void) { return PyModuleDef_Init(&module_def); }

/* The master's per-token relay in one compiled call per hand-over: ``hand_over(ready, now)``.
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
 * nothing and may decline too); any other encoder's ``chunk`` is called (it may keep state),
 * and from then on this path finishes what the Python chain would do: an encoder done holds
 * the chunk and wakes the task, an exception is logged by RequestState._sink_failed (which
 * wakes the task).
 *
 * One call per hand-over; per stream a few attribute reads and one write to the socket.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

#define MAX_BOUNDS 24  /* the inter-token histogram has 15 */

typedef struct {
    PyObject *s_lane, *s_waiter, *s_error, *s_items, *s_deadline, *s_seconds, *s_last,
        *s_pending, *s_held, *s_done, *s_chunk, *s_chunked_encoding, *s_response_started,
        *s_response_complete, *s_disconnected, *s_flow, *s_write_paused, *s_transport,
        *s_write, *s_set_result, *s_ready, *s_sum, *s_counts, *s_bounds, *s_sink_failed,
        *s_status, *s_streams_through, *s_session_flow;
    PyTypeObject *lane_type;
} module_state;

typedef struct {
    PyObject_HEAD
    PyObject *session;  /* PDSession: _flow */
    PyObject *run;      /* RequestRun: _last (the inter-token clock) */
    PyObject *writer;   /* ChunkWriter: _pending, _held */
    PyObject *encoder;  /* chunk(entries) and done, when events is NULL */
    PyObject *cycle;    /* uvicorn's RequestResponseCycle */
    PyObject *itl;      /* LoopHistogram: _sum */
    PyObject *counts;   /* its _counts */
    PyObject *events;   /* pdwire._sse.events, or NULL */
    PyObject *config;   /* its config */
    PyObject *http_chunk;
    double deadline;    /* the request's */
    double idle;        /* token_idle_timeout_s */
    Py_ssize_t nbounds;
    double bounds[MAX_BOUNDS];
} Lane;

static module_state *state_of_type(PyTypeObject *type) {
    return PyType_GetModuleState(type);
}

/* ------------------------------------------------------------------------------------ */

static int lane_traverse(Lane *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->session);
    Py_VISIT(self->run);
    Py_VISIT(self->writer);
    Py_VISIT(self->encoder);
    Py_VISIT(self->cycle);
    Py_VISIT(self->itl);
    Py_VISIT(self->counts);
    Py_VISIT(self->events);
    Py_VISIT(self->config);
    Py_VISIT(self->http_chunk);
    return 0;
}

static int lane_clear(Lane *self) {
    Py_CLEAR(self->session);
    Py_CLEAR(self->run);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->encoder);
    Py_CLEAR(self->cycle);
    Py_CLEAR(self->itl);
    Py_CLEAR(self->counts);
    Py_CLEAR(self->events);
    Py_CLEAR(self->config);
    Py_CLEAR(self->http_chunk);
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
"encoder, or None to call encoder.chunk; http_chunk frames a body.");

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
    PyObject *counts = PyObject_GetAttr(itl, st->s_counts);
    if (counts == NULL) return NULL;
    PyObject *bounds = PyObject_GetAttr(itl, st->s_bounds);
    if (bounds == NULL) {
        Py_DECREF(counts);
        return NULL;
    }
    Lane *self = NULL;
    if (!PyList_CheckExact(counts) || !PyTuple_CheckExact(bounds)
        || PyTuple_GET_SIZE(bounds) > MAX_BOUNDS
        || PyList_GET_SIZE(counts) != PyTuple_GET_SIZE(bounds) + 1) {
        PyErr_SetString(PyExc_TypeError, "Lane: itl must hold _counts (list), _bounds (tuple)");
        goto done;
    }
    self = (Lane *)type->tp_alloc(type, 0);
    if (self == NULL) goto done;
    self->nbounds = PyTuple_GET_SIZE(bounds);
    for (Py_ssize_t i = 0; i < self->nbounds; i++) {
        double b = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, i));
        if (b == -1.0 && PyErr_Occurred()) {
            Py_CLEAR(self);
            goto done;
        }
        self->bounds[i] = b;
    }
    self->session = Py_NewRef(session);
    self->run = Py_NewRef(run);
    self->writer = Py_NewRef(writer);
    self->encoder = Py_NewRef(encoder);
    self->cycle = Py_NewRef(cycle);
    self->itl = Py_NewRef(itl);
    self->counts = Py_NewRef(counts);
    self->events = events == Py_None ? NULL : Py_NewRef(events);
    self->config = Py_NewRef(config);
    self->http_chunk = Py_NewRef(http_chunk);
    self->deadline = deadline;
    self->idle = idle;
done:
    Py_DECREF(counts);
    Py_DECREF(bounds);
    return (PyObject *)self;
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

/* getattr(obj, name) is None: 1, 0, or -1. */
static int attr_none(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    int r = v == Py_None;
    Py_DECREF(v);
    return r;
}

/* The read-only checks: 1 the plain case, 0 not (the Python chain's way), -1 error. The items
 * are returned (a new reference) in *items_out on 1. */
static int plain(module_state *st, Lane *lane, PyObject *state, double now,
                 PyObject **items_out, PyObject **waiter_out) {
    int r;
    PyObject *waiter = PyObject_GetAttr(state, st->s_waiter);
    if (waiter == NULL) return -1;
    if (waiter == Py_None) {
        Py_DECREF(waiter);
        return 0;
    }
    PyObject *done = PyObject_CallMethodNoArgs(waiter, st->s_done);
    if (done == NULL) {
        Py_DECREF(waiter);
        return -1;
    }
    r = done == Py_False;  /* anything else: ready()'s own way */
    Py_DECREF(done);
    if (r != 1 || (r = attr_none(state, st->s_error)) != 1) {
        Py_DECREF(waiter);
        return r;
    }
    PyObject *items = PyObject_GetAttr(state, st->s_items);
    if (items == NULL) {
        Py_DECREF(waiter);
        return -1;
    }
    r = PyList_CheckExact(items) && PyList_GET_SIZE(items) > 0;
    for (Py_ssize_t i = 0; r == 1 && i < PyList_GET_SIZE(items); i++) {
        PyObject *entry = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) {
            r = 0;
            break;
        }
        PyObject *status = PyObject_GetAttr(PyTuple_GET_ITEM(entry, 3), st->s_status);
        if (status == NULL) {
            r = -1;
            break;
        }
        int overflow = 0;
        r = PyLong_CheckExact(status) && PyLong_AsLongAndOverflow(status, &overflow) == 0
            && overflow == 0;
        Py_DECREF(status);
        if (PyErr_Occurred()) r = -1;
    }
    if (r == 1 && !(lane->deadline - now > 0)) r = 0;
    if (r == 1) {
        PyObject *flow = PyObject_GetAttr(lane->session, st->s_session_flow);
        if (flow == NULL) {
            r = -1;
        } else {
            if (flow != Py_None) r = attr_true(flow, st->s_streams_through);
            Py_DECREF(flow);
        }
    }
    if (r == 1) r = attr_none(lane->writer, st->s_pending);
    if (r == 1) {
        PyObject *held = PyObject_GetAttr(lane->writer, st->s_held);
        if (held == NULL) {
            r = -1;
        } else {
            r = PyBytes_CheckExact(held) && PyBytes_GET_SIZE(held) == 0;
            Py_DECREF(held);
        }
    }
    if (r == 1 && lane->events == NULL) {
        r = attr_true(lane->encoder, st->s_done);
        if (r >= 0) r = !r;
    }
    PyObject *c = lane->cycle;
    if (r == 1) r = attr_true(c, st->s_chunked_encoding);
    if (r == 1) r = attr_true(c, st->s_response_started);
    if (r == 1 && (r = attr_true(c, st->s_response_complete)) >= 0) r = !r;
    if (r == 1 && (r = attr_true(c, st->s_disconnected)) >= 0) r = !r;
    if (r == 1) {
        PyObject *flow = PyObject_GetAttr(c, st->s_flow);
        if (flow == NULL) {
            r = -1;
        } else {
            if ((r = attr_true(flow, st->s_write_paused)) >= 0) r = !r;
            Py_DECREF(flow);
        }
    }
    if (r == 1) {
        *items_out = items;
        *waiter_out = waiter;
        return 1;
    }
    Py_DECREF(items);
    Py_DECREF(waiter);
    return r;
}

/* RequestRun._push's inter-token observation, LoopHistogram.observe's way, and extend_wait. */
static int delivered(module_state *st, Lane *lane, PyObject *state, double now) {
    PyObject *last = PyObject_GetAttr(lane->run, st->s_last);
    if (last == NULL) return -1;
    double value = now - PyFloat_AsDouble(last);
    Py_DECREF(last);
    if (PyErr_Occurred()) return -1;
    Py_ssize_t i = 0;
    while (i < lane->nbounds && lane->bounds[i] < value) i++;  /* bisect_left */
    PyObject *counts = lane->counts;
    if (i >= PyList_GET_SIZE(counts)) {
        PyErr_SetString(PyExc_RuntimeError, "inter-token histogram changed its buckets");
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(PyList_GET_ITEM(counts, i));
    if (n == -1 && PyErr_Occurred()) return -1;
    PyObject *count = PyLong_FromSsize_t(n + 1);
    if (count == NULL) return -1;
    PyList_SetItem(counts, i, count);  /* steals count */
    PyObject *sum = PyObject_GetAttr(lane->itl, st->s_sum);
    if (sum == NULL) return -1;
    double total = PyFloat_AsDouble(sum);
    Py_DECREF(sum);
    if (total == -1.0 && PyErr_Occurred()) return -1;
    PyObject *v = PyFloat_FromDouble(total + value);
    if (v == NULL) return -1;
    int rc = PyObject_SetAttr(lane->itl, st->s_sum, v);
    Py_DECREF(v);
    if (rc < 0) return -1;
    v = PyFloat_FromDouble(now);
    if (v == NULL) return -1;
    rc = PyObject_SetAttr(lane->run, st->s_last, v);
    Py_DECREF(v);
    if (rc < 0) return -1;

    double left = lane->deadline - now;
    double seconds = lane->idle < left ? lane->idle : left;
    PyObject *until = PyFloat_FromDouble(now + seconds);
    if (until == NULL) return -1;
    rc = PyObject_SetAttr(state, st->s_deadline, until);
    Py_DECREF(until);
    if (rc < 0) return -1;
    v = PyFloat_FromDouble(seconds);
    if (v == NULL) return -1;
    rc = PyObject_SetAttr(state, st->s_seconds, v);
    Py_DECREF(v);
    return rc;
}

/* The tokens went nowhere: the waiting task takes them (ready()'s end after a False). */
static int wake(module_state *st, PyObject *waiter) {
    PyObject *r = PyObject_CallMethodOneArg(waiter, st->s_set_result, Py_None);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* The write, once the checks passed: 1 done, 0 left to the Python chain before any change,
 * -1 error (raised after a change: the caller hands it to _sink_failed). */
static int relay(module_state *st, Lane *lane, PyObject *state, double now, PyObject *items,
                 PyObject *waiter) {
    PyObject *body;
    if (lane->events != NULL) {
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
        PyObject *chunk = PyObject_CallOneArg(lane->http_chunk, body);
        Py_DECREF(body);
        if (chunk == NULL) return -1;
        PyObject *transport = PyObject_GetAttr(lane->cycle, st->s_transport);
        if (transport == NULL) {
            Py_DECREF(chunk);
            return -1;
        }
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
    int rc = PyObject_SetAttr(state, st->s_items, fresh);
    Py_DECREF(fresh);
    if (rc < 0 || delivered(st, lane, state, now) < 0) return -1;
    return 1;
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

/* One ready request: 1 relayed here, 0 for the Python chain, -1 error. */
static int push(module_state *st, Lane *lane, PyObject *state, double now) {
    PyObject *items = NULL, *waiter = NULL;
    int r = plain(st, lane, state, now, &items, &waiter);
    if (r < 0) {
        PyErr_Clear();  /* nothing changed: the Python chain meets it in its own way */
        return 0;
    }
    if (r == 0) return 0;
    r = relay(st, lane, state, now, items, waiter);
    Py_DECREF(items);
    Py_DECREF(waiter);
    if (r >= 0) return r == 0 ? 0 : 1;
    /* as ready()'s except: logged, and the waiting task takes the tokens */
    PyObject *exc = raised();
    PyObject *out = PyObject_CallMethodOneArg(state, st->s_sink_failed, exc);
    Py_DECREF(exc);
    if (out == NULL) return -1;
    Py_DECREF(out);
    return 1;
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
    double now = PyFloat_AsDouble(now_obj);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t relayed = 0, declined = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ready); i++) {
        PyObject *state = Py_NewRef(PyList_GET_ITEM(ready, i));
        int r = 0;
        PyObject *lane = PyObject_GetAttr(state, st->s_lane);
        if (lane == NULL) {
            Py_DECREF(state);
            return NULL;
        }
        int armed = Py_TYPE(lane) == st->lane_type;
        if (armed) r = push(st, (Lane *)lane, state, now);
        Py_DECREF(lane);
        relayed += r == 1;
        if (r == 0) {
            declined += armed;
            PyObject *out = PyObject_CallMethodOneArg(state, st->s_ready, now_obj);
            if (out == NULL) r = -1;
            Py_XDECREF(out);
        }
        Py_DECREF(state);
        if (r < 0) return NULL;
    }
    return Py_BuildValue("(nn)", relayed, declined);
}

static PyMethodDef methods[] = {
    {"hand_over", (PyCFunction)(void (*)(void))hand_over, METH_FASTCALL, hand_over_doc},
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
    st->lane_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &lane_spec, NULL);
    if (st->lane_type == NULL) return -1;
    return PyModule_AddType(module, st->lane_type);
}

#define STATE_FIELDS(X)                                                                     \
    X(s_lane) X(s_waiter) X(s_error) X(s_items) X(s_deadline) X(s_seconds) X(s_last)       \
    X(s_pending) X(s_held) X(s_done) X(s_chunk) X(s_chunked_encoding) X(s_response_started) \
    X(s_response_complete) X(s_disconnected) X(s_flow) X(s_write_paused) X(s_transport)     \
    X(s_write) X(s_set_result) X(s_ready) X(s_sum) X(s_counts) X(s_bounds) X(s_sink_failed) \
    X(s_status) X(s_streams_through) X(s_session_flow)

static int traverse(PyObject *module, visitproc visit, void *arg) {
    module_state *st = PyModule_GetState(module);
    if (st != NULL) Py_VISIT(st->lane_type);
    return 0;
}

static int clear(PyObject *module) {
    module_state *st = PyModule_GetState(module);
    if (st != NULL) {
#define CLEAR_FIELD(f) Py_CLEAR(st->f);
        STATE_FIELDS(CLEAR_FIELD)
#undef CLEAR_FIELD
        Py_CLEAR(st->lane_type);
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

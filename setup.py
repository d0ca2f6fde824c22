"""The compiled pieces of the master's per-token path, each with a Python twin it must agree with:
pdwire's TOKEN_PACKS decoder (pdwire/_tokenpacks.c), its client event writer (pdwire/_sse.c),
its reader of a node's websocket frames (pdwire/_wsframes.c) and the master's relay of a
hand-over of tokens to the streams (pdmaster/_lane.c); and for the simulated nodes, their
TOKEN_PACKS encoder (pdwire/_packenc.c).

Everything else is in pyproject.toml. ``optional``: without a C compiler the install still
succeeds and the master decodes token packs with the pure-Python ``safepickle``, reads node
frames in Python, writes events with orjson and relays each token through its Python chain
(slower); simulated nodes pickle token packs with the C pickler and Python around it.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(f"pdwire.{name}", [f"pdwire/{name}.c"], extra_compile_args=FLAGS, optional=True)
        for name in ("_tokenpacks", "_sse", "_wsframes", "_packenc")
    ]
    + [Extension("pdmaster._lane", ["pdmaster/_lane.c"], extra_compile_args=FLAGS, optional=True)]
)

"""The byte-compatible encoder for LightLLM's mirror classes: the pure-Python pickler, writing
the module path each class has in LightLLM (its ``__lightllm_name__``)."""

from __future__ import annotations

import io
import pickle
from typing import Any

PICKLE_PROTOCOL = 4


class _MirrorPickler(pickle._Pickler):
    """The pure-Python pickler, writing LightLLM's module paths for our mirror classes.

    The C pickler insists that a class be importable under the name it is pickled as;
    this one writes exactly the opcodes the C pickler would write for LightLLM's classes.
    """

    def save_global(self, obj: Any, name: str | None = None) -> None:
        wire_name = obj.__dict__.get("__lightllm_name__") if isinstance(obj, type) else None
        if wire_name is None:
            super().save_global(obj, name)  # type: ignore[misc]
            return
        module_name, qualname = wire_name
        pickler: Any = self  # the pure-Python pickler's helpers are not in typeshed
        pickler.save(module_name)
        pickler.save(qualname)
        pickler.write(pickle.STACK_GLOBAL)
        pickler.memoize(obj)


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _MirrorPickler(buffer, protocol=PICKLE_PROTOCOL).dump(obj)
    return buffer.getvalue()

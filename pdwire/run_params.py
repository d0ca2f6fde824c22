"""A checked request's parameters as a run uses them (``RunParameters``), and which LightLLM
releases' SamplingParams can carry its wire values (``refusals``).

``pdwire.client`` validates a request body into ``GenerateParameters``; a run keeps only
this slim form of it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Protocol

from pdwire.sampling import field_names, not_carried
from pdwire.structs import layout_for

WIRE_NAMES = {"invalid_token_ids": "logit_bias"}  # SamplingParams field -> request field


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class RunParameters:
    """A checked request's parameters as a run uses them: its output limits, stop strings,
    ``wire_values`` and whether /generate details each token. Every open stream holds one,
    so it is a few slots rather than the ~1.3 KB validated model it comes from."""

    __slots__ = (
        "max_new_tokens",
        "min_new_tokens",
        "stop_sequences",
        "wire_values",
        "return_details",
        "_refused",
        "_stop_ids",
    )

    def __init__(
        self,
        max_new_tokens: int,
        min_new_tokens: int,
        stop_sequences: list[str],
        wire_values: dict[str, Any],
        return_details: bool = False,
    ) -> None:
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.stop_sequences = stop_sequences
        self.wire_values = wire_values
        self.return_details = return_details
        self._refused: dict[frozenset[str], Mapping[str, str]] = {}
        self._stop_ids: tuple[Tokenizer, list[list[int]]] | None = None

    def stop_token_ids(self, tokenizer: Tokenizer) -> list[list[int]]:
        """Each stop sequence tokenized by ``tokenizer``, once per tokenizer: the requests
        that send this parameter set share it (~5-8 us a sequence). Read it, never change it."""
        kept = self._stop_ids
        if kept is None or kept[0] is not tokenizer:
            kept = self._stop_ids = (tokenizer, [tokenizer.encode(s) for s in self.stop_sequences])
        return kept[1]

    def refusals(self, versions: frozenset[str]) -> Mapping[str, str]:
        """``refusals(versions, self.wire_values)``, worked out once per set of versions: the
        requests that send this parameter set share it, and each asks twice (~0.8 us)."""
        refused = self._refused.get(versions)
        if refused is None:
            refused = self._refused[versions] = refusals(versions, self.wire_values)
        return refused


def first_uncarried(sampling_params: type, wire_values: dict[str, Any]) -> str | None:
    """The request field of the first wire value the layout has no field for, or None."""
    name = not_carried(sampling_params, wire_values)
    return None if name is None else WIRE_NAMES.get(name, name)


def refusals(versions: frozenset[str], wire_values: dict[str, Any]) -> dict[str, str]:
    """Version -> the request field its SamplingParams has no field for, for each of
    ``versions`` that cannot carry ``wire_values``; nearly always none, which one set
    comparison tells."""
    carried_by_all, layouts = _sampling_params_of(versions)
    if wire_values.keys() <= carried_by_all:
        return {}
    return {
        version: field
        for version, cls in layouts
        if (field := first_uncarried(cls, wire_values)) is not None
    }


@functools.cache
def _sampling_params_of(
    versions: frozenset[str],
) -> tuple[frozenset[str], tuple[tuple[str, type], ...]]:
    """The fields every one of ``versions``' SamplingParams has, and each one's struct."""
    layouts = tuple((version, layout_for(version).SamplingParams) for version in sorted(versions))
    fields = [field_names(cls) for _, cls in layouts]
    return (fields[0].intersection(*fields[1:]) if fields else frozenset()), layouts

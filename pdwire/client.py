"""The client API's request bodies (LightLLM's /generate and /generate_stream).

``GenerateParameters`` takes what LightLLM's ``SamplingParams.init`` takes, with LightLLM's
bounds (``verify``) and the wire's (see ``pdwire.sampling``): a value the node's struct
cannot hold as sent is refused, naming the field. ``wire_values`` is what the master writes
into each node's SamplingParams, as LightLLM's own master writes it.
"""

from __future__ import annotations

import json
import threading
from functools import cached_property
from typing import Annotated, Any

import interegular
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from pdwire.run_params import RunParameters, first_uncarried
from pdwire.sampling import (
    INT64_MAX,
    SAMPLING_EPS,
    Float32,
    Int32,
    constraint_text,
)
from pdwire.structs import (
    ALLOWED_TOKEN_IDS_MAX_LENGTH,
    INVALID_TOKEN_IDS_MAX_LENGTH,
    MAX_STOP_SEQUENCES,
    REGULAR_CONSTRAINT_MAX_LENGTH,
)

TokenId = Annotated[Int32, Field(ge=0)]
Constraint = Annotated[str, constraint_text(REGULAR_CONSTRAINT_MAX_LENGTH)]
BAN = -100.0  # OpenAI's logit bias that bans a token: the only bias LightLLM carries
# Set per request by the master (ids, DP rank, KV hand-off); a client cannot choose them.
MASTER_FIELDS = (
    "group_request_id",
    "suggested_dp_index",
    "move_kv_to_decode_node",
    "pd_master_node_id",
    "pd_kv_trans_params",
)


class GenerateParameters(BaseModel):
    # frozen: a validated set may be shared by the requests that send it (ParameterSets)
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: Int32 = Field(default=16, ge=1)
    min_new_tokens: Int32 = Field(default=1, ge=1)
    do_sample: bool = False
    temperature: Float32 = Field(default=1.0, ge=0.0)
    top_p: Float32 = Field(default=1.0, gt=0.0, le=1.0)
    top_k: Int32 = -1
    presence_penalty: Float32 = Field(default=0.0, ge=0.0)
    frequency_penalty: Float32 = Field(default=0.0, ge=0.0)
    repetition_penalty: Float32 = Field(default=1.0, ge=1.0)
    ignore_eos: bool = False
    input_penalty: bool = False
    image_max_patch_num: Int32 = Field(default=-1, ge=-1)
    exponential_decay_length_penalty: tuple[
        Annotated[Int32, Field(ge=0)], Annotated[Float32, Field(ge=1.0)]
    ] = (1, 1.0)
    regular_constraint: Constraint = ""
    guided_json: Constraint = ""
    guided_grammar: Constraint = ""
    allowed_token_ids: list[TokenId] = Field(
        default_factory=list, max_length=ALLOWED_TOKEN_IDS_MAX_LENGTH
    )
    logit_bias: dict[str, float] = Field(
        default_factory=dict, max_length=INVALID_TOKEN_IDS_MAX_LENGTH
    )
    seed: int | None = None
    stop_sequences: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    best_of: int = Field(default=1, ge=1, le=1)
    n: int = Field(default=1, ge=1, le=1)
    return_details: bool = False
    skip_special_tokens: bool = True
    add_special_tokens: bool = True
    add_spaces_between_special_tokens: bool = True
    print_eos_token: bool = False
    disable_prompt_cache: bool = False
    prompt_logprobs: int | None = None
    group_request_id: Any = None
    suggested_dp_index: Any = None
    move_kv_to_decode_node: Any = None
    pd_master_node_id: Any = None
    pd_kv_trans_params: Any = None

    @field_validator(*MASTER_FIELDS, mode="before")
    @classmethod
    def _master_sets(cls, value: object) -> object:
        if value is not None:
            raise ValueError("set by the master for each request; a client cannot set it")
        return value

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("stop_sequences")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("top_k must be -1 (off) or a positive integer")
        return value

    @field_validator("min_new_tokens")
    @classmethod
    def _min_within_max(cls, value: int, info: ValidationInfo) -> int:
        most = info.data.get("max_new_tokens")
        if most is not None and value > most:
            raise ValueError(f"{value} is more than max_new_tokens {most}")
        return value

    @field_validator("regular_constraint")
    @classmethod
    def _regex(cls, value: str) -> str:
        if value:
            try:
                interegular.parse_pattern(value)
            except Exception as exc:  # interegular's errors share no base class
                raise ValueError(f"not a regular expression LightLLM accepts: {exc}") from None
        return value

    @field_validator("guided_json")
    @classmethod
    def _json_schema(cls, value: str) -> str:
        if value:
            try:
                schema = json.loads(value)
            except ValueError:
                raise ValueError("must be a JSON schema, as JSON text") from None
            if not isinstance(schema, dict):
                raise ValueError("must be a JSON schema object, as JSON text")
        return value

    @field_validator("guided_grammar")
    @classmethod
    def _one_grammar(cls, value: str, info: ValidationInfo) -> str:
        _alone(value, info, ("regular_constraint", "guided_json"))
        return value

    @field_validator("allowed_token_ids")
    @classmethod
    def _allowed_alone(cls, value: list[int], info: ValidationInfo) -> list[int]:
        _alone(value, info, ("regular_constraint", "guided_json", "guided_grammar"))
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bans(cls, value: dict[str, float]) -> dict[str, float]:
        for key, bias in value.items():
            if not (key.isdigit() and int(key) <= 2**31 - 1):
                raise ValueError(f"key {key!r} is not a token id")
            if bias > BAN:
                raise ValueError(
                    f"bias {bias} for token {key}: only {BAN:g} (never pick the token) is "
                    "carried to LightLLM's nodes"
                )
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not -1 <= value <= INT64_MAX:
            raise ValueError(f"must be -1 (random) or an integer in [0, {INT64_MAX}]")
        return value

    @field_validator("disable_prompt_cache")
    @classmethod
    def _prompt_cache(cls, value: bool) -> bool:
        if value:
            raise ValueError("not supported in PD mode (LightLLM's PD master refuses it too)")
        return value

    @field_validator("prompt_logprobs")
    @classmethod
    def _prompt_logprobs(cls, value: int | None) -> int | None:
        if value not in (None, -1):
            raise ValueError("not supported: this master does not return prompt logprobs")
        return value

    @cached_property
    def wire_values(self) -> dict[str, Any]:
        """SamplingParams field -> value, as LightLLM's ``init`` leaves them.

        Greedy search (``do_sample`` false, or a temperature under 1e-5) goes out as
        LightLLM's master sends it, top_k 1 and temperature 1: nodes sample by those fields.
        Fields only newer versions have (``seed``, ``invalid_token_ids``) appear only when
        the request sets them.
        """
        greedy = not self.do_sample or self.temperature < SAMPLING_EPS
        values: dict[str, Any] = {
            "do_sample": self.do_sample,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "temperature": 1.0 if greedy else self.temperature,
            "top_p": self.top_p if self.do_sample else 1.0,
            "top_k": 1 if greedy else self.top_k,
            "ignore_eos": self.ignore_eos,
            "image_max_patch_num": self.image_max_patch_num,
            "input_penalty": self.input_penalty,
            "regular_constraint": self.regular_constraint,
            "guided_grammar": self.guided_grammar,
            "guided_json": self.guided_json,
            "allowed_token_ids": self.allowed_token_ids,
            "exponential_decay_length_penalty": self.exponential_decay_length_penalty,
            "skip_special_tokens": self.skip_special_tokens,
            "add_special_tokens": self.add_special_tokens,
            "add_spaces_between_special_tokens": self.add_spaces_between_special_tokens,
            "print_eos_token": self.print_eos_token,
        }
        if self.logit_bias:
            values["invalid_token_ids"] = [int(k) for k in self.logit_bias]
        if self.seed is not None and self.seed != -1:
            values["seed"] = self.seed
        return values

    def not_carried_by(self, sampling_params: type) -> str | None:
        """The first field set here that this SamplingParams layout cannot carry, or None."""
        return first_uncarried(sampling_params, self.wire_values)

    def for_run(self) -> RunParameters:
        """What a run needs of these parameters, without the model around them: one object
        per (frozen, perhaps shared: see ParameterSets) parameter set, to read, not change."""
        return self.run_parameters

    @cached_property
    def run_parameters(self) -> RunParameters:
        return RunParameters(
            self.max_new_tokens,
            self.min_new_tokens,
            self.stop_sequences,
            self.wire_values,
            self.return_details,
        )


class MultimodalInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[dict[str, Any]] = Field(default_factory=list, max_length=0)
    audios: list[dict[str, Any]] = Field(default_factory=list, max_length=0)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    multimodal_params: MultimodalInput | None = None


class ParameterSets:
    """``GenerateRequest`` validation that reuses the ``parameters`` of a request whose
    ``parameters`` JSON is one of the last ``size`` distinct sets that passed.

    Validating them (and working out ``wire_values``) depends on nothing but that JSON,
    and clients send the same few sets again and again; keyed by its exact JSON (1, 1.0
    and true, 0.0 and -0.0 stay apart), a set found here gives the same model the
    validation would. A set that fails is never kept: it is refused, with the same error,
    every time. The models are frozen, as they are shared.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._sets: dict[bytes, GenerateParameters] = {}
        self._lock = threading.Lock()  # long bodies are validated in worker threads

    def validate(self, data: Any) -> GenerateRequest:
        """``GenerateRequest.model_validate(data)``."""
        params = data.get("parameters") if type(data) is dict else None
        if type(params) is not dict:
            return GenerateRequest.model_validate(data)
        try:
            key = orjson.dumps(params)
        except TypeError:  # an int past 64 bits: validated every time
            return GenerateRequest.model_validate(data)
        known = self._sets.get(key)
        if known is not None:
            return GenerateRequest.model_validate({**data, "parameters": known})
        request = GenerateRequest.model_validate(data)
        with self._lock:
            if len(self._sets) >= self._size:
                del self._sets[next(iter(self._sets))]
            self._sets[key] = request.parameters
        return request

    def parts(self, data: Any) -> tuple[str, GenerateParameters]:
        """``(request.inputs, request.parameters)`` of ``validate(data)``; a body of just a
        text ``inputs`` and a kept ``parameters`` set, as most are, without building the
        request model around them (which would check nothing more)."""
        if type(data) is dict and data.keys() <= _INPUTS_AND_PARAMETERS:
            inputs, params = data.get("inputs"), data.get("parameters")
            if type(inputs) is str and type(params) is dict:
                try:
                    known = self._sets.get(orjson.dumps(params))
                except TypeError:  # an int past 64 bits: validated every time
                    known = None
                if known is not None:
                    return inputs, known
        request = self.validate(data)
        return request.inputs, request.parameters


_INPUTS_AND_PARAMETERS = frozenset({"inputs", "parameters"})


def _alone(value: Any, info: ValidationInfo, others: tuple[str, ...]) -> None:
    """A constraint set with one of ``others`` (validated before it) is refused."""
    if value:
        for other in others:
            if info.data.get(other):
                raise ValueError(f"cannot be used together with {other}")

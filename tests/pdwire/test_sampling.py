"""LightLLM's request parameters: LightLLM's bounds and the wire's, and the copy into each
version's SamplingParams struct."""

from __future__ import annotations

import ctypes
import itertools
import struct
from typing import Any

import pytest
from pydantic import ValidationError

from pdwire.client import GenerateParameters, GenerateRequest, ParameterSets
from pdwire.run_params import refusals
from pdwire.sampling import FilledParams, NotCarried, fill, not_carried, read
from pdwire.structs import LAYOUTS


def f32(value: float) -> float:
    """What a float becomes in a ctypes c_float."""
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def refused_field(**params: Any) -> str:
    with pytest.raises(ValidationError) as info:
        GenerateParameters(**params)
    return ".".join(str(p) for p in info.value.errors()[0]["loc"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        # values the wire would silently change (issue 13)
        ({"top_k": 2**32 + 5}, "top_k"),
        ({"top_k": 2**31}, "top_k"),
        ({"max_new_tokens": 2**31}, "max_new_tokens"),
        ({"do_sample": True, "temperature": 1e-320}, "temperature"),
        ({"do_sample": True, "temperature": 1e308}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"presence_penalty": 1e39}, "presence_penalty"),
        ({"frequency_penalty": 1e39}, "frequency_penalty"),
        ({"repetition_penalty": 1e39}, "repetition_penalty"),
        ({"top_p": 1e-40}, "top_p"),
        ({"exponential_decay_length_penalty": [2**31, 1.5]}, "exponential_decay_length_penalty.0"),
        ({"exponential_decay_length_penalty": [1, 1e39]}, "exponential_decay_length_penalty.1"),
        ({"allowed_token_ids": [2**31]}, "allowed_token_ids.0"),
        ({"seed": 2**63}, "seed"),
        ({"image_max_patch_num": -2}, "image_max_patch_num"),
        # LightLLM's own bounds (SamplingParams.verify)
        ({"presence_penalty": -0.5}, "presence_penalty"),
        ({"frequency_penalty": -0.5}, "frequency_penalty"),
        ({"repetition_penalty": 0.9}, "repetition_penalty"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"min_new_tokens": 0}, "min_new_tokens"),
        ({"max_new_tokens": 4, "min_new_tokens": 5}, "min_new_tokens"),
        ({"exponential_decay_length_penalty": [-1, 1.5]}, "exponential_decay_length_penalty.0"),
        ({"exponential_decay_length_penalty": [1, 0.5]}, "exponential_decay_length_penalty.1"),
        ({"exponential_decay_length_penalty": [1]}, "exponential_decay_length_penalty.1"),
        ({"seed": -2}, "seed"),
        ({"regular_constraint": "(ab"}, "regular_constraint"),
        ({"regular_constraint": "a" * 2048}, "regular_constraint"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_json": "[1]"}, "guided_json"),
        ({"guided_grammar": "x" * 2048}, "guided_grammar"),
        ({"regular_constraint": "a+", "guided_grammar": "root ::= 'a'"}, "guided_grammar"),
        ({"guided_json": "{}", "allowed_token_ids": [1]}, "allowed_token_ids"),
        ({"allowed_token_ids": list(range(257))}, "allowed_token_ids"),
        ({"logit_bias": {"5": 3.0}}, "logit_bias"),
        ({"logit_bias": {"x": -100}}, "logit_bias"),
        ({"logit_bias": {str(i): -100 for i in range(11)}}, "logit_bias"),
        ({"prompt_logprobs": 5}, "prompt_logprobs"),
        ({"disable_prompt_cache": True}, "disable_prompt_cache"),
        # the master's own fields
        ({"group_request_id": 7}, "group_request_id"),
        ({"suggested_dp_index": 0}, "suggested_dp_index"),
        ({"move_kv_to_decode_node": {}}, "move_kv_to_decode_node"),
    ],
)
def test_a_value_the_node_would_not_get_as_sent_is_refused_naming_the_field(
    params: dict[str, Any], field: str
) -> None:
    assert refused_field(**params) == field


def test_greedy_goes_out_as_lightllm_sends_it() -> None:
    """Nodes sample by temperature/top_p/top_k: greedy is top_k 1, as LightLLM's init sets."""
    plain = GenerateParameters(temperature=0.3, top_p=0.5, top_k=7).wire_values
    assert (plain["temperature"], plain["top_p"], plain["top_k"]) == (1.0, 1.0, 1)
    cold = GenerateParameters(do_sample=True, temperature=0.0, top_p=0.5, top_k=7).wire_values
    assert (cold["temperature"], cold["top_p"], cold["top_k"]) == (1.0, 0.5, 1)
    warm = GenerateParameters(do_sample=True, temperature=0.7, top_p=0.5, top_k=7).wire_values
    assert (warm["temperature"], warm["top_p"], warm["top_k"]) == (0.7, 0.5, 7)


EVERY_PARAMETER: dict[str, Any] = {
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 2**31 - 1,
    "presence_penalty": 0.25,
    "frequency_penalty": 3e38,
    "repetition_penalty": 1.5,
    "ignore_eos": True,
    "input_penalty": True,
    "image_max_patch_num": 12,
    "exponential_decay_length_penalty": [5, 1.25],
    "regular_constraint": r"\d{3}-[a-zé]+",
    "allowed_token_ids": [],
    "skip_special_tokens": False,
    "add_special_tokens": False,
    "add_spaces_between_special_tokens": False,
    "print_eos_token": True,
}


@pytest.mark.parametrize("version", sorted(LAYOUTS))
def test_every_parameter_reaches_each_versions_struct_as_sent(version: str) -> None:
    params = LAYOUTS[version].new_sampling_params()
    fill(params, GenerateParameters(**EVERY_PARAMETER).wire_values)
    got = read(params)
    for name, sent in EVERY_PARAMETER.items():
        want = f32(sent) if isinstance(sent, float) else sent
        if name == "exponential_decay_length_penalty":
            want = [sent[0], f32(sent[1])]
        assert got[name] == want, name

    for constraint in ({"guided_json": '{"type": "object"}'}, {"guided_grammar": "root ::= 'a'"}):
        params = LAYOUTS[version].new_sampling_params()
        fill(params, GenerateParameters(**constraint).wire_values)
        assert {k: read(params)[k] for k in constraint} == constraint
    params = LAYOUTS[version].new_sampling_params()
    fill(params, GenerateParameters(allowed_token_ids=[0, 5, 2**31 - 1]).wire_values)
    assert read(params)["allowed_token_ids"] == [0, 5, 2**31 - 1]


@pytest.mark.parametrize("version", sorted(LAYOUTS))
def test_seed_and_logit_bias_reach_only_versions_whose_struct_has_them(version: str) -> None:
    wanted = GenerateParameters(seed=2**63 - 1, logit_bias={"3": -100, "9": -100})
    cls = LAYOUTS[version].SamplingParams
    names = {f[0] for f in cls._fields_}
    params = LAYOUTS[version].new_sampling_params()
    if {"seed", "invalid_token_ids"} <= names:
        assert wanted.not_carried_by(cls) is None
        fill(params, wanted.wire_values)
        assert (read(params)["seed"], read(params)["invalid_token_ids"]) == (2**63 - 1, [3, 9])
    else:
        assert wanted.not_carried_by(cls) in ("seed", "logit_bias")
        with pytest.raises(NotCarried):
            fill(params, wanted.wire_values)
    # -1 is "random", every version's behaviour: nothing to carry
    assert GenerateParameters(seed=-1).not_carried_by(cls) is None


def test_fill_reads_every_value_back_and_refuses_what_the_field_changes() -> None:
    class Narrow(ctypes.Structure):
        _fields_ = [("top_k", ctypes.c_short), ("temperature", ctypes.c_float)]

    narrow = Narrow()
    fill(narrow, {"top_k": 300, "temperature": 0.5})
    assert (narrow.top_k, narrow.temperature) == (300, 0.5)
    with pytest.raises(NotCarried, match="top_k"):
        fill(narrow, {"top_k": 2**16 + 5})
    with pytest.raises(NotCarried, match="temperature"):
        fill(narrow, {"temperature": 1e-320})
    with pytest.raises(NotCarried, match="seed"):
        fill(narrow, {"seed": 1})
    assert not_carried(Narrow, {"top_k": 1, "seed": 1}) == "seed"


@pytest.mark.parametrize("version", sorted(LAYOUTS))
def test_params_filled_again_from_a_copy_are_the_bytes_a_fresh_fill_makes(version: str) -> None:
    layout = LAYOUTS[version]
    filled = FilledParams(layout.new_sampling_params, size=2)
    sets = [
        GenerateParameters(**EVERY_PARAMETER).wire_values,
        GenerateParameters(presence_penalty=0.0).wire_values,
        GenerateParameters(presence_penalty=-0.0).wire_values,  # equal to 0.0, not the same
        GenerateParameters(top_k=1).wire_values,
    ]
    for values in sets * 2:
        fresh = layout.new_sampling_params()
        fill(fresh, values)
        for _ in range(2):
            params = filled(values)
            assert type(params) is type(fresh) and bytes(params) == bytes(fresh)
    first, again = filled(sets[1]), filled(sets[1])
    first.max_new_tokens = 7
    assert again.max_new_tokens != 7  # each call is a struct of its own
    refused = {"top_k": 2**40}
    for _ in range(2):
        with pytest.raises(NotCarried, match="top_k"):
            filled(refused)


@pytest.mark.parametrize("version", sorted(LAYOUTS))
def test_a_filled_struct_is_shared_by_equal_values_and_found_again_by_their_object(
    version: str,
) -> None:
    layout = LAYOUTS[version]
    filled = FilledParams(layout.new_sampling_params, size=2)
    values = GenerateParameters(top_k=3, do_sample=True).wire_values
    shared = filled.filled(values)
    fresh = layout.new_sampling_params()
    fill(fresh, values)
    assert bytes(shared) == bytes(fresh)
    assert filled.filled(values) is shared
    assert filled.filled(dict(values)) is shared  # equal JSON, another object
    assert filled(values) is not shared and bytes(filled(values)) == bytes(shared)
    others = [GenerateParameters(top_k=k, do_sample=True).wire_values for k in (4, 5, 6)]
    for other in others:  # past the size: the oldest go, and come back filled afresh
        filled.filled(other)
    again = filled.filled(values)
    assert again is not shared and bytes(again) == bytes(shared)
    with pytest.raises(NotCarried, match="top_k"):
        filled.filled({"top_k": 2**40})


@pytest.mark.parametrize(
    "wanted",
    [
        GenerateParameters(),
        GenerateParameters(seed=7),
        GenerateParameters(logit_bias={"3": -100}),
        GenerateParameters(seed=7, logit_bias={"3": -100}, top_k=5, do_sample=True),
    ],
)
def test_refusals_name_for_each_version_the_field_its_struct_lacks(
    wanted: GenerateParameters,
) -> None:
    versions = sorted(LAYOUTS)
    for size in range(1, len(versions) + 1):
        for chosen in itertools.combinations(versions, size):
            expected = {
                v: field
                for v in chosen
                if (field := wanted.not_carried_by(LAYOUTS[v].SamplingParams)) is not None
            }
            assert refusals(frozenset(chosen), wanted.wire_values) == expected


def validation(validate: Any, body: Any) -> Any:
    """What validating ``body`` gives: the model's fields and wire values, or the errors."""
    try:
        request = validate(body)
    except ValidationError as exc:
        return ("refused", [(e["type"], e["loc"], e["msg"]) for e in exc.errors()])
    return ("valid", request.model_dump(), request.parameters.wire_values)


BODIES: list[Any] = [
    {"inputs": "hi"},
    {"inputs": "hi", "parameters": {}},
    {"inputs": "hi", "parameters": EVERY_PARAMETER},
    {"inputs": "hi", "parameters": {"temperature": 1, "max_new_tokens": 3}},
    {"inputs": "hi", "parameters": {"temperature": 1.0, "max_new_tokens": 3}},
    {"inputs": "hi", "parameters": {"do_sample": True, "top_p": 0.5, "seed": 2**63 - 1}},
    {"inputs": "hi", "parameters": {"seed": 2**70}},  # past 64 bits: no key, validated anew
    {"inputs": "hi", "parameters": {"stop_sequences": "\n\n", "logit_bias": {"5": -100}}},
    {"inputs": "hi", "parameters": {"top_k": 0}},
    {"inputs": "hi", "parameters": {"max_new_tokens": 4, "min_new_tokens": 5}},
    {"inputs": 7, "parameters": {"max_new_tokens": 3}},  # a known set, a bad prompt
    {"parameters": {"max_new_tokens": 3}},
    {"inputs": "hi", "parameters": {"max_new_tokens": 3}, "extra": 1},
    {"inputs": "hi", "parameters": [1]},
    {"inputs": "hi", "parameters": None},
    {"inputs": "hi", "parameters": {"max_new_tokens": 3}, "multimodal_params": None},
    {"inputs": "hi", "parameters": {"max_new_tokens": 3}, "multimodal_params": {"images": []}},
    {"inputs": b"hi", "parameters": {"max_new_tokens": 3}},
    [1, 2],
]


def test_parameter_sets_validate_as_the_model_does_the_first_time_and_after() -> None:
    sets = ParameterSets(size=4)
    for _ in range(3):  # the sets passed are found again; those refused are refused again
        for body in BODIES:
            assert validation(sets.validate, body) == validation(
                GenerateRequest.model_validate, body
            ), body


def test_parameter_sets_parts_are_those_of_the_validated_request() -> None:
    sets = ParameterSets(size=4)

    def parts(validate: Any, body: Any) -> Any:
        try:
            inputs, params = validate(body)
        except ValidationError as exc:
            return ("refused", [(e["type"], e["loc"], e["msg"]) for e in exc.errors()])
        return ("valid", inputs, params.model_dump(), params.wire_values)

    def validated(body: Any) -> tuple[str, GenerateParameters]:
        request = GenerateRequest.model_validate(body)
        return request.inputs, request.parameters

    for _ in range(3):
        for body in BODIES:
            assert parts(sets.parts, body) == parts(validated, body), body
    inputs, first = sets.parts({"inputs": "a", "parameters": {"max_new_tokens": 3}})
    assert sets.parts({"inputs": "b", "parameters": {"max_new_tokens": 3}}) == ("b", first)
    assert sets.parts({"inputs": "b", "parameters": {"max_new_tokens": 3}})[1] is first


def test_a_found_set_is_shared_frozen_and_the_sets_kept_are_bounded() -> None:
    sets = ParameterSets(size=2)
    first = sets.validate({"inputs": "a", "parameters": {"max_new_tokens": 3}})
    again = sets.validate({"inputs": "b", "parameters": {"max_new_tokens": 3}})
    assert again.parameters is first.parameters and again.inputs == "b"
    with pytest.raises(ValidationError):
        first.parameters.max_new_tokens = 5
    for n in (4, 5):  # two other sets: the first one is no longer kept
        sets.validate({"inputs": "c", "parameters": {"max_new_tokens": n}})
    third = sets.validate({"inputs": "d", "parameters": {"max_new_tokens": 3}})
    assert third.parameters is not first.parameters and third.parameters == first.parameters


def test_a_parameter_sets_stop_sequences_are_tokenized_once_per_tokenizer() -> None:
    from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer

    tokenizer = ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)
    run = GenerateParameters(stop_sequences=["\n\n", "Observation:"]).for_run()
    ids = run.stop_token_ids(tokenizer)
    assert ids == [tokenizer.encode("\n\n"), tokenizer.encode("Observation:")]
    assert run.stop_token_ids(tokenizer) is ids  # the requests of the set share them
    other = ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)
    assert run.stop_token_ids(other) == ids and run.stop_token_ids(other) is not ids
    assert GenerateParameters().for_run().stop_token_ids(tokenizer) == []

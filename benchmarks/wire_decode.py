"""Benchmark: decoding a node's TOKEN_PACKS frame, per entry, against the previous decoder.

Frames of 1, 7, 64 and 512 entries as the simulated engine sends them (v1.1.0, 8 metadata
keys) and as LightLLM v1.2.0 does (11 keys with nested logprobs and input usage). Decoders:
``codec`` is what the master runs (``decode_node_message``: the compiled one-pass decoder,
``pdwire/_tokenpacks.c``);
``safepickle`` is the general decoder every other message takes (and a frame the fast path
does not cover); ``previous`` is the decoder before issue 13, a ``pickle.Unpickler`` whose
``find_class`` allowlisted the globals (unsafe: BUILD, hash and memo bombs), plus its entry
check. Best of 7 rounds of thread CPU time (other work on the machine adds less noise
than to wall time), microseconds per entry.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any

from benchmarks.common import best_call_s, parser, print_table, write_json
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import ObjType
from pdwire.structs import FinishStatus


class _Previous(pickle.Unpickler):
    """The decoder pdctl used before issue 13 (kept here only as the baseline)."""

    def __init__(self, data: bytes, classes: dict[tuple[str, str], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._classes = classes

    def find_class(self, module: str, name: str) -> Any:
        return self._classes[(module, name)]


def previous_decoder(version: str) -> Callable[[bytes], Any]:
    statuses: dict[bytes, FinishStatus] = {}

    def restore(cls: Any, state: Any) -> Any:
        shared = statuses.get(state[1])
        if shared is not None:
            return shared
        obj = cls.from_buffer_copy(state[1])
        statuses[state[1]] = obj
        return obj

    classes = {
        ("lightllm.server.pd_io_struct", "ObjType"): ObjType,
        ("lightllm.server.core.objs.req", "FinishStatus"): FinishStatus,
        ("_ctypes", "_unpickle"): restore,
    }

    def decode(data: bytes) -> Any:
        msg = _Previous(data, classes).load()
        for entry in msg[1]:
            if (
                not isinstance(entry, tuple)
                or len(entry) != 4
                or not isinstance(entry[0], int)
                or not isinstance(entry[1], str)
                or not isinstance(entry[2], dict)
                or not isinstance(entry[3], FinishStatus)
            ):
                raise ValueError("bad entry")
        return msg

    return decode


def sim_entry(i: int) -> tuple[int, str, dict[str, Any], FinishStatus]:
    meta = {
        "id": 1234 + i,
        "logprob": -0.25,
        "cumlogprob": -0.25 * i,
        "special": False,
        "count_output_tokens": i + 1,
        "prompt_cache_len": 0,
        "mtp_accepted_token_num": 0,
        "prompt_tokens": 1024,
    }
    return (8 * i, " tok", meta, FinishStatus(0))


def lightllm_v120_entry(i: int) -> tuple[int, str, dict[str, Any], FinishStatus]:
    text = f" w{i % 50}"
    meta = {
        "id": 1234 + i,
        "logprob": -0.25,
        "cumlogprob": -0.25,
        "special": False,
        "count_output_tokens": i + 1,
        "mtp_accepted_token_num": 0,
        "logprobs": {1234 + i: {"logprob": -0.25, "rank": None, "decoded_token": text}},
        "prompt_tokens": 1024,
        "prompt_cache_len": 0,
        "node_mode": "decode",
    }
    return (8 * i, text, meta, FinishStatus(0))


def per_entry_us(decode: Callable[[bytes], Any], frame: bytes, entries: int, smoke: bool) -> float:
    reps = max((200 if smoke else 20000) // entries, 3)
    return best_call_s(decode, frame, reps, 2 if smoke else 7) / entries * 1e6


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    rows, results = [], []
    load = {"total_token_usage_rate": 0.5, "client_ip_port": "127.0.0.1:8000"}
    for shape, version, make in (
        ("simengine", "v1.1.0", sim_entry),
        ("lightllm-v1.2.0", "v1.2.0", lightllm_v120_entry),
    ):
        codec = LightLLMCodec(version, share_statuses=True)
        decoders = {
            "codec": codec.decode_node_message,
            "safepickle": codec.loads,
            "previous": previous_decoder(version),
        }
        for entries in (1, 7, 64, 512):  # 7: what a sim decode node sends at 64 streams
            frame = codec.encode_token_packs([make(i) for i in range(entries)], load)
            row: dict[str, Any] = {"shape": shape, "entries": entries, "frame_bytes": len(frame)}
            for name, decode in decoders.items():
                row[f"{name}_us_per_entry"] = per_entry_us(decode, frame, entries, args.smoke)
            results.append(row)
            rows.append([shape, entries, len(frame), *(row[f"{n}_us_per_entry"] for n in decoders)])
    print_table(
        "TOKEN_PACKS decode, us per entry (best of rounds)",
        ["frames", "entries", "bytes", "codec", "safepickle", "previous"],
        rows,
    )
    write_json("wire_decode" + ("_smoke" if args.smoke else ""), {"results": results, "errors": 0})


if __name__ == "__main__":
    main()

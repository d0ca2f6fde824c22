"""``pd-simengine`` / ``python -m node_agents.simengine``: a CPU stand-in for a LightLLM PD node.

Takes LightLLM's flags for prefill/decode nodes (the LightLLM flags it has no use for are
accepted, logged and ignored; any other flag is an error) plus the timing model's knobs.
"""

from __future__ import annotations

import argparse
import logging
import uuid
from dataclasses import fields, replace
from pathlib import Path

import uvicorn

from node_agents.simengine.app import MasterAddress, build_node, create_app
from node_agents.simengine.engine import NodeIdentity
from node_agents.simengine.faults import Faults
from node_agents.simengine.profiles import PROFILES
from node_agents.simengine.rankgroup import RankGroup
from node_agents.simengine.timing import TimingModel
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from pdwire.cli import (
    UNUSED,
    CommandParser,
    add_lightllm_flags,
    lightllm_flags_given,
    port_number,
)
from pdwire.httpserver import header_timeout_protocol
from pdwire.lightllm import LightLLMCodec
from pdwire.message_sets import MAX_FRAME_BYTES
from pdwire.structs import LAYOUTS


def build_parser() -> CommandParser:
    p = CommandParser("pd-simengine", __doc__)
    p.add_argument(
        "--run_mode",
        required=True,
        choices=["prefill", "decode", "normal"],
        help="normal: a whole engine serving /generate_stream itself (no PD)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8019)
    p.add_argument("--model_dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--pd_master_ip", default="127.0.0.1")
    p.add_argument("--pd_master_port", type=port_number, default=60011)
    p.add_argument("--pd_node_id", type=int, default=None, help="128-bit node id (default: random)")
    p.add_argument("--pd_decode_rpyc_port", type=int, default=42000)
    p.add_argument("--config_server_host", default=None)
    p.add_argument("--config_server_port", type=port_number, default=60088)
    p.add_argument(
        "--config_server_poll_s",
        type=float,
        default=10.0,
        help="seconds between reads of the config server's master list",
    )
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--dp", type=int, default=1)
    p.add_argument("--lightllm_version", default="v1.1.0", choices=sorted(LAYOUTS))
    v = p.add_argument_group("LightLLM v1.2.0 nodes")
    v.add_argument("--pd_trans_mode", default="nccl", choices=["nccl", "nixl"])
    v.add_argument("--max_req_total_len", type=int, default=16384 + 8192)
    v.add_argument("--pd_kv_page_num", type=int, default=16)
    v.add_argument("--pd_kv_page_size", type=int, default=1024)
    v.add_argument(
        "--pd_heartbeat_s", type=float, default=15.0, help="HEARTBEAT frame period (LightLLM: 15)"
    )
    v.add_argument(
        "--pd_info_timeout_s",
        type=float,
        default=180.0,
        help="prefill: longest wait for the decode node info (LightLLM: 180)",
    )
    v.add_argument(
        "--pd_trans_timeout_s",
        type=float,
        default=180.0,
        help="decode: longest wait for the prefill node's KV write (LightLLM: 180)",
    )
    m = p.add_argument_group("multi-node instance (LightLLM's flags; each rank is a process)")
    m.add_argument("--nnodes", type=int, default=1)
    m.add_argument("--node_rank", type=int, default=0)
    m.add_argument("--nccl_host", default="127.0.0.1", help="rank 0's address")
    m.add_argument("--nccl_port", type=int, default=28765, help="rank 0 listens here")
    p.add_argument(
        "--ws_max_size",
        type=int,
        default=MAX_FRAME_BYTES,
        help="largest websocket frame a master may send, in bytes; a larger one closes the "
        "link with 1009 (LightLLM: LIGHTLLM_WEBSOCKET_MAX_SIZE)",
    )
    p.add_argument(
        "--pd_reconnect_s",
        type=float,
        default=10.0,
        help="seconds between attempts to reach a master (LightLLM: 10)",
    )
    t = TimingModel()
    g = p.add_argument_group("timing model (a --profile, then these flags override it)")
    g.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="demo",
        help="demo (default) or deepseek-v3-h200 (see profiles.py for the derivation)",
    )
    for field in fields(TimingModel):
        g.add_argument(f"--{field.name}", type=type(getattr(t, field.name)), default=None)
    g.add_argument(
        "--text_mode",
        choices=["echo", "timestamp"],
        default="echo",
        help="timestamp: each token's text is its send time (for relay benchmarks)",
    )
    p.add_argument(
        "--prefix_cache_tokens",
        type=int,
        default=100_000,
        help="prompt tokens the prefill node keeps cached (0 = no prefix cache)",
    )
    f = p.add_argument_group("fault injection (also settable at run time: PUT /sim/faults)")
    f.add_argument("--fault_fail_rate", type=float, default=0.0)
    f.add_argument("--fault_extra_latency_ms", type=float, default=0.0)
    f.add_argument("--fault_drop_kv_rate", type=float, default=0.0)
    f.add_argument("--fault_hang", action="store_true")
    f.add_argument("--fault_crash_after_tokens", type=int, default=0)
    f.add_argument("--fault_no_heartbeat", action="store_true")
    p.add_argument("--log_level", default="info")
    add_lightllm_flags(p)
    return p


def timing_from_args(args: argparse.Namespace) -> TimingModel:
    overrides = {f.name: getattr(args, f.name) for f in fields(TimingModel)}
    return replace(PROFILES[args.profile], **{k: v for k, v in overrides.items() if v is not None})


def faults_from_args(args: argparse.Namespace) -> Faults:
    faults = Faults()
    faults.update(
        {
            "fail_rate": args.fault_fail_rate,
            "extra_latency_ms": args.fault_extra_latency_ms,
            "drop_kv_rate": args.fault_drop_kv_rate,
            "hang": args.fault_hang,
            "crash_after_tokens": args.fault_crash_after_tokens,
            "no_heartbeat": args.fault_no_heartbeat,
        }
    )
    return faults


V12_ONLY = ("pd_trans_mode", "max_req_total_len", "pd_kv_page_num", "pd_kv_page_size")
V110_ONLY = ("select_p_d_node_strategy", "dp_balancer")
FC72FFA_ONLY = ("cache_reserved_ratio",)


def registration_args(args: argparse.Namespace) -> dict[str, object]:
    """``start_args`` as the node's LightLLM release registers them.

    Masters tell the release from these: v1.2.0 has ``pd_trans_mode`` and no
    ``pd_decode_rpyc_port``; v1.1.0 has ``select_p_d_node_strategy``; fc72ffa has
    ``cache_reserved_ratio`` without it.
    """
    # named as LightLLM's registrations name them, the flags it ignores included
    start_args = {
        k.removeprefix(UNUSED): str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
    }
    if args.lightllm_version == "v1.2.0":
        for key in ("pd_decode_rpyc_port", *V110_ONLY, *FC72FFA_ONLY):
            start_args.pop(key, None)
        return start_args
    for key in V12_ONLY:
        start_args.pop(key, None)
    if args.lightllm_version == "v1.1.0":
        for key in FC72FFA_ONLY:
            start_args.pop(key, None)
        start_args["select_p_d_node_strategy"] = start_args.get("select_p_d_node_strategy") or (
            "round_robin"
        )
    else:
        for key in V110_ONLY:
            start_args.pop(key, None)
        start_args["cache_reserved_ratio"] = start_args.get("cache_reserved_ratio") or 0.5
    return start_args


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    ignored = lightllm_flags_given(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    if ignored:
        logging.getLogger(__name__).info(
            "ignoring LightLLM flags the simulation does not use: %s", ignored
        )
    if args.pd_node_id is None:
        args.pd_node_id = uuid.uuid4().int
    start_args = registration_args(args)
    identity = NodeIdentity(args.pd_node_id, args.run_mode, args.host, args.port, start_args)
    codec = LightLLMCodec(args.lightllm_version)
    node = build_node(
        identity,
        codec,
        ModelTokenizer.from_model_dir(args.model_dir),
        timing_from_args(args),
        faults_from_args(args),
        dp=max(1, args.dp // args.nnodes),  # a rank serves its share, as LightLLM's do
        prefix_cache_tokens=args.prefix_cache_tokens,
        v12_timeouts=(args.pd_info_timeout_s, args.pd_trans_timeout_s),
    )
    node.stamp_tokens = args.text_mode == "timestamp"
    config_server = None
    masters = []
    if args.run_mode != "normal":
        if args.config_server_host:  # LightLLM: a config server replaces --pd_master_ip
            config_server = f"{args.config_server_host}:{args.config_server_port}"
        else:
            masters = [MasterAddress(0, f"{args.pd_master_ip}:{args.pd_master_port}")]
    group = None
    if args.nnodes > 1:
        if not 0 <= args.node_rank < args.nnodes:
            raise SystemExit(f"--node_rank {args.node_rank} must be below --nnodes {args.nnodes}")

        def hang(why: str) -> None:  # a collective whose peer is gone never returns
            node.faults.hang = True

        group = RankGroup(args.nnodes, args.node_rank, args.nccl_host, args.nccl_port, hang)
    app = create_app(
        node,
        masters,
        args.pd_reconnect_s,
        config_server,
        args.config_server_poll_s,
        group=group,
        heartbeat_s=args.pd_heartbeat_s,
        max_frame_bytes=args.ws_max_size,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http=header_timeout_protocol(),
        log_level=args.log_level,
        access_log=False,
    )

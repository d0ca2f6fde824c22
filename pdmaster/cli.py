"""``pd-master`` / ``python -m pdmaster``: a PD master with LightLLM's flag names."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import uuid
from pathlib import Path

import uvicorn

from pdmaster.app import create_app
from pdmaster.dispatch.session import DispatchSettings
from pdmaster.nodes.socket import NodeSocketProtocol
from pdmaster.routing.policies import POLICY_NAMES
from pdmaster.settings import MasterSettings
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, PARALLELISM, ModelTokenizer
from pdwire.cli import CommandParser, add_lightllm_flags, lightllm_flags_given, port_number
from pdwire.httpserver import header_timeout_protocol
from pdwire.message_sets import MAX_FRAME_BYTES
from pdwire.peers import split_cidrs
from pdwire.structs import LAYOUTS

WILDCARDS = ("0.0.0.0", "::", "")
# A collection starts when tracked objects (net of frees) grow by the generation-0 threshold.
# A frame of tokens for 512 streams keeps ~3,000 new objects alive until its tokens are
# written, so at the default (700) every frame set off collections, whose promotions then
# brought on full ones over every stream's objects: a fifth of the master's CPU. Only
# garbage in reference cycles waits for a collection, and the hot path makes little.
GC_GEN0_THRESHOLD = 20_000

LIGHTLLM_STRATEGIES = {
    "random": "random",
    "round_robin": "round_robin",
    "adaptive_load": "least_load",
}


def build_parser() -> CommandParser:
    p = CommandParser("pd-master", __doc__)
    p.add_argument("--run_mode", default="pd_master", choices=["pd_master"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=60011)
    p.add_argument(
        "--model_dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="directory with tokenizer.json (default: the simulated engine's model)",
    )
    p.add_argument(
        "--served_model_name",
        "--served-model-name",
        dest="served_model_name",
        help="model name of the OpenAI-compatible API (default: the --model_dir's name)",
    )
    p.add_argument(
        "--lightllm_version",
        type=versions_arg,
        default=",".join(sorted(LAYOUTS)),
        help="LightLLM releases whose nodes may register, comma-separated "
        f"(default: all of {', '.join(sorted(LAYOUTS))}); nodes pair within one release",
    )
    p.add_argument(
        "--heartbeat_timeout",
        type=float,
        default=30.0,
        help="seconds without a frame after which a v1.2.0 node is dropped (LightLLM: 30)",
    )
    p.add_argument(
        "--prompt_ids_timeout",
        type=float,
        default=10.0,
        help="v1.2.0: seconds to wait for the prefill node's prompt ids (LightLLM: 60)",
    )
    p.add_argument(
        "--pd_split_max_new_tokens",
        type=int,
        default=2048,
        help="v1.2.0: outputs run in blocks of this many tokens (LIGHTLLM_PD_SPLIT_MAX_NEW_TOKENS)",
    )
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=16384,
        help="largest max_new_tokens a client may ask for",
    )
    p.add_argument("--max_req_total_len", type=int, default=16384 + 8192)
    p.add_argument("--max_body_bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument(
        "--ws_max_size",
        type=int,
        default=MAX_FRAME_BYTES,
        help="largest websocket frame a node may send, in bytes; a larger one closes its "
        "socket with 1009 (the protocol's largest frame, a 1M-token prompt's ids, is 5.3 MB)",
    )
    p.add_argument(
        "--max_prompt_bytes",
        type=int,
        default=None,
        help="refuse longer prompts before tokenizing them (default: 8 x max_req_total_len)",
    )
    p.add_argument("--first_token_timeout", type=float, default=60.0)
    p.add_argument(
        "--kv_move_timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the decode node's kv_move_status (LightLLM: 60)",
    )
    p.add_argument("--token_idle_timeout", type=float, default=60.0)
    p.add_argument("--request_timeout", type=float, default=600.0)
    p.add_argument(
        "--max_attempts",
        type=int,
        default=2,
        help="pairs tried before the first token (1 = no retry)",
    )
    r = p.add_argument_group("routing")
    r.add_argument(
        "--prefill-policy",
        "--prefill_policy",
        dest="prefill_policy",
        choices=POLICY_NAMES,
        default=None,
    )
    r.add_argument(
        "--decode-policy",
        "--decode_policy",
        dest="decode_policy",
        choices=POLICY_NAMES,
        default=None,
    )
    r.add_argument(
        "--select_p_d_node_strategy",
        choices=sorted(LIGHTLLM_STRATEGIES),
        default="round_robin",
        help="LightLLM's flag: sets both policies",
    )
    r.add_argument(
        "--node_capacity_tokens",
        type=int,
        default=200_000,
        help="KV tokens of a node, to weigh its reported usage rate",
    )
    r.add_argument(
        "--affinity_load_factor",
        type=float,
        default=1.5,
        help="prefix_affinity keeps a prefix's node while its load <= this x the least load",
    )
    r.add_argument(
        "--affinity_slack_tokens",
        type=int,
        default=2048,
        help="... plus this many tokens",
    )
    r.add_argument(
        "--load_max_age",
        type=float,
        default=5.0,
        help="ignore node load reports older than this many seconds",
    )
    r.add_argument(
        "--token_load_poll",
        type=float,
        default=1.0,
        help="seconds between polls of each node's /token_load (0 = only the load in token frames)",
    )
    r.add_argument("--breaker_failures", type=int, default=3)
    r.add_argument("--breaker_open_s", type=float, default=10.0)
    a = p.add_argument_group("admission")
    a.add_argument("--max_inflight", type=int, default=4096)
    a.add_argument("--max_queue", type=int, default=1024)
    a.add_argument("--queue_timeout", type=float, default=30.0)
    p.add_argument(
        "--admin-token",
        "--admin_token",
        dest="admin_token",
        default=os.environ.get("PDCTL_ADMIN_TOKEN"),
        help="bearer token for /v1 admin endpoints (env PDCTL_ADMIN_TOKEN)",
    )
    p.add_argument(
        "--allow-cidr",
        "--allow_cidr",
        dest="allow_cidr",
        action="append",
        default=None,
        help="networks allowed on the node endpoints (/pd_register, /kv_move_status), "
        "repeatable or comma-separated (env PDCTL_ALLOW_CIDR; default: every peer)",
    )
    c = p.add_argument_group("config server (LightLLM's multi-PD-master mode)")
    c.add_argument("--config_server_host", default=None)
    c.add_argument("--config_server_port", type=port_number, default=60088)
    c.add_argument(
        "--register-token",
        "--register_token",
        dest="register_token",
        default=os.environ.get("PDCTL_REGISTER_TOKEN"),
        help="bearer token for the config server's /v1 API (env PDCTL_REGISTER_TOKEN)",
    )
    c.add_argument(
        "--advertise_address",
        default=None,
        help="host:port nodes reach this master at (default: --host:--port)",
    )
    c.add_argument("--lease_ttl", type=float, default=10.0, help="seconds of the /v1 lease")
    p.add_argument(
        "--timeout_keep_alive", type=float, default=30.0, help="idle seconds before closing"
    )
    p.add_argument("--log_level", default="info")
    p.add_argument(
        "--python_relay",
        action="store_true",
        default=os.environ.get("PDCTL_PYTHON_RELAY", "") == "1",
        help="relay tokens to streams by the Python chain only, not pdmaster._lane "
        "(env PDCTL_PYTHON_RELAY=1; for comparisons)",
    )
    add_lightllm_flags(p)  # LightLLM's pd_master takes its node flags too, and ignores them
    return p


def versions_arg(value: str) -> frozenset[str]:
    versions = frozenset(v.strip() for v in value.split(",") if v.strip())
    unknown = sorted(versions - set(LAYOUTS))
    if unknown or not versions:
        known = ", ".join(sorted(LAYOUTS))
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'nothing'}: expected versions among {known}"
        )
    return versions


def settings_from_args(args: argparse.Namespace) -> MasterSettings:
    config_server = (
        f"{args.config_server_host}:{args.config_server_port}" if args.config_server_host else None
    )
    return MasterSettings(
        host=args.host,
        port=args.port,
        model_dir=args.model_dir,
        served_model_name=args.served_model_name,
        lightllm_versions=args.lightllm_version,
        heartbeat_timeout_s=args.heartbeat_timeout,
        max_new_tokens=args.max_new_tokens,
        max_req_total_len=args.max_req_total_len,
        max_body_bytes=args.max_body_bytes,
        ws_max_size=args.ws_max_size,
        max_prompt_bytes=args.max_prompt_bytes,
        dispatch=DispatchSettings(
            first_token_timeout_s=args.first_token_timeout,
            kv_move_timeout_s=args.kv_move_timeout,
            token_idle_timeout_s=args.token_idle_timeout,
            request_timeout_s=args.request_timeout,
            max_attempts=args.max_attempts,
            prompt_ids_timeout_s=args.prompt_ids_timeout,
            block_tokens=args.pd_split_max_new_tokens,
        ),
        prefill_policy=args.prefill_policy or LIGHTLLM_STRATEGIES[args.select_p_d_node_strategy],
        decode_policy=args.decode_policy or LIGHTLLM_STRATEGIES[args.select_p_d_node_strategy],
        node_capacity_tokens=args.node_capacity_tokens,
        affinity_load_factor=args.affinity_load_factor,
        affinity_slack_tokens=args.affinity_slack_tokens,
        load_max_age_s=args.load_max_age,
        token_load_poll_s=args.token_load_poll,
        breaker_failures=args.breaker_failures,
        breaker_open_s=args.breaker_open_s,
        max_inflight=args.max_inflight,
        max_queue=args.max_queue,
        queue_timeout_s=args.queue_timeout,
        admin_token=args.admin_token,
        allow_cidrs=split_cidrs(
            args.allow_cidr
            if args.allow_cidr is not None
            else [os.environ.get("PDCTL_ALLOW_CIDR", "")]
        ),
        config_server=config_server,
        # LightLLM: a master with a config server is uuid4().int, alone it is 0
        node_id=uuid.uuid4().int if config_server else 0,
        register_token=args.register_token,
        advertise_address=args.advertise_address,
        lease_ttl_s=args.lease_ttl,
        compiled_relay=not args.python_relay,
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    ignored = lightllm_flags_given(args)
    if ignored:
        logging.getLogger(__name__).info("LightLLM node flags a master does not use: %s", ignored)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(f"--allow-cidr: {exc}")
    # One prompt at a time, on the event loop or in a worker thread: the tokenizers library's
    # thread pool would only add a hand-off per prompt (and, off, encode skips offsets)
    os.environ.setdefault(PARALLELISM, "false")
    try:
        tokenizer = ModelTokenizer.from_model_dir(settings.model_dir)
    except FileNotFoundError as exc:
        parser.fail(str(exc))
    except Exception as exc:  # the tokenizers library raises bare Exceptions for a bad file
        parser.fail(f"--model_dir {settings.model_dir}: cannot load tokenizer.json: {exc}")
    if settings.config_server and not settings.advertise_address and args.host in WILDCARDS:
        logging.getLogger(__name__).warning(
            "registering as %s, which nodes cannot dial: set --advertise_address host:port",
            settings.public_address,
        )
    app = create_app(settings, tokenizer=tokenizer)
    tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=header_timeout_protocol(),
        ws=NodeSocketProtocol,
        ws_max_size=settings.ws_max_size,
        ws_per_message_deflate=False,  # token frames are small; compression only costs CPU
        proxy_headers=False,  # --allow-cidr and the KV hand-off's peer check see the real peer
        ws_ping_interval=20.0,  # a node whose host vanished (no FIN) is dropped within ~40 s
        ws_ping_timeout=20.0,
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=args.timeout_keep_alive,
    )


def tune_gc() -> None:
    """Leave what startup built (modules, tokenizer, app) out of collections; collect less often."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)

"""``pd-master`` / ``python -m pdmaster``: a PD master with LightLLM's flag names."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from pdmaster.app import create_app
from pdmaster.dispatch import DispatchSettings
from pdmaster.settings import MasterSettings
from pdmaster.tokenizer import DEFAULT_MODEL_DIR
from pdwire.structs import LAYOUTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pd-master", description=__doc__)
    p.add_argument("--run_mode", default="pd_master", choices=["pd_master"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=60011)
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
    p.add_argument("--lightllm_version", default="v1.1.0", choices=sorted(LAYOUTS))
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=16384,
        help="largest max_new_tokens a client may ask for",
    )
    p.add_argument("--max_req_total_len", type=int, default=16384 + 8192)
    p.add_argument("--max_body_bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--first_token_timeout", type=float, default=60.0)
    p.add_argument(
        "--kv_move_timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the decode node's kv_move_status (LightLLM: 60)",
    )
    p.add_argument("--token_idle_timeout", type=float, default=60.0)
    p.add_argument("--request_timeout", type=float, default=600.0)
    p.add_argument("--log_level", default="info")
    return p


def settings_from_args(args: argparse.Namespace) -> MasterSettings:
    return MasterSettings(
        host=args.host,
        port=args.port,
        model_dir=args.model_dir,
        served_model_name=args.served_model_name,
        lightllm_version=args.lightllm_version,
        max_new_tokens=args.max_new_tokens,
        max_req_total_len=args.max_req_total_len,
        max_body_bytes=args.max_body_bytes,
        dispatch=DispatchSettings(
            first_token_timeout_s=args.first_token_timeout,
            kv_move_timeout_s=args.kv_move_timeout,
            token_idle_timeout_s=args.token_idle_timeout,
            request_timeout_s=args.request_timeout,
        ),
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_from_args(args)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=64 * 1024 * 1024,
        ws_ping_interval=None,
        log_level=args.log_level,
        access_log=False,
    )

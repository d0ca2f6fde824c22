"""A master's settings, built by the CLI (or a test) before anything starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pdmaster.dispatch import DispatchSettings
from pdmaster.tokenizer import DEFAULT_MODEL_DIR


@dataclass(frozen=True)
class MasterSettings:
    host: str = "127.0.0.1"
    port: int = 60011
    model_dir: Path = DEFAULT_MODEL_DIR
    served_model_name: str | None = None  # the OpenAI API's model name; None: model_dir's name
    lightllm_version: str = "v1.1.0"
    node_id: int = 0  # LightLLM's single master is id 0; nodes route kv_move_status by it
    max_new_tokens: int = 16384
    max_req_total_len: int = 16384 + 8192
    max_body_bytes: int = 4 * 1024 * 1024
    registration_timeout_s: float = 10.0
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)

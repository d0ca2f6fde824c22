"""A master's settings, built by the CLI (or a test) before anything starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pdmaster.dispatch.session import DispatchSettings
from pdmodel.tokenizer import DEFAULT_MODEL_DIR
from pdwire.message_sets import MAX_FRAME_BYTES

PROMPT_BYTES_PER_TOKEN = 8


@dataclass(frozen=True)
class MasterSettings:
    host: str = "127.0.0.1"
    port: int = 60011
    model_dir: Path = DEFAULT_MODEL_DIR
    served_model_name: str | None = None  # the OpenAI API's model name; None: model_dir's name
    # the LightLLM releases whose nodes may register; each pairs only with its own kind
    lightllm_versions: frozenset[str] = frozenset({"v1.1.0", "fc72ffa", "v1.2.0"})
    heartbeat_timeout_s: float = 30.0  # v1.2.0 nodes: silent this long -> gone (LightLLM: 30)
    node_id: int = 0  # LightLLM's single master is id 0; nodes route kv_move_status by it
    max_new_tokens: int = 16384
    max_req_total_len: int = 16384 + 8192
    max_body_bytes: int = 4 * 1024 * 1024
    ws_max_size: int = MAX_FRAME_BYTES  # node websocket frames; larger ones close with 1009
    max_prompt_bytes: int | None = None  # None: PROMPT_BYTES_PER_TOKEN x max_req_total_len
    registration_timeout_s: float = 10.0
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    prefill_policy: str = "round_robin"
    decode_policy: str = "round_robin"
    node_capacity_tokens: int = 200_000  # converts a node's reported usage rate into tokens
    affinity_load_factor: float = 1.5  # prefix affinity holds while load <= factor x least
    affinity_slack_tokens: int = 2048  # ... + this many tokens
    load_max_age_s: float = 5.0  # node load reports older than this are ignored
    token_load_poll_s: float = 1.0  # GET each node's /token_load this often (0: never)
    breaker_failures: int = 3
    breaker_open_s: float = 10.0
    max_inflight: int = 4096  # requests dispatched at once; more wait in the queue
    max_queue: int = 1024  # requests waiting for a slot; more get 429
    queue_timeout_s: float = 30.0
    admin_token: str | None = None
    allow_cidrs: tuple[str, ...] = ()  # networks allowed on the node endpoints; (): every peer
    config_server: str | None = None  # host:port; None: a single master without one
    register_token: str | None = None  # bearer token for the config server's /v1 API
    advertise_address: str | None = None  # host:port nodes dial; None: host:port
    lease_ttl_s: float = 10.0  # the master's /v1 lease; it vanishes this long after death
    compiled_relay: bool = True  # False: tokens reach streams by the Python chain only

    @property
    def prompt_byte_limit(self) -> int:
        """Prompts over this many bytes are refused before tokenizing: past it a prompt
        cannot fit in ``max_req_total_len`` tokens unless its tokens average more than
        PROMPT_BYTES_PER_TOKEN bytes (English text averages about 4)."""
        if self.max_prompt_bytes is not None:
            return self.max_prompt_bytes
        return PROMPT_BYTES_PER_TOKEN * self.max_req_total_len

    @property
    def public_address(self) -> str:
        if self.advertise_address:
            return self.advertise_address
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

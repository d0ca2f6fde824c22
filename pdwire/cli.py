"""Command-line formats every pdctl command shares, and LightLLM's api_server flags.

``CommandParser`` is argparse with the conventions of our commands: a usage error is one
line (``pd-master: --port 99999: not a port (1-65535); see --help``) and exit status 2, and
``--help`` shows each option's default. ``add_lightllm_flags`` accepts every flag of
LightLLM's ``api_server`` that a command does not use itself, as LightLLM's own roles do
(its pd_master takes ``--tp 8 --enable_fa3`` and ignores them), so a LightLLM start script
runs unchanged while a misspelt flag is still an error. The names are those LightLLM's
registrations carry in ``start_args`` (v1.1.0, main@fc72ffa, v1.2.0).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

# LightLLM's api_server switches (store_true) and the flags that take values.
LIGHTLLM_SWITCHES = frozenset(
    """
    auto_update_redundancy_expert detail_log disable_aggressive_schedule disable_audio
    disable_chunked_prefill disable_cudagraph disable_custom_allreduce
    disable_dynamic_prompt_cache disable_flashinfer_allreduce disable_image_resize
    disable_linear_att_small_page_cpu_cache disable_log_stats disable_shm_warning
    disable_symm_mem_allreduce disable_vision diverse_mode enable_cpu_cache
    enable_custom_allgather enable_decode_microbatch_overlap enable_disk_cache
    enable_dp_prefill_balance enable_dp_prompt_cache_fetch enable_ep_moe enable_fa3
    enable_flashinfer_decode enable_flashinfer_prefill enable_fused_shared_experts
    enable_monitor_auth enable_mps enable_multimodal enable_multimodal_audio
    enable_multimodal_url_cache enable_prefill_cudagraph enable_prefill_decode_mixed
    enable_prefill_microbatch_overlap enable_prompt_logprobs enable_return_routed_experts
    enable_rl enable_torch_fallback enable_torch_memory_saver enable_tpsp_mix_mode
    enable_triton_fallback enable_weight_cpu_backup first_token_constraint_mode
    health_monitor return_all_prompt_logprobs token_healing_mode trust_remote_code
    use_config_server_to_init_nccl use_dynamic_prompt_cache use_reward_model use_tgi_api
    visual_use_proxy_mode
    """.split()
)
LIGHTLLM_LIST_FLAGS = frozenset(
    """
    grouping_key llm_decode_att_backend llm_prefill_att_backend mode visual_nccl_ports
    vit_att_backend
    """.split()
)
LIGHTLLM_VALUE_FLAGS = frozenset(
    """
    afs_embed_capacity afs_image_embed_dir audio_dp audio_gpu_ids audio_infer_batch_size
    audio_tp batch_max_tokens cache_capacity cache_reserved_ratio chat_template
    chunked_prefill_size config_server_host config_server_port
    config_server_visual_redis_port cpu_cache_storage_size cpu_cache_token_page_size
    data_type disk_cache_dir disk_cache_storage_size dp dp_balancer dp_prefill_wait_step
    embed_cache_storage_size enable_profiling ep_redundancy_expert_config_path expert_dtype
    graph_grow_step_size graph_max_batch_size graph_max_len_in_batch graph_split_batch_size
    hardware_platform host httpserver_workers hypercorn_config job_name
    kv_quant_calibration_config_path linear_att_cache_size linear_att_hash_page_size
    linear_att_page_block_num linear_att_ssm_data_type llm_kv_quant_group_size llm_kv_type
    load_way log_stats_interval long_truncation_mode max_image_pixels
    max_image_token_count max_req_total_len max_total_token_num mem_fraction metric_gateway
    model_dir model_name model_owner mtp_draft_model_dir mtp_mode mtp_step
    multinode_httpmanager_port multinode_router_gloo_port nccl_host nccl_port nnodes
    node_rank output_constraint_mode pd_decode_rpyc_port pd_kv_page_num pd_kv_page_size
    pd_master_ip pd_master_mode pd_master_port pd_node_id pd_trans_mode
    penalty_counter_mode performance_mode port prefill_cudagraph_max_handle_token
    push_interval quant_cfg quant_type reasoning_parser router_max_new_token_len
    router_max_wait_tokens router_token_ratio run_mode running_max_req_size
    sampling_backend schedule_time_interval select_p_d_node_strategy tokenizer_mode
    tool_call_parser tp visual_dp visual_gpu_ids visual_infer_batch_size visual_node_id
    visual_rpyc_port visual_send_batch_size visual_tp vit_quant_cfg vit_quant_type
    weight_version zmq_mode eos_id
    """.split()
)
LIGHTLLM_GROUP = "LightLLM's other api_server flags"
UNUSED = "unused_lightllm__"  # dest prefix of the flags a command accepts and ignores


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after an option's help unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, argparse.SUPPRESS, [])
            and "default" not in text
            and "%(default)" not in text
            and not action.dest.endswith("_token")  # a secret from the environment
        ):
            text = f"{text} (default: %(default)s)".strip()
        return text or None

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and self._get_help_string(action):
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class CommandParser(argparse.ArgumentParser):
    """argparse with one-line usage errors and defaults in ``--help``."""

    def __init__(self, prog: str, description: str | None = None) -> None:
        super().__init__(
            prog=prog, description=description, formatter_class=_Formatter, allow_abbrev=False
        )

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see --help\n")

    def fail(self, message: str) -> NoReturn:
        """A start-up error found after parsing (a missing directory, a taken port)."""
        self.exit(2, f"{self.prog}: {message}\n")


def port_number(text: str) -> int:
    """An argparse type: a TCP port a server can listen on or dial."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
    return value


def add_lightllm_flags(parser: argparse.ArgumentParser) -> None:
    """Accept LightLLM's api_server flags the parser does not define (call it last)."""
    taken = {s for action in parser._actions for s in action.option_strings}
    group = parser.add_argument_group(LIGHTLLM_GROUP)
    for name in sorted(LIGHTLLM_SWITCHES | LIGHTLLM_VALUE_FLAGS | LIGHTLLM_LIST_FLAGS):
        flag = f"--{name}"
        if flag in taken:
            continue
        dest = f"{UNUSED}{name}"
        if name in LIGHTLLM_SWITCHES:
            group.add_argument(flag, dest=dest, action="store_true", help=argparse.SUPPRESS)
        elif name in LIGHTLLM_LIST_FLAGS:
            group.add_argument(flag, dest=dest, nargs="+", help=argparse.SUPPRESS)
        else:
            group.add_argument(flag, dest=dest, help=argparse.SUPPRESS)
    group.description = (
        "every other flag of LightLLM's api_server (--enable_fa3, --mem_fraction, ...) is "
        "accepted, logged and ignored"
    )


def lightllm_flags_given(args: argparse.Namespace) -> list[str]:
    """The unused LightLLM flags the command line set, for one log line."""
    given = []
    for dest, value in sorted(vars(args).items()):
        if dest.startswith(UNUSED) and value not in (None, False):
            given.append(f"--{dest.removeprefix(UNUSED)}")
    return given

"""Turning OpenAI chat messages into one prompt string, with the model's own chat template.

A model directory may carry a Jinja chat template, as Hugging Face tokenizers do: a
``chat_template.jinja`` file (which wins, as in transformers) or a ``chat_template`` key in
``tokenizer_config.json`` (a string, or a list of ``{name, template}`` of which ``default``
is used). It is rendered in Jinja's immutable sandbox with what transformers provides:
``messages``, ``add_generation_prompt=True``, ``bos_token``, ``eos_token``,
``raise_exception`` and a ``tojson`` filter that keeps non-ASCII text.

Without one, ``SimpleChatTemplate`` renders each message as ``<|role|>\\ncontent\\n`` and then
``<|assistant|>\\n`` to prompt the answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"


class ChatTemplateError(ValueError):
    """A template that does not load, or that refuses to render the given messages."""


class ChatTemplate(Protocol):
    # False when the template writes the special tokens (BOS) itself, so the node's
    # tokenizer must not add them a second time.
    add_special_tokens: bool

    def render(self, messages: list[dict[str, Any]]) -> str: ...


class SimpleChatTemplate:
    """``<|role|>\\ncontent\\n`` per message, then ``<|assistant|>\\n``."""

    add_special_tokens = True

    def render(self, messages: list[dict[str, Any]]) -> str:
        turns = [f"<|{m['role']}|>\n{m.get('content') or ''}\n" for m in messages]
        return "".join(turns) + "<|assistant|>\n"


class JinjaChatTemplate:
    add_special_tokens = False

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"chat template does not compile: {exc}") from None
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except (TemplateError, TypeError, ValueError) as exc:
            # TypeError/ValueError: a template doing arithmetic on a field a message lacks.
            raise ChatTemplateError(str(exc) or type(exc).__name__) from None


def load_chat_template(model_dir: str | Path) -> ChatTemplate:
    """The model dir's Jinja template if it has one, else ``SimpleChatTemplate``."""
    path = Path(model_dir)
    config = _tokenizer_config(path)
    file = path / TEMPLATE_FILE
    source = file.read_text() if file.is_file() else _config_template(config, path)
    if source is None:
        return SimpleChatTemplate()
    try:
        return JinjaChatTemplate(
            source, _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        )
    except ChatTemplateError as exc:
        raise ChatTemplateError(f"{path}: {exc}") from None


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    file = model_dir / TOKENIZER_CONFIG
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ChatTemplateError(f"{file}: not valid JSON: {exc}") from None
    return config if isinstance(config, dict) else {}


def _config_template(config: dict[str, Any], model_dir: Path) -> str | None:
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ChatTemplateError(
        f"{model_dir / TOKENIZER_CONFIG}: chat_template is neither a string nor a list "
        "holding a template named 'default'"
    )


def _token_text(token: object) -> str:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else ""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)

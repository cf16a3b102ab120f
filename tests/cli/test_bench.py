"""``qwen-gateway bench`` as a user runs it, against a real server on the tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from qwen_gateway.bench.report import RESULTS_SCHEMA
from support.server import Server, running_server

CLI = [sys.executable, "-m", "qwen_gateway.cli.main", "bench"]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

#: without the keys bench reads, so that a run without one sends none
BASE_ENV = {k: v for k, v in os.environ.items() if k not in ("QWEN_GATEWAY_KEY", "OPENAI_API_KEY")}

pytestmark = pytest.mark.e2e


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=300, check=False,
        env={**BASE_ENV, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


def test_streamed_chat_against_the_tiny_model(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    done = _bench(
        "run", "--url", server.base_url + "/v1", "--requests", "6", "--concurrency", "3",
        "--prompt-tokens", "uniform:8:32", "--output-tokens", "8", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, RESULTS_SCHEMA)
    (target,) = doc["targets"]
    assert target["model"] == "qwen2.5-tiny"  # from GET /v1/models
    s = target["summary"]
    assert (s["requests"], s["succeeded"], s["errors"]) == (6, 6, {})
    assert 0 < s["output_tokens"] <= 6 * 8  # the server's usage, bounded by max_tokens
    assert s["usage_reported"] == 6
    assert s["ttft_ms"]["count"] == 6 and s["e2e_ms"]["count"] == 6
    # the chat template's tokens come on top of each prompt's 8..32
    assert all((r["prompt_tokens"] or 0) > 8 for r in target["requests"])
    assert "0 errors" not in done.stdout  # no progress bar when stdout is not a terminal
    assert "6/6" in done.stdout  # the summary table


def test_two_targets_non_streamed_completions_with_plots(server: Server, tmp_path: Path) -> None:
    url = server.base_url + "/v1"
    out, png, page = tmp_path / "r.json", tmp_path / "p.png", tmp_path / "p.html"
    done = _bench(
        "run", "--target", f"first={url}", "--target", f"second={url}", "--api", "completions",
        "--no-stream", "--requests", "4", "--rate", "50", "--concurrency", "2",
        "--output-tokens", "4", "--json", str(out), "--png", str(png), "--html", str(page),
        "--progress",
    )  # fmt: skip
    if not HAS_MATPLOTLIB:
        assert done.returncode == 2 and "matplotlib" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert [t["name"] for t in doc["targets"]] == ["first", "second"]
    for t in doc["targets"]:
        assert t["summary"]["succeeded"] == 4 and t["summary"]["ttft_ms"]["count"] == 0
        assert t["config"]["api"] == "completions" and t["config"]["rate"] == 50
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "<td>second</td>" in page.read_text()
    assert "0 errors" in done.stdout  # --progress forces the bar on


def test_a_non_loopback_url_is_refused_unless_named_as_a_target() -> None:
    done = _bench("run", "--url", "http://10.0.0.5:8000/v1", "--model", "m", "--requests", "1")
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr and "--target" in done.stderr


def test_an_explicit_remote_target_is_tried(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    done = _bench(
        "run", "--target", "remote=http://192.0.2.1:9/v1", "--model", "m", "--requests", "1",
        "--concurrency", "1", "--timeout", "2", "--json", str(out),
    )  # fmt: skip
    assert "Refusing" not in done.stderr
    assert done.returncode == 1  # nothing succeeded: TEST-NET-1 is unreachable
    errors = json.loads(out.read_text())["targets"][0]["summary"]["errors"]
    assert sum(errors.values()) == 1 and set(errors) <= {"timeout", "connection"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--requests", "0"], "--requests"),
        (["--concurrency", "0"], "--concurrency"),
        (["--prompt-tokens", "uniform:9:3"], "--prompt-tokens"),
        (["--api", "embeddings"], "--api"),
        (["--target", "no-equals-sign"], "NAME=http"),
        (["--target", "a=http://127.0.0.1:1/v1", "--target", "a=http://127.0.0.1:2/v1"], "differ"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    done = _bench("run", "--model", "m", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_plot_combines_results_files_and_refuses_others(server: Server, tmp_path: Path) -> None:
    url = server.base_url + "/v1"
    files = []
    for c in ("1", "2"):
        path = tmp_path / f"c{c}.json"
        done = _bench(
            "run", "--target", f"c={c}={url}", "--requests", "2", "--concurrency", c,
            "--output-tokens", "2", "--json", str(path),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        files.append(str(path))
    combined = tmp_path / "all.json"
    done = _bench("plot", *files, "--json", str(combined))
    assert done.returncode == 0, done.stderr
    assert [t["name"] for t in json.loads(combined.read_text())["targets"]] == ["c=1", "c=2"]
    if HAS_MATPLOTLIB:
        page = tmp_path / "all.html"
        assert _bench("plot", *files, "--html", str(page)).returncode == 0
        assert "<td>c=2</td>" in page.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text('{"targets": []}')
    done = _bench("plot", str(bad), "--json", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "not bench results" in done.stderr


def test_the_api_key_comes_from_the_environment_or_the_option(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    key = "sk-bench-test-key-123"
    with running_server(tiny_model_dir, tmp_path / "s.log", env={"QWEN_GATEWAY_API_KEY": key}) as s:
        common = [
            "run", "--url", s.base_url + "/v1", "--model", "qwen2.5-tiny", "--requests", "2",
            "--concurrency", "1", "--output-tokens", "2",
        ]  # fmt: skip
        out = tmp_path / "r.json"
        without = _bench(*common, "--json", str(out))
        assert without.returncode == 1  # nothing succeeded
        assert json.loads(out.read_text())["targets"][0]["summary"]["errors"] == {"401": 2}
        from_env = _bench(*common, "--json", str(out), env={"QWEN_GATEWAY_KEY": key})
        assert from_env.returncode == 0, from_env.stderr
        assert key not in out.read_text()  # the key is not written to the results
        from_option = _bench(*common, "--api-key", key)
        assert from_option.returncode == 0, from_option.stderr
        assert key not in from_option.stdout + from_option.stderr


def test_a_key_from_the_environment_goes_to_loopback_targets_only() -> None:
    from qwen_gateway.cli.bench import _targets

    named = ["local=http://127.0.0.1:8000/v1", "remote=http://bench.example:8000/v1"]
    sent = {t.name: t.api_key for t in _targets("", named, None, None, env_key="sk-env")}
    assert sent == {"local": "sk-env", "remote": None}
    sent = {t.name: t.api_key for t in _targets("", named, "sk-option", None, env_key="sk-env")}
    assert sent == {"local": "sk-option", "remote": "sk-option"}  # asked for explicitly


def test_openai_api_key_is_not_read() -> None:
    """Not sent anywhere: a key meant for api.openai.com is no key for a benchmarked server."""
    done = _bench("run", "--help", env={"OPENAI_API_KEY": "sk-openai"})
    assert "OPENAI_API_KEY" not in done.stdout

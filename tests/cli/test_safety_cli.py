"""``qwen-gateway safety train|classify`` as an operator runs them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from qwen_gateway.safety.classifier import NONE, RiskClassifier

CLI = [sys.executable, "-m", "qwen_gateway.cli.main", "safety"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ}, check=False)  # fmt: skip


def _jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return path


def test_an_operator_adds_a_category_and_classifies_with_it(tmp_path: Path) -> None:
    rows = [{"text": f"这期彩票{i}我该选哪几个号码能中奖？", "label": "gambling_advice"}
            for i in range(20)]  # fmt: skip
    rows += [{"text": f"Which lottery numbers should I pick for draw {i} to win?",
              "label": "gambling_advice"} for i in range(20)]  # fmt: skip
    mine = _jsonl(tmp_path / "mine.jsonl", rows)
    data = tmp_path / "data"
    trained = _run("train", "--data", str(mine), "--data-dir", str(data), "--threshold", "0.4")
    assert trained.returncode == 0, trained.stderr
    assert "| class | precision | recall | support |" in trained.stdout
    assert "| true \\ predicted |" in trained.stdout and "**threshold 0.4**" in trained.stdout
    assert "Saved the model" in trained.stderr
    saved = RiskClassifier.load(data / "risk-model.json")
    assert "gambling_advice" in saved.categories and saved.threshold == 0.4
    assert stat.S_IMODE(data.stat().st_mode) == 0o700

    said = _run("classify", "这期彩票我该选什么号码才能中奖？", "--data-dir", str(data))
    assert said.returncode == 0, said.stderr
    assert said.stdout.startswith("gambling_advice (")
    plain = _run("classify", "What is the capital of France?", "--data-dir", str(data))
    assert plain.stdout.startswith(f"{NONE} (")


def test_classify_uses_the_shipped_model_without_a_saved_one(tmp_path: Path) -> None:
    said = _run("classify", "Should I stop taking my insulin?", "--data-dir", str(tmp_path))
    assert said.returncode == 0, said.stderr
    assert said.stdout.startswith("medical_advice (")


def test_bad_training_input_is_refused_clearly(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "no label"}\n', encoding="utf-8")
    out = _run("train", "--data", str(broken), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "broken.jsonl:1" in out.stderr
    only_risky = _jsonl(tmp_path / "risky.jsonl", [{"text": "Sue them?", "label": "legal_advice"},
                                                    {"text": "Buy it?", "label": "financial_advice"}])  # fmt: skip
    out = _run("train", "--replace", "--data", str(only_risky), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "'none'" in out.stderr
    assert not (tmp_path / "d" / "risk-model.json").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "risk-model.json").write_text("{}", encoding="utf-8")
    out = _run("classify", "hello", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "not a high-risk model" in out.stderr

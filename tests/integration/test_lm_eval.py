"""lm-evaluation-harness scores the server: its ``local-completions`` model against a real
server process on the tiny model, on two small local tasks (tests/data/lm_eval: one
loglikelihood multiple-choice task, one greedy ``generate_until`` task), nothing downloaded.

The oracle: the loglikelihoods lm-eval computed from the server's echo + logprobs answers
equal what a plain transformers forward pass on the same checkpoint gives, and the greedy
generations equal transformers' greedy decoding.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.fixtures import MODEL
from support.server import Server

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "lm_eval"


def _task(name: str) -> dict[str, Any]:
    """The task's YAML with its data file made absolute (so no working directory matters)."""
    config: dict[str, Any] = yaml.safe_load((DATA / f"{name}.yaml").read_text())
    files = config["dataset_kwargs"]["data_files"]
    config["dataset_kwargs"]["data_files"] = {k: str(ROOT / v) for k, v in files.items()}
    return config


@pytest.fixture(scope="module")
def evaluated(
    server: Server, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Any]:
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("hf-cache")
    for var, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cache / "datasets"),
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        mp.setenv(var, value)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the harness's own deprecation notices
            from lm_eval import simple_evaluate
            from lm_eval.models.openai_completions import LocalCompletionsAPI

            lm = LocalCompletionsAPI(
                base_url=server.base_url + "/v1/completions",
                model=MODEL,
                tokenizer_backend="huggingface",
                tokenizer=str(tiny_model_dir),
                max_retries=1,
                max_length=512,
            )
            results = simple_evaluate(
                model=lm,
                tasks=[_task("qg_tiny_choice"), _task("qg_tiny_until")],
                log_samples=True,
                random_seed=0,
                numpy_random_seed=0,
                torch_random_seed=0,
                fewshot_random_seed=0,
            )
    finally:
        mp.undo()
    assert results is not None
    return results, lm


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def _loglikelihood(model: Any, context: list[int], continuation: list[int]) -> float:
    import torch

    ids = context + continuation
    with torch.inference_mode():
        rows = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(float(rows[len(context) - 1 + k, t]) for k, t in enumerate(continuation))


def test_loglikelihoods_equal_the_models(
    evaluated: tuple[dict[str, Any], Any], reference: Any
) -> None:
    results, lm = evaluated
    assert "acc,none" in results["results"]["qg_tiny_choice"]
    samples = results["samples"]["qg_tiny_choice"]
    assert len(samples) == 4
    checked = 0
    for sample in samples:
        # resps: per choice, the list of what the model answered, (loglikelihood, greedy)
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            loglik_value = resp[0][0]
            context_ids, continuation_ids = lm._encode_pair(context, continuation)
            expected = _loglikelihood(reference, context_ids, continuation_ids)
            assert math.isclose(loglik_value, expected, abs_tol=1e-3), (context, continuation)
            checked += 1
    assert checked == 12


def test_greedy_generations_equal_the_models(
    evaluated: tuple[dict[str, Any], Any], reference: Any
) -> None:
    import torch

    results, lm = evaluated
    assert "exact_match,none" in results["results"]["qg_tiny_until"]
    samples = results["samples"]["qg_tiny_until"]
    assert len(samples) == 2
    for sample in samples:
        context = sample["arguments"][0][0]
        ids = lm.tok_encode(context)
        with torch.inference_mode():
            out = reference.generate(
                torch.tensor([ids]),
                max_new_tokens=6,
                do_sample=False,
                eos_token_id=[151645, 151643],
            )
        expected = lm.tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True)
        expected = expected.split("\n\n")[0]
        assert sample["resps"][0][0] == expected

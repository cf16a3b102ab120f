"""xgrammar's refusals become GrammarRejected with its reason; everything else passes through."""

from __future__ import annotations

import pytest
import xgrammar as xgr

from qwen_gateway.engines.transformers.decoding.rejection import GrammarRejected, xgrammar_refusal


def test_xgrammars_runtime_error_becomes_a_rejection_without_its_log_prefix() -> None:
    with pytest.raises(GrammarRejected) as info, xgrammar_refusal():
        xgr.Grammar.from_json_schema('{"type": "string", "pattern": "(("}')
    assert "parenthesis is not closed" in info.value.detail
    assert not info.value.detail.startswith("[")
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize(
    "error",
    [ValueError("v"), TypeError("t"), MemoryError(), RecursionError("r"), NotImplementedError()],
    ids=lambda e: type(e).__name__,
)
def test_other_errors_pass_through(error: BaseException) -> None:
    with pytest.raises(type(error)) as info, xgrammar_refusal():
        raise error
    assert info.value is error

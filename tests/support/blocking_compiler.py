"""A grammar compiler whose compiles of "slow" schemas wait for the test: ordering without
timing, for the fairness tests of the compile queue."""

from __future__ import annotations

import threading
from typing import Any

from qwen_gateway.engines.transformers.decoding.compiler import GrammarCompiler


class BlockingCompiler(GrammarCompiler):
    """Compiling a schema with a "slow" property waits for ``release``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def _compile_schema(self, text: str) -> Any:
        if '"slow' in text:
            assert self.release.wait(120)
        return super()._compile_schema(text)

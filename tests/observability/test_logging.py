"""Structured logs: what native libraries write to stderr comes out as JSON log lines."""

from __future__ import annotations

import json
import subprocess
import sys

FORGED = '{"level":"info","logger":"qwen_gateway.access","request_id":"FORGED","status":201}'

# Runs in a fresh process: configure_logging takes over the process's file descriptor 2.
SCRIPT = f"""
import json, logging, os, threading
import xgrammar as xgr
from qwen_gateway.observability.logging import NATIVE_LOGGER, configure_logging, flush_logs

last = threading.Event()

class Last(logging.Handler):
    def emit(self, record):
        if record.getMessage() == "last":
            last.set()

logging.getLogger(NATIVE_LOGGER).addHandler(Last())
configure_logging("info")
forged = {FORGED!r}
os.write(2, ("x\\n" + forged + "\\n").encode())  # as any native library could
info = xgr.TokenizerInfo([b"a", b"{{", b"}}", b'"'], xgr.VocabType.RAW, vocab_size=4,
                         stop_token_ids=[0])
schema = {{"type": "object", "properties": {{"a": {{"$ref": "x\\n" + forged + "\\n"}}}}}}
xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema))  # warns, quoting the $ref
os.write(2, b"y" * 100000 + b"\\n")
os.write(2, b"last\\n")
assert last.wait(60)
logging.getLogger("qwen_gateway.test").info("done")
flush_logs()
"""


def test_native_stderr_becomes_json_log_lines_that_cannot_be_forged() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    lines = [line for line in done.stderr.decode().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert not [e for e in entries if e.get("request_id") == "FORGED"]
    native = [e for e in entries if e["logger"] == "qwen_gateway.native"]
    assert all(e["level"] == "warning" for e in native)
    messages = [e["message"] for e in native]
    assert FORGED in messages  # the forged text is a message, inside a JSON string
    assert any("URI should" in m for m in messages)  # xgrammar's own warning
    assert "y" * 300 in messages  # a long line, truncated
    assert messages[-1] == "last"
    assert entries[-1]["message"] == "done"

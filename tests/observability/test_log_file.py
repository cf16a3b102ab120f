"""Log files rotated by size, written safely by several processes; a human-readable console
log on a terminal, JSON lines otherwise."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pexpect

# Runs in fresh processes: configure_logging takes over the process's file descriptor 2.
WRITER = """
import logging, sys
from pathlib import Path
from qwen_gateway.observability.logging import configure_logging, flush_logs

name, path, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
configure_logging("info", log_file=path, max_bytes=4096, backups=1000, static={"writer": name})
log = logging.getLogger("qwen_gateway.test")
for i in range(count):
    log.info("line %s %d %s", name, i, "x" * 40)
flush_logs()
"""


def _writer(name: str, path: Path, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, name, str(path), str(count)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_several_processes_share_one_rotated_log_file_and_lose_no_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "gateway.log"
    writers = [_writer(name, path, 300) for name in ("a", "b", "c")]
    for proc in writers:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
        assert stderr.decode().count("line ") == 300  # stdout/stderr got every line, too
    files = sorted(path.parent.glob("gateway.log*"))
    files = [f for f in files if not f.name.endswith(".lock")]
    assert len(files) > 10  # rotated many times
    seen: list[tuple[str, int]] = []
    for f in files:
        assert f.stat().st_size <= 4096  # each file within the size limit
        for line in f.read_text().splitlines():
            entry = json.loads(line)  # whole JSON lines: no two writes interleaved
            _, writer, i, _ = entry["message"].split(" ")
            assert entry["writer"] == writer
            seen.append((writer, int(i)))
    assert sorted(seen) == sorted((w, i) for w in "abc" for i in range(300))  # each once


def test_rotation_keeps_only_the_configured_number_of_old_files(tmp_path: Path) -> None:
    script = WRITER.replace("backups=1000", "backups=2")
    path = tmp_path / "gateway.log"
    done = subprocess.run(
        [sys.executable, "-c", script, "a", str(path), "500"], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert names == ["gateway.log", "gateway.log.1", "gateway.log.2"]
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["message"].startswith("line a 499 ")  # the newest lines are in the live file


CONSOLE = """
import logging
from qwen_gateway.observability.logging import access_log, configure_logging, flush_logs

configure_logging("info")
logging.getLogger("qwen_gateway.test").warning("hello \\x1b[2J console")
access_log({"request_id": "req-1", "status": 200, "path": "/v1/models"})
flush_logs()
"""


def test_a_terminal_gets_human_readable_lines() -> None:
    child = pexpect.spawn(sys.executable, ["-c", CONSOLE], timeout=120, encoding="utf-8")
    try:
        child.expect(pexpect.EOF)
        output = child.before
    finally:
        child.close()
    assert child.exitstatus == 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert not any(line.lstrip().startswith("{") for line in lines)  # no JSON
    hello = next(line for line in lines if "hello" in line)
    assert "warning" in hello and "qwen_gateway.test" in hello
    assert "\x1b[2J" not in hello and "\\x1b[2J" in hello  # control characters escaped
    access = next(line for line in lines if "req-1" in line)
    assert "access" in access and "request_id=req-1" in access and "status=200" in access


def test_a_pipe_gets_json_lines() -> None:
    done = subprocess.run([sys.executable, "-c", CONSOLE], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    entries = [json.loads(line) for line in done.stderr.decode().splitlines() if line.strip()]
    assert entries[0]["message"] == "hello \x1b[2J console" and entries[0]["level"] == "warning"
    assert entries[1]["request_id"] == "req-1" and entries[1]["event"] == "access"


RECONFIGURE = """
import logging, os, sys
from pathlib import Path
from qwen_gateway.observability.logging import configure_logging, flush_logs

path = Path(sys.argv[1])
for n in range(5):  # as SIGHUP or a worker's start configures again
    configure_logging("info", log_file=path)
    logging.getLogger("reconfigure").info("line %d", n)
    flush_logs()
fds = [f for f in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{f}") == str(path)]
print(len(fds))
"""


def test_configuring_again_closes_the_previous_log_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    done = subprocess.run(
        [sys.executable, "-c", RECONFIGURE, str(path)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert int(done.stdout.split()[-1]) <= 1, done.stderr  # not one descriptor per configuration
    assert len(path.read_text().splitlines()) == 5


def test_a_terminal_line_ends_with_the_workers_fields() -> None:
    from qwen_gateway.observability.logging import ConsoleFormatter

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "worker %d ready", (1,), None)
    line = ConsoleFormatter({"worker": 1, "pid": 4242}).format(record)
    assert line.endswith("worker 1 ready worker=1 pid=4242")

"""The runner against real servers on 127.0.0.1: the zero-latency fake upstream
(benchmarks/fast_upstream.py, a subprocess) and FaultyUpstream (a named fault injector)."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_gateway.bench.runner import BenchError, Load, Runner, Target, is_loopback_url
from qwen_gateway.bench.stats import summarize
from qwen_gateway.bench.workload import Lengths, Workload, arrivals
from support.faulty_upstream import FaultyUpstream
from support.server import Server, free_port

FAST_UPSTREAM = Path(__file__).resolve().parents[2] / "benchmarks" / "fast_upstream.py"


def _workload(n: int) -> Workload:
    return Workload(n, Lengths.parse("uniform:8:32"), Lengths.parse("16"), seed=1)


@pytest.fixture(scope="module")
def fast_upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAST_UPSTREAM), "--port", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fast_upstream did not start") from None
                time.sleep(0.05)  # polling for the port, not synchronising test steps
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyUpstream]:
    with FaultyUpstream().running() as upstream:
        yield upstream


@pytest.mark.parametrize("stream", [True, False])
async def test_closed_loop_sends_exactly_the_requests_asked(
    fast_upstream: str, stream: bool
) -> None:
    runner = Runner(
        Target("fast", fast_upstream, model="fake"), _workload(60), Load(concurrency=7),
        stream=stream,
    )  # fmt: skip
    records = await runner.run()
    assert [r.index for r in records] == list(range(60))
    assert all(r.ok and r.error is None for r in records)
    assert all(r.output_tokens == 16 and r.usage_reported for r in records)  # its usage
    s = summarize(records, runner.elapsed)
    assert (s["succeeded"], s["failed"], s["output_tokens"]) == (60, 0, 960)
    if stream:  # 16 content chunks: a first token and 15 gaps each
        assert s["ttft_ms"]["count"] == 60 and s["itl_ms"]["count"] == 60 * 15
    else:
        assert s["ttft_ms"]["count"] == 0 and s["e2e_ms"]["count"] == 60


async def test_open_loop_sends_every_request_of_the_plan(fast_upstream: str) -> None:
    workload = _workload(40)
    runner = Runner(Target("fast", fast_upstream, model="fake"), workload, Load(rate=2000.0))
    records = await runner.run()
    assert len(records) == 40 and all(r.ok for r in records)
    # none is sent before its arrival in the seeded schedule (a tolerance for the timer's clock)
    schedule = list(itertools.islice(arrivals(2000.0, workload.seed), 40))
    assert sorted(r.index for r in records) == list(range(40))
    assert all(r.start >= schedule[r.index] - 0.001 for r in records)


async def test_the_model_is_taken_from_the_models_list(server_url: str) -> None:
    runner = Runner(Target("gw", server_url), _workload(2), Load(concurrency=1))
    records = await runner.run()
    assert runner.model == "qwen2.5-tiny"
    assert all(r.ok for r in records)


@pytest.mark.parametrize(("model", "code"), [("429-always", "429"), ("500", "500"), ("404", "404")])
async def test_errors_are_counted_by_status_code(
    faulty: FaultyUpstream, model: str, code: str
) -> None:
    runner = Runner(
        Target("faulty", faulty.base_url, model=model), _workload(9), Load(concurrency=3)
    )
    s = summarize(await runner.run(), runner.elapsed)
    assert s["errors"] == {code: 9}
    assert (s["succeeded"], s["failed"]) == (0, 9)


async def test_alternating_faults_are_split_between_ok_and_the_code(faulty: FaultyUpstream) -> None:
    runner = Runner(
        Target("faulty", faulty.base_url, model="502-then-ok"), _workload(10), Load(concurrency=1)
    )
    s = summarize(await runner.run(), runner.elapsed)
    assert s["errors"] == {"502": 5} and s["succeeded"] == 5


@pytest.mark.parametrize(
    ("model", "code"),
    [("truncated", "incomplete_response"), ("garbage", "invalid_response")],
)
async def test_broken_streams_are_errors(faulty: FaultyUpstream, model: str, code: str) -> None:
    runner = Runner(
        Target("faulty", faulty.base_url, model=model), _workload(3), Load(concurrency=1)
    )
    s = summarize(await runner.run(), runner.elapsed)
    assert s["errors"] == {code: 3}


async def test_unreachable_server_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there
    runner = Runner(Target("none", url, model="m"), _workload(4), Load(concurrency=2))
    s = summarize(await runner.run(), runner.elapsed)
    assert s["errors"] == {"connection": 4}


async def test_the_time_limit_stops_the_run_and_cancels_what_is_in_flight(
    faulty: FaultyUpstream,
) -> None:
    # 'stall' never finishes its stream: without the time limit this run would never end
    runner = Runner(
        Target("faulty", faulty.base_url, model="stall"), _workload(1000),
        Load(concurrency=4, duration=0.5),
    )  # fmt: skip
    records = await runner.run()
    assert len(records) == 4  # only the first request of each client was ever sent
    assert all(r.error == "cancelled" for r in records)
    s = summarize(records, runner.elapsed)
    assert (s["cancelled"], s["failed"], s["errors"]) == (4, 0, {})


async def test_a_target_without_a_models_list_needs_a_model(faulty: FaultyUpstream) -> None:
    runner = Runner(Target("faulty", faulty.base_url), _workload(1), Load(concurrency=1))
    with pytest.raises(BenchError, match="pass --model"):
        await runner.run()


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.5.6.7/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://10.0.0.5:8000/v1", False),
        ("https://api.example.com/v1", False),
        ("http://127.0.0.1.example.com/v1", False),
    ],
)
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


@pytest.fixture
def server_url(server: Server) -> str:
    """The session's real ``qwen-gateway serve`` on the tiny model."""
    return server.base_url + "/v1"

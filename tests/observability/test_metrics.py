"""Engine metrics are pushed by the engine to its observer (EngineMetrics), one per engine."""

from __future__ import annotations

import threading

from qwen_gateway.observability.metrics import Metrics
from support.metrics import sample


def test_an_engine_pushes_its_counters_and_is_read_for_its_load() -> None:
    metrics = Metrics()
    engine = metrics.engine("m[1]")
    metrics.engine("other")  # an engine that reports nothing yet
    load = [2, 5]
    engine.watch_load(lambda: (load[0], load[1]))
    for size in (3, 7, 4):
        engine.decode_step(size)
    engine.aborted(2)
    engine.aborted(0)
    engine.malformed_tool_calls(3)
    engine.restarted()
    text = metrics.render().decode()
    m = {"model": "m[1]"}
    assert sample(text, "qwen_gateway_engine_decode_steps_total", **m) == 3
    assert sample(text, "qwen_gateway_engine_batch_size", **m) == 4  # the last step's
    assert sample(text, "qwen_gateway_engine_max_batch_size", **m) == 7
    assert sample(text, "qwen_gateway_engine_aborted_requests_total", **m) == 2
    assert sample(text, "qwen_gateway_engine_abort_delay_steps_max", **m) == 2
    assert sample(text, "qwen_gateway_engine_malformed_tool_calls_total", **m) == 3
    assert sample(text, "qwen_gateway_engine_restarts_total", **m) == 1
    assert sample(text, "qwen_gateway_engine_running_sequences", **m) == 2
    assert sample(text, "qwen_gateway_engine_queue_depth", **m) == 5
    load[:] = [0, 0]  # gauges are read when collected
    text = metrics.render().decode()
    assert sample(text, "qwen_gateway_engine_running_sequences", **m) == 0
    assert 'qwen_gateway_engine_restarts_total{model="other"} 0.0' in text  # shown from the start


def test_updates_from_an_engine_thread_are_all_counted() -> None:
    metrics = Metrics()
    engine = metrics.engine("m")
    threads = [
        threading.Thread(target=lambda: [engine.aborted() for _ in range(1000)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = metrics.render().decode()
    assert sample(text, "qwen_gateway_engine_aborted_requests_total", model="m") == 4000

"""RecordingObserver: an engine observer (engines.base.EngineObserver) that keeps what the
engines given it report, for assertions without a metrics registry."""

from __future__ import annotations

from qwen_gateway.engines.base import LoadSnapshot


class RecordingObserver:
    def __init__(self) -> None:
        self.loads: list[LoadSnapshot] = []
        self.decode_steps = 0
        self.aborts: list[int] = []  # the delay of each, in decode steps
        self.malformed = 0
        self.restarts = 0

    @property
    def running(self) -> int:
        """Requests running now, in every engine watched."""
        return sum(load()[0] for load in self.loads)

    def watch_load(self, load: LoadSnapshot) -> None:
        self.loads.append(load)

    def decode_step(self, batch_size: int) -> None:
        self.decode_steps += 1

    def aborted(self, delay_steps: int = 0) -> None:
        self.aborts.append(delay_steps)

    def malformed_tool_calls(self, count: int) -> None:
        self.malformed += count

    def restarted(self) -> None:
        self.restarts += 1

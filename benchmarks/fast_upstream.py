"""A fake OpenAI-compatible upstream with zero model latency, for overhead benchmarks.

Named as a fake on purpose: it answers every chat request with the same 16-token reply, at
once, so that whatever time a request takes in front of it is the client's and the gateway's.
Plain asyncio protocol (uvloop when installed), HTTP/1.1 keep-alive, no framework, so that it
costs little CPU itself. Not for tests of behaviour (see tests/support/faulty_upstream.py).

    python benchmarks/fast_upstream.py --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
import json

TOKENS = 16
WORDS = [f" w{i}" for i in range(TOKENS)]


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


USAGE = {"prompt_tokens": 20, "completion_tokens": TOKENS, "total_tokens": 20 + TOKENS}
_events = [_chunk({"role": "assistant", "content": ""})]
_events += [_chunk({"content": w}) for w in WORDS]
_events.append(_chunk({}, "stop"))
_events.append(
    b"data: "
    + json.dumps(
        {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
         "model": "fake", "choices": [], "usage": USAGE},
        separators=(",", ":"),
    ).encode()
    + b"\n\n"
)  # fmt: skip
_events.append(b"data: [DONE]\n\n")
STREAM = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"".join(_http_chunk(e) for e in _events)
    + b"0\r\n\r\n"
)
_full = json.dumps(
    {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(WORDS)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    },
    separators=(",", ":"),
).encode()
FULL = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_full),
    _full,
)
_ok = b'{"status":"ok"}'
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_ok),
    _ok,
)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            if head.startswith(b"post"):
                streaming = b'"stream":true' in body or b'"stream": true' in body
                self.transport.write(STREAM if streaming else FULL)
            else:
                self.transport.write(OK)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()

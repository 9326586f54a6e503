"""A fast fake LLM upstream for the benchmark (aiohttp low-level server + uvloop).

    python bench/upstream.py --port 9000

Answers `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic):
- non-streaming: a small fixed JSON completion;
- streaming (`"stream": true` in the body): `--chunks` SSE events (header
  `x-bench-chunks` overrides), with `--delay-ms` between them (`x-bench-delay-ms`);
- long stream: a streaming request with `x-bench-bytes: N` gets about N bytes of chat
  chunks of 4 KiB each, as fast as the connection takes them;
- retry path: a request carrying `x-bench-fail: <token>` answers 503 the first time that
  token is seen and 200 the second time, so a proxy's retry of the same request succeeds
  while the load generator marks every other request with a fresh token (50 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal

from aiohttp import web

_OPENAI = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-upstream-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()

_ANTHROPIC = json.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "bench-upstream-model",
        "content": [{"type": "text", "text": "Hello from the bench upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 7},
    }
).encode()

_OPENAI_CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-upstream-model","choices":[{"index":0,"delta":{"content":"tok "},'
    b'"finish_reason":null}]}\n\n'
)
_OPENAI_DONE = b"data: [DONE]\n\n"
_ANTHROPIC_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_bench",'
    b'"type":"message","role":"assistant","model":"bench-upstream-model","content":[],'
    b'"usage":{"input_tokens":12,"output_tokens":1}}}\n\n'
)
_ANTHROPIC_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"tok "}}\n\n'
)
_ANTHROPIC_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_UNAVAILABLE = b'{"error":{"message":"bench: overloaded","type":"server_error"}}'
_JSON = {"Content-Type": "application/json"}
_SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _wants_stream(body: bytes) -> bool:
    # A substring test, not a JSON parse: the upstream must stay cheaper than the proxy.
    head = body[:4096]
    return b'"stream":true' in head or b'"stream": true' in head


class Upstream:
    def __init__(self, chunks: int, delay: float) -> None:
        self.chunks = chunks
        self.delay = delay
        self.failed_tokens: set[str] = set()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        content = request.content
        parts: list[bytes] = []
        while chunk := await content.readany():
            parts.append(chunk)
        body = b"".join(parts)
        token = request.headers.get("x-bench-fail")
        if token is not None:
            if token in self.failed_tokens:
                self.failed_tokens.discard(token)
            else:
                self.failed_tokens.add(token)
                return web.Response(status=503, body=_UNAVAILABLE, headers=_JSON)
        anthropic = request.path.endswith("/messages")
        if not _wants_stream(body):
            return web.Response(body=_ANTHROPIC if anthropic else _OPENAI, headers=_JSON)
        size = request.headers.get("x-bench-bytes")
        if size is not None and not anthropic:
            return await _long_stream(request, int(size))
        chunks = int(request.headers.get("x-bench-chunks", self.chunks))
        delay_ms = request.headers.get("x-bench-delay-ms")
        delay = float(delay_ms) / 1000 if delay_ms is not None else self.delay
        resp = web.StreamResponse(headers=_SSE)
        await resp.prepare(request)
        if anthropic:
            await resp.write(_ANTHROPIC_START)
        for i in range(chunks):
            if i and delay:
                await asyncio.sleep(delay)
            await resp.write(_ANTHROPIC_DELTA if anthropic else _OPENAI_CHUNK)
        await resp.write(_ANTHROPIC_STOP if anthropic else _OPENAI_DONE)
        await resp.write_eof()
        return resp


_BIG_CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-upstream-model","choices":[{"index":0,"delta":{"content":"'
    + b"tok " * 1000
    + b'"},"finish_reason":null}]}\n\n'
)


async def _long_stream(request: web.BaseRequest, size: int) -> web.StreamResponse:
    resp = web.StreamResponse(headers=_SSE)
    await resp.prepare(request)
    sent = 0
    while sent < size:
        await resp.write(_BIG_CHUNK)
        sent += len(_BIG_CHUNK)
    await resp.write(_OPENAI_DONE)
    await resp.write_eof()
    return resp


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(host: str, port: int, chunks: int, delay: float) -> None:
    upstream = Upstream(chunks, delay)
    server = web.Server(upstream.handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    raise_nofile()
    import uvloop

    uvloop.run(serve(args.host, args.port, args.chunks, args.delay_ms / 1000))


if __name__ == "__main__":
    main()

"""The reference: a bare aiohttp + uvloop pass-through with no features.

    python bench/passthrough.py --port 9001 --upstream http://127.0.0.1:9000

Forwards method, path, headers and body to the upstream over one pooled ClientSession and
streams the response back as it arrives.  No retry, no rewrite, no logging: what hydrallm's
hot path is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal

import aiohttp
from aiohttp import web

_SKIP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


async def serve(host: str, port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        # request.read() would stop at aiohttp's 1 MiB client_max_size; read the stream.
        parts = [chunk async for chunk in request.content.iter_any()]
        body = b"".join(parts)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _SKIP]
        async with session.request(
            request.method, upstream + request.raw_path, headers=headers, data=body
        ) as upstream_resp:
            resp = web.StreamResponse(status=upstream_resp.status)
            for k, v in upstream_resp.headers.items():
                if k.lower() not in _SKIP:
                    resp.headers.add(k, v)
            await resp.prepare(request)
            while chunk := await upstream_resp.content.readany():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    server = web.Server(handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(serve(args.host, args.port, args.upstream.rstrip("/")))


if __name__ == "__main__":
    main()

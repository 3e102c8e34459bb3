"""The baseline: the least a server can do to stream a model's reply to a websocket.

One process, one asyncio loop, no database, no Celery, no channel layer: a
websocket server that, for each `message` frame, streams
POST {model}/chat/completions with httpx and forwards every content piece as a
`delta` frame the moment it arrives, then a `done` frame. The frames have the
protocol's shapes (docs/protocol.md), so the benchmark client measures this and
the product with the same code.

    python -m benchmarks.direct_relay --model-url http://127.0.0.1:PORT/v1 [--port 0]

prints ``ready ws://127.0.0.1:PORT`` once listening and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal

import httpx
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

# Hundreds of clients connect at once; asyncio's default backlog (100) would make
# the overflow wait ~1 s for a SYN retry.
LISTEN_BACKLOG = 2048

_ids = itertools.count(1)


async def _stream(
    client: httpx.AsyncClient, url: str, model: str, text: str, ws: ServerConnection
) -> None:
    message_id = str(next(_ids))
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful support assistant."},
            {"role": "user", "content": text},
        ],
        "stream": True,
    }
    pieces: list[str] = []
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    event = {
                        "type": "delta",
                        "message_id": message_id,
                        "index": len(pieces),
                        "text": piece,
                    }
                    pieces.append(piece)
                    await ws.send(json.dumps(event, ensure_ascii=False))
    done = {
        "type": "done",
        "message": {
            "id": message_id,
            "role": "assistant",
            "text": "".join(pieces),
            "status": "complete",
        },
    }
    await ws.send(json.dumps(done, ensure_ascii=False))


async def _serve(port: int, model_url: str, model: str) -> None:
    url = model_url.rstrip("/") + "/chat/completions"
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=1000),
    )

    async def handler(ws: ServerConnection) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "hello":
                    ready = {"type": "ready", "conversation": {"id": "direct", "status": "bot"}}
                    await ws.send(json.dumps({**ready, "last_seq": 0}))
                elif kind == "message":
                    task = asyncio.create_task(_stream(client, url, model, frame["text"], ws))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif kind == "ping":
                    await ws.send('{"type":"pong"}')
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        handler, "127.0.0.1", port, backlog=LISTEN_BACKLOG, max_size=1024 * 1024
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"ready ws://127.0.0.1:{bound}", flush=True)
        await stop.wait()
    await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.direct_relay")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model-url", required=True, help="OpenAI-compatible base URL (…/v1)")
    parser.add_argument("--model", default="scripted-model")
    args = parser.parse_args(argv)
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        # The product's ASGI server (uvicorn) runs on uvloop when it is installed.
        import uvloop

        runner = uvloop.run
    runner(_serve(args.port, args.model_url, args.model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

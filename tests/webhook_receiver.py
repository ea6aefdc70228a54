"""A real local HTTP receiver for webhook tests: an asyncio server on a free port that checks
each request's Standard Webhooks signature and answers with a status the test chooses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    secret: str = ""
    # Decides the answer to each request (given the requests so far, this one included).
    respond: Callable[[Received, list[Received]], int] = lambda _r, _all: 204
    # While cleared, requests wait before answering (a slow endpoint, to kill a worker mid-send).
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.AbstractServer | None = None
    port: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                try:
                    Webhook(self.secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                item = Received(headers=headers, body=body, verified=verified, status=0)
                self.received.append(item)
                self.arrived.set()
                item.status = self.respond(item, self.received) if verified else 401
                await self.gate.wait()
                content = b"" if item.status == 204 else b"ok"
                writer.write(
                    f"HTTP/1.1 {item.status} X\r\ncontent-length: {len(content)}\r\n\r\n".encode() + content
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def of(self, subject_member: str) -> list[Received]:
        return [r for r in self.received if r.json.get("data", {}).get("member_id") == subject_member]


class ThreadedReceiver:
    """A Receiver on its own event loop in a thread: for callers that block the test's loop
    (Litestar's test client runs the app through a blocking portal)."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.receiver: Receiver = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> Receiver:
        return await Receiver().start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

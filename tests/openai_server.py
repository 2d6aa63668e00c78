"""A stand-in for a real model provider: a small server that speaks the OpenAI Chat
Completions API over HTTP, on 127.0.0.1, so tests take the path every real provider takes
(LiteLLM's OpenAI client, HTTP, JSON, SSE) without leaving the machine.

Each test scripts what it needs: a queue of `Scripted` responses, one per request, in
order (an error status, a delay, a broken stream, a particular reply). With the queue
empty, the server answers as the scripted model would, so a turn that needs no special
answer just works. Every request is recorded, headers included.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from scripted_model import scripted_reply, stream_chunks

USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
"""The token counts of every answer, as the provider reports them."""


@dataclass(frozen=True)
class Scripted:
    """What the server does with one request: after `delay_s`, answer with `choice` (None:
    the scripted model's answer), or fail with `status` and an OpenAI error body. A
    stream with `break_after` sends that many pieces, then an error event, and stops."""

    choice: dict[str, Any] | None = None
    status: int = 200
    error: str = ""
    code: str | None = None
    delay_s: float = 0.0
    break_after: int | None = None


def failure(status: int, error: str, code: str | None = None) -> Scripted:
    return Scripted(status=status, error=error, code=code)


def tool_call(name: str, arguments: str) -> Scripted:
    """A reply asking for one tool, with `arguments` sent exactly as given, valid or not."""
    function = {"name": name, "arguments": arguments}
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_http_0", "type": "function", "function": function}],
    }
    return Scripted({"message": message, "finish_reason": "tool_calls"})


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: dict[str, Any]


class OpenAIServer:
    """`POST /v1/chat/completions`, plain JSON or SSE (when the request says `stream`)."""

    def __init__(self) -> None:
        self.script: deque[Scripted] = deque()
        self.requests: list[Received] = []
        self.url = ""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        # A client that gives up (a timeout) must not keep the server from stopping.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1, access_log=None
        )

    async def start(self) -> OpenAIServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    def then(self, *responses: Scripted) -> None:
        """Queue responses for the next requests, in order."""
        self.script.extend(responses)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Received(dict(request.headers), body))
        scripted = self.script.popleft() if self.script else Scripted()
        await asyncio.sleep(scripted.delay_s)
        if scripted.status != 200:
            error = {"message": scripted.error, "type": "invalid_request_error"}
            return web.json_response(
                {"error": {**error, "code": scripted.code}}, status=scripted.status
            )
        choice = scripted.choice or scripted_reply(body["messages"])
        if body.get("stream"):
            usage = body.get("stream_options", {}).get("include_usage", False)
            return await self._stream(request, body["model"], choice, scripted.break_after, usage)
        completion = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, **choice}],
            "usage": USAGE,
        }
        return web.json_response(completion)

    async def _stream(
        self,
        request: web.Request,
        model: str,
        choice: dict[str, Any],
        break_after: int | None,
        usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for sent, delta in enumerate(openai_deltas(choice)):
            if sent == break_after:
                error = {"message": "the server broke off the stream", "type": "server_error"}
                await response.write(f"data: {json.dumps({'error': error})}\n\n".encode())
                return response
            chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0}
            chunk |= {"model": model, "choices": [{"index": 0, **delta}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if usage:  # As OpenAI does when asked: a last chunk, with no choice, and the counts.
            chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0}
            chunk |= {"model": model, "choices": [], "usage": USAGE}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


def openai_deltas(choice: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The choice as OpenAI streams it, cut where the scripted model cuts its own stream:
    a role, text a few words at a time, each tool call's arguments in pieces, and last an
    empty delta with the finish reason."""
    yield {"delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    for piece in stream_chunks(choice):
        if piece["is_finished"]:
            yield {"delta": {}, "finish_reason": piece["finish_reason"]}
        elif call := piece["tool_use"]:
            # OpenAI names the call and gives its id in the first piece only.
            function = {k: v for k, v in call["function"].items() if v is not None}
            fields = {k: v for k, v in call.items() if v is not None}
            yield {
                "delta": {"tool_calls": [{**fields, "function": function}]},
                "finish_reason": None,
            }
        else:
            yield {"delta": {"content": piece["text"]}, "finish_reason": None}

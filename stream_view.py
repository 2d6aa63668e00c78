"""What a person watching a turn sees: the turn's events from the workflow's stream.

The chat client shows the reply as the model writes it, and one short line per tool
call. The events come from the conversation's Workflow Stream (topics and payloads:
`workflow.py`, docs/streaming.md). The stream is a view: the reply that `send_message`
returns is the truth, so whatever the stream did not show of it is printed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any, TextIO

from temporalio.client import Client
from temporalio.contrib.workflow_streams import WorkflowStreamClient

from contract import RetryNotice, TextDelta, ToolEvent, TurnEvent

EVENTS: dict[str, type] = {
    "delta": TextDelta,
    "retry": RetryNotice,
    "tool": ToolEvent,
    "turn": TurnEvent,
}
SAID_ELSEWHERE = {"delegate"}
"""Calls the client announces itself, when they start (a subagent's id: chat_session.py)."""
CATCH_UP_S = 1.0
"""After the reply, how long the stream may take to deliver the turn's last events."""


class TurnView:
    """Prints one turn at a time: `watch` when it starts, `finish` with its reply."""

    def __init__(self, client: Client, session: str, prefix: str, out: TextIO = sys.stdout):
        self._stream = WorkflowStreamClient.create(client, session)
        self._prefix = prefix
        self._out = out
        self._text = ""  # What the latest model step wrote, as shown.
        self._line_open = False
        self._step = -1
        self._offset = 0  # Where the next turn's events start, as far as this view knows.
        self._watching: asyncio.Task[None] | None = None

    def watch(self, turn: str) -> None:
        """Follow the events of the turn (the `send_message` update id) as they come."""
        self._text, self._step = "", -1
        self._watching = asyncio.create_task(self._follow(turn))

    async def finish(self, reply: str | None) -> None:
        """Let the stream catch up, then print what it did not show of `reply` (None:
        the turn failed, and the caller says why)."""
        if self._watching is not None:
            with contextlib.suppress(Exception):  # A view that fails costs nothing.
                await asyncio.wait_for(self._watching, CATCH_UP_S)
            self._watching.cancel()
            self._watching = None
        if reply is not None and self._text.strip() != reply.strip():
            self._end_line()
            self._write(f"{self._prefix}{reply}")
            self._line_open = True
        self._end_line()

    async def _follow(self, turn: str) -> None:
        # The first turn a view follows starts at offset 0, the oldest event the stream
        # retains (the last turn and the current one): a client that attaches mid-turn
        # sees that turn from its start. Later turns start where the last one ended, so
        # the first poll waits for this turn's first event instead of reading old ones.
        async for item in self._stream.subscribe(list(EVENTS), from_offset=self._offset):
            self._offset = item.offset + 1
            event = EVENTS[item.topic](**item.data)
            if event.turn != turn:
                continue
            if isinstance(event, TurnEvent):
                return
            self._show(event)

    def _show(self, event: Any) -> None:
        if isinstance(event, TextDelta):
            if event.step != self._step:  # A new model call: its text on a new line.
                self._end_line()
                self._step, self._text = event.step, ""
            if not self._line_open:
                self._write(self._prefix)
                self._line_open = True
            self._write(event.text)
            self._text += event.text
        elif isinstance(event, RetryNotice):
            self._end_line()
            self._text = ""
            self._note(f"(the model call is retried, attempt {event.attempt}: text so far dropped)")
        elif event.state == "finished" and event.name not in SAID_ELSEWHERE:
            # One line per call, once it has an outcome: a call that waits says so in its
            # approval prompt, and one that runs long in the client's waiting notice.
            self._end_line()
            self._note(f"  [tool] {event.name} {readable(event.arguments)} -> {event.outcome}")

    def _end_line(self) -> None:
        if self._line_open:
            self._write("\n")
            self._line_open = False

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def readable(arguments: str) -> str:
    """A call's JSON arguments with their text as it is (`Zürich`, not `Z\\u00fcrich`);
    arguments that are not JSON, as the model wrote them."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        return arguments

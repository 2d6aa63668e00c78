"""Replies stream as they are written: `llm_client.plan(..., on_text=...)` hands on the
text piece by piece and still returns the plan it returns without streaming. Offline, the
scripted model streams like a provider, so streaming works from a fresh clone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import litellm
from conftest import Deltas
from litellm import CustomLLM, ModelResponse

import llm_client
import tools
from contract import Message
from llm_client import LlmSettings
from scripted_model import SCRIPTED_MODEL


class NonStreamingModel(CustomLLM):
    """A custom provider that can only answer whole, as some local servers do."""

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        choice = {"message": {"role": "assistant", "content": "all of it at once"}}
        return ModelResponse(model=model, choices=[choice])


litellm.custom_provider_map.append(
    {"provider": "non-streaming", "custom_handler": NonStreamingModel()}
)


HELLO = [Message("user", "hello")]


async def test_the_scripted_model_streams_its_reply_in_pieces_that_add_up_to_the_plan():
    deltas = Deltas()

    plan = await llm_client.plan(LlmSettings(), HELLO, [], on_text=deltas)

    assert len(deltas) > 5 and all(deltas)
    assert "".join(deltas) == plan.reply
    assert plan == await llm_client.plan(LlmSettings(), HELLO, [])


async def test_the_scripted_model_streams_tool_calls_in_fragments_assembled_into_the_plan(
    notes_file: Path,
):
    schemas = [tool.schema() for tool in tools.registry(notes_file).values()]
    question = [Message("user", "What is 2 + 2 and 3 * 3?")]
    raw = await litellm.acompletion(
        model=SCRIPTED_MODEL,
        messages=[{"role": "user", "content": question[0].content}],
        stream=True,
    )
    fragments = [c.choices[0].delta.tool_calls async for c in raw if c.choices[0].delta.tool_calls]
    deltas = Deltas()

    plan = await llm_client.plan(LlmSettings(), question, schemas, on_text=deltas)

    assert len(fragments) == 4  # two calls, each in two pieces, as providers send them
    assert [(call.name, call.arguments) for call in plan.tool_calls] == [
        ("calculator", '{"expression": "2 + 2"}'),
        ("calculator", '{"expression": "3 * 3"}'),
    ]
    assert plan == await llm_client.plan(LlmSettings(), question, schemas)
    assert deltas == []


async def test_the_scripted_latency_is_spread_over_the_streamed_pieces():
    await llm_client.plan(LlmSettings(), HELLO, [], on_text=Deltas())  # warm: loads code
    arrivals: list[float] = []
    started = time.monotonic()

    async def on_text(delta: str) -> None:
        arrivals.append(time.monotonic() - started)

    await llm_client.plan(LlmSettings(scripted_latency_s=0.4), HELLO, [], on_text=on_text)
    finished = time.monotonic() - started

    assert len(arrivals) > 5
    assert arrivals[0] < 0.2  # the first words come early: 0.4 s over a dozen pieces
    assert finished >= 0.4


async def test_a_model_that_cannot_stream_hands_on_its_whole_text_at_once():
    deltas = Deltas()

    plan = await llm_client.plan(
        LlmSettings(model="non-streaming/model"), HELLO, [], on_text=deltas
    )

    assert deltas == ["all of it at once"] == [plan.reply]

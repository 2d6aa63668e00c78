"""A user chats with the agent: the scenarios of a normal conversation."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import history_events, say, scheduled_activities, start_session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from contract import SessionInput
from scripted_model import scripted_reply
from workflow import MAX_MESSAGE_CHARS, DurableAgentWorkflow


async def test_multi_turn_conversation_keeps_every_message_in_order(session: WorkflowHandle):
    assert "100" in await say(session, "What is 25 * 4?")
    assert "scripted offline model" in await say(session, "hello")
    assert "[demo data] Paris" in await say(session, "What is the weather in Paris?")

    transcript = await session.query(DurableAgentWorkflow.conversation)
    said = [(m.role, m.content) for m in transcript.messages if m.role == "user"]
    assert said == [
        ("user", "What is 25 * 4?"),
        ("user", "hello"),
        ("user", "What is the weather in Paris?"),
    ]
    assert transcript.messages[-1].role == "assistant"
    assert await session.query(DurableAgentWorkflow.status) == "idle"


@pytest.mark.parametrize(
    ("ask", "cities"),
    [
        ("weather in Zürich 🌦️", ["Zürich"]),
        ("What is the weather in São Paulo and Kraków?", ["São Paulo", "Kraków"]),
        ("weather for 東京", ["東京"]),
        (
            "weather in L\u2019Aquila, Saint-Étienne and Malmö.",
            ["L\u2019Aquila", "Saint-Étienne", "Malmö"],
        ),
    ],
)
def test_the_scripted_model_takes_a_city_in_any_letters(ask: str, cities: list[str]):
    # \u2019: the typographic apostrophe, which a phone's keyboard types.
    choice = scripted_reply([{"role": "user", "content": ask}], ["weather"])

    asked = [json.loads(call["function"]["arguments"]) for call in choice["message"]["tool_calls"]]
    assert asked == [{"city": city} for city in cities]


async def test_the_weather_in_a_city_with_an_accent_and_an_emoji_is_that_city(
    session: WorkflowHandle,
):
    assert "[demo data] Zürich" in await say(session, "weather in Zürich 🌦️")


async def test_tool_turn_is_plan_then_tool_then_plan_in_the_history(session: WorkflowHandle):
    reply = await say(session, "What is 25 * 4?")

    assert reply == "25 * 4 = 100"
    assert await scheduled_activities(session) == [
        "plan_next_action",
        "execute_tool",
        "plan_next_action",
    ]


async def test_tool_calls_from_one_model_reply_run_concurrently(session: WorkflowHandle):
    reply = await say(session, "What is the weather in Paris and Oslo?")

    assert "Paris" in reply and "Oslo" in reply
    kinds = [
        event.event_type
        for event in await history_events(session)
        if event.event_type
        in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
        )
    ]
    scheduled, completed = (
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
    )
    # plan done; both tools scheduled before either completes; then the final plan.
    assert kinds == [
        scheduled,
        completed,
        scheduled,
        scheduled,
        completed,
        completed,
        scheduled,
        completed,
    ]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("x" * (MAX_MESSAGE_CHARS + 1), f"limit is {MAX_MESSAGE_CHARS}"),
    ],
    ids=["empty", "whitespace", "too-long"],
)
async def test_rejected_message_gets_a_clear_error_and_leaves_no_history(
    session: WorkflowHandle, text: str, complaint: str
):
    await say(session, "hello")
    events_before = len(await history_events(session))

    with pytest.raises(WorkflowUpdateFailedError) as rejected:
        await say(session, text)

    assert complaint in str(rejected.value.cause)
    assert len(await history_events(session)) == events_before
    assert "100" in await say(session, "What is 25 * 4?")


async def test_concurrent_senders_each_get_their_own_reply_in_arrival_order(
    session: WorkflowHandle,
):
    questions = [f"What is {n} * 1000?" for n in range(1, 7)]

    replies = await asyncio.gather(*(say(session, q) for q in questions))

    for n, reply in enumerate(replies, start=1):
        assert reply == f"{n} * 1000 = {n * 1000}"
    transcript = await session.query(DurableAgentWorkflow.conversation)
    conversation = [m for m in transcript.messages if m.role in ("user", "assistant") and m.content]
    # Turns never interleave: each question is followed by its own answer.
    for question, answer in zip(conversation[::2], conversation[1::2], strict=True):
        assert question.role == "user" and answer.role == "assistant"
        n = question.content.split()[2]
        assert answer.content == f"{n} * 1000 = {int(n) * 1000}"


async def test_saying_bye_ends_the_chat_and_returns_the_transcript(session: WorkflowHandle):
    await say(session, "What is 2 + 2?")

    farewell = await say(session, "bye")

    assert "Goodbye" in farewell
    transcript = await session.result()
    assert transcript.ended
    assert [m.content for m in transcript.messages if m.role == "user"] == ["What is 2 + 2?", "bye"]


async def test_end_chat_signal_ends_the_session_and_later_messages_are_refused(
    session: WorkflowHandle,
):
    await say(session, "hello")

    await session.signal(DurableAgentWorkflow.end_chat)
    transcript = await session.result()

    assert transcript.ended
    with pytest.raises(Exception, match="completed"):
        await say(session, "are you there?")


async def test_a_model_that_never_answers_is_stopped_after_the_step_limit(
    client: Client, task_queue: str, worker: object
):
    handle = await start_session(client, task_queue, SessionInput(max_model_steps_per_turn=1))

    reply = await say(handle, "What is 1 + 1?")

    assert "stopped after 1 model steps" in reply
    assert await scheduled_activities(handle) == ["plan_next_action", "execute_tool"]
    assert "scripted offline model" in await say(handle, "hello")  # the chat goes on

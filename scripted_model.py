"""The offline scripted model: a deterministic stand-in for an LLM provider.

It speaks the OpenAI tool-calling protocol through LiteLLM's custom-provider interface
(`llm_client.py` registers it as the `scripted` provider), whole or streamed, so with no
API key the agent loop still runs end to end, and every reply is parsed (or assembled
from its streamed pieces) by the code that handles a real provider's. It is a pattern
matcher, not a language model.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import litellm
from litellm import CustomLLM, ModelResponse
from litellm.types.utils import GenericStreamingChunk

SCRIPTED_MODEL = "scripted/agent"

_USE = re.compile(r"^\s*use\s+(?P<tool>[\w.-]+)\s*(?P<arguments>\{.*\})?\s*$", re.DOTALL)
_PROGRAM = re.compile(r"^\s*program:(?P<source>.*)$", re.IGNORECASE | re.DOTALL)
_DELEGATE = re.compile(r"^\s*delegate:\s*(?P<tasks>.+)$", re.IGNORECASE | re.DOTALL)
_NEXT_TASK = re.compile(r";\s*delegate:\s*", re.IGNORECASE)
_GOODBYE = re.compile(r"\b(bye|goodbye)\b", re.IGNORECASE)
_NOTE = re.compile(r"^\s*(?:note:|remember)\s*(?P<text>.+)$", re.IGNORECASE | re.DOTALL)
# A place is letters of any script (`[^\W\d_]`: Zürich, São Paulo, 東京), with spaces,
# commas, dots, hyphens and apostrophes (' and \u2019) between them; an emoji or a "?" ends it.
_CITIES = re.compile(r"weather (?:in|for) ([^\W\d_](?:[^\W\d_]|[ ,.'\u2019-])*)", re.IGNORECASE)
_CITY_SEPARATOR = re.compile(r"\s*(?:,|\band\b)\s*")
_ARITHMETIC = re.compile(r"[-(\d.][\d.\s()+\-*/%^]*[\d)]")
_HAS_OPERATOR = re.compile(r"[\d)]\s*(?:\*\*|[-+*/%^])\s*[-(\d.]")
_FEW_WORDS = re.compile(r"\s*(?:\S+\s*){1,3}")  # one streamed piece of text
_FIRST = re.compile(r"^\s*first\b[\s,:]*(?P<steps>.+)$", re.IGNORECASE | re.DOTALL)
_THEN = re.compile(r"[\s,;.]*\bthen\b[\s,:]*", re.IGNORECASE)
# "The warmest three of A, B and C one at a time / at once / by program": the benchmark's
# task (issue 22), done in each of the three ways a model could do it.
_WARMEST = re.compile(
    r"^\s*(?:what are\s+)?(?:the\s+)?warmest three of\s+(?P<cities>.+?)[\s,]*"
    r"\b(?P<style>one at a time|at once|by program)\s*[.?!]?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CELSIUS = re.compile(r": (-?\d+)°C")
# The workspace's file tools (workspace.py): "write file NAME: TEXT", "read file NAME",
# "list files", "search files for TEXT". A name is anything up to the colon, in any script.
_WRITE_FILE = re.compile(r"^\s*write file\s+(?P<path>[^:]+?)\s*:\s?(?P<text>.*)$", re.I | re.S)
_READ_FILE = re.compile(r"^\s*read file\s+(?P<path>.+?)\s*$", re.IGNORECASE | re.DOTALL)
_LIST_FILES = re.compile(r"^\s*list files\s*[.?!]?\s*$", re.IGNORECASE)
_SEARCH_FILES = re.compile(r"^\s*search files for\s+(?P<text>.+?)\s*$", re.I | re.S)


class ScriptedModel(CustomLLM):
    """A deterministic offline model that speaks the OpenAI tool-calling protocol.

    `use TOOL {"arg": ...}` calls any tool with those arguments (the JSON as written);
    an arithmetic question calls `calculator`, "weather in <city>" calls `weather`,
    "note: <text>" or "remember <text>" calls `save_note`, "bye" calls `end_chat`,
    "delegate: <task>" calls `delegate` ("delegate: A; delegate: B": two calls at once),
    "program: <source>" calls `run_program` with that source; the weather in more than two
    places is one program, if `run_program` is offered; "First A, then B" takes A's tools,
    then B's, one model step each; "the warmest three of A, B, C and D" gets the weather
    of each place "one at a time" (a reply per call), "at once" (one reply) or "by program",
    and answers with the three; after tool results it answers from them. Anything else
    gets a short reply saying this is the scripted model.
    """

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        choice = _choice(model, messages, kwargs)
        if latency_s := _latency_s(kwargs):
            await asyncio.sleep(latency_s)
        return ModelResponse(model=SCRIPTED_MODEL, choices=[choice])

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        return ModelResponse(model=SCRIPTED_MODEL, choices=[_choice(model, messages, kwargs)])

    async def astreaming(
        self, model: str, messages: list, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        """The same reply as `acompletion`, in pieces, as a real provider streams it: text
        a few words at a time, each tool call's arguments in two halves, the simulated
        latency spread over the pieces."""
        chunks = stream_chunks(_choice(model, messages, kwargs))
        pause_s = _latency_s(kwargs) / len(chunks)
        for chunk in chunks:
            if pause_s:
                await asyncio.sleep(pause_s)
            yield chunk


def _choice(model: str, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    if model != SCRIPTED_MODEL.split("/", 1)[1]:
        raise litellm.NotFoundError(
            message=f"the scripted provider has no model '{model}'; use '{SCRIPTED_MODEL}'",
            model=model,
            llm_provider="scripted",
        )
    tools = (kwargs.get("optional_params") or {}).get("tools") or []
    return scripted_reply(messages, [tool["function"]["name"] for tool in tools])


def _latency_s(kwargs: dict[str, Any]) -> float:
    """The simulated latency llm_client asks for, in `extra_body` like any provider option."""
    extra_body = (kwargs.get("optional_params") or {}).get("extra_body") or {}
    return float(extra_body.get("latency_s") or 0.0)


def stream_chunks(choice: dict[str, Any]) -> list[GenericStreamingChunk]:
    """A scripted choice as LiteLLM's generic streaming chunks; the last one says why it ended."""
    message = choice["message"]
    text = message.get("content") or ""
    chunks = [_chunk(text=piece) for piece in _FEW_WORDS.findall(text)]
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        head = {"name": call["function"]["name"], "arguments": arguments[:half]}
        chunks.append(_chunk(tool_use={**call, "index": index, "function": head}))
        tail = {"name": None, "arguments": arguments[half:]}
        chunks.append(
            _chunk(tool_use={"id": None, "type": "function", "index": index, "function": tail})
        )
    chunks.append(_chunk(finish_reason=choice["finish_reason"]))
    return chunks


def _chunk(
    text: str = "", tool_use: dict[str, Any] | None = None, finish_reason: str = ""
) -> GenericStreamingChunk:
    return {
        "text": text,
        "tool_use": tool_use,
        "is_finished": bool(finish_reason),
        "finish_reason": finish_reason,
        "usage": None,
        "index": 0,
    }


def scripted_reply(
    messages: list[dict[str, Any]], tools: list[str] | None = None
) -> dict[str, Any]:
    """The scripted model's choice for a conversation in OpenAI format, offered `tools`
    (names; it asks for the others anyway, but writes programs only when offered them)."""
    last = messages[-1]
    if steps := _next_step(messages):
        return steps
    if warmest := _warmest_step(messages):
        return warmest
    if last["role"] == "tool":
        return _say(_summarise_tool_results(messages))
    text = str(last.get("content") or "")
    step = len(messages)
    if use := _USE.match(text):
        return _call(step, [(use["tool"], use["arguments"] or "{}")])
    if file_call := _file_call(text):
        return _call(step, [file_call])
    if written := _PROGRAM.match(text):
        source = textwrap.dedent(written["source"].lstrip(" ").lstrip("\n"))
        return _call(step, [("run_program", {"source": source})])
    if delegation := _DELEGATE.match(text):
        tasks = [task.strip() for task in _NEXT_TASK.split(delegation["tasks"])]
        return _call(step, [("delegate", {"task": task}) for task in tasks if task])
    if note := _NOTE.match(text):
        return _call(step, [("save_note", {"text": note["text"].strip()})])
    if _GOODBYE.search(text):
        return _call(step, [("end_chat", {"farewell": "Goodbye! Thanks for chatting."})])
    if places := _CITIES.search(text):
        cities = [c.strip(" .") for c in _CITY_SEPARATOR.split(places[1]) if c.strip(" .")]
        if len(cities) > 2 and "run_program" in (tools or []):
            return _call(step, [("run_program", {"source": weather_program(cities)})])
        return _call(step, [("weather", {"city": city}) for city in cities])
    if sums := [e.strip() for e in _ARITHMETIC.findall(text) if _HAS_OPERATOR.search(e)]:
        return _call(step, [("calculator", {"expression": e}) for e in sums])
    return _say(
        "I am the scripted offline model. I can do arithmetic ('What is 25 * 4?'), "
        "demo weather ('weather in Paris'), notes ('note: buy milk'), subagents "
        "('delegate: What is 6 * 7?'), programs ('program: weather(city=\"Oslo\")'), "
        'any tool (\'use weather {"city": "Oslo"}\') '
        "and 'bye'. "
        "Set LLM_MODEL in .env to talk to a real model."
    )


def _file_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """The file tool call a message asks for, if it asks for one."""
    if written := _WRITE_FILE.match(text):
        return "write_file", {"path": written["path"], "content": written["text"]}
    if read := _READ_FILE.match(text):
        return "read_file", {"path": read["path"]}
    if _LIST_FILES.match(text):
        return "list_files", {}
    if search := _SEARCH_FILES.match(text):
        return "search_files", {"text": search["text"]}
    return None


def weather_program(cities: list[str]) -> str:
    """The program it writes for the weather in many places: every call at once, the
    reports joined as its answer to the separate calls would join them."""
    return (
        f"cities = {json.dumps(cities)}\n"
        "reports = parallel([weather(city=city) for city in cities])\n"
        '" ".join(reports)'
    )


def warmest_program(cities: list[str]) -> str:
    """The program it writes for "the warmest three of ... by program": every call at once,
    and only the answer comes back, as it answers after calls of its own."""
    return (
        f"cities = {json.dumps(cities, ensure_ascii=False)}\n"
        "reports = parallel([weather(city=c) for c in cities])\n"
        'temps = sorted([(int(r.split(": ")[1].split("°")[0]), c) '
        "for r, c in zip(reports, cities)], reverse=True)\n"
        'result = "The warmest three: " + ", ".join(f"{c} {t}°C" for t, c in temps[:3]) + "."'
    )


def warmest_three(temperatures: list[tuple[int, str]]) -> str:
    """The answer to "the warmest three of ...", from (°C, place) pairs: the text its
    program computes, so that the three ways give the same reply."""
    top = sorted(temperatures, reverse=True)[:3]
    return "The warmest three: " + ", ".join(f"{city} {t}°C" for t, city in top) + "."


def _warmest_step(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For "the warmest three of ...": the turn's next call, or its answer from the
    reports; None for any other message, and after its program (the program's result is
    the answer) or a failed call (the usual summary says what failed)."""
    start = _turn_start(messages)
    found = _WARMEST.match(str(messages[start].get("content") or ""))
    if found is None or messages[start]["role"] != "user":
        return None
    cities = [c.strip(" .") for c in _CITY_SEPARATOR.split(found["cities"]) if c.strip(" .")]
    style, step = found["style"].lower(), len(messages)
    if style == "by program":
        if messages[-1]["role"] == "tool":
            return None
        return _call(step, [("run_program", {"source": warmest_program(cities)})])
    reports = [m for m in messages[start:] if m["role"] == "tool"]
    if not reports:
        asked = cities if style == "at once" else cities[:1]
        return _call(step, [("weather", {"city": city}) for city in asked])
    if style == "one at a time" and len(reports) < len(cities):
        return _call(step, [("weather", {"city": cities[len(reports)]})])
    asked_for = {
        call["id"]: json.loads(call["function"]["arguments"]).get("city", "?")
        for m in messages[start:]
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or []
    }
    found_in = [(_CELSIUS.search(str(m["content"])), m.get("tool_call_id")) for m in reports]
    if not all(celsius for celsius, _ in found_in):
        return None
    return _say(warmest_three([(int(c[1]), asked_for.get(i, "?")) for c, i in found_in]))


def _say(text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}


def _call(step: int, calls: list[tuple[str, dict[str, Any] | str]]) -> dict[str, Any]:
    """Tool calls with these arguments: a dict, or JSON text passed on as written."""
    tool_calls = [
        {
            "id": f"call_{step}_{index}",
            "type": "function",
            "function": {
                "name": name,
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            },
        }
        for index, (name, arguments) in enumerate(calls)
    ]
    return {
        "message": {"role": "assistant", "content": None, "tool_calls": tool_calls},
        "finish_reason": "tool_calls",
    }


def _next_step(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For "First A, then B": the tool calls of the turn's next step that has any, as the
    step's text alone would ask for them; None once no step is left, or for any other
    message. Each step waits for the previous one's results: one model call per step."""
    start = _turn_start(messages)
    found = _FIRST.match(str(messages[start].get("content") or ""))
    if found is None or messages[start]["role"] != "user":
        return None
    steps = [step for step in _THEN.split(found["steps"]) if step.strip()]
    taken = sum(1 for m in messages[start:] if m["role"] == "assistant" and m.get("tool_calls"))
    for step in steps[taken : taken + 1]:
        choice = scripted_reply([*messages, {"role": "user", "content": step}])
        if choice["finish_reason"] == "tool_calls":
            return choice
    return None


def _turn_start(messages: list[dict[str, Any]]) -> int:
    """Where the turn begins: its user message (0 if the context no longer holds it)."""
    return next((i for i in reversed(range(len(messages))) if messages[i]["role"] == "user"), 0)


def _summarise_tool_results(messages: list[dict[str, Any]]) -> str:
    """Answer from the tool results of this turn, every step of it, in order."""
    turn = messages[_turn_start(messages) :]
    calls = {
        call["id"]: call["function"]
        for message in turn
        if message["role"] == "assistant"
        for call in message.get("tool_calls") or []
    }
    lines = []
    for message in (m for m in turn if m["role"] == "tool"):
        function = calls.get(message.get("tool_call_id"), {"name": "?", "arguments": "{}"})
        result = str(message["content"])
        if result.startswith("Error:"):
            lines.append(f"The {function['name']} tool failed. {result}")
        elif result.startswith("Not run:"):  # Denied, or no decision in time.
            lines.append(f"I did not run {function['name']}. {result}")
        elif function["name"] == "calculator":
            # Its own calls: the arguments are the JSON it wrote (or "{}", see llm_client).
            expression = json.loads(function["arguments"]).get("expression", "")
            lines.append(f"{expression} = {result}")
        else:
            lines.append(result)
    return _join(lines)


def _join(answers: list[str]) -> str:
    """One reply from several answers: after a sentence a space, else "; "
    ("2 + 2 = 4; 3 * 3 = 9", "[demo data] Oslo: 3°C, rain. [demo data] Lima: …")."""
    reply = answers[0] if answers else ""
    for previous, answer in itertools.pairwise(answers):
        reply += (" " if previous.rstrip().endswith((".", "!", "?")) else "; ") + answer
    return reply

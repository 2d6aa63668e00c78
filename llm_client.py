"""The model call, through LiteLLM, and the offline scripted model.

Any LiteLLM model string works (`LLM_MODEL=openai/gpt-4o-mini`, `anthropic/...`, ...).
With no `LLM_MODEL`, the scripted model answers. It is registered as a LiteLLM custom
provider, so its replies are real LiteLLM responses with native `tool_calls`, parsed by
exactly the code that parses a real provider's.

Only activities import this module: LiteLLM takes seconds to import and has no place
in the deterministic workflow sandbox.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Without this, importing LiteLLM tries to download a price list and stalls offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm import CustomLLM
from opentelemetry import trace
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

import program
from contract import Message, Plan, ToolCall, Usage
from scripted_model import SCRIPTED_MODEL, ScriptedModel
from workflow import DELEGATE_TOOL, MAX_MESSAGE_CHARS, PROGRAM_TOOL

SYSTEM_PROMPT = (
    "You are a helpful assistant in a durable chat. Use the tools when they help: "
    "calculator for arithmetic, weather for the (demo) weather, save_note to remember "
    "something for the user, delegate (if offered) to hand a self-contained task to a "
    "subagent, run_program (if offered) when a task needs several tool calls. When the "
    "user says goodbye, call end_chat."
)

DEFAULT_CONTEXT_TOKENS = 8_000
"""Context budget for models LiteLLM knows no size for, and the scripted model's size."""
MAX_CONTEXT_TOKENS = 32_000
"""Cap for any model: the context window travels in every plan request, so in the history."""
FALLBACK_AFTER_ATTEMPTS = 2
"""Failed attempts of a model call before the next attempt goes to the next model in
LLM_MODEL, LLM_FALLBACK_MODELS (round and round, while Temporal retries)."""

# Temporal owns retries: each attempt is an activity attempt, visible in the history.
litellm.num_retries = 0
litellm.suppress_debug_info = True
logging.getLogger("LiteLLM").setLevel(logging.WARNING)  # Not a line per call in the worker log.
_tracer = trace.get_tracer(__name__)  # No-op unless the process traces (tracing.py).
litellm.custom_provider_map = [{"provider": "scripted", "custom_handler": ScriptedModel()}]
# Its model card: a context size for the budget, and a price (zero) for LiteLLM's cost
# tracking, which otherwise searches its whole price list on every call.
litellm.register_model(
    {
        SCRIPTED_MODEL: {
            "litellm_provider": "scripted",
            "mode": "chat",
            "max_input_tokens": DEFAULT_CONTEXT_TOKENS,
            "supports_function_calling": True,
            **dict.fromkeys(
                [
                    "input_cost_per_token",
                    "output_cost_per_token",
                    "cache_creation_input_token_cost",
                    "cache_read_input_token_cost",
                ],
                0.0,
            ),
        }
    }
)


@dataclass(frozen=True)
class LlmSettings:
    """Which model to call and how; read once, when the worker starts."""

    model: str = SCRIPTED_MODEL
    api_base: str | None = None
    """Where the provider listens, when not at its usual address: a local server (Ollama,
    vLLM, LM Studio) or any OpenAI-compatible one. None: the provider's default."""
    timeout_s: float = 60.0
    scripted_latency_s: float = 0.0
    context_tokens: int | None = None
    """Token budget for the messages sent; None: 3/4 of the model's input size, capped."""
    fallback_models: tuple[str, ...] = ()
    """Tried in order when the model keeps failing with errors Temporal retries; each at
    its provider's own address (LLM_API_BASE is the primary's)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> LlmSettings:
        fallbacks = (env.get("LLM_FALLBACK_MODELS") or "").split(",")
        return cls(
            model=env.get("LLM_MODEL") or SCRIPTED_MODEL,
            api_base=env.get("LLM_API_BASE") or None,
            timeout_s=env_number(env, "LLM_TIMEOUT_S", float, 60.0),
            scripted_latency_s=env_number(env, "SCRIPTED_LATENCY_MS", float, 0.0) / 1000,
            context_tokens=env_number(env, "LLM_CONTEXT_TOKENS", int, 0) or None,
            fallback_models=tuple(model.strip() for model in fallbacks if model.strip()),
        )

    def models(self) -> list[LlmSettings]:
        """The primary, then each fallback model, as the settings of a call to it."""
        return [self] + [
            dataclasses.replace(self, model=model, api_base=None, fallback_models=())
            for model in self.fallback_models
        ]

    def for_attempt(self, attempt: int) -> LlmSettings:
        """The model an activity attempt calls: FALLBACK_AFTER_ATTEMPTS attempts each, in
        order, round and round. From the attempt number alone, so every retry, on any
        worker, agrees; and a model that keeps failing cannot hold up the turn while
        another would answer."""
        models = self.models()
        return models[(attempt - 1) // FALLBACK_AFTER_ATTEMPTS % len(models)]

    @property
    def is_scripted(self) -> bool:
        return self.model.startswith("scripted/")

    def missing_keys(self) -> list[str]:
        """Provider keys the model needs but the environment lacks (checked at start).

        LiteLLM judges, given the API base: `ollama_chat/`, `hosted_vllm/` or `lm_studio/`
        at a local address need no key; `openai/` always does, because the OpenAI client
        refuses to send a request without one (a local server that checks none takes any).
        """
        if self.is_scripted:
            return []
        found = litellm.validate_environment(model=self.model, api_base=self.api_base)
        return list(found.get("missing_keys", []))

    def context_budget(self) -> int:
        return self.context_tokens or _known_context_budget(self.model)

    def count_tokens(self, message: dict[str, Any]) -> int:
        # The same messages are counted again on every step of a conversation: cache them.
        return _count_tokens(self.model, json.dumps(message, sort_keys=True))


@functools.lru_cache(maxsize=8192)
def _count_tokens(model: str, message_json: str) -> int:
    return litellm.token_counter(model=model, messages=[json.loads(message_json)])


@functools.cache
def _known_context_budget(model: str) -> int:
    try:
        size = litellm.get_model_info(model).get("max_input_tokens")
    except Exception:  # LiteLLM raises for models it has no entry for.
        size = None
    return min(size * 3 // 4, MAX_CONTEXT_TOKENS) if size else DEFAULT_CONTEXT_TOKENS


@functools.lru_cache(maxsize=64)
def _count_text_tokens(text: str) -> int:
    return litellm.token_counter(text=text)


def env_number(env: Mapping[str, str], name: str, kind: type[int | float], default: Any) -> Any:
    """A number from the environment, or a ValueError that names the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


async def plan(
    settings: LlmSettings,
    conversation: list[Message],
    tools: list[dict[str, Any]],
    *,
    on_text: Callable[[str], Awaitable[None]] | None = None,
    attempt: int = 1,
    trace_content: bool = False,
) -> Plan:
    """One chat completion with native tool calling, parsed into the workflow's `Plan`.

    Only the newest turns that fit the context budget are sent; the plan says how many
    of the oldest messages were left out, so the workflow can forget them too.

    With `on_text`, the reply is streamed: `on_text` gets each piece of its text as it
    arrives (all of it at once from a model that cannot stream), and the plan is the
    same as without. A provider error in the middle of the stream is raised here, like
    any other, after `on_text` has seen part of the text.

    The call is a span, `chat {model}` (OpenTelemetry's GenAI conventions), with the
    activity's `attempt` and what the provider reports: token counts, finish reason.
    With `trace_content`, also the messages sent and the reply.

    The plan says what the call used (`Plan.usage`, see `_usage`) and which model answered.
    """
    system = {"role": "system", "content": SYSTEM_PROMPT}
    tools = [*tools, END_CHAT_SCHEMA]
    messages = [to_provider_format(message) for message in conversation]
    reserved = settings.count_tokens(system) + _count_text_tokens(json.dumps(tools))
    dropped = oldest_turns_over_budget(
        messages, settings.context_budget() - reserved, settings.count_tokens
    )
    request: dict[str, Any] = {
        "model": settings.model,
        "messages": [system, *messages[dropped:]],
        "tools": tools,
        "timeout": settings.timeout_s,
        "num_retries": 0,
    }
    if settings.api_base:
        request["api_base"] = settings.api_base
    if settings.is_scripted and settings.scripted_latency_s:
        request["extra_body"] = {"latency_s": settings.scripted_latency_s}
    with _model_call_span(settings.model, attempt) as span:
        if trace_content:
            span.set_attribute("gen_ai.input.messages", json.dumps(request["messages"]))
        if on_text is not None and _streams(settings.model):
            response = await _streamed_response(request, on_text)
        else:
            response = await litellm.acompletion(**request)
            if on_text is not None and (text := response.choices[0].message.content):
                await on_text(text)
        usage = _usage(settings.model, request["messages"], response)
        span.set_attributes(_reported(response, usage))
        reply = litellm.Message(content=None) if response is None else response.choices[0].message
        plan = plan_from_reply(reply)
        if trace_content:
            answer = to_provider_format(Message("assistant", plan.reply, plan.tool_calls))
            span.set_attribute("gen_ai.output.messages", json.dumps([answer]))
    return dataclasses.replace(plan, context_dropped=dropped, usage=usage, model=settings.model)


async def _streamed_response(
    request: dict[str, Any], on_text: Callable[[str], Awaitable[None]]
) -> litellm.ModelResponse | None:
    """Stream the completion, handing on each piece of text; assemble the whole response
    (tool-call fragments included) as the non-streamed call would have returned it, or
    None for a stream with no chunk at all."""
    if _reports_stream_usage(request["model"]):
        # Token counts in a last chunk; without them, LiteLLM counts the tokens itself.
        request = {**request, "stream_options": {"include_usage": True}}
    chunks = []
    async for chunk in await litellm.acompletion(**request, stream=True):
        chunks.append(chunk)
        if chunk.choices and (text := chunk.choices[0].delta.content):
            await on_text(text)
    return litellm.stream_chunk_builder(chunks)


@contextmanager
def _model_call_span(model: str, attempt: int) -> Iterator[trace.Span]:
    """The span of one model call. A failed call shows its error type, never the
    provider's message: that can quote the request, or a key (see `_redact`)."""
    with _tracer.start_as_current_span(
        f"chat {model}",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "temporal.activity.attempt": attempt,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as err:
            span.set_attribute("error.type", type(err).__name__)
            span.set_status(trace.StatusCode.ERROR)
            raise


def _usage(
    model: str, messages: list[dict[str, Any]], response: litellm.ModelResponse | None
) -> Usage:
    """What one call used: the provider's token counts, or LiteLLM's where it reports none
    (the scripted model, some local servers); the cost from LiteLLM's price list, None if
    it has no price for `model`.

    LiteLLM counts a reply that reports none as it counts a stream that reports none
    (what `_streamed_response` returns then): the messages sent, not the tool schemas, and
    the text and tool calls received. So a reply has the same usage streamed or not.
    """
    if response is None:  # A stream with no chunk at all: nothing came back.
        return Usage(model_calls=1)
    reported = getattr(response, "usage", None)
    if reported and (reported.prompt_tokens or reported.completion_tokens):
        # LiteLLM prices every reply it returns: None where its list has no price.
        cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
    else:
        message = response.choices[0].message
        received = (message.content or "") + "".join(
            call.model_dump_json() for call in message.tool_calls or []
        )
        sent = litellm.token_counter(model=model, messages=messages)
        written = litellm.token_counter(model=model, text=received, count_response_tokens=True)
        reported = litellm.Usage(
            prompt_tokens=sent, completion_tokens=written, total_tokens=sent + written
        )
        cost = _price(model, sent, written)
    details = getattr(reported, "prompt_tokens_details", None)
    return Usage(
        model_calls=1,
        input_tokens=reported.prompt_tokens or 0,
        output_tokens=reported.completion_tokens or 0,
        cached_tokens=getattr(details, "cached_tokens", None) or 0,
        cost_usd=cost,
    )


def _price(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """What LiteLLM's price list says these tokens cost; None if it has no price."""
    try:
        return sum(litellm.cost_per_token(model, input_tokens, output_tokens))
    except Exception:  # LiteLLM raises for a model that is not in its price list.
        return None


def _reported(response: litellm.ModelResponse | None, usage: Usage) -> dict[str, Any]:
    """What the provider says of its answer, and what the call used, as GenAI span
    attributes (the cost is ours: GenAI's conventions have none)."""
    if response is None:
        return {}
    found: dict[str, Any] = {
        "gen_ai.response.model": getattr(response, "model", None),
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "agent.usage.cost_usd": usage.cost_usd,
    }
    if reasons := [choice.finish_reason for choice in response.choices if choice.finish_reason]:
        found["gen_ai.response.finish_reasons"] = reasons
    return {key: value for key, value in found.items() if value is not None}


@functools.cache
def _reports_stream_usage(model: str) -> bool:
    """Whether LiteLLM takes `stream_options` for this model's provider (it refuses the
    parameter for those that cannot honour it)."""
    try:
        name, provider, *_ = litellm.get_llm_provider(model)
        supported = litellm.get_supported_openai_params(model=name, custom_llm_provider=provider)
    except Exception:  # LiteLLM raises for models it does not know.
        return False
    return "stream_options" in (supported or [])


@functools.cache
def _streams(model: str) -> bool:
    """Whether the model's provider can stream. LiteLLM takes `stream=True` for every
    provider it ships; a custom provider, such as a test's, streams only if it implements
    `astreaming`."""
    provider = model.split("/", 1)[0]
    for custom in litellm.custom_provider_map:
        if custom["provider"] == provider:
            return type(custom["custom_handler"]).astreaming is not CustomLLM.astreaming
    return True


async def warm_up(settings: LlmSettings) -> None:
    """Count tokens once, and call the model once each way, plain and streamed, if it is
    the (free) scripted one: LiteLLM loads its streaming code on first use (~20 ms)."""
    settings.count_tokens({"role": "user", "content": "warm-up"})
    if settings.is_scripted:
        instant = dataclasses.replace(settings, scripted_latency_s=0.0)  # Warm, not slow.
        await plan(instant, [Message("user", "warm-up")], [])
        await plan(instant, [Message("user", "warm-up")], [], on_text=_ignore)


async def _ignore(text: str) -> None:
    pass


def oldest_turns_over_budget(
    messages: list[dict[str, Any]], budget: int, count_tokens: Callable[[dict[str, Any]], int]
) -> int:
    """How many of the oldest messages to leave out so that the rest fit `budget` tokens.

    Whole turns go, oldest first (a user message and everything that answered it), so a
    tool call never loses its result and what is sent starts with a user message. The
    latest turn always stays, whatever its size: the user's message is never dropped.
    """
    turn_starts = [i for i, message in enumerate(messages) if message["role"] == "user"]
    costs = [count_tokens(message) for message in messages]
    remaining = sum(costs)
    for start, next_start in itertools.pairwise(turn_starts):
        if remaining <= budget:
            return start
        remaining -= sum(costs[start:next_start])
    return turn_starts[-1] if turn_starts else 0


# Ordered: ContextWindowExceededError is a BadRequestError, so it must come first.
PERMANENT_PROVIDER_ERRORS: list[tuple[type[Exception], str]] = [
    (litellm.AuthenticationError, "Check the provider's API key in .env."),
    (litellm.PermissionDeniedError, "Check that the API key may use this model."),
    (litellm.NotFoundError, "Check LLM_MODEL: the provider does not know this model."),
    (
        litellm.ContextWindowExceededError,
        "The conversation is too long for this model; start a new session.",
    ),
    (litellm.BadRequestError, "Check LLM_MODEL and the provider settings in .env."),
]
TRANSIENT_PROVIDER_ERRORS: tuple[type[Exception], ...] = (
    litellm.RateLimitError,
    litellm.Timeout,
    litellm.APIConnectionError,
    litellm.InternalServerError,
    litellm.ServiceUnavailableError,
)

END_CHAT_SCHEMA = {
    "type": "function",
    "function": {
        "name": "end_chat",
        "description": "End the conversation after the user says goodbye.",
        "parameters": {
            "type": "object",
            "properties": {"farewell": {"type": "string", "description": "Last words."}},
        },
    },
}


DELEGATE_SCHEMA = {
    "type": "function",
    "function": {
        "name": DELEGATE_TOOL,
        "description": (
            "Hand a self-contained task to a subagent, which works on it with its own tools "
            "and returns its final answer. Several delegate calls in one reply run in parallel."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "task": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_MESSAGE_CHARS,
                    "description": "The whole task: the subagent sees nothing else.",
                },
                "tools": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Tools the subagent may use (default: all of yours).",
                },
            },
            "required": ["task"],
        },
    },
}
"""Offered while the workflow allows delegation; the workflow, not `execute_tool`, runs it."""


PROGRAM_SCHEMA = {
    "type": "function",
    "function": {
        "name": PROGRAM_TOOL,
        "description": program.DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {
                "source": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": program.MAX_SOURCE_CHARS,
                    "description": "The program, in the subset of Python described.",
                },
            },
            "required": ["source"],
        },
    },
}
"""Offered unless the session turns programs off; the workflow runs it (program.py)."""


def plan_from_reply(reply: litellm.Message) -> Plan:
    """Parse the provider's assistant message into the workflow's `Plan`."""
    calls = [
        ToolCall(call.id, call.function.name or "", call.function.arguments or "")
        for call in reply.tool_calls or []
    ]
    for call in calls:
        if call.name == "end_chat":
            farewell = _json_object(call.arguments).get("farewell") or reply.content
            return Plan(reply=str(farewell or "Goodbye!"), end_chat=True)
    if not calls and not reply.content:
        return Plan(reply="(The model returned an empty reply.)")
    return Plan(reply=reply.content or "", tool_calls=calls)


def to_provider_format(message: Message) -> dict[str, Any]:
    """A history message in the OpenAI chat format that LiteLLM takes for every provider."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if not message.tool_calls:
        return {"role": message.role, "content": message.content}
    return {
        "role": "assistant",
        "content": message.content or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                # Providers reject invalid JSON here; the tool result already quotes it.
                "function": {"name": call.name, "arguments": _valid_json(call.arguments)},
            }
            for call in message.tool_calls
        ],
    }


def classify_provider_error(err: Exception) -> ApplicationError | None:
    """What Temporal should do with a provider exception; None for one we do not know,
    which Temporal then retries like any other activity failure.

    Both kinds are BENIGN: expected, not a bug in the worker, so the SDK does not log
    them with a stack trace; `plan_next_action` logs them on one line instead.
    """
    detail = _redact(str(err))[:300]
    for kind, fix in PERMANENT_PROVIDER_ERRORS:
        if isinstance(err, kind):
            return ApplicationError(
                f"The model provider refused the request ({kind.__name__}): {detail} {fix}",
                type=kind.__name__,
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            )
    if isinstance(err, TRANSIENT_PROVIDER_ERRORS):
        return ApplicationError(
            f"The model provider is unavailable ({type(err).__name__}): {detail}",
            type="ProviderUnavailable",
            category=ApplicationErrorCategory.BENIGN,
        )
    return None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _valid_json(text: str) -> str:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return "{}"
    return text


def _redact(text: str) -> str:
    """Keep API keys out of messages that end up in the history and the logs: the keys
    this process holds, whatever their shape, and anything else that looks like one."""
    for name, value in os.environ.items():
        if name.endswith(("_KEY", "_TOKEN", "_SECRET")) and len(value) >= 8:
            text = text.replace(value, "[redacted]")
    return re.sub(r"\b(sk|key|api)[-_][A-Za-z0-9_\-*]{8,}", r"\1-[redacted]", text)

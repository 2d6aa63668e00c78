"""Traces: each turn as one tree of OpenTelemetry spans, when the standard variables ask.

    OTEL_TRACES_EXPORTER=console   # spans as JSON on stderr (TRACES_FILE: to a file instead)
    OTEL_TRACES_EXPORTER=otlp      # to OTEL_EXPORTER_OTLP_ENDPOINT; `uv sync --extra otlp`
    OTEL_SERVICE_NAME=...          # default: durable-agent-worker, -chat, -benchmark
    OTEL_INCLUDE_CONTENT=1         # messages, tool arguments and replies in spans too

Unset or `none`: nothing is set up and nothing is paid. No tracer provider, no plugin; the
few spans this project opens itself go to OpenTelemetry's no-op tracer. On: each process
calls `setup` once, at start, and `worker.connect` adds the SDK's `OpenTelemetryPlugin`
to the client it builds, so the worker, the chat client and the benchmark trace alike.
The plugin carries the trace context in Temporal headers, from the client's
`send_message` update through the workflow to every activity attempt.

The tracer provider is the SDK's replay-safe one (`create_tracer_provider`), which the
plugin requires: Temporal replays a workflow from its history, again and again, running
the code that opened a span each time. That provider draws span ids from the workflow's
deterministic random, so a replayed span keeps the ids its children were given, and it
ends (is exported) only when its code runs for real, never on replay: no duplicates.

The OpenTelemetry SDK and the contrib are imported only when tracing is on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.contrib.opentelemetry import ReplaySafeTracerProvider
    from temporalio.plugin import SimplePlugin

EXPORTERS = ("console", "otlp")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
_installed: ReplaySafeTracerProvider | None = None


def setup(default_service_name: str, env: Mapping[str, str] | None = None) -> str:
    """Trace this process if the environment says so; one line for a start banner.

    Call it once, before connecting. Raises ValueError, naming the variable, on a bad
    setting or a missing exporter package.
    """
    env = os.environ if env is None else env
    exporters = span_exporters(env)
    if not exporters:
        return "Traces: off"
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import create_tracer_provider

    service = env.get("OTEL_SERVICE_NAME") or default_service_name
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES and the SDK's own attributes.
    provider = create_tracer_provider(resource=Resource.create({SERVICE_NAME: service}))
    for exporter in exporters.values():
        # In a background thread, in batches: a turn does not wait for its spans' export.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return f"Traces: {', '.join(_destination(name, env) for name in exporters)}, as {service}"


def span_exporters(env: Mapping[str, str]) -> dict[str, SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (comma-separated), by name; none if off."""
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or names in ([], ["none"]):
        return {}
    if unknown := [name for name in names if name not in EXPORTERS]:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {', '.join(unknown)}; "
            f"this project knows {', '.join(EXPORTERS)} and none"
        )
    return {name: _console(env) if name == "console" else _otlp(env) for name in names}


def _console(env: Mapping[str, str]) -> SpanExporter:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    # Never stdout (the SDK's default): replies and benchmark tables go there. A file, if
    # given, stays open for the life of the process, as stderr does.
    path = env.get("TRACES_FILE")
    out = open(path, "a", encoding="utf-8") if path else sys.stderr  # noqa: SIM115
    return ConsoleSpanExporter(out=out)


def _otlp(env: Mapping[str, str]) -> SpanExporter:
    """The OTLP exporter for the protocol; it reads OTEL_EXPORTER_OTLP_ENDPOINT, headers,
    timeouts and the rest itself."""
    try:
        if _otlp_protocol(env) == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ValueError(
            "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter, an optional extra: "
            "run `uv sync --extra otlp` (or `uv run --extra otlp ...`)"
        ) from None
    return OTLPSpanExporter()


def _otlp_protocol(env: Mapping[str, str]) -> str:
    """OTEL_EXPORTER_OTLP_PROTOCOL; grpc by default, as the Python SDK's own setup has it."""
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol not in OTLP_PROTOCOLS:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: use {' or '.join(OTLP_PROTOCOLS)}"
        )
    return protocol


def _destination(exporter: str, env: Mapping[str, str]) -> str:
    """Where an exporter sends the spans, for the start banner."""
    if exporter == "console":
        return f"console to {env.get('TRACES_FILE') or 'stderr'}"
    protocol = _otlp_protocol(env)
    endpoint = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or ("http://localhost:4317" if protocol == "grpc" else "http://localhost:4318")
    )
    return f"otlp ({protocol}) to {endpoint}"


def install(provider: ReplaySafeTracerProvider) -> None:
    """Make `provider` this process's tracer provider: the plugin takes OpenTelemetry's
    global one. `setup` installs one from the environment; tests install their own."""
    global _installed
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        raise RuntimeError("this process has a tracer provider already: OpenTelemetry takes one")
    _installed = provider


def plugins() -> list[SimplePlugin]:
    """What `worker.connect` adds to every client: the SDK's plugin, if this process traces.

    `add_temporal_spans` gives the tree its Temporal spans: the client's update, the
    workflow's handling of it, and one span per activity attempt.
    """
    if _installed is None:
        return []
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

    return [OpenTelemetryPlugin(add_temporal_spans=True)]


def include_content(env: Mapping[str, str]) -> bool:
    """OTEL_INCLUDE_CONTENT=1: message text, tool arguments and replies go into spans too
    (read by the worker at start). Off, spans carry names, counts and outcomes only."""
    value = env.get("OTEL_INCLUDE_CONTENT", "").strip().lower()
    if value not in ("", "0", "1", "false", "true"):
        raise ValueError(f"OTEL_INCLUDE_CONTENT={value!r}: use 1 to include content, or 0")
    return value in ("1", "true")


def shutdown() -> None:
    """Export the spans still buffered and stop tracing: clients connected afterwards get
    no plugin. The scripts call it before os._exit, which skips the SDK's own handler at
    exit; a SIGKILLed process loses the spans of its last few seconds."""
    global _installed
    if _installed is not None:
        _installed.shutdown()
        _installed = None

"""The worker: hosts the workflow and the activities, and polls the task queue.

Start as many as you like on one task queue; Temporal spreads the work between them,
and when one dies another picks its tasks up. Everything configurable is read here,
once, at start: connection (the SDK's environment configuration: TEMPORAL_ADDRESS,
TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TLS, profiles), task queue, deployment version
(deployment.py), model, notes file, the tools (TOOL_MODULES, MCP_CONFIG) and which wait
for approval, the workspace (WORKSPACE_ROOT: workspace.py), fault switches, encryption and
traces (OTEL_*). A worker with a workspace also polls a task queue of its own, where its
conversations' file calls come (`serve`).

    uv run worker.py [--address HOST:PORT] [--task-queue NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import os
import py_compile
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dotenv import load_dotenv
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)
from temporalio.envconfig import ClientConfig
from temporalio.service import RPCError
from temporalio.worker import Worker

import deployment
import tracing
import workflow
from codec import EncryptedOnlyConverter, EncryptionCodec
from workflow import DurableAgentWorkflow

if TYPE_CHECKING:
    from activities import AgentActivities

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_TASK_QUEUE = "durable-agent-queue"
DEFAULT_NOTES_FILE = "notes.jsonl"
# A workflow's next task goes first to the worker that ran it (which holds it in cache).
# If that worker died, the task waits this long before any worker may take it: the SDK's
# default of 10 s would make every conversation of a crashed worker wait 10 s.
STICKY_TIMEOUT = timedelta(seconds=1)
# Conversations a worker keeps in memory between their tasks (the SDK's default). One that
# fell out is replayed from its history at its next task (docs/performance.md, scale).
DEFAULT_WORKFLOW_CACHE_SIZE = 1000


class TemporalUnreachable(Exception):
    """Raised by `connect` with a message that says what to run instead."""


async def connect(address: str | None = None, *, env: Mapping[str, str] | None = None) -> Client:
    """Connect as the environment configuration says; `address` overrides its host, `env`
    this process's environment.

    Every process connects here (worker, chat client, benchmark, tests), so all of them
    use the same data converter and, if the process traces (tracing.py), the same
    tracing plugin. Raises ValueError on a bad encryption setting.
    """
    config = ClientConfig.load_client_connect_config(override_env_vars=env)
    config.setdefault("target_host", DEFAULT_ADDRESS)
    if address:
        config["target_host"] = address
    try:
        return await Client.connect(
            **config, data_converter=data_converter(env), plugins=tracing.plugins()
        )
    except RuntimeError as err:
        raise TemporalUnreachable(
            f"Cannot reach Temporal at {config['target_host']} ({err}).\n"
            "Start a local server with `uv run dev_server.py`, or run the chat "
            "with `uv run start_workflow.py --embedded`, which starts one for you."
        ) from err


class PydanticPayloadConverter(CompositePayloadConverter):
    """The SDK's pydantic payload converter (`temporalio.contrib.pydantic`), its JSON
    converter one instance for the whole process.

    The worker builds a payload converter for every workflow run it starts, and pydantic's
    holds a cache of decoders (type adapters) of its own: each conversation that entered
    the cache, or came back into it cold, built the decoder of `Plan` again (34 ms and
    76 KB here) and kept it while cached. One shared JSON converter builds each once. The
    types it decodes are the history's dataclasses (`contract.py`, which passes through
    the sandbox), the same objects for every run; the cache is bounded (1 024) as before.
    """

    _json = PydanticJSONPlainPayloadConverter()

    def __init__(self) -> None:
        super().__init__(
            *(
                self._json if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


class EncryptedPydanticPayloadConverter(EncryptedOnlyConverter, PydanticPayloadConverter):
    """An encrypting process's converter: EncryptedOnlyConverter's refusals over the
    shared JSON converter, so encrypted conversations build `Plan`'s decoder once too."""


PYDANTIC_DATA_CONVERTER = DataConverter(payload_converter_class=PydanticPayloadConverter)


def data_converter(env: Mapping[str, str] | None = None) -> DataConverter:
    """JSON through pydantic (the SDK's contrib), encrypted if ENCRYPTION_KEYS is set.

    The JSON is the SDK default's, field for field, so histories written with either
    read with both; but pydantic decodes a plan request of 80 messages in 0.4 ms where
    the default takes 3-6 ms (it resolves every dataclass's type hints for every value),
    and that was a third of the worker's CPU (docs/performance.md).

    Encrypting, it also moves failure messages and stack traces into a payload (the SDK's
    encoded failure attributes), which the codec encrypts: a failure message can quote
    what the user wrote; and it rejects a new update that comes unencrypted or does not
    decrypt (`EncryptedOnlyConverter`), so a client without the keys writes nothing into
    an encrypted conversation. Replay needs the same converter to read an encrypted history.
    """
    codec = EncryptionCodec.from_env(env, refuse_later=True)
    if codec is None:
        return PYDANTIC_DATA_CONVERTER
    return dataclasses.replace(
        PYDANTIC_DATA_CONVERTER,
        payload_converter_class=EncryptedPydanticPayloadConverter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def task_queue_name(flag: str | None = None) -> str:
    return flag or os.environ.get("TEMPORAL_TASK_QUEUE") or DEFAULT_TASK_QUEUE


def workflow_cache_size(env: Mapping[str, str] | None = None) -> int:
    """WORKFLOW_CACHE_SIZE: conversations held in memory (0: replay every task); ValueError
    naming the variable if it is not a whole number of at least 0."""
    env = os.environ if env is None else env
    given = env.get("WORKFLOW_CACHE_SIZE", "").strip()
    if not given:
        return DEFAULT_WORKFLOW_CACHE_SIZE
    if not given.isdigit():
        raise ValueError(f"WORKFLOW_CACHE_SIZE={given!r} is not a whole number of at least 0")
    return int(given)


@functools.cache
def compile_workflow_module() -> None:
    """Write `workflow.py`'s bytecode cache (`__pycache__`) if it can.

    The workflow sandbox imports `workflow.py` afresh for every run it starts (a new
    conversation, one back in the cache, each continue-as-new), so that no run sees
    another's module state. Where Python writes no bytecode (PYTHONDONTWRITEBYTECODE, as
    on this machine), every such import compiled the source again: 18 ms of each new or
    cold conversation here (docs/performance.md, scale). The module still runs afresh
    for every run; only the compiling is done once. A read-only folder keeps the old cost.
    """
    with suppress(OSError, py_compile.PyCompileError):
        py_compile.compile(workflow.__file__, doraise=True)


def build_worker(
    client: Client, task_queue: str, activities: AgentActivities, **options: Any
) -> Worker:
    """A worker for the agent, running these activities (`configured_activities`); its
    deployment version (deployment.py) defaults to the one the environment configures."""
    options.setdefault("deployment_config", deployment.deployment_config())
    compile_workflow_module()
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[DurableAgentWorkflow],
        activities=[activities.plan_next_action, activities.execute_tool],
        graceful_shutdown_timeout=timedelta(seconds=5),
        sticky_queue_schedule_to_start_timeout=STICKY_TIMEOUT,
        **options,
    )


@asynccontextmanager
async def serve(
    client: Client, task_queue: str, activities: AgentActivities, **options: Any
) -> AsyncIterator[Worker]:
    """Run the worker (`build_worker`) until the context ends and, if its workspace is
    on its own disk, a second one on its own task queue: the file calls of the
    conversations whose workspace it holds (workspace.py). Each queue counts against
    the server's limit of task queues per deployment version (docs/workspace.md)."""
    options.setdefault("deployment_config", deployment.deployment_config())
    async with AsyncExitStack() as stack:
        if activities.workspace and (own_queue := activities.workspace.queue):
            own = {k: v for k, v in options.items() if k in ("deployment_config", "identity")}
            await stack.enter_async_context(
                Worker(
                    client,
                    task_queue=own_queue,
                    activities=[activities.execute_tool],
                    graceful_shutdown_timeout=timedelta(seconds=5),
                    **own,
                )
            )
        yield await stack.enter_async_context(
            build_worker(client, task_queue, activities, **options)
        )


@asynccontextmanager
async def configured_activities(
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[AgentActivities]:
    """The activities as the environment (`env`, default this process's) configures them,
    connected to their MCP servers until the context ends. Raises ValueError on a bad
    setting, a tool module that cannot be loaded, or an MCP server that cannot start."""
    # Imported here, not at the top: LiteLLM takes seconds to load, and the chat client
    # imports this module only to connect. The user's tool modules load first, so one
    # that cannot stops the worker in a blink.
    from function_tools import module_tools
    from toolbox import ApprovalPolicy, toolset
    from tools import registry
    from workspace import Workspace

    env = os.environ if env is None else env
    notes_file = Path(env.get("NOTES_FILE") or DEFAULT_NOTES_FILE)
    builtin, modules = registry(notes_file).values(), module_tools(env.get("TOOL_MODULES", ""))
    workspace = Workspace.from_env(env)
    builtin = [*builtin, *(workspace.tools() if workspace else [])]
    toolset(builtin, modules)  # A clash stops the worker before any server starts.

    from activities import AgentActivities, Faults
    from llm_client import LlmSettings

    llm = LlmSettings.from_env(env)
    for model in llm.models():  # The primary, then each fallback: all checked now.
        if missing := model.missing_keys():
            # The OpenAI client will not send a request without a key, even to a local server.
            local = f" (a server that checks no key takes any, e.g. {missing[0]}=unused)"
            which = "LLM_MODEL=" if model is llm else "LLM_FALLBACK_MODELS: "
            raise ValueError(
                f"{which}{model.model} needs {', '.join(missing)}: add it to .env"
                + (local if model.api_base else "")
            )
    faults = Faults.from_env(dict(env))
    async with AsyncExitStack() as stack:
        mcp = []
        if config := env.get("MCP_CONFIG"):
            # Imported only when asked for: the mcp SDK adds a second to a worker's start.
            from mcp_tools import connected, servers_in

            mcp = await stack.enter_async_context(connected(servers_in(Path(config))))
        tools = toolset(builtin, modules, mcp)
        approvals = ApprovalPolicy.from_env(env, tools)
        content = tracing.include_content(env)
        yield AgentActivities(
            llm,
            notes_file,
            faults,
            approvals,
            tools=tools,
            trace_content=content,
            workspace=workspace,
        )


class WorkerProcess:
    """This script in a child process: what the failure tests and the benchmark SIGKILL."""

    READY_LINE = "Polling task queue"

    def __init__(
        self,
        address: str,
        task_queue: str,
        log: Path,
        env: Mapping[str, str],
        script: Path = Path(__file__),
    ) -> None:
        self.task_queue = task_queue
        self.log = log
        self.launched_at = time.monotonic()
        self.ready_at: float | None = None
        self._process = subprocess.Popen(
            [sys.executable, str(script), "--address", address, "--task-queue", task_queue],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            cwd=Path(__file__).parent,
        )

    async def ready(self, timeout_s: float = 120) -> WorkerProcess:
        """Wait until the worker polls its task queue; raise with its log if it cannot.
        A worker starts in seconds, but past 60 s on a machine loaded to 10 on two cores."""
        deadline = time.monotonic() + timeout_s
        while self.READY_LINE not in self.log.read_text():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"worker did not start:\n{self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.01)
        self.ready_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        return self._process.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye, exactly what a crash looks like."""
        self._process.kill()
        self._process.wait()

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM: the worker finishes its tasks and leaves, as a deploy stops it."""
        self._process.terminate()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help=f"Temporal frontend (default {DEFAULT_ADDRESS})")
    parser.add_argument("--task-queue", help=f"task queue (default {DEFAULT_TASK_QUEUE})")
    args = parser.parse_args()
    load_dotenv()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    async with AsyncExitStack() as stack:  # MCP sessions stay open until the worker stops
        try:
            activities = await stack.enter_async_context(configured_activities())
            # Warm up before tracing starts: the warm-up's model calls are no conversation's.
            await activities.warm_up()
            traces = tracing.setup("durable-agent-worker")  # before connecting: adds the plugin
            version = deployment.deployment_config()
            cache_size = workflow_cache_size()
            client = await connect(args.address)
            versioning = await deployment.make_current_if_first(client, version)
        except (ValueError, TemporalUnreachable) as err:
            print(f"worker: {err}", file=sys.stderr)
            return 2
        except RPCError as err:  # e.g. a server without Worker Deployment Versioning
            print(
                "worker: cannot declare deployment version "
                f"{version.version.to_canonical_string()} ({err.message}); "
                "TEMPORAL_DEPLOYMENT_NAME= (empty) runs unversioned",
                file=sys.stderr,
            )
            return 2
        task_queue = task_queue_name(args.task_queue)
        print(activities.describe(), file=sys.stderr)
        codec = client.data_converter.payload_codec
        encryption = codec.describe() if isinstance(codec, EncryptionCodec) else "Encryption: off"
        print(encryption, file=sys.stderr)
        print(traces, file=sys.stderr)
        print(versioning, file=sys.stderr)
        print(f"Workflow cache: {cache_size} conversations", file=sys.stderr)

        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        async with serve(
            client,
            task_queue,
            activities,
            deployment_config=version,
            max_cached_workflows=cache_size,
        ):
            # The PID: what a person kills to crash this worker and no other process.
            print(
                f"Polling task queue '{task_queue}' (worker PID {os.getpid()}). Ctrl-C to stop; "
                f"`kill -9 {os.getpid()}` to crash it.",
                file=sys.stderr,
            )
            await stop.wait()
    print("Worker stopped.", file=sys.stderr)
    return 0


def exit_process(code: int) -> None:
    """Exit without interpreter teardown, which can race the SDK's Rust threads and abort
    a finished process (temporalio/sdk-python#300); export buffered spans and flush our
    output first."""
    tracing.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_process(asyncio.run(main()))

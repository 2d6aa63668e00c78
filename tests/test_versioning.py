"""Shipping a new version while conversations live (docs/versioning.md; MANUAL_TESTS.md, 8).

Two worker processes whose workflow code differs: v1 is this project's code, v2 the copy
`tests/agent_v2.py` writes (one command more per turn, so v1's histories do not replay on
it). Five conversations are live on v1 when an operator makes v2 current: one mid-turn
with a slow tool, one waiting for approval, one whose model is about to delegate, and two
idle. The tests below read what each did. The deployment has a name of its own: the
current version of a deployment applies to all its task queues, and the rest of the suite
shares `durable-agent`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType

import pytest
from agent_v2 import write_v2
from conftest import (
    activity_running,
    approvals_waiting,
    decide,
    run_id_is_not,
    start_session,
    until,
)
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import DescribeWorkerDeploymentRequest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from activities import AgentActivities
from contract import SessionInput
from deployment import deployment_config, make_current_if_first
from dev_server import temporal_binary
from worker import WorkerProcess, build_worker, data_converter
from workflow import DurableAgentWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
# v1's model takes 2 s a call and its tools 2 s: long enough to switch versions mid-step.
V1_ENV = {"SCRIPTED_LATENCY_MS": "2000", "FAULT_TOOL_DELAY_S": "2"}


@dataclass
class Rollout:
    """What the scenario left behind: the workers, the conversations, their replies."""

    client: Client
    deployment: str
    v1: WorkerProcess
    v2: WorkerProcess
    v2_code: ModuleType
    conversations: dict[str, WorkflowHandle]
    first_runs: dict[str, str]
    replies: dict[str, list[str]] = field(default_factory=dict)
    switched_at: datetime | None = None
    """When v2 became current, as the server recorded it."""

    async def runs(self, name: str) -> list[WorkflowHistory]:
        """The conversation's runs, oldest first, each as its history."""
        workflow_id = self.conversations[name].id
        first = self.client.get_workflow_handle(workflow_id, run_id=self.first_runs[name])
        latest = self.client.get_workflow_handle(workflow_id)
        return [await first.fetch_history(), await latest.fetch_history()]


@pytest.fixture(scope="module")
async def rollout(client: Client, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator:
    directory = tmp_path_factory.mktemp("versioning")
    deployment = f"test-versioning-{uuid.uuid4().hex[:8]}"
    task_queue = f"test-{uuid.uuid4()}"
    address = client.service_client.config.target_host
    env = {"TEMPORAL_DEPLOYMENT_NAME": deployment, "NOTES_FILE": str(directory / "notes.jsonl")}
    v2_worker = write_v2(directory / "v2")
    # v1 is the deployment's first version: made current as its first worker would make it
    # (test_the_first_worker_of_a_fresh_deployment_makes_its_version_current), so that both
    # workers can start at once.
    v1_env = {**env, "TEMPORAL_WORKER_BUILD_ID": "v1"}
    await make_current_if_first(client, deployment_config(v1_env))
    v1 = WorkerProcess(address, task_queue, directory / "v1.log", {**v1_env, **V1_ENV})
    v2_env = {**env, "TEMPORAL_WORKER_BUILD_ID": "v2"}
    v2 = WorkerProcess(address, task_queue, directory / "v2.log", v2_env, v2_worker)
    try:
        await asyncio.gather(v1.ready(), v2.ready())
        yield await _run_scenario(client, deployment, task_queue, v1, v2, v2_worker)
    finally:
        v1.kill()
        v2.kill()


async def _run_scenario(
    client: Client,
    deployment: str,
    task_queue: str,
    v1: WorkerProcess,
    v2: WorkerProcess,
    v2_worker: Path,
) -> Rollout:
    names = ["slow_tool", "approval", "delegating", "idle", "idle_signalled"]
    started = {
        name: await client.start_workflow(
            DurableAgentWorkflow.run,
            SessionInput(),
            id=f"{deployment}-{name}",
            task_queue=task_queue,
        )
        for name in names
    }
    first_runs = {name: handle.result_run_id or "" for name, handle in started.items()}
    # Handles without a run id: they follow the conversation from run to run.
    c = {name: client.get_workflow_handle(handle.id) for name, handle in started.items()}
    v2_code = _module(v2_worker.with_name("workflow.py"))
    rollout = Rollout(client, deployment, v1, v2, v2_code, c, first_runs)

    # On v1: two conversations go idle, one waits for its slow tool, one for approval, and
    # one for its model, about to delegate.
    hellos = await asyncio.gather(_say(c["idle"], "hello"), _say(c["idle_signalled"], "hello"))
    turns = {
        "slow_tool": asyncio.create_task(_say(c["slow_tool"], "What is 2 + 2?")),
        "approval": asyncio.create_task(_say(c["approval"], "note: call the bank")),
    }
    await until(lambda: activity_running(c["slow_tool"], "execute_tool"))
    [waiting] = await approvals_waiting(c["approval"])
    turns["delegating"] = asyncio.create_task(_say(c["delegating"], "delegate: What is 6 * 7?"))
    await until(lambda: activity_running(c["delegating"], "plan_next_action"))

    await set_current_version(client, deployment, "v2")
    described = await client.workflow_service.describe_worker_deployment(
        DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
    )
    rollout.switched_at = (
        described.worker_deployment_info.routing_config.current_version_changed_time.ToDatetime()
    )

    # The approval is decided, the idle conversations hear from us, the turns finish.
    await decide(c["approval"], waiting.call_id, True)
    await until(lambda: moved_by_a_signal(c["idle_signalled"], first_runs["idle_signalled"]))
    turns["idle"] = asyncio.create_task(_say(c["idle"], "hello again"))
    rollout.replies = {name: [await turn] for name, turn in turns.items()}
    rollout.replies["idle"].insert(0, hellos[0])
    rollout.replies["idle_signalled"] = [hellos[1]]
    for name, handle in c.items():
        await until(lambda handle=handle, name=name: run_id_is_not(handle, first_runs[name]))
    last = await asyncio.gather(*(_say(handle, "What is 1 + 1?") for handle in c.values()))
    for name, reply in zip(c, last, strict=True):
        rollout.replies[name].append(reply)
    return rollout


async def moved_by_a_signal(handle: WorkflowHandle, first_run: str) -> bool:
    """Signal an idle conversation to move, as an operator would, again if need be: the
    server tells runs about a new current version a moment after the command returns
    (usually within 0.2 s here), and a signal that comes first finds nothing to do."""
    await handle.signal(DurableAgentWorkflow.move_to_current_version)
    await asyncio.sleep(0.2)
    return await run_id_is_not(handle, first_run)


async def set_current_version(client: Client, deployment: str, build_id: str) -> None:
    """What the operator runs: `temporal worker deployment set-current-version`."""
    await _temporal(
        client,
        "worker",
        "deployment",
        "set-current-version",
        "--deployment-name",
        deployment,
        "--build-id",
        build_id,
        "--yes",
    )


async def _temporal(client: Client, *args: str) -> str:
    address = client.service_client.config.target_host
    process = await asyncio.create_subprocess_exec(
        temporal_binary(),
        *args,
        "--address",
        address,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def _say(handle: WorkflowHandle, text: str) -> str:
    return await handle.execute_update(DurableAgentWorkflow.send_message, text)


def _module(path: Path) -> ModuleType:
    """The v2 copy of workflow.py as a module of its own, to replay histories with."""
    spec = importlib.util.spec_from_file_location(f"workflow_{uuid.uuid4().hex}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def builds(history: WorkflowHistory) -> set[str]:
    """The build ids of the workers that completed the run's workflow tasks."""
    return {
        event.workflow_task_completed_event_attributes.deployment_version.build_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    }


def failed_tasks(history: WorkflowHistory) -> int:
    return sum(
        1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    )


def turns(history: WorkflowHistory) -> int:
    """Messages the run accepted (each a `send_message` update)."""
    accepted = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    return sum(1 for e in history.events if e.event_type == accepted)


async def replay(history: WorkflowHistory, module: ModuleType | None = None) -> None:
    """Replay with this project's workflow code, or with that of `module` (unsandboxed: it
    is not importable by name, and the determinism check does not need the sandbox)."""
    if module is None:
        replayer = Replayer(workflows=[DurableAgentWorkflow], data_converter=data_converter())
    else:
        replayer = Replayer(
            workflows=[module.DurableAgentWorkflow],
            data_converter=data_converter(),
            workflow_runner=UnsandboxedWorkflowRunner(),
        )
    await replayer.replay_workflow(history)


# --- The scenario ------------------------------------------------------------------------


async def test_every_turn_in_flight_when_v2_became_current_finishes_on_v1(rollout: Rollout):
    assert rollout.replies["slow_tool"][0] == "2 + 2 = 4"
    assert rollout.replies["approval"][0] == "Saved your note: call the bank"
    assert rollout.replies["delegating"][0] == "6 * 7 = 42"
    for name in ("slow_tool", "approval", "delegating"):
        first_run, _ = await rollout.runs(name)
        assert builds(first_run) == {"v1"}, name


async def test_each_conversation_continues_on_v2_after_its_turn(rollout: Rollout):
    for name, handle in rollout.conversations.items():
        assert rollout.replies[name][-1] == "1 + 1 = 2", name
        _, second_run = await rollout.runs(name)
        assert builds(second_run) == {"v2"}, name
        description = await handle.describe()
        assert (
            description.raw_description.workflow_execution_info.versioning_info.deployment_version.build_id
            == "v2"
        )


async def test_a_v1_conversation_is_never_given_a_v2_task_before_it_continues_as_new(
    rollout: Rollout,
):
    for name in rollout.conversations:
        first_run, second_run = await rollout.runs(name)
        assert builds(first_run) == {"v1"}, name
        assert (
            first_run.events[-1].event_type
            == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        )
        assert failed_tasks(first_run) == failed_tasks(second_run) == 0, name


async def test_an_approval_decided_after_v2_became_current_runs_its_tool_on_v1(rollout: Rollout):
    first_run, _ = await rollout.runs("approval")
    tool_runs = [
        event.activity_task_started_event_attributes.identity
        for event in first_run.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert tool_runs and all(identity.startswith(f"{rollout.v1.pid}@") for identity in tool_runs)


async def test_a_subagent_started_after_v2_became_current_runs_on_v1(rollout: Rollout):
    first_run, _ = await rollout.runs("delegating")
    [started] = [
        e
        for e in first_run.events
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    ]
    child_id = started.start_child_workflow_execution_initiated_event_attributes.workflow_id
    child = await rollout.client.get_workflow_handle(child_id).fetch_history()
    assert builds(child) == {"v1"}
    assert rollout.switched_at and started.event_time.ToDatetime() > rollout.switched_at


async def test_an_idle_conversation_answers_its_next_message_on_v1_then_moves(rollout: Rollout):
    first_run, second_run = await rollout.runs("idle")
    assert (turns(first_run), turns(second_run)) == (2, 1)  # "hello again" was answered on v1
    assert builds(first_run) == {"v1"}


async def test_a_signal_moves_an_idle_conversation_without_a_turn(rollout: Rollout):
    first_run, second_run = await rollout.runs("idle_signalled")
    assert (turns(first_run), turns(second_run)) == (1, 1)  # "hello" before the switch
    assert builds(second_run) == {"v2"}


async def test_v1_drains_once_every_conversation_has_moved(rollout: Rollout):
    async def drained() -> bool:
        version = json.loads(
            await _temporal(
                rollout.client,
                "worker",
                "deployment",
                "describe-version",
                "--deployment-name",
                rollout.deployment,
                "--build-id",
                "v1",
                "--output",
                "json",
            )
        )
        return version["drainageInfo"]["drainageStatus"] == "drained"

    await until(drained, timeout_s=30)


async def test_the_first_worker_of_a_fresh_deployment_makes_its_version_current(client: Client):
    name = f"test-fresh-{uuid.uuid4().hex[:8]}"
    first = deployment_config({"TEMPORAL_DEPLOYMENT_NAME": name, "TEMPORAL_WORKER_BUILD_ID": "a"})
    second = deployment_config({"TEMPORAL_DEPLOYMENT_NAME": name, "TEMPORAL_WORKER_BUILD_ID": "b"})

    assert await make_current_if_first(client, first) == (
        f"Deployment version {name}.a: current, new conversations start on it"
    )
    assert (await make_current_if_first(client, second)).startswith(
        f"Deployment version {name}.b: not current ({name}.a is); it runs only the conversations"
    )


async def test_workers_say_which_version_is_current(rollout: Rollout):
    assert f"Deployment version {rollout.deployment}.v1: current" in rollout.v1.log.read_text()
    assert (
        f"Deployment version {rollout.deployment}.v2: not current ({rollout.deployment}.v1 is)"
        in rollout.v2.log.read_text()
    )


# --- Replay: each version's code and its own histories -----------------------------------


async def test_each_version_replays_its_own_runs_and_v2_cannot_replay_v1(rollout: Rollout):
    for name in rollout.conversations:
        first_run, second_run = await rollout.runs(name)
        await replay(first_run)
        await replay(second_run, rollout.v2_code)
        with pytest.raises(NondeterminismError):
            await replay(first_run, rollout.v2_code)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_the_change_under_workflow_patched_replays_recorded_histories(
    path: Path, tmp_path: Path
):
    text = path.read_text()
    started = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"]
    history = WorkflowHistory.from_json(started.get("workflowId", "recorded"), text)
    patched = _module(write_v2(tmp_path / "patched", patched=True).with_name("workflow.py"))
    await replay(history, patched)
    if turns(history):  # a conversation that answered messages: unpatched, v2 cannot replay it
        unpatched = _module(write_v2(tmp_path / "v2").with_name("workflow.py"))
        with pytest.raises(NondeterminismError):
            await replay(history, unpatched)


# --- Workers without versioning ----------------------------------------------------------


async def test_a_worker_without_versioning_answers_as_before(
    client: Client, task_queue: str, activities: AgentActivities
):
    unversioned = deployment_config({"TEMPORAL_DEPLOYMENT_NAME": ""})
    assert (await make_current_if_first(client, unversioned)).startswith("Worker versioning: off")
    async with build_worker(
        client, task_queue, activities, deployment_config=unversioned, max_cached_workflows=0
    ):
        session = await start_session(client, task_queue)
        assert await _say(session, "What is 2 + 2?") == "2 + 2 = 4"

    description = await session.describe()
    assert not description.raw_description.workflow_execution_info.versioning_info.behavior


async def test_a_versioned_worker_takes_over_the_conversations_of_unversioned_ones(
    client: Client, task_queue: str, activities: AgentActivities
):
    unversioned = deployment_config({"TEMPORAL_DEPLOYMENT_NAME": ""})
    async with build_worker(
        client, task_queue, activities, deployment_config=unversioned, max_cached_workflows=0
    ):
        session = await start_session(client, task_queue)
        await _say(session, "What is 2 + 2?")
    versioned = deployment_config(
        {"TEMPORAL_DEPLOYMENT_NAME": f"test-migrate-{uuid.uuid4().hex[:8]}"}
    )
    await make_current_if_first(client, versioned)  # a fresh deployment: its first version
    async with build_worker(
        client, task_queue, activities, deployment_config=versioned, max_cached_workflows=0
    ):
        assert await _say(session, "What is 3 * 3?") == "3 * 3 = 9"

    history = await session.fetch_history()
    assert builds(history) == {versioned.version.build_id, ""}  # unversioned, then versioned
    assert failed_tasks(history) == 0

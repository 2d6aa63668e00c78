"""Why a reply is late, as Temporal knows it: what the chat client says while it waits.

Read from the server, never guessed: the workflow's `describe()` (a pending activity's
attempt and last failure, a workflow task that keeps failing), the newest
`WorkflowTaskFailed` event of its history, and the task queue's pollers (docs/chat.md).
"""

from __future__ import annotations

import time

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    GetWorkflowExecutionHistoryReverseRequest,
)
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from codec import why_not_decrypted
from worker import DEFAULT_TASK_QUEUE

POLLED_WITHIN_S = 75.0
"""A worker whose last poll is older is gone (measured: a live one's is at most 56 s old)."""
_ACTIVITIES = {"plan_next_action": "the model call", "execute_tool": "a tool call"}


async def why_waiting(client: Client, handle: WorkflowHandle) -> str:
    """What keeps the reply; "" if nothing seems wrong. No worker comes first: a dead
    worker's activity also fails (a heartbeat timeout) meanwhile."""
    try:
        description = (await handle.describe()).raw_description
        queue = description.execution_config.task_queue.name
        if not await workers_poll(client, queue):
            return f"no worker polls task queue {queue}: start one with {worker_command(queue)}"
        for pending in description.pending_activities:
            if pending.attempt > 1 and pending.last_failure.message:
                what = _ACTIVITIES.get(pending.activity_type.name, pending.activity_type.name)
                return (
                    f"{what} failed {_times(pending.attempt - 1)}, retrying: "
                    f"{pending.last_failure.message}"
                )
        task = description.pending_workflow_task
        if description.HasField("pending_workflow_task") and task.attempt > 1:
            failed = _times(task.attempt - 1)
            why = await _last_task_failure(client, handle.id)
            return f"the workers fail this conversation's workflow task ({failed}): {why}"
    except RPCError:
        return ""  # Temporal does not answer: the request's own error says so.
    return ""


async def workers_poll(client: Client, task_queue: str) -> bool:
    """Whether a worker polls the task queue. The server lists a worker that is gone for
    5 minutes, with the time of its last poll; a live worker's newest poll is at most a
    minute old (it long-polls), so an older one means it is gone (docs/chat.md)."""
    queue = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    now = time.time()
    return any(
        now - poller.last_access_time.ToSeconds() < POLLED_WITHIN_S for poller in queue.pollers
    )


def worker_command(task_queue: str) -> str:
    """The command that starts a worker for `task_queue`, quoted for a message."""
    flag = "" if task_queue == DEFAULT_TASK_QUEUE else f" --task-queue {task_queue}"
    return f"`uv run worker.py{flag}`"


async def _last_task_failure(client: Client, workflow_id: str) -> str:
    """Why the latest workflow task failed, from the newest events of the history."""
    history = await client.workflow_service.get_workflow_execution_history_reverse(
        GetWorkflowExecutionHistoryReverseRequest(
            namespace=client.namespace,
            execution=WorkflowExecution(workflow_id=workflow_id),
            maximum_page_size=20,
        )
    )
    for event in history.history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            failure = event.workflow_task_failed_event_attributes.failure
            # A worker that encrypts sends its failures encrypted too.
            if why := why_not_decrypted(client, failure.encoded_attributes):
                return f"a worker with other ENCRYPTION_KEYS? Its error does not decode: {why}"
            return str(await client.data_converter.decode_failure(failure))
    return "the worker's log says why"


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"

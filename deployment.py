"""Worker Deployment Versioning: which version of the agent a worker runs (docs/versioning.md).

A version is a deployment name and a build id. Conversations are pinned to the version
they started on (`workflow.py`), and move to a newer one only by continuing as new onto
it, between turns. The worker reads its version here, once, at start:

    TEMPORAL_DEPLOYMENT_NAME   default durable-agent; empty: no versioning
    TEMPORAL_WORKER_BUILD_ID   default: the hash of workflow.py

(the names Temporal's docs and its worker controller use). Which version is current, the
one new conversations start on, is the server's: the first worker of a deployment makes
its own version current; later ones wait for `temporal worker deployment
set-current-version`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Mapping
from pathlib import Path

from temporalio.api.deployment.v1 import WorkerDeploymentVersion as VersionMessage
from temporalio.api.workflowservice.v1 import (
    CreateWorkerDeploymentRequest,
    CreateWorkerDeploymentVersionRequest,
    DescribeWorkerDeploymentRequest,
    DescribeWorkerDeploymentResponse,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import WorkerDeploymentConfig

DEFAULT_DEPLOYMENT_NAME = "durable-agent"

# The workflow's own source says which code a worker runs, so a change to workflow.py is a
# new version. (Without a build id the SDK would hash the bytecode of every loaded module,
# LiteLLM's too, at each start: 0.6 s of a restarted worker's way back.)
BUILD_ID = hashlib.sha256(Path(__file__).with_name("workflow.py").read_bytes()).hexdigest()[:12]


def deployment_config(env: Mapping[str, str] | None = None) -> WorkerDeploymentConfig:
    """The version this worker declares; with an empty deployment name, no versioning: the
    worker then only labels what it runs with the build id, as before versioning.

    Raises ValueError on a deployment name the server cannot take.
    """
    env = os.environ if env is None else env
    name = env.get("TEMPORAL_DEPLOYMENT_NAME", DEFAULT_DEPLOYMENT_NAME)
    if "." in name:  # A version is written NAME.BUILD_ID, so a name holds no dot.
        raise ValueError(f"TEMPORAL_DEPLOYMENT_NAME={name}: a deployment name cannot contain '.'")
    version = WorkerDeploymentVersion(name, env.get("TEMPORAL_WORKER_BUILD_ID") or BUILD_ID)
    if not name:
        return WorkerDeploymentConfig(version, use_worker_versioning=False)
    # Conversations are pinned: every workflow task of a run goes to workers of the version
    # it started on. Said here, not on the workflow: the server refuses a behavior from an
    # unversioned worker, and the same workflow code runs on both.
    return WorkerDeploymentConfig(
        version, use_worker_versioning=True, default_versioning_behavior=VersioningBehavior.PINNED
    )


async def make_current_if_first(client: Client, config: WorkerDeploymentConfig) -> str:
    """Make the worker's version current if its deployment never had a current version;
    return what the worker will be given, a line for its banner.

    A deployment with no current version sends new workflows to unversioned workers only:
    on a fresh server, `uv run worker.py` and a chat would wait forever. So the first
    version of a deployment is made current by its first worker, before it polls; every
    later one by an operator, once its workers run. Workers never take that decision
    back from an operator, nor from each other.
    """
    version = config.version
    if not config.use_worker_versioning:
        return f"Worker versioning: off (TEMPORAL_DEPLOYMENT_NAME is empty); {version.build_id}"
    described = await _deployment(client, version.deployment_name)
    if _never_had_a_current_version(described):
        await _ignoring(RPCStatusCode.ALREADY_EXISTS, _create(client, version))
        described = await _deployment(client, version.deployment_name)
    if _never_had_a_current_version(described):
        # A stale conflict token means another worker came first: its version is current.
        token = described.conflict_token
        await _ignoring(RPCStatusCode.FAILED_PRECONDITION, _set_current(client, version, token))
        described = await _deployment(client, version.deployment_name)
    current = described.worker_deployment_info.routing_config.current_deployment_version
    ours = version.to_canonical_string()
    if (current.deployment_name, current.build_id) == (version.deployment_name, version.build_id):
        return f"Deployment version {ours}: current, new conversations start on it"
    now = f"{current.deployment_name}.{current.build_id}" if current.build_id else "unversioned"
    command = (
        "uv run temporal worker deployment set-current-version "
        f"--deployment-name {version.deployment_name} --build-id {version.build_id} --yes"
    )
    return (
        f"Deployment version {ours}: not current ({now} is); it runs only the conversations "
        f"pinned to it. To move every conversation to it at its next turn boundary: {command}"
    )


def _never_had_a_current_version(described: DescribeWorkerDeploymentResponse) -> bool:
    routing = described.worker_deployment_info.routing_config
    return not routing.HasField("current_version_changed_time")


# The calls below retry (retry=True) what the server refuses for a moment: several workers
# starting at once on a fresh deployment are told "too many requests".


async def _deployment(client: Client, name: str) -> DescribeWorkerDeploymentResponse:
    """The deployment as the server describes it; created first if it does not exist."""
    request = DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=name)
    try:
        return await client.workflow_service.describe_worker_deployment(request, retry=True)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    create = CreateWorkerDeploymentRequest(
        namespace=client.namespace, deployment_name=name, identity=client.identity
    )
    creating = client.workflow_service.create_worker_deployment(create, retry=True)
    await _ignoring(RPCStatusCode.ALREADY_EXISTS, creating)
    return await client.workflow_service.describe_worker_deployment(request, retry=True)


async def _create(client: Client, version: WorkerDeploymentVersion) -> None:
    message = VersionMessage(deployment_name=version.deployment_name, build_id=version.build_id)
    request = CreateWorkerDeploymentVersionRequest(
        namespace=client.namespace, deployment_version=message, identity=client.identity
    )
    await client.workflow_service.create_worker_deployment_version(request, retry=True)


async def _set_current(client: Client, version: WorkerDeploymentVersion, token: bytes) -> None:
    request = SetWorkerDeploymentCurrentVersionRequest(
        namespace=client.namespace,
        deployment_name=version.deployment_name,
        build_id=version.build_id,
        conflict_token=token,
        identity=client.identity,
    )
    await client.workflow_service.set_worker_deployment_current_version(request, retry=True)


async def _ignoring(status: RPCStatusCode, call: Awaitable[object]) -> None:
    try:
        await call
    except RPCError as err:
        if err.status != status:
            raise

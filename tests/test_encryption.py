"""Encryption: the Temporal server holds ciphertext only, and our keys read it back.

The codec on its own first (round trip, tampering, rotation, settings), then a whole chat
with the encryption variables set, read as anyone with access to the server could (a
client without the codec), replayed, and shown decrypted through the codec server as the
CLI and the Web UI see it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import (
    ROOT,
    approvals_waiting,
    chat_client,
    decide,
    history_events,
    say,
    start_session,
)
from google.protobuf import json_format
from temporalio import activity
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.converter import DataConverter, PayloadConverter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer
from test_replay import HISTORIES, recorded

from activities import AgentActivities
from codec import DecryptionError, EncryptionCodec
from codec_server import build_app
from contract import Plan, PlanRequest, Transcript
from dev_server import temporal_binary
from llm_client import LlmSettings
from worker import PYDANTIC_DATA_CONVERTER, build_worker, connect, data_converter
from workflow import DurableAgentWorkflow

SECRET = "swordfish-4711"
# Fixed test keys, not random: pytest-xdist requires every worker to collect the same test
# ids, and these keys appear in parametrized ids.
OLD_KEY, NEW_KEY = bytes(range(32)), bytes(range(32, 64))
OLD_KEY_B64 = base64.b64encode(OLD_KEY).decode()
ENCRYPTION_ENV = {"ENCRYPTION_KEYS": f"old:{OLD_KEY_B64}", "ENCRYPTION_KEY_ID": "old"}
CODEC = EncryptionCodec({"old": OLD_KEY}, "old")  # what ENCRYPTION_ENV configures
UI_ORIGIN = "http://localhost:8233"
TOKEN = "codec-test-token"


def secret_payload() -> Payload:
    return PayloadConverter.default.to_payloads([f"the password is {SECRET}"])[0]


# --- The codec ------------------------------------------------------------------------------


async def test_an_encrypted_payload_shows_no_plaintext_and_decrypts_to_the_original():
    [encrypted] = await CODEC.encode([secret_payload()])
    [decrypted] = await CODEC.decode([encrypted])

    assert encrypted.metadata["encoding"] == b"binary/encrypted"
    assert encrypted.metadata["encryption-key-id"] == b"old"
    assert SECRET.encode() not in encrypted.SerializeToString()
    assert decrypted == secret_payload()


TAMPERINGS: dict[str, Callable[[bytes], bytes]] = {
    "ciphertext-bit-flipped": lambda data: data[:-1] + bytes([data[-1] ^ 1]),
    "nonce-bit-flipped": lambda data: bytes([data[0] ^ 1]) + data[1:],
    "truncated": lambda data: data[:20],
    "emptied": lambda data: b"",
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS)
async def test_a_tampered_payload_is_an_error_never_plaintext(tamper: Callable[[bytes], bytes]):
    [encrypted] = await CODEC.encode([secret_payload()])
    tampered = Payload(metadata=encrypted.metadata, data=tamper(encrypted.data))

    with pytest.raises(DecryptionError, match="key 'old' does not decrypt"):
        await CODEC.decode([tampered])


async def test_a_wrong_key_under_the_right_id_is_an_error():
    [encrypted] = await CODEC.encode([secret_payload()])

    with pytest.raises(DecryptionError, match="not the one that encrypted it"):
        await EncryptionCodec({"old": NEW_KEY}, "old").decode([encrypted])


async def test_after_rotation_old_data_still_decrypts_and_new_data_uses_the_new_key():
    before = EncryptionCodec({"old": OLD_KEY}, "old")
    after = EncryptionCodec({"old": OLD_KEY, "new": NEW_KEY}, "new")
    [written_before] = await before.encode([secret_payload()])

    [written_after] = await after.encode([secret_payload()])

    assert await after.decode([written_before, written_after]) == [secret_payload()] * 2
    assert written_after.metadata["encryption-key-id"] == b"new"


async def test_an_unknown_key_id_says_which_key_is_missing():
    [encrypted] = await CODEC.encode([secret_payload()])

    with pytest.raises(DecryptionError, match=r"key 'old', which is not in ENCRYPTION_KEYS.*new"):
        await EncryptionCodec({"new": NEW_KEY}, "new").decode([encrypted])


async def test_payloads_written_before_encryption_was_on_read_as_they_are():
    assert await CODEC.decode([secret_payload()]) == [secret_payload()]


@pytest.mark.parametrize(
    ("keys", "key_id", "message"),
    [
        ("", "a", "ENCRYPTION_KEY_ID=a is set but ENCRYPTION_KEYS is not"),
        (f"a:{OLD_KEY_B64}", "", "ENCRYPTION_KEY_ID is not: .* one of a"),
        (f"a:{OLD_KEY_B64}", "b", r"ENCRYPTION_KEY_ID=b is not among ENCRYPTION_KEYS \(a\)"),
        ("a:not*base64", "a", r"entry 1 \(a\): the key is not valid base64"),
        ("a:c2hvcnQ=", "a", "the key has 5 bytes; AES-256 needs 32"),
        (OLD_KEY_B64, "a", "entry 1: expected id:base64key"),
        (f"a:{OLD_KEY_B64},a:{OLD_KEY_B64}", "a", "entry 2: key id a is listed twice"),
        (f"a b:{OLD_KEY_B64}", "a b", "letters, digits"),
    ],
)
def test_bad_settings_are_refused_at_start_with_a_clear_message(
    keys: str, key_id: str, message: str
):
    env = {"ENCRYPTION_KEYS": keys, "ENCRYPTION_KEY_ID": key_id}

    with pytest.raises(ValueError, match=message) as refused:
        EncryptionCodec.from_env(env)

    assert OLD_KEY_B64 not in str(refused.value)  # no key material in an error message


def test_without_the_variables_nothing_changes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ENCRYPTION_KEYS", raising=False)
    monkeypatch.delenv("ENCRYPTION_KEY_ID", raising=False)

    assert data_converter() is PYDANTIC_DATA_CONVERTER
    assert data_converter().payload_codec is None


def test_every_run_of_an_encrypting_worker_decodes_with_the_one_json_converter():
    # The SDK builds a payload converter for every workflow run it starts; built anew, a
    # JSON converter builds Plan's decoder again (docs/performance.md, section 8's notes).
    def json_converter(converter: DataConverter) -> object:
        return converter.payload_converter_class().converters[b"json/plain"]

    encrypting = data_converter(ENCRYPTION_ENV)

    assert json_converter(encrypting) is json_converter(encrypting)
    assert json_converter(encrypting) is json_converter(PYDANTIC_DATA_CONVERTER)


async def test_the_new_key_command_prints_a_key_the_settings_accept():
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "codec.py"), "new-key", "k1", stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    entry = stdout.decode().strip()

    assert process.returncode == 0 and entry.startswith("k1:")
    assert EncryptionCodec.from_env({"ENCRYPTION_KEYS": entry, "ENCRYPTION_KEY_ID": "k1"})


# --- A whole chat, encrypted -------------------------------------------------------------------


class ActivitiesThatFailOnRequest(AgentActivities):
    """The scripted model, except that a message starting "fail:" fails its turn with a
    message quoting the user's words, as a provider's "bad request" error can."""

    @activity.defn(name="plan_next_action")
    async def plan_next_action(self, request: PlanRequest) -> Plan:
        text = request.conversation[-1].content
        if text.startswith("fail:"):
            raise ApplicationError(f"cannot answer {text!r}", non_retryable=True)
        return await super().plan_next_action(request)


@dataclass(frozen=True)
class EncryptedChat:
    """What the user saw in a chat run with the encryption variables set."""

    workflow_id: str
    awaiting_approval: str
    saved: str
    failure: str
    transcript: Transcript


@asynccontextmanager
async def encrypting_worker(
    temporal: WorkflowEnvironment, activities: AgentActivities
) -> AsyncIterator[tuple[Client, str]]:
    """A client with the keys and an in-process worker, connected as the product connects
    (`worker.connect`), on a task queue of their own; the worker keeps no workflow in
    cache, so every task replays the history before it."""
    client = await keyed_client(temporal)
    task_queue = f"test-{uuid.uuid4()}"
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        yield client, task_queue


@pytest.fixture(scope="module")
async def encrypted_chat(
    temporal: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> EncryptedChat:
    """A note (approved by a person), a failed turn and a goodbye, through a client and an
    in-process worker that connect as the product does (`worker.connect`) with the
    encryption variables set."""
    notes = tmp_path_factory.mktemp("encrypted") / "notes.jsonl"
    activities = ActivitiesThatFailOnRequest(LlmSettings(), notes)
    async with encrypting_worker(temporal, activities) as (client, task_queue):
        handle = await start_session(client, task_queue)
        turn = asyncio.create_task(say(handle, f"note: the password is {SECRET}"))
        [waiting] = await approvals_waiting(handle)  # a query: its result is encrypted too
        await decide(handle, waiting.call_id, approved=True)
        saved = await turn
        with pytest.raises(WorkflowUpdateFailedError) as failed:
            await say(handle, f"fail: the password is {SECRET}")
        await say(handle, "bye")
        transcript = await handle.result()
    assert isinstance(failed.value.cause, ApplicationError)
    return EncryptedChat(
        handle.id, waiting.arguments, saved, failed.value.cause.message, transcript
    )


def address(temporal: WorkflowEnvironment) -> str:
    return temporal.client.service_client.config.target_host


async def keyed_client(temporal: WorkflowEnvironment, keys: dict[str, str] | None = None) -> Client:
    """A client that connects as the product does (`worker.connect`), with the encryption
    variables set: ENCRYPTION_ENV's, or these over them."""
    with mock.patch.dict(os.environ, {**ENCRYPTION_ENV, **(keys or {})}):
        return await connect(address(temporal))


async def test_with_encryption_on_the_user_sees_the_chat_as_usual(encrypted_chat: EncryptedChat):
    assert json.loads(encrypted_chat.awaiting_approval) == {"text": f"the password is {SECRET}"}
    assert encrypted_chat.saved == f"Saved your note: the password is {SECRET}"
    assert encrypted_chat.failure == f"cannot answer 'fail: the password is {SECRET}'"
    assert f"the password is {SECRET}" in encrypted_chat.transcript.messages[0].content


async def test_the_server_holds_no_plaintext_of_the_chat_nor_of_its_failure(
    temporal: WorkflowEnvironment, encrypted_chat: EncryptedChat
):
    # Read as anyone with access to the server could: the dev server's own client,
    # which has the SDK's default data converter, no codec.
    raw = await temporal.client.get_workflow_handle(encrypted_chat.workflow_id).fetch_history()
    as_json = raw.to_json()  # failure messages and stack traces are plain strings here
    payloads = list(payloads_in(json.loads(as_json)))

    failures = [  # the failed activity's and the failed update's
        failure
        for event in raw.events
        for failure in (
            event.activity_task_failed_event_attributes.failure,
            event.workflow_execution_update_completed_event_attributes.outcome.failure,
        )
        if failure.message
    ]

    assert SECRET not in as_json
    assert len(payloads) > 10
    assert all(p.metadata["encoding"] == b"binary/encrypted" for p in payloads)
    assert not any(SECRET.encode() in p.data for p in payloads)
    assert [failure.message for failure in failures] == ["Encoded failure", "Encoded failure"]
    # The secret is in there for whoever holds the key: in the chat, and in both failures.
    assert any(SECRET.encode() in p.data for p in await CODEC.decode(payloads))
    real_failures = await CODEC.decode([failure.encoded_attributes for failure in failures])
    assert all(SECRET.encode() in attributes.data for attributes in real_failures)


async def test_the_encrypted_history_replays_with_the_codec_and_not_without(
    temporal: WorkflowEnvironment, encrypted_chat: EncryptedChat
):
    raw = await temporal.client.get_workflow_handle(encrypted_chat.workflow_id).fetch_history()
    with mock.patch.dict(os.environ, ENCRYPTION_ENV):
        converter = data_converter()

    await Replayer(workflows=[DurableAgentWorkflow], data_converter=converter).replay_workflow(raw)
    with pytest.raises(RuntimeError, match="binary/encrypted"):
        await Replayer(workflows=[DurableAgentWorkflow]).replay_workflow(raw)


async def test_the_cli_shows_the_history_decrypted_through_the_codec_server(
    temporal: WorkflowEnvironment, encrypted_chat: EncryptedChat
):
    show = ["workflow", "show", "--workflow-id", encrypted_chat.workflow_id]
    show += ["--address", address(temporal)]
    async with codec_server(token=TOKEN) as server:
        endpoint = str(server.make_url("")).rstrip("/")
        decrypted = await temporal_cli(
            *show, "--codec-endpoint", endpoint, "--codec-auth", f"Bearer {TOKEN}"
        )
    encrypted = await temporal_cli(*show)

    assert f"the password is {SECRET}" in decrypted
    assert SECRET not in encrypted


# --- A client without the keys -----------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedConversation:
    workflow_id: str
    task_queue: str


@pytest.fixture(scope="module")
async def encrypted_conversation(
    temporal: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EncryptedConversation]:
    """A conversation started and answered once with the keys, its worker still running:
    one that keeps no workflow in cache, so every task replays the updates before it."""
    notes = tmp_path_factory.mktemp("keyless") / "notes.jsonl"
    activities = AgentActivities(LlmSettings(), notes)
    async with encrypting_worker(temporal, activities) as (client, task_queue):
        handle = await start_session(client, task_queue)
        assert await say(handle, "What is 2 + 2?") == "2 + 2 = 4"
        yield EncryptedConversation(handle.id, task_queue)


async def plaintext_events(temporal: WorkflowEnvironment, workflow_id: str) -> list[int]:
    """The ids of the events that hold a payload which is not encrypted, read with the
    dev server's own client (no codec), as anyone with access to the server could."""
    raw = await temporal.client.get_workflow_handle(workflow_id).fetch_history()
    return [
        event["eventId"]
        for event in json.loads(raw.to_json())["events"]
        if any(p.metadata["encoding"] != ENCRYPTED for p in payloads_in(event))
    ]


ENCRYPTED = b"binary/encrypted"
WRONG_KEY_ENV = {"ENCRYPTION_KEYS": f"old:{base64.b64encode(NEW_KEY).decode()}"}


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"ENCRYPTION_KEYS": "", "ENCRYPTION_KEY_ID": ""},
            "is encrypted and this client has no key",
        ),
        ({**ENCRYPTION_ENV, **WRONG_KEY_ENV}, "this client has the wrong key"),
    ],
    ids=["no-keys", "wrong-key"],
)
async def test_a_client_without_the_keys_says_so_in_one_line_and_leaks_nothing(
    temporal: WorkflowEnvironment,
    encrypted_conversation: EncryptedConversation,
    env: dict[str, str],
    says: str,
):
    conversation = encrypted_conversation
    run = await chat_client(
        *("--address", address(temporal), "--task-queue", conversation.task_queue),
        *("--session", conversation.workflow_id, "--message", "What is 1 + 1?"),
        env=env,
        timeout=30,
    )

    assert (run.returncode, run.stdout) == (1, "")
    [line] = run.stderr.splitlines()
    assert line.startswith(f"error: Conversation {conversation.workflow_id} ") and says in line
    assert await plaintext_events(temporal, conversation.workflow_id) == []


async def test_a_client_without_the_keys_cannot_talk_to_an_encrypting_worker_either(
    temporal: WorkflowEnvironment, encrypted_conversation: EncryptedConversation
):
    # A new session: nothing to check first; the worker refuses the message. The client
    # says so when it reads the refusal (encrypted: it cannot say why) or, if the refusal
    # takes longer than half a second, when its first look for approvals meets an
    # encrypted answer: which one comes first depends on the machine's load.
    run = await chat_client(
        *("--address", address(temporal), "--task-queue", encrypted_conversation.task_queue),
        *("--message", "What is 1 + 1?"),
        env={"ENCRYPTION_KEYS": "", "ENCRYPTION_KEY_ID": ""},
        timeout=30,
    )

    assert (run.returncode, run.stdout) == (1, "")
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-1] in {
        "error: The worker encrypts and this client cannot read its answer: it has no key "
        "or the wrong one. Set ENCRYPTION_KEYS and ENCRYPTION_KEY_ID as the worker has them.",
        "error: The conversation is encrypted and this client has no key: set ENCRYPTION_KEYS "
        "and ENCRYPTION_KEY_ID as the worker has them.",
    }


async def test_the_worker_rejects_an_update_it_cannot_decrypt_and_it_leaves_no_trace(
    temporal: WorkflowEnvironment, encrypted_conversation: EncryptedConversation
):
    # Clients that do not check first: the SDK's default converter (no keys), and one
    # whose key under the same id is another.
    wrong_key = await keyed_client(temporal, WRONG_KEY_ENV)
    conversation = encrypted_conversation.workflow_id
    keyed = (await keyed_client(temporal)).get_workflow_handle(conversation)
    before = len(await history_events(keyed))

    for client in (temporal.client, wrong_key):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await say(client.get_workflow_handle(conversation), "What is 1 + 1?")
        assert isinstance(refused.value.cause, ApplicationError)  # its reason: encrypted
    after = await history_events(keyed)

    assert len(after) == before  # rejected: nothing written, not even a failed task
    assert await plaintext_events(temporal, conversation) == []
    assert await say(keyed, "What is 3 * 3?") == "3 * 3 = 9"  # not wedged


async def test_a_payload_that_came_without_encryption_is_marked_and_a_client_reads_it():
    converter = data_converter(ENCRYPTION_ENV)
    assert converter.payload_codec is not None
    [plaintext] = await converter.payload_codec.decode([secret_payload()])

    assert plaintext.metadata["not-decrypted"] == b"it came without encryption"
    # Outside a workflow (a client reading a result): read as it is, as before encryption.
    assert converter.payload_converter.from_payloads([plaintext]) == [f"the password is {SECRET}"]


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_a_history_written_before_encryption_was_on_replays_with_the_keys(path: Path):
    converter = data_converter(ENCRYPTION_ENV)
    replayer = Replayer(workflows=[DurableAgentWorkflow], data_converter=converter)

    await replayer.replay_workflow(recorded(path))


def payloads_in(node: Any) -> Iterator[Payload]:
    """Every payload in a history's JSON: the objects with an encoding in their metadata."""
    if isinstance(node, dict):
        if "encoding" in node.get("metadata", {}):
            yield json_format.ParseDict(node, Payload())
        else:
            for value in node.values():
                yield from payloads_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from payloads_in(value)


async def temporal_cli(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        temporal_binary(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


# --- The codec server ---------------------------------------------------------------------------


@asynccontextmanager
async def codec_server(token: str | None = None) -> AsyncIterator[TestServer]:
    async with TestServer(build_app(CODEC, UI_ORIGIN, token), host="127.0.0.1") as server:
        yield server


@asynccontextmanager
async def codec_client(token: str | None = None) -> AsyncIterator[TestClient]:
    async with codec_server(token) as server, TestClient(server) as client:
        yield client


def body(payloads: list[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


JSON = {"Content-Type": "application/json", "X-Namespace": "default"}


async def test_the_codec_server_decodes_what_a_worker_encrypted():
    [encrypted] = await CODEC.encode([secret_payload()])

    paths = ("/decode", "/default/decode")  # the second: --codec-endpoint http://.../{namespace}

    async with codec_client() as http:
        responses = [await http.post(path, data=body([encrypted]), headers=JSON) for path in paths]
        decoded = [json_format.Parse(await r.text(), Payloads()) for r in responses]

    assert [response.status for response in responses] == [200, 200]
    assert [list(payloads.payloads) for payloads in decoded] == [[secret_payload()]] * 2


async def test_the_codec_server_answers_the_web_ui_preflight_and_refuses_other_pages():
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    async with codec_client(token=TOKEN) as http:
        from_ui = await http.options("/decode", headers={"Origin": UI_ORIGIN, **preflight})
        elsewhere = await http.options(
            "/decode", headers={"Origin": "http://evil.test", **preflight}
        )
        posted_elsewhere = await http.post(
            "/decode",
            data=body([]),
            headers={**JSON, "Origin": "http://evil.test", "Authorization": f"Bearer {TOKEN}"},
        )

    assert from_ui.status == 204
    assert from_ui.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert "X-Namespace" in from_ui.headers["Access-Control-Allow-Headers"]
    assert elsewhere.status == 403 and "Access-Control-Allow-Origin" not in elsewhere.headers
    assert posted_elsewhere.status == 403


async def test_the_codec_server_with_a_token_refuses_a_request_without_it():
    [encrypted] = await CODEC.encode([secret_payload()])

    async with codec_client(token=TOKEN) as http:
        missing = await http.post("/decode", data=body([encrypted]), headers=JSON)
        wrong = await http.post(
            "/decode", data=body([encrypted]), headers={**JSON, "Authorization": "Bearer nope"}
        )
        right = await http.post(
            "/decode", data=body([encrypted]), headers={**JSON, "Authorization": f"Bearer {TOKEN}"}
        )
        decoded = json_format.Parse(await right.text(), Payloads())

    assert (missing.status, wrong.status) == (401, 401)
    assert right.status == 200 and list(decoded.payloads) == [secret_payload()]


PATHS = ("/decode", "/encode")
NULL_PAYLOAD = '{"metadata": {"encoding": "YmluYXJ5L251bGw="}}'  # binary/null: no data at all
ENCRYPTED_WITHOUT_DATA = (
    '{"metadata": {"encoding": "YmluYXJ5L2VuY3J5cHRlZA==", "encryption-key-id": "b2xk"}}'
)


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (b'{"payloads": [], "x": "\xff"}', "the body is not UTF-8: invalid byte at offset 23"),
        (b'{"payloads": [', "the body is not JSON: Expecting value: line 1 column 15"),
        (b"[" * 100_000, "the body is not JSON this server reads: nested too deeply"),
        (b'{"payloads": ' + b"1" * 5000 + b"}", "the body is not JSON this server reads"),
        (b"[]", 'expected a JSON object {"payloads": [...]}, got a list'),
        (b'"payloads"', 'expected a JSON object {"payloads": [...]}, got a text'),
        (b'{"payloads": 5}', "payloads must be a list, got a number"),
        (b'{"payloads": [{}, "x"]}', "payloads[1] must be an object, got a text"),
        (b'{"payloads": [{"data": "not base64!"}]}', "payloads[0].data is not valid base64"),
        (b'{"payloads": [{"metadata": []}]}', "payloads[0].metadata must be an object"),
        (
            b'{"payloads": [{"metadata": {"encoding": 5}}]}',
            "payloads[0].metadata['encoding'] must be a base64 text, got a number",
        ),
        (b'{"payloads": [{"externalPayloads": 5}]}', "the body is not a Payloads message"),
        (f'{{"payloads": [{ENCRYPTED_WITHOUT_DATA}]}}'.encode(), "does not decrypt"),
    ],
)
async def test_the_codec_server_answers_a_malformed_body_with_a_400_and_its_reason(
    sent: bytes, reason: str
):
    async with codec_client() as http:
        answer = await http.post("/decode", data=sent, headers=JSON)
        text = await answer.text()

    assert answer.status == 400
    assert reason in text and text.count("\n") == 1, text


async def test_the_codec_server_reads_the_empty_values_protobuf_json_leaves_out():
    empty = [b"{}", b'{"payloads": null}', f'{{"payloads": [{NULL_PAYLOAD}]}}'.encode()]

    async with codec_client() as http:
        answers = [await http.post(path, data=b, headers=JSON) for b in empty for path in PATHS]
        texts = [await answer.text() for answer in answers]

    assert [answer.status for answer in answers] == [200] * 6
    null = PayloadConverter.default.to_payloads([None])[0]
    assert list(json_format.Parse(texts[4], Payloads()).payloads) == [null]  # decoded: as it was


async def test_the_codec_server_refuses_header_bytes_that_are_not_utf8_without_a_traceback():
    async with codec_server(token=TOKEN) as server:
        bad_token = await raw_post(server.port, b"Authorization: Bearer \xff\r\n")
        bad_origin = await raw_post(
            server.port, b"Origin: http://\xff\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
        )

    assert bad_token.startswith(b"HTTP/1.1 401")
    assert bad_origin.startswith(b"HTTP/1.1 403")


async def raw_post(port: int, headers: bytes) -> bytes:
    """POST an empty decode request with headers as raw bytes, which aiohttp's client
    would encode; return the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = b'{"payloads": []}'
    writer.write(
        b"POST /decode HTTP/1.1\r\nHost: codec\r\nContent-Type: application/json\r\n"
        + headers
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(sent)
        + sent
    )
    status = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return status

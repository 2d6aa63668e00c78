"""Encryption of everything this project sends to Temporal: a payload codec (AES-256-GCM).

The SDK turns every value that crosses to the server into a payload: workflow input,
update arguments and results, activity inputs and results, query results, and (with the
encoded failure attributes that `worker.data_converter` turns on) failure messages and
stack traces. With ENCRYPTION_KEYS set, this codec encrypts each payload before it leaves
the process and decrypts it when it comes back, so the server, its database, the Web UI
and the CLI hold ciphertext only; `codec_server.py` lets the last two decrypt on request.

    ENCRYPTION_KEYS=id:base64key[,id:base64key...]   # 32-byte keys; old ones still decrypt
    ENCRYPTION_KEY_ID=id                              # the key that encrypts new data
    uv run codec.py new-key                           # prints a new random id:base64key

An encrypted payload carries its key id in the clear, so rotating is: add a new key, point
ENCRYPTION_KEY_ID at it, and keep the old keys listed while histories written with them
are still kept. The layout (encoding "binary/encrypted", "encryption-key-id", the nonce
before the ciphertext) is that of Temporal's encryption samples, so their codec servers
read ours given the key.

A worker with the keys refuses a new update that comes unencrypted or does not decrypt
(`EncryptedOnlyConverter`), so a client without the keys writes nothing into an encrypted
conversation; `check_readable` lets a client find that out before it sends anything.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import CompositePayloadConverter, PayloadCodec
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32  # AES-256
# A random 96-bit nonce per payload: safe for about 2**32 payloads under one key (NIST
# SP 800-38D); rotate long before that.
NONCE_BYTES = 12
TAG_BYTES = 16
_KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
# Set by a codec that hands on a payload it did not decrypt (`refuse_later`): why not.
NOT_DECRYPTED = "not-decrypted"
PLAINTEXT = b"it came without encryption"


class DecryptionError(Exception):
    """An encrypted payload this process cannot read. Never handed on as plaintext:
    a worker fails the workflow task (and retries it) until a worker with the key runs it."""


class ConversationUnreadable(Exception):
    """This process cannot read a conversation's history: it has no key, or not its key."""


class EncryptionCodec(PayloadCodec):
    """Encrypts whole payloads (their metadata too) with the current key; decrypts with
    whichever listed key a payload names. Payloads without the encrypted encoding, written
    before encryption was turned on, pass through as they are.

    With `refuse_later`, a payload that came without encryption, or that does not decrypt,
    is handed on marked with why (NOT_DECRYPTED) instead, for `EncryptedOnlyConverter` to
    refuse: the codec cannot tell a new message from an old history, the converter can.
    """

    def __init__(
        self, keys: Mapping[str, bytes], key_id: str, *, refuse_later: bool = False
    ) -> None:
        self._ciphers = {name: AESGCM(key) for name, key in keys.items()}
        self.key_id = key_id
        self.refuse_later = refuse_later

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, refuse_later: bool = False
    ) -> EncryptionCodec | None:
        """The codec ENCRYPTION_KEYS and ENCRYPTION_KEY_ID describe, or None when neither
        is set. Raises ValueError naming the variable; never quotes key material."""
        env = os.environ if env is None else env
        keys_text = env.get("ENCRYPTION_KEYS", "").strip()
        key_id = env.get("ENCRYPTION_KEY_ID", "").strip()
        if not keys_text:
            if key_id:
                raise ValueError(
                    f"ENCRYPTION_KEY_ID={key_id} is set but ENCRYPTION_KEYS is not: "
                    "list the keys too (make one with `uv run codec.py new-key`)"
                )
            return None
        keys = parse_keys(keys_text)
        if not key_id:
            raise ValueError(
                "ENCRYPTION_KEYS is set but ENCRYPTION_KEY_ID is not: set it to the key "
                f"that encrypts new data, one of {', '.join(keys)}"
            )
        if key_id not in keys:
            raise ValueError(
                f"ENCRYPTION_KEY_ID={key_id} is not among ENCRYPTION_KEYS ({', '.join(keys)})"
            )
        return cls(keys, key_id, refuse_later=refuse_later)

    def describe(self) -> str:
        """One line for a process's start banner."""
        older = [name for name in self._ciphers if name != self.key_id]
        also = f"; also decrypts {', '.join(older)}" if older else ""
        return f"Encryption: AES-256-GCM, new data with key {self.key_id}{also}"

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self.key_id]
        encoded = []
        for payload in payloads:
            nonce = secrets.token_bytes(NONCE_BYTES)
            ciphertext = cipher.encrypt(nonce, payload.SerializeToString(), None)
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID: self.key_id.encode()},
                    data=nonce + ciphertext,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decode(payload) for payload in payloads]

    def _decode(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return _marked(payload, PLAINTEXT) if self.refuse_later else payload
        try:
            return self._decrypt(payload)
        except DecryptionError as err:
            if not self.refuse_later:
                raise
            return _marked(payload, str(err).encode())

    def _decrypt(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                f"a payload is encrypted with key '{key_id}', which is not in ENCRYPTION_KEYS "
                f"(this process has {', '.join(self._ciphers)}): add that key to decrypt it"
            )
        data = payload.data
        try:
            if len(data) < NONCE_BYTES + TAG_BYTES:
                raise InvalidTag
            plaintext = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag:
            raise DecryptionError(
                f"a payload encrypted with key '{key_id}' does not decrypt: the key listed "
                "under that id is not the one that encrypted it, or the payload was altered"
            ) from None
        return Payload.FromString(plaintext)


def _marked(payload: Payload, why: bytes) -> Payload:
    marked = Payload()
    marked.CopyFrom(payload)
    marked.metadata[NOT_DECRYPTED] = why
    return marked


class EncryptedOnlyConverter(CompositePayloadConverter):
    """What a process that encrypts adds to the project's converter: it refuses what the
    codec handed on undecrypted (NOT_DECRYPTED). A layer, not a converter of its own:
    worker.py puts it over the one JSON converter the process shares.

    A new update that carries one is rejected: the SDK rejects an update whose arguments
    do not convert, before anything reaches history, so a client without the keys (or
    with the wrong ones) writes nothing into an encrypted conversation, and cannot wedge
    it either. A replayed update is read as it is: it was accepted before encryption was
    turned on, and replay must do what the first run did. Anything else that does not
    decrypt fails, as the codec alone would fail it: the workflow task, retried until a
    worker with the key runs it (docs/encryption.md says what signals do).
    """

    def from_payloads(
        self, payloads: Sequence[Payload], type_hints: list[type] | None = None
    ) -> list[Any]:
        for payload in payloads:
            why = payload.metadata.get(NOT_DECRYPTED)
            if why is None:
                continue
            if _in_a_new_update():
                raise ApplicationError(
                    "This conversation is encrypted and refuses this update: "
                    + why.decode(errors="replace"),
                    type="NotEncrypted",
                    non_retryable=True,
                )
            if why != PLAINTEXT:
                raise DecryptionError(why.decode(errors="replace"))
        return super().from_payloads(payloads, type_hints)


def _in_a_new_update() -> bool:
    """Converting the arguments of an update this workflow has not accepted yet."""
    return (
        workflow.in_workflow()
        and workflow.current_update_info() is not None
        and not workflow.unsafe.is_replaying()
    )


async def check_readable(client: Client, workflow_id: str) -> None:
    """Raise ConversationUnreadable if `client` cannot decrypt the conversation's input
    (the first event of its latest run): asked before sending it anything, since what it
    sends would be refused and what it receives would not decrypt. No such conversation,
    or one started before encryption was on, is readable."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        async for event in handle.fetch_history_events(page_size=1):
            inputs = event.workflow_execution_started_event_attributes.input.payloads
            break
        else:
            return
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return
        raise
    if not inputs or (why := why_not_decrypted(client, inputs[0])) is None:
        return
    if why == NO_KEY:
        raise ConversationUnreadable(
            f"Conversation {workflow_id} is encrypted and this client has no key: set "
            "ENCRYPTION_KEYS and ENCRYPTION_KEY_ID as the worker has them."
        )
    raise ConversationUnreadable(
        f"Conversation {workflow_id} is encrypted and this client has the wrong key: {why}."
    )


NO_KEY = "this client has no key"


def why_not_decrypted(client: Client, payload: Payload) -> str | None:
    """Why `client` cannot decrypt `payload` (NO_KEY, or the wrong key's reason), or None
    when it can, or the payload is not encrypted."""
    if payload.metadata.get("encoding") != ENCODING:
        return None
    codec = client.data_converter.payload_codec
    if not isinstance(codec, EncryptionCodec):
        return NO_KEY
    try:
        codec._decrypt(payload)
    except DecryptionError as err:
        return str(err)
    return None


def unreadable(err: Exception) -> ConversationUnreadable | None:
    """What an error means, if it is that this client has no key (the SDK's converter
    knows no "binary/encrypted") or not the right one; None if it is something else."""
    if isinstance(err, ConversationUnreadable):
        return err
    if str(err) == "Encoded failure":  # the SDK's stand-in for a message it cannot decode
        return ConversationUnreadable(
            "The worker encrypts and this client cannot read its answer: it has no key or "
            "the wrong one. Set ENCRYPTION_KEYS and ENCRYPTION_KEY_ID as the worker has them."
        )
    if isinstance(err, DecryptionError):
        return ConversationUnreadable(f"This client has the wrong key: {err}.")
    if isinstance(err, KeyError) and ENCODING.decode() in str(err):
        return ConversationUnreadable(
            "The conversation is encrypted and this client has no key: set ENCRYPTION_KEYS "
            "and ENCRYPTION_KEY_ID as the worker has them."
        )
    return None


def parse_keys(text: str) -> dict[str, bytes]:
    """`id:base64key[,id:base64key...]` as {id: key}. Errors name the entry, not the key."""
    keys: dict[str, bytes] = {}
    for number, entry in enumerate(text.split(","), start=1):
        key_id, colon, encoded = (part.strip() for part in entry.partition(":"))
        where = f"ENCRYPTION_KEYS, entry {number}"
        if not colon or not key_id or not encoded:
            raise ValueError(f"{where}: expected id:base64key")
        if not _KEY_ID_PATTERN.fullmatch(key_id):
            raise ValueError(f"{where}: a key id uses letters, digits, '.', '_' and '-' only")
        if key_id in keys:
            raise ValueError(f"{where}: key id {key_id} is listed twice")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError(f"{where} ({key_id}): the key is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ValueError(
                f"{where} ({key_id}): the key has {len(key)} bytes; AES-256 needs "
                f"{KEY_BYTES} (make one with `uv run codec.py new-key`)"
            )
        keys[key_id] = key
    return keys


def new_key(key_id: str | None = None) -> str:
    """A new random key as `id:base64key`; the id defaults to today's date and a suffix."""
    key_id = key_id or f"key-{datetime.now(timezone.utc):%Y%m%d}-{secrets.token_hex(2)}"
    if not _KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError("a key id uses letters, digits, '.', '_' and '-' only")
    return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


def main() -> int:
    parser = argparse.ArgumentParser(description="Keys for the payload codec.")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("new-key", help="print a new random key as id:base64key")
    make.add_argument("id", nargs="?", help="key id (default: key-YYYYMMDD-xxxx)")
    args = parser.parse_args()
    try:
        entry = new_key(args.id)
    except ValueError as err:
        print(f"codec: {err}", file=sys.stderr)
        return 2
    key_id = entry.partition(":")[0]
    print(entry)
    print(
        f"In .env: ENCRYPTION_KEYS=<that line> and ENCRYPTION_KEY_ID={key_id}. To rotate, "
        f"add it to ENCRYPTION_KEYS after a comma, keep the old keys, and set "
        f"ENCRYPTION_KEY_ID={key_id}.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The codec endpoint: lets the Web UI and the CLI show an encrypted history decrypted.

The Temporal server never holds the keys (codec.py), so its Web UI and `temporal workflow
show` see ciphertext. Pointed at this small HTTP server, which holds the keys, they send it
the payloads and show what comes back. It speaks Temporal's codec server protocol:
POST /decode and POST /encode (or any path ending so), each with a JSON body
{"payloads": [...]} (the protobuf JSON of `Payloads`: metadata values and data in base64),
the namespace in an X-Namespace header (one set of keys serves every namespace here).
A body that is not that (bytes that are not UTF-8, JSON of another shape, bad base64) or
a payload that does not decrypt is a 400 with a one-line reason, never a 500.

    uv run codec_server.py [--port 8081] [--ui-origin http://localhost:8233] [--host 127.0.0.1]

Who may ask, since whoever reaches it can decrypt: it listens on 127.0.0.1 unless told
otherwise; a browser may call it only from the Web UI's origin (CORS; a request from any
other page is refused); and with CODEC_SERVER_TOKEN set every request must carry
`Authorization: Bearer <token>` (the CLI's `--codec-auth`). The token is read from the
environment (or .env), not a flag, so it does not show in `ps`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from aiohttp import hdrs, web
from dotenv import load_dotenv
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from codec import DecryptionError, EncryptionCodec

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_UI_ORIGIN = "http://localhost:8233"  # `temporal server start-dev`'s Web UI
# What the Web UI sends: JSON, the namespace, and, when told to pass one, an access token.
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization, Authorization-Extras"

Transform = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


def build_app(
    codec: PayloadCodec, ui_origin: str = DEFAULT_UI_ORIGIN, token: str | None = None
) -> web.Application:
    """POST /encode and /decode through `codec`, with their CORS preflights."""

    def cors(request: web.Request) -> dict[str, str]:
        if request.headers.get(hdrs.ORIGIN) != ui_origin:
            return {}
        return {
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: ui_origin,
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: "POST",
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
            hdrs.VARY: hdrs.ORIGIN,
        }

    async def preflight(request: web.Request) -> web.Response:
        # Browsers send no Authorization header on a preflight: answer it without the token.
        headers = cors(request)
        return web.Response(status=204 if headers else 403, headers=headers)

    def refusal(request: web.Request) -> web.Response | None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin != ui_origin:
            # CORS only hides our answer from other pages; refuse them outright, so that a
            # page reaching us by DNS rebinding (same-origin to the browser) gets nothing.
            # Quoted with repr: a header may carry bytes that are not UTF-8.
            return web.Response(status=403, text=f"origin {origin!r} is not allowed\n")
        # aiohttp hands over a header's bytes that are not UTF-8 as surrogates: compare
        # the very bytes that were sent.
        presented = request.headers.get(hdrs.AUTHORIZATION, "").encode(errors="surrogateescape")
        if token and not hmac.compare_digest(presented, f"Bearer {token}".encode()):
            headers = {**cors(request), hdrs.WWW_AUTHENTICATE: "Bearer"}
            return web.Response(status=401, text="missing or wrong token\n", headers=headers)
        if request.content_type != "application/json":
            # A JSON body also makes a browser send the preflight that CORS answers.
            return web.Response(status=415, text="expected application/json\n")
        return None

    async def apply(transform: Transform, request: web.Request) -> web.Response:
        if (refused := refusal(request)) is not None:
            return refused
        try:
            result = Payloads(payloads=await transform(parse_payloads(await request.read())))
        except (MalformedBody, DecryptionError) as err:
            return web.Response(status=400, text=f"{err}\n", headers=cors(request))
        return web.Response(
            text=json_format.MessageToJson(result),
            content_type="application/json",
            headers=cors(request),
        )

    app = web.Application()
    for name, transform in (("encode", codec.encode), ("decode", codec.decode)):
        # The protocol looks at the last part of the path only: /decode, /default/decode
        # (the CLI's --codec-endpoint http://HOST:PORT/{namespace}) and so on.
        path = "/{prefix:(?:.*/)?}" + name
        app.router.add_post(path, partial(apply, transform))
        app.router.add_route(hdrs.METH_OPTIONS, path, preflight)
    return app


class MalformedBody(ValueError):
    """A request body that is not the protocol's {"payloads": [...]}: the sender's mistake,
    answered with a 400 and this one-line reason."""


def parse_payloads(body: bytes) -> list[Payload]:
    """The payloads of a request body, or MalformedBody saying what is wrong with it.

    json_format alone lets too much through: it decodes bytes outside its own error
    handling, takes any JSON value for an empty message and skips invalid base64.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise MalformedBody(f"the body is not UTF-8: invalid byte at offset {err.start}") from None
    except json.JSONDecodeError as err:
        raise MalformedBody(f"the body is not JSON: {err}") from None
    except RecursionError:
        raise MalformedBody("the body is not JSON this server reads: nested too deeply") from None
    except ValueError:  # Python's int limit, the one other thing json.loads refuses
        raise MalformedBody("the body is not JSON this server reads: a number too long") from None
    if not isinstance(document, dict):
        raise MalformedBody(f'expected a JSON object {{"payloads": [...]}}, got {_kind(document)}')
    # Protobuf's JSON form sends an empty list as {} and may send null for any default.
    payloads = _or_default(document.get("payloads"), [])
    if not isinstance(payloads, list):
        raise MalformedBody(f"payloads must be a list, got {_kind(payloads)}")
    for number, payload in enumerate(payloads):
        where = f"payloads[{number}]"
        if not isinstance(payload, dict):
            raise MalformedBody(f"{where} must be an object, got {_kind(payload)}")
        # No data is a payload's valid empty data (binary/null has none): not refused here.
        # An encrypted payload without it does not decrypt, which the codec says.
        _check_base64(_or_default(payload.get("data"), ""), f"{where}.data")
        metadata = _or_default(payload.get("metadata"), {})
        if not isinstance(metadata, dict):
            raise MalformedBody(f"{where}.metadata must be an object, got {_kind(metadata)}")
        for name, value in metadata.items():
            _check_base64(value, f"{where}.metadata[{name!r:.40}]")
    try:
        # Lenient: a newer Web UI may send fields this SDK's protobufs do not know yet.
        parsed = json_format.ParseDict(document, Payloads(), ignore_unknown_fields=True)
    except json_format.ParseError as err:
        reason = " ".join(str(err).split())
        raise MalformedBody(f"the body is not a Payloads message: {reason[:200]}") from None
    return list(parsed.payloads)


def _check_base64(value: object, where: str) -> None:
    # Protobuf's JSON form: standard or URL-safe base64, with or without padding.
    if not isinstance(value, str):
        raise MalformedBody(f"{where} must be a base64 text, got {_kind(value)}")
    text = value.replace("-", "+").replace("_", "/")
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise MalformedBody(f"{where} is not valid base64") from None


def _or_default(value: object, default: object) -> object:
    return default if value is None else value


def _kind(value: object) -> str:
    """A JSON value's kind, as a reason names it: never the value, which may be large."""
    kinds = {dict: "an object", list: "a list", str: "a text", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument(
        "--ui-origin", default=DEFAULT_UI_ORIGIN, help=f"default {DEFAULT_UI_ORIGIN}"
    )
    args = parser.parse_args()
    ui_origin = args.ui_origin.rstrip("/")  # browsers send the origin without one
    load_dotenv()
    try:
        codec = EncryptionCodec.from_env()
    except ValueError as err:
        print(f"codec_server: {err}", file=sys.stderr)
        return 2
    if codec is None:
        print("codec_server: ENCRYPTION_KEYS is not set: nothing to decrypt.", file=sys.stderr)
        return 2
    token = os.environ.get("CODEC_SERVER_TOKEN") or None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(
        f"{codec.describe()}\nCodec server at http://{args.host}:{args.port} for the Web UI at "
        f"{ui_origin}; bearer token {'required' if token else 'not required'}.",
        file=sys.stderr,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print("Warning: reachable from other hosts and no CODEC_SERVER_TOKEN.", file=sys.stderr)
    web.run_app(build_app(codec, ui_origin, token), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

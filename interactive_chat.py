"""The interactive chat: a `you>` prompt, each reply as the model writes it.

Lines are read with Python's `readline` module: a line arrives whole however long it is
(a terminal in canonical mode cuts it at 4 095 characters), with line editing and history.
`quit`, `exit` or `bye` end the chat and print the transcript; `/usage` says what it has
spent. Ctrl-C (at any moment) and Ctrl-D (at the prompt) leave the conversation running in
Temporal, and say how to come back to it (docs/chat.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import readline  # noqa: F401 - input() reads through it: whole lines, editing, history
import signal
import sys
import termios
import threading

import worker
from approval_prompts import Approver, AwaitingApproval, asking_on
from chat_session import ChatError, ChatSession, print_messages, print_transcript
from stream_view import TurnView
from usage_lines import print_usage
from workflow import DurableAgentWorkflow

END_WORDS = {"quit", "exit", "bye"}
USAGE_COMMAND = "/usage"
_BRACKETED_PASTE_OFF = "\x1b[?2004l"
"""What readline sends when it gives the terminal back; an exit mid-read must send it too."""


class Terminal:
    """The lines the user types, each read on a thread when the chat asks for one, so the
    chat goes on working (a turn, a stream) while the user types."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reading: asyncio.Future[str | None] | None = None
        # A line that is not text in the terminal's encoding keeps its bytes as surrogates,
        # so the chat can refuse that one line instead of failing to read the rest.
        if hasattr(sys.stdin, "reconfigure"):
            sys.stdin.reconfigure(errors="surrogateescape")
        self._tty = sys.stdin.isatty()
        self._settings = termios.tcgetattr(sys.stdin) if self._tty else None

    async def line(self, prompt: str) -> str | None:
        """The next line (None at end of input). A read that a caller stopped waiting for
        (the turn ended while an approval was asked) is the one the next caller gets."""
        if self._reading is None:
            self._reading = self._loop.create_future()
            threading.Thread(target=self._read, args=(prompt, self._reading), daemon=True).start()
        text = await asyncio.shield(self._reading)
        self._reading = None
        return text

    def _read(self, prompt: str, done: asyncio.Future[str | None]) -> None:
        try:
            text: str | None = input(prompt)
        except EOFError:
            text = None
        self._loop.call_soon_threadsafe(done.set_result, text)

    def restore(self) -> None:
        """Give the terminal back as it was, even if a read is under way."""
        if self._settings is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(sys.stdin, termios.TCSANOW, self._settings)
            sys.stdout.write(_BRACKETED_PASTE_OFF)
            sys.stdout.flush()


def leaving_line(session: ChatSession, embedded: bool) -> str:
    """What the client says when the user leaves without ending the chat."""
    if embedded:
        return (
            "Left the chat. The embedded server stops with this process: the conversation is gone."
        )
    kept = f"Left the chat; the conversation is kept: resume it with --session {session.id}."
    return "\n".join(filter(None, [kept, session.resend_hint()]))


def leave_on_ctrl_c(session: ChatSession, embedded: bool, terminal: Terminal | None) -> None:
    """Ctrl-C: say how to come back and exit at once. Nothing is printed after it (no late
    line of a turn) and nothing the user types next at the shell is read here: the turn, if
    any, goes on in Temporal. An embedded server is stopped first, out of sight."""
    main = asyncio.current_task()

    def leave() -> None:
        if terminal is not None:
            terminal.restore()
        print(f"\n{leaving_line(session, embedded)}", file=sys.stderr, flush=True)
        if not embedded or main is None:
            worker.exit_process(130)
        # Unwind, so that the embedded server and worker shut down, with nothing shown.
        silence = os.open(os.devnull, os.O_RDWR)
        for stream in (1, 2):
            os.dup2(silence, stream)
        main.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, leave)


async def chat(
    session: ChatSession, terminal: Terminal, view: TurnView, attached: bool, embedded: bool
) -> None:
    """The interactive loop; quit, exit or bye end the chat and print the transcript.
    Replies stream as the model writes them."""
    print(f"Session {session.id}. Type a message; quit, exit or bye end the chat.", file=sys.stderr)
    ask = asking_on(terminal.line)
    try:
        # Back after Ctrl-C, or after a script left a call waiting: follow that turn first;
        # or show the last exchange, whose reply may have come while the client was away.
        in_progress = DurableAgentWorkflow.turn_in_progress
        if turn_id := await session.quick_query(in_progress, None, timeout_s=5):
            await session.reply_of(turn_id, ask, view)
        elif attached and (last := await session.last_exchange()):
            print("(the last exchange:)", file=sys.stderr)
            print_messages(last)
        await _converse(session, terminal, ask, view, embedded)
    except AwaitingApproval:  # Ctrl-D at `approve? [y/N]`
        print()
        if not embedded:
            print(
                "(The call keeps waiting; decide it later with --approve or --deny.)",
                file=sys.stderr,
            )
        print(leaving_line(session, embedded), file=sys.stderr)


async def _converse(
    session: ChatSession, terminal: Terminal, ask: Approver, view: TurnView, embedded: bool
) -> None:
    while True:
        text = await terminal.line("you> ")
        if text is None:  # Ctrl-D, or the end of piped input: the session keeps running.
            print()
            print(leaving_line(session, embedded), file=sys.stderr)
            return
        word = text.strip().lower()
        if not word:
            continue
        if not _is_text(text):
            print(
                "error: that line has bytes that are not "
                f"{sys.stdin.encoding or 'UTF-8'} text; it was not sent. Type it again.",
                file=sys.stderr,
            )
            continue
        if word == USAGE_COMMAND:
            await print_usage(session.handle)
            continue
        if word == "bye" or word not in END_WORDS:
            try:
                await session.send(text, ask, view)
            except ChatError as err:
                print(f"error: {err}", file=sys.stderr)
        if word in END_WORDS:
            print_transcript(await session.end())
            await print_usage(session.handle, turn=False)
            return


def _is_text(line: str) -> bool:
    """False for a line read with bytes that did not decode (kept as surrogates)."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

"""The workspace: file tools in a folder of each conversation's own, on one worker's disk.

`WORKSPACE_ROOT` (a worker setting; unset: no file tools) holds a folder per conversation,
and a subagent works in its parent's. The five tools (`read_file`, `write_file`,
`edit_file`, `list_files`, `search_files`) are typed functions like the built-in ones, run
by `execute_tool`; the folder a call works in comes from the workflow, on the call
(`ToolCall.workspace`), never from the model.

Nothing a model writes reaches outside its folder, whatever the path: every component is
opened relative to the one before with O_NOFOLLOW, so `..`, absolute paths and symbolic
links (whoever made them) are refused before anything is opened, and so are special files,
files over MAX_FILE_BYTES, binary content for `read_file`, and more than MAX_FILES entries.

The folder lives on one worker's disk, so a conversation's file calls must all reach that
worker: the one that takes the conversation's first file call makes the folder (`open`)
and returns, on the call's result, a `WorkspacePin` naming its own task queue, which the
workflow records and uses for every file call after (docs/workspace.md). The worker's
identity, and so its queue, is a file in WORKSPACE_ROOT: a worker restarted on the same
disk serves its conversations again.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import re
import socket
import stat
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field
from temporalio import activity

from contract import WorkspacePin
from function_tools import function_tool, tool
from toolbox import Tool, ToolError

MAX_FILE_BYTES = 1_000_000
"""Largest file a tool writes or reads, in bytes."""
MAX_FILES = 1_000
"""Most files and folders a conversation's workspace holds."""
MAX_NAME_BYTES = 255
"""Longest name of one file or folder (UTF-8 bytes): what Linux file systems allow."""
MAX_PATH_CHARS = 1_000
MAX_SEARCH_MATCHES = 50
"""Most matching lines `search_files` returns."""
UNAVAILABLE_AFTER_S = 60.0
"""How long a file call waits for the worker that holds its workspace before the model
reads "workspace unavailable" (WORKSPACE_UNAVAILABLE_AFTER_S)."""
IDENTITY_FILE = ".worker-id"

folder: contextvars.ContextVar[str] = contextvars.ContextVar("workspace folder")
"""The folder of the call being run: `execute_tool` sets it from `ToolCall.workspace`."""

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_SAFE_NAME = re.compile(r"[^\w.-]", re.ASCII)


@dataclass(frozen=True)
class Workspace:
    """This worker's WORKSPACE_ROOT, its identity there, and the limits of the file tools."""

    root: Path
    affinity: bool = True
    """Pin each conversation's file calls to this worker (off: WORKSPACE_ROOT is storage
    every worker shares, and any worker may run them)."""
    unavailable_after_s: float = UNAVAILABLE_AFTER_S
    max_file_bytes: int = MAX_FILE_BYTES
    max_files: int = MAX_FILES
    worker_id: str = field(init=False)

    def __post_init__(self) -> None:
        root = Path(os.path.realpath(self.root))
        root.mkdir(parents=True, exist_ok=True)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "worker_id", _identity(root / IDENTITY_FILE))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Workspace | None:
        """WORKSPACE_ROOT (unset: None, no file tools), WORKSPACE_AFFINITY (1, or 0 for
        shared storage), WORKSPACE_UNAVAILABLE_AFTER_S; ValueError naming a bad one."""
        if not (root := env.get("WORKSPACE_ROOT", "").strip()):
            return None
        affinity = env.get("WORKSPACE_AFFINITY", "1").strip()
        if affinity not in ("0", "1"):
            raise ValueError(f"WORKSPACE_AFFINITY={affinity!r}: 1 (pinned) or 0 (shared storage)")
        wait = env.get("WORKSPACE_UNAVAILABLE_AFTER_S", "").strip()
        try:
            wait_s = float(wait) if wait else UNAVAILABLE_AFTER_S
        except ValueError:
            raise ValueError(f"WORKSPACE_UNAVAILABLE_AFTER_S={wait!r} is not a number") from None
        if not wait_s > 0:
            raise ValueError("WORKSPACE_UNAVAILABLE_AFTER_S must be a positive number of seconds")
        return cls(Path(root), affinity == "1", wait_s)

    @property
    def queue(self) -> str | None:
        """This worker's own task queue, which it polls for file calls; None without affinity."""
        return f"workspace-{self.worker_id}" if self.affinity else None

    def describe(self) -> str:
        """One line for the worker's start banner."""
        if self.queue is None:
            return f"Workspace: {self.root} (shared storage: any worker runs the file tools)"
        return (
            f"Workspace: {self.root}, file calls pinned to this worker's queue {self.queue} "
            f"(unavailable after {self.unavailable_after_s:g} s)"
        )

    def open(self, conversation: str) -> WorkspacePin:
        """Make the conversation's folder here; the pin that leads its file calls here."""
        name = folder_name(conversation)
        with suppress(FileExistsError):
            (self.root / name).mkdir()
        return WorkspacePin(name, self.queue, self.worker_id, self.unavailable_after_s)

    def tools(self) -> list[Tool]:
        return [
            function_tool(method)
            for method in (
                self.read_file,
                self.write_file,
                self.edit_file,
                self.list_files,
                self.search_files,
            )
        ]

    # --- The tools: each resolves its path inside the call's folder first ----------------

    @tool
    def read_file(self, path: str) -> str:
        """Read a text file of your workspace (paths are relative to it, like notes/todo.md)."""
        with self._opened(path) as (directory, name):
            return self._text(directory, name, path)

    @tool
    def write_file(
        self, path: str, content: Annotated[str, Field(max_length=MAX_FILE_BYTES)]
    ) -> str:
        """Write a text file in your workspace, replacing it if it exists; folders are made."""
        data = content.encode()
        if len(data) > self.max_file_bytes:
            raise ToolError(
                f"{path}: {len(data)} bytes; a file holds at most {self.max_file_bytes}"
            )
        with self._opened(path, create=True) as (directory, name):
            existing = _kind(directory, name)
            if existing not in (None, "file"):
                raise ToolError(f"{path} is a {existing}: refused")
            if existing is None:
                self._check_room()
            _replace(directory, name, data)
        return f"Wrote {path} ({len(data)} bytes)."

    @tool
    def edit_file(
        self, path: str, old_text: Annotated[str, Field(min_length=1)], new_text: str
    ) -> str:
        """Replace old_text, which must occur exactly once in the file, with new_text."""
        key = _call_key()
        with self._opened(path) as (directory, name):
            text = self._text(directory, name, path)
            count = text.count(old_text)
            # A retried call whose first attempt applied the edit (the worker died before
            # it could answer) finds it in the journal, or, had the worker died before
            # the journal was written, finds the new text instead of the old: it says so.
            if _applied(directory, name, key) or (count == 0 and new_text in text):
                return f"Already applied: {path} has the new text."
            if count != 1:
                where = "does not occur" if count == 0 else f"occurs {count} times"
                raise ToolError(f"{path}: old_text {where}; it must occur exactly once")
            edited = text.replace(old_text, new_text).encode()
            if len(edited) > self.max_file_bytes:
                raise ToolError(
                    f"{path} would hold {len(edited)} bytes; at most {self.max_file_bytes}"
                )
            _replace(directory, name, edited)
            _remember(directory, name, key)
        return f"Edited {path}."

    @tool
    def list_files(self, path: str = "") -> str:
        """List the files of your workspace (or of one folder in it), with their sizes."""
        with self._opened(path, folder_itself=True) as (directory, _):
            lines = [_listed(entry) for entry in _walk(directory, "/".join(_parts(path)))]
        return "\n".join(lines) or f"{path or 'The workspace'} is empty."

    @tool
    def search_files(self, text: Annotated[str, Field(min_length=1, max_length=200)]) -> str:
        """Find the lines of your workspace's text files that contain the text."""
        wanted, matches, more = text.casefold(), [], 0
        with self._opened("", folder_itself=True) as (directory, _):
            for entry in _walk(directory, ""):
                if entry.kind != "file" or entry.size > self.max_file_bytes:
                    continue
                content = _read_text(entry.directory, entry.name) or ""  # binary: skipped
                for number, line in enumerate(content.split("\n"), start=1):
                    if wanted in line.casefold():
                        if len(matches) < MAX_SEARCH_MATCHES:
                            matches.append(f"{entry.path}:{number}: {line.strip()[:200]}")
                        else:
                            more += 1
        if not matches:
            return f"No line of the workspace contains {text!r}."
        return "\n".join(matches + ([f"[{more} more matches not shown]"] if more else []))

    # --- Path safety ---------------------------------------------------------------------

    @contextmanager
    def _opened(
        self, path: str, *, create: bool = False, folder_itself: bool = False
    ) -> Iterator[tuple[int, str]]:
        """The folder that holds `path`, open (no link followed), and the last name in it;
        with `folder_itself`, the folder `path` names. Closed at the end of the `with`."""
        parts = _parts(path)
        if not parts and not folder_itself:
            raise ToolError("give a file's path inside the workspace, like notes/todo.md")
        conversation = folder.get(None)
        if not conversation or folder_name(conversation) != conversation:
            # The workflow's, from the pin; never the model's. Checked all the same.
            raise ToolError("the file tools work only in a conversation's workspace")
        keep = parts if folder_itself else parts[:-1]
        name = "" if folder_itself else parts[-1]
        fd = os.open(self.root, _DIRECTORY)
        try:
            for part in [conversation, *keep]:
                if (create or part == conversation) and _kind(fd, part) is None:
                    if part != conversation:
                        self._check_room()
                    with suppress(FileExistsError):  # A concurrent call made it first.
                        os.mkdir(part, dir_fd=fd)
                fd = _descend(fd, part, path)
            yield fd, name
        finally:
            os.close(fd)

    def _check_room(self) -> None:
        with self._opened("", folder_itself=True) as (directory, _):
            if sum(1 for _ in _walk(directory, "")) >= self.max_files:
                raise ToolError(f"the workspace holds {self.max_files} files and folders: no more")

    def _text(self, directory: int, name: str, path: str) -> str:
        found = _lstat(directory, name)
        if found is None:
            raise ToolError(f"{path}: no such file")
        if (kind := _kind_of(found.st_mode)) != "file":
            raise ToolError(f"{path} is a {kind}: refused")
        if (size := found.st_size) > self.max_file_bytes:
            raise ToolError(f"{path}: {size} bytes; the tools read at most {self.max_file_bytes}")
        text = _read_text(directory, name)
        if text is None:
            raise ToolError(f"{path} is not text (binary content): refused")
        return text


def folder_name(conversation: str) -> str:
    """A conversation's folder: its workflow id where that is a safe name, else a safe
    name with a hash of the id (so two ids never share a folder); never a dot first."""
    name = _SAFE_NAME.sub("_", conversation)
    if name != conversation or name.startswith(".") or len(name) > 150:
        name = f"_{name[:120]}-{hashlib.sha256(conversation.encode()).hexdigest()[:12]}"
    return name


def _parts(path: str) -> list[str]:
    """The path's names, or a ToolError saying why it could lead outside."""
    if "\0" in path:
        raise ToolError("a path cannot contain a NUL character")
    if len(path) > MAX_PATH_CHARS:
        raise ToolError(f"the path is longer than {MAX_PATH_CHARS} characters")
    path = path.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise ToolError(f"{path} is an absolute path: give one inside the workspace")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ToolError(f"{path}: '..' is refused; paths stay inside the workspace")
    for part in parts:
        if len(part.encode()) > MAX_NAME_BYTES:
            raise ToolError(f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
        if _reserved(part):
            raise ToolError(f"{part} is a name the file tools keep for themselves")
    return parts


def _descend(fd: int, part: str, path: str) -> int:
    """Open the folder `part` inside `fd`, then close `fd`; a link or a file is refused
    (and `fd` left open)."""
    try:
        inner = os.open(part, _DIRECTORY, dir_fd=fd)
    except OSError as err:
        kind = _kind(fd, part)
        if kind is None:
            raise ToolError(f"{path}: no such folder {part}") from None
        if kind != "folder":
            raise ToolError(f"{path}: {part} is a {kind}, not a folder: refused") from None
        raise ToolError(f"{path}: {err.strerror}") from None
    os.close(fd)
    return inner


def _kind(directory: int, name: str) -> str | None:
    """What `name` is, without following it (None: nothing by that name)."""
    found = _lstat(directory, name)
    return None if found is None else _kind_of(found.st_mode)


def _lstat(directory: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _kind_of(mode: int) -> str:
    """File, folder, symbolic link or special file."""
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_ISREG(mode) else "special file"


def _read_text(directory: int, name: str) -> str | None:
    """A regular file's text, or None if it is binary (a NUL byte, or not UTF-8)."""
    # O_NONBLOCK: a FIFO put there since the check must not hang the call.
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    with os.fdopen(fd, "rb") as opened:
        if not stat.S_ISREG(os.fstat(opened.fileno()).st_mode):
            return None
        data = opened.read()
    try:
        return None if b"\0" in data else data.decode()
    except UnicodeDecodeError:
        return None


def _replace(directory: int, name: str, data: bytes) -> None:
    """Write the file whole, or not at all: a new file renamed over the old one, so a
    crash mid-write leaves the old content, and a retried write the same file."""
    temporary = f"{_TEMPORARY}{uuid.uuid4().hex}"
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=directory
    )
    with os.fdopen(fd, "wb") as written:
        written.write(data)
        written.flush()
        os.fsync(written.fileno())
    os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)


@dataclass(frozen=True)
class _Entry:
    path: str
    kind: str
    size: int
    directory: int
    """The open folder that holds it, valid while the walk is at this entry."""
    name: str


def _walk(directory: int, prefix: str) -> Iterator[_Entry]:
    """Everything under `directory`, by name, each folder followed by what it holds;
    links are listed, never followed."""
    with os.scandir(directory) as entries:
        names = sorted(entry.name for entry in entries if not _reserved(entry.name))
    for name in names:
        found = _lstat(directory, name)
        if found is None:  # Gone since the listing.
            continue
        path = f"{prefix}/{name}" if prefix else name
        kind = _kind_of(found.st_mode)
        yield _Entry(path, kind, found.st_size, directory, name)
        if kind == "folder":
            inner = os.open(name, _DIRECTORY, dir_fd=directory)
            try:
                yield from _walk(inner, path)
            finally:
                os.close(inner)


def _listed(entry: _Entry) -> str:
    if entry.kind == "folder":
        return f"{entry.path}/"
    if entry.kind == "file":
        return f"{entry.path} ({entry.size} bytes)"
    return f"{entry.path} ({entry.kind}: the tools refuse it)"


def _reserved(name: str) -> bool:
    """The tools' own files: a write in progress, the journal of edits."""
    return name.startswith(_TEMPORARY) or name == _EDITS


# Edits applied, by the call that applied them: a retried edit_file says "already applied".
_EDITS = ".edits"
_TEMPORARY = ".tmp-"


def _call_key() -> str:
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"


def _applied(directory: int, name: str, key: str) -> bool:
    with suppress(FileNotFoundError):
        fd = os.open(_EDITS, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
        with os.fdopen(fd, encoding="utf-8") as edits:
            return f"{key} {name}" in edits.read().split("\n")
    return False


def _remember(directory: int, name: str, key: str) -> None:
    fd = os.open(
        _EDITS, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644, dir_fd=directory
    )
    with os.fdopen(fd, "a", encoding="utf-8") as edits:
        edits.write(f"{key} {name}\n")


def _identity(path: Path) -> str:
    """This worker's id, kept in WORKSPACE_ROOT: the same after a restart on this disk."""
    with suppress(FileNotFoundError):
        return path.read_text().strip()
    made = f"{_SAFE_NAME.sub('-', socket.gethostname())[:40]}-{uuid.uuid4().hex[:8]}"
    # Two workers starting on one root: the first one's id stands.
    with suppress(FileExistsError), path.open("x") as written:
        written.write(made + "\n")
    return path.read_text().strip()

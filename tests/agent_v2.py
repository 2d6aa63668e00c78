"""Version 2 of the agent, for the versioning walk-through and its tests (docs/versioning.md).

    uv run tests/agent_v2.py DIR [--patched]   # writes the project's code with v2's change

v2 is this project's code with one change to the loop: after each turn the conversation
records its turn count in its memo, a command v1 never wrote. A v1 history no longer
replays on it, which is what a new version is for. With `--patched` the same change is
guarded by `workflow.patched()`: v1 histories replay, so it can replace v1's code in place,
runs in flight included.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = "            self._outcomes[message.number] = outcome\n"
CHANGE = (
    '            workflow.upsert_memo({"turns": self._session.earlier_turns + message.number})\n'
)
PATCH_ID = "turn-count-memo"


def write_v2(directory: Path, patched: bool = False) -> Path:
    """Copy the project's modules to `directory` with v2's change; return its worker.py."""
    directory.mkdir(parents=True, exist_ok=True)
    for module in ROOT.glob("*.py"):
        shutil.copy(module, directory / module.name)
    source = (ROOT / "workflow.py").read_text()
    if source.count(ANCHOR) != 1:
        raise RuntimeError(f"tests/agent_v2.py: the line {ANCHOR.strip()!r} left workflow.py")
    change = CHANGE
    if patched:
        change = f"            if workflow.patched({PATCH_ID!r}):\n    {CHANGE}"
    (directory / "workflow.py").write_text(source.replace(ANCHOR, ANCHOR + change))
    return directory / "worker.py"


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--patched"]):
        sys.exit(__doc__.splitlines()[2].strip())
    print(write_v2(Path(sys.argv[1]), patched=sys.argv[2:] == ["--patched"]))

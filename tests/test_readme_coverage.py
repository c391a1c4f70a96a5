"""Every command the README shows is run by a test, or marked as needing a GPU, a cluster or the hub.

A test module names the README lines it runs, verbatim, in a module-level ``README_LINES`` (a tuple, list or dict
of them; tests/test_readme.py runs most). ``test_every_readme_command_is_run_or_marked`` reads README.md's ```bash
blocks and its inline command spans and fails naming every command that no ``README_LINES`` holds and no trailing
`# needs a GPU` / `# needs a cluster` / `# needs the hub` mark excuses; ``test_every_readme_lines_entry_is_a_readme_
command`` keeps the constants from drifting away from the text.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKS = ("needs a GPU", "needs a cluster", "needs the hub")
# an inline `code` span in the prose that is a command (not a module path such as `rpt/config.py`)
INLINE_COMMAND = re.compile(r"(rpt [a-z_]+|make [a-z]+|launch/\S+\.sh)( .*)?")

# ---- the README's commands -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    text: str  # continuation lines joined, trailing comment removed
    comment: str = ""

    @property
    def mark(self) -> str | None:
        return next((m for m in MARKS if m in self.comment), None)


def split_comment(line: str) -> tuple[str, str]:
    """`code  # comment` → (code, comment): the first `#` outside quotes that starts a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def block_commands(markdown: str) -> list[Command]:
    """The commands of every ```bash block: a line ending in `\\` continues on the next one."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M):
        parts, comments = [], []
        for raw in block.splitlines():
            code, comment = split_comment(raw)
            comments += [comment] if comment else []
            if code.endswith("\\"):
                parts.append(code[:-1].strip())
                continue
            parts.append(code.strip())
            text = " ".join(p for p in parts if p)
            if text:
                commands.append(Command(text, " ".join(comments)))
            parts, comments = [], []
    return commands


def inline_commands(markdown: str) -> list[Command]:
    """Inline `code` spans of the prose that are commands, except those that only name the start of another one
    (`rpt pipeline`, `rpt select run.name=exp1` in the text about the block that holds the whole line)."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    spans = [s for s in re.findall(r"`([^`\n]+)`", prose) if INLINE_COMMAND.fullmatch(s)]
    whole = [c.text for c in block_commands(markdown)] + spans
    return [Command(s) for s in dict.fromkeys(spans) if not any(o != s and o.startswith(s + " ") for o in whole)]


def readme_commands(markdown: str) -> list[Command]:
    return block_commands(markdown) + inline_commands(markdown)


def readme_lines_in_tests() -> dict[str, list[str]]:
    """Every string of every tests/test_*.py module's top-level ``README_LINES`` → the files that hold it."""
    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        else:
            for v in value:
                yield from strings(v)

    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == "README_LINES" for t in targets):
                for line in strings(ast.literal_eval(node.value)):
                    found.setdefault(line, []).append(path.name)
    return found


def uncovered(commands: list[Command], run_lines) -> list[str]:
    return [c.text for c in commands if c.text not in run_lines and c.mark is None]


def test_the_parser_joins_continuations_and_keeps_comments_for_the_marks():
    md = ("text `rpt a` and `rpt cnt` and `rpt/config.py`\n```bash\nrpt a x=1   # one\n"
          "rpt b y=\"'#no comment'\" \\\n    z=2   # needs a GPU\n\nmkdir -p logs\n```\n```\nnot bash\n```\n")
    commands = readme_commands(md)
    assert commands == [Command("rpt a x=1", "one"), Command("rpt b y=\"'#no comment'\" z=2", "needs a GPU"),
                        Command("mkdir -p logs"), Command("rpt cnt")]
    assert uncovered(commands, {"rpt a x=1"}) == ["mkdir -p logs", "rpt cnt"]


def test_every_readme_command_is_run_or_marked():
    commands = readme_commands(README.read_text())
    assert len(commands) > 30  # the parser found the README's commands
    missing = uncovered(commands, readme_lines_in_tests())
    assert not missing, ("README commands that no test runs (add a test that runs the line and put it, verbatim, "
                         "in that module's README_LINES) and no `# needs a GPU/cluster/the hub` mark excuses:\n  "
                         + "\n  ".join(missing))


def test_every_readme_lines_entry_is_a_readme_command():
    commands = {c.text for c in readme_commands(README.read_text())}
    stale = {line: files for line, files in readme_lines_in_tests().items() if line not in commands}
    assert not stale, f"README_LINES entries that README.md no longer shows as a command: {stale}"


def test_make_test_is_the_ci_command():
    """`make test` is not run from inside the suite (it would recurse): CI runs it, and it runs ruff and pytest."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test"
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert "ruff check ." in recipe and "-m pytest" in recipe and "-n $(PYTEST_WORKERS)" in recipe
    fast = re.search(r"^test-fast:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert '-m "not e2e and not multiprocess"' in fast  # the edit loop's in-process tier (README, Tests)

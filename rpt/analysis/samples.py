"""The report's "Samples" section: what the policy actually wrote, good and bad, for each RL stage.

Numbers say how often the model is right; a few rollouts say how (a real chain of thought, or boxing the first
digit). The trainer saves rollouts as ``rollouts/<stage>/step_NNNNNN.jsonl``, one JSON object per line with
``step``, ``context`` (tail of the prompt), ``response``, ``answer`` (extracted box or null), ``reference``,
``reward`` and ``truncated``. From the latest step file we show up to ``per_kind`` good samples (highest reward,
reward > 0) and ``per_kind`` bad ones (reward 0). Model output is arbitrary text: every field is capped, stripped of
control characters and shown inside a code fence longer than any backtick run it contains, so no response can end
the fence or break the markdown around it. Missing directories, empty files and malformed lines are tolerated.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

log = logging.getLogger(__name__)

STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
FIELDS = ("context", "response", "answer", "reference")


def latest_step_file(directory: Path) -> Path | None:
    """The ``step_NNNNNN.jsonl`` with the highest step number (None if there is none)."""
    if not directory.is_dir():
        return None
    files = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_FILE.match(p.name)) and p.is_file()]
    return max(files)[1] if files else None


def read_samples(path: Path) -> tuple[list[dict], int]:
    """Well-formed sample rows of one file and the number of lines skipped as malformed."""
    rows, skipped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            reward = float(row["reward"])  # TypeError for a non-object line, KeyError without a reward
            if not math.isfinite(reward):
                raise ValueError(reward)
        except (ValueError, TypeError, KeyError):
            skipped += 1
            continue
        rows.append({**row, "reward": reward})
    if skipped:
        log.warning("samples: skipped %d malformed line(s) in %s", skipped, path)
    return rows, skipped


def pick(rows: list[dict], per_kind: int) -> tuple[list[dict], list[dict]]:
    """Up to ``per_kind`` good rows (reward > 0, highest first) and bad rows (reward 0, in file order)."""
    good = sorted((r for r in rows if r["reward"] > 0), key=lambda r: -r["reward"])[:per_kind]
    bad = [r for r in rows if r["reward"] == 0][:per_kind]
    return good, bad


def clean(value, max_chars: int, keep: str = "head") -> str:
    """One field as safe text: control characters escaped, at most ``max_chars`` characters (``keep``: which part
    survives the cut, ``head``, ``tail`` or ``both`` ends)."""
    text = "null" if value is None else str(value)
    text = CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.replace("\r\n", "\n").replace("\r", "\n"))
    if len(text) <= max_chars:
        return text
    if keep == "tail":
        return "…" + text[-max_chars:]
    if keep == "both":
        half = max_chars // 2
        return text[:half] + " … " + text[-half:]
    return text[:max_chars] + "…"


def fence(body: str, info: str = "text") -> str:
    """``body`` in a backtick fence longer than any backtick run inside it (CommonMark: such a run cannot close it)."""
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{body}\n{ticks}"


def render_sample(row: dict, label: str, max_chars: int) -> str:
    keep = {"context": "tail", "response": "both"}
    body = "\n".join(f"{name}:\n{clean(row.get(name), max_chars, keep.get(name, 'head'))}\n" for name in FIELDS)
    trunc = "yes" if row.get("truncated") else "no"
    return f"**{label}** — reward {row['reward']:.3f}, truncated: {trunc}\n\n{fence(body.rstrip())}\n"


def stage_samples(rollouts_dir: Path, stage: str, per_kind: int, max_chars: int) -> str:
    """Markdown for one stage, or "" when the stage saved no rollouts at all."""
    directory = Path(rollouts_dir) / stage
    if not directory.is_dir():
        return ""
    path = latest_step_file(directory)
    if path is None:
        return f"### `{stage}`\nNo rollout files in `rollouts/{stage}/`.\n"
    rows, skipped = read_samples(path)
    note = f" ({skipped} malformed line(s) skipped)" if skipped else ""
    head = f"### `{stage}`\nFrom `rollouts/{stage}/{path.name}`: {len(rows)} rollouts{note}."
    if not rows:
        return head + " Nothing to show.\n"
    good, bad = pick(rows, per_kind)
    parts = [head + f" {len(good)} good (reward > 0, highest first) and {len(bad)} bad (reward 0) shown; fields "
                    f"are cut to {max_chars} characters.\n"]
    parts += [render_sample(r, f"good {i + 1}", max_chars) for i, r in enumerate(good)]
    parts += [render_sample(r, f"bad {i + 1}", max_chars) for i, r in enumerate(bad)]
    if not good:
        parts.append("_No rollout with reward > 0 in this step._\n")
    if not bad:
        parts.append("_No rollout with reward 0 in this step._\n")
    return "\n".join(parts)


def samples_section(rollouts_dir: Path, stages: list[str], per_kind: int, max_chars: int) -> str:
    """The whole "## Samples" section, or "" when no stage saved rollouts (the report then omits it)."""
    parts = [s for s in (stage_samples(rollouts_dir, st, per_kind, max_chars) for st in stages) if s]
    if not parts:
        return ""
    return "## Samples\nRollouts of the latest saved step of each RL stage.\n\n" + "\n".join(parts)

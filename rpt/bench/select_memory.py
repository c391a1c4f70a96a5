"""Peak memory of `rpt select` against the size of the corpus: the stage runs in a fresh process per corpus size,
and its peak resident set (``ru_maxrss`` of that child, read with ``os.wait4``: what ``RUSAGE_CHILDREN`` reports
for it) is the figure. Flat means selection streams; before it did, it grew with the corpus.

One demo-recipe run is prepared and pretrained briefly as the proxy (``base``, reused by later calls); each size
``s`` is a run directory with the same tokenizer and proxy whose RPT split is the demo's document count times
``s`` (the base corpus's documents in order, repeated under new ids where it runs out). ``--code DIR`` runs the
stage from another checkout (e.g. ``git archive HEAD`` of an older commit) to measure it before a change.

    python -m rpt.bench.select_memory --root /tmp/select_bench --sizes 1 10 [--code DIR] [--out file.json]

Prints one JSON object; numbers are measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from data_prep.indexed import IndexedDocs, write_indexed
from rpt.rundir import read_json

DEMO_RPT_DOCS = 1600  # conf/experiment/demo.yaml data.num_rpt_docs
SELECT = ["experiment=demo", "logging=disabled", "select.max_entropy=null", "select.threshold=0.5"]


def _cli(root: Path, name: str, stage: str, *overrides: str, code: Path | None = None) -> tuple[int, object, str]:
    """Run ``rpt <stage>`` in a child process: (exit code, the child's rusage, the tail of its log)."""
    env = {**os.environ, "WANDB_SILENT": "true"}
    if code is not None:
        env["PYTHONPATH"] = f"{code}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-m", "rpt.cli", stage, f"run.root={root}", f"run.name={name}", *SELECT, *overrides]
    log_path = root / f"{name}.{stage}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen has not reaped it)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage, log_path.read_text()[-3000:]


def prepare_base(root: Path, max_size: int, pretrain_steps: int) -> Path:
    """The proxy run: the demo corpus with ``max_size`` times its RPT documents, pretrained for a few steps."""
    base = root / "base"
    if not (base / "done" / "pretrain.json").exists():
        rc, _, log = _cli(root, "base", "pipeline", "stages=[prep,pretrain]",
                          f"data.num_rpt_docs={DEMO_RPT_DOCS * max_size}", f"pretrain.steps={pretrain_steps}",
                          f"pretrain.checkpoint_every={pretrain_steps}")
        if rc:
            raise RuntimeError(f"preparing {base} failed:\n{log}")
    return base


def corpus_of_size(base: Path, run: Path, size: int) -> dict:
    """``run``: ``base``'s tokenizer, proxy and markers, and an RPT split of ``size`` × the demo's documents."""
    if run.exists():
        shutil.rmtree(run)
    for sub in ("tokenizer", "checkpoints", "done"):  # done/: prep and pretrain
        shutil.copytree(base / sub, run / sub)
    source = IndexedDocs(base / "data" / "rpt")
    n = DEMO_RPT_DOCS * size

    def docs():
        for i in range(n):
            j = i % len(source)
            yield (source.doc_ids[j] if i < len(source) else f"{source.doc_ids[j]}#{i // len(source)}",
                   source.tokens(j).tolist())

    vocab = 65000 if source.manifest["dtype"] == "uint16" else 1 << 20  # the base split's token width
    return write_indexed(run / "data" / "rpt", docs(), vocab)


def measure_select(root: Path, name: str, code: Path | None) -> dict:
    """Run `select` on run ``name`` in a child process; its peak RSS (MiB), wall time and summary."""
    t0 = time.perf_counter()
    rc, usage, log = _cli(root, name, "select", code=code)
    seconds = time.perf_counter() - t0
    if rc:
        raise RuntimeError(f"select on {name} failed:\n{log}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": seconds,
            "summary": read_json(root / name / "done" / "select.json")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--code", type=Path, default=None, help="run select from this checkout (PYTHONPATH)")
    ap.add_argument("--pretrain-steps", type=int, default=6)  # the proxy only has to exist: memory, not quality
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    base = prepare_base(args.root, max(args.sizes), args.pretrain_steps)
    rows = []
    for size in args.sizes:
        manifest = corpus_of_size(base, args.root / f"x{size}", size)
        got = measure_select(args.root, f"x{size}", args.code)
        rows.append({"size": size, "documents": manifest["documents"], "tokens": manifest["tokens"], **got})
    result = {"code": str(args.code or "this checkout"), "sizes": rows}
    if len(rows) > 1:
        result["peak_ratio_largest_vs_smallest"] = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

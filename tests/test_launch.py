"""Launch scripts: the Slurm script parses and prints the srun line it would run; a real SIGUSR1 makes a
training stage checkpoint, exit with the requeue status, and the re-run resume to the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "launch" / "slurm" / "rpt.sbatch"


def test_scripts_parse():
    for script in [SBATCH, ROOT / "launch" / "torchrun.sh", ROOT / "launch" / "bench_gpu.sh"]:
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_gpu_bench_script_runs_with_overrides(tmp_path):
    """The GPU benchmark script, shrunk by overrides to run here: every part it names reports its figures."""
    import json

    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "launch" / "bench_gpu.sh"), "model=smoke", "run.dtype=float32",
                    "bench.batch_size=2", "bench.prompt_len=8", "bench.new_tokens=4", "bench.train_seq_len=16",
                    "bench.repeats=1"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert set(result) >= {"rollout", "train", "scoring"} and "rpt_step" not in result
    assert result["rollout"]["decode_speedup_vs_hf"] > 0 and result["train"]["train_tok_s"] > 0


def test_sbatch_dry_run_prints_the_srun_line(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "SLURM_NNODES": "4", "GPUS_PER_NODE": "8", "SLURM_JOB_ID": "1234",
           "MASTER_ADDR": "node001"}
    env.pop("MASTER_PORT", None)
    out = subprocess.run(["bash", str(SBATCH), "rpt", "run.name=x", "algo=forking"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("srun ")  # one task per GPU, no torchrun agent between Slurm's signals and the ranks
    for part in ["--nodes 4", "--ntasks-per-node 8", "MASTER_ADDR=node001", "MASTER_PORT=21234",
                 "-m rpt.cli rpt run.name=x algo=forking"]:
        assert part in out, part
    assert "torch.distributed.run" not in out
    assert not (tmp_path / "logs" / "rpt-1234.requeue").exists()


def test_ctrl_c_checkpoints_exits_for_requeue_and_resumes_and_a_second_one_exits_at_once(tmp_path):
    """Ctrl-C (SIGINT) during training is a preemption signal: a checkpoint at the step it stopped, status 99, no
    traceback; the same command resumes. Two Ctrl-Cs in a row stop at once (130), without a checkpoint. (SIGUSR1
    and SIGTERM take the same path: tests/test_slurm.py.)"""
    cmd = [sys.executable, "-m", "rpt.cli", "pipeline", "experiment=smoke", f"run.root={tmp_path}",
           "run.name=pre", "stages=[prep,pretrain]", "pretrain.steps=150", "pretrain.checkpoint_every=1000"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = tmp_path / "pre" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 99 and "Traceback" not in err, err[-2000:]
    latest = (tmp_path / "pre" / "checkpoints" / "pretrain" / "latest").read_text().strip()
    stopped_at = int(latest.split("_")[1])
    assert 0 < stopped_at < 150  # a checkpoint at the step it stopped, although checkpoint_every is 1000
    assert not (tmp_path / "pre" / "done" / "pretrain.json").exists()
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "pre" / "done" / "pretrain.json").exists()

    # two Ctrl-Cs inside a training loop (a smoke step is too short to aim a second signal at it from outside)
    script = ("import os, signal, time\nfrom rpt.train import preemption\n"
              "with preemption.ctrl_c_checkpoints():\n"
              "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
              "    assert preemption._requested\n"
              "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
              "print('still running')\n")
    twice = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert twice.returncode == 130 and "second Ctrl-C: exiting now" in twice.stderr, twice.stderr[-2000:]
    assert "still running" not in twice.stdout and "Traceback" not in twice.stderr


def test_submitit_slurm_launcher_config_composes():
    """`hydra/launcher=rpt_slurm` resolves to hydra-submitit's Slurm launcher with our per-job layout."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from rpt.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=rpt_slurm", "hydra.launcher.nodes=2"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    assert launcher.max_num_timeout == 3 and launcher.signal_delay_s == 120

"""The Slurm job script end to end, without Slurm: stand-in ``srun`` and ``scontrol`` executables on PATH (``srun``
starts the tasks as local processes with the SLURM_* rank variables, passes signals on and exits with their worst
status; ``scontrol`` records its calls). SIGUSR1 to the tasks — what ``--signal=USR1@120`` makes slurmstepd do —
must make both ranks checkpoint at the same step, the script requeue the job, and the requeued job resume to the
uninterrupted run's metrics, step for step. Also: the time budget (``run.save_before_minutes``) and how the rank
layout is read from Slurm's variables."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import stage_rows

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "launch" / "slurm" / "rpt.sbatch"
JOB_ID = "4242"
PRETRAIN = ["experiment=smoke", "pretrain.steps=30", "pretrain.log_every=1", "pretrain.checkpoint_every=1000"]

# Slurm's srun, as far as the job script uses it: --nodes x --ntasks-per-node tasks, each in its own session (as
# slurmstepd starts them: outside the batch script's process group), with SLURM_PROCID/LOCALID/NTASKS set,
# --export=ALL,K=V, --output with %t; signals it receives go on to every task; --kill-on-bad-exit=1 kills the
# other tasks (SIGKILL) once one exits non-zero; the exit status is the worst task's (128+N for a signal N).
SRUN = '''#!{python}
import os, signal, subprocess, sys, time
args, opts = sys.argv[1:], {{}}
while args and args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    opts[key] = value if value else args.pop(0)
env = dict(os.environ)
for pair in opts.get("export", "ALL").split(",")[1:]:
    key, _, value = pair.partition("=")
    env[key] = value
per_node = int(opts["ntasks-per-node"])
ntasks = int(opts.get("nodes", 1)) * per_node
tasks = []
for rank in range(ntasks):
    task_env = {{**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node), "SLURM_NTASKS": str(ntasks),
                "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_NODEID": str(rank // per_node), "SLURM_STEP_ID": "0"}}
    out = open(opts["output"].replace("%t", str(rank)), "a")
    tasks.append(subprocess.Popen(args, env=task_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
with open(os.environ["SRUN_TASK_PIDS"], "w") as f:
    f.write(" ".join(str(t.pid) for t in tasks))

def forward(signum, frame):
    for t in tasks:
        if t.poll() is None:
            t.send_signal(signum)

for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, forward)
while any(t.poll() is None for t in tasks):
    if opts.get("kill-on-bad-exit") == "1" and any(t.returncode for t in tasks if t.returncode is not None):
        for t in tasks:
            if t.poll() is None:
                t.kill()
    time.sleep(0.05)
sys.exit(max(t.returncode if t.returncode >= 0 else 128 - t.returncode for t in tasks))
'''

SCONTROL = '''#!/usr/bin/env bash
echo "$*" >> "$SCONTROL_CALLS"
if [[ "$1 $2" == "show hostnames" ]]; then tr ',' '\\n' <<< "$3"; fi
if [[ "$1 $2" == "show job" && -n "${SCONTROL_END_TIME:-}" ]]; then
  echo "JobId=$3 JobName=rpt"
  echo "   StartTime=2030-01-01T00:00:00 EndTime=$SCONTROL_END_TIME Deadline=N/A"
fi
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latest_step(run_dir: Path, stage: str) -> int:
    return int((run_dir / "checkpoints" / stage / "latest").read_text().strip().split("_")[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A directory with the stand-in executables and one prepared run (tokenizer + data) to copy."""
    home = tmp_path_factory.mktemp("cluster")
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN.format(python=sys.executable))
    (bin_dir / "scontrol").write_text(SCONTROL)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    subprocess.run([sys.executable, "-m", "rpt.cli", "prep", "experiment=smoke", f"run.root={home / 'runs'}",
                    "run.name=prepared"], cwd=home, check=True, capture_output=True, timeout=300)
    return home


def new_run(cluster: Path, name: str) -> Path:
    shutil.copytree(cluster / "runs" / "prepared", cluster / "runs" / name)
    return cluster / "runs" / name


def clean_env() -> dict:
    """This process's environment without Slurm's or rpt's job variables (the tests may run inside a Slurm job)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RPT_", "MASTER_", "RANK"))}


def job_env(cluster: Path, restart: int = 0, **extra) -> dict:
    return {**clean_env(), "PATH": f"{cluster / 'bin'}:{os.environ['PATH']}", "PYTHON": sys.executable,
            "SLURM_JOB_ID": JOB_ID, "SLURM_NNODES": "1", "GPUS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "1",
            "SLURM_JOB_NODELIST": "localhost", "SLURM_RESTART_COUNT": str(restart), "MASTER_PORT": str(free_port()),
            "OMP_NUM_THREADS": "1", "SCONTROL_CALLS": str(cluster / "scontrol.calls"),
            "SRUN_TASK_PIDS": str(cluster / "srun.pids"), **extra}


def sbatch(cluster: Path, name: str, env: dict, *overrides: str) -> subprocess.Popen:
    cmd = ["bash", str(SBATCH), "pretrain", f"run.root={cluster / 'runs'}", f"run.name={name}", *PRETRAIN, *overrides]
    return subprocess.Popen(cmd, cwd=cluster, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def requeues(cluster: Path) -> list[str]:
    calls = cluster / "scontrol.calls"
    return [c for c in calls.read_text().splitlines() if c.startswith("requeue")] if calls.exists() else []


def finish(job: subprocess.Popen, cluster: Path) -> str:
    out, _ = job.communicate(timeout=300)
    logs = "".join(p.read_text()[-3000:] for p in sorted((cluster / "logs").glob(f"rpt-{JOB_ID}-*.log")))
    return out + logs


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_usr1_to_the_tasks_checkpoints_requeues_and_the_requeued_job_resumes_exactly(cluster):
    reference = new_run(cluster, "reference")
    job = sbatch(cluster, "reference", job_env(cluster))
    out = finish(job, cluster)
    assert job.returncode == 0 and not requeues(cluster), out
    assert [r["step"] for r in stage_rows(reference, "pretrain")] == list(range(1, 31))

    run = new_run(cluster, "preempted")
    job = sbatch(cluster, "preempted", job_env(cluster))
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:  # a row for step 2 is out: the signal lands mid-stage
        if (run / "metrics.jsonl").exists() and len(stage_rows(run, "pretrain")) >= 2:
            for pid in (cluster / "srun.pids").read_text().split():  # what slurmstepd does at USR1@120
                os.kill(int(pid), signal.SIGUSR1)
            break
        time.sleep(0.05)
    out = finish(job, cluster)
    assert job.returncode == 0, out  # the script requeued and ended cleanly
    assert requeues(cluster) == [f"requeue {JOB_ID}"], out
    stopped = latest_step(run, "pretrain")
    assert 2 <= stopped < 30, out  # a checkpoint at the step the ranks agreed on, although checkpoint_every=1000
    assert [r["step"] for r in stage_rows(run, "pretrain")] == list(range(1, stopped + 1))
    assert not (run / "done" / "pretrain.json").exists()
    assert not (cluster / "logs" / f"rpt-{JOB_ID}.requeue").exists()  # the marker is consumed by the requeue

    job = sbatch(cluster, "preempted", job_env(cluster, restart=1))  # the requeued job: the same command
    out = finish(job, cluster)
    assert job.returncode == 0 and len(requeues(cluster)) == 1, out
    assert (run / "done" / "pretrain.json").exists()
    assert stage_rows(run, "pretrain") == stage_rows(reference, "pretrain")


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_term_to_the_job_script_reaches_every_rank(cluster):
    """A signal for the batch shell only (a preemption's SIGTERM, `--signal=B:...`) goes on through srun."""
    run = new_run(cluster, "terminated")
    (cluster / "scontrol.calls").unlink(missing_ok=True)
    job = sbatch(cluster, "terminated", job_env(cluster))
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        if (run / "metrics.jsonl").exists() and len(stage_rows(run, "pretrain")) >= 1:
            job.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    out = finish(job, cluster)
    assert job.returncode == 0 and requeues(cluster) == [f"requeue {JOB_ID}"], out
    assert 1 <= latest_step(run, "pretrain") < 30
    assert not (run / "done" / "pretrain.json").exists()


def test_job_script_passes_the_job_end_to_the_tasks(cluster, tmp_path):
    """SLURM_JOB_END_TIME (Slurm >= 23.02) reaches the tasks by itself; without it the script reads the EndTime
    of `scontrol show job` and passes it on as RPT_DEADLINE."""
    def dry_run(**extra):
        env = job_env(cluster, DRY_RUN="1", **extra)
        return subprocess.run(["bash", str(SBATCH), "pretrain"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, check=True).stdout

    end = subprocess.run(["date", "-d", "2030-01-01T06:00:00", "+%s"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert f"RPT_DEADLINE={end}" in dry_run(SCONTROL_END_TIME="2030-01-01T06:00:00")
    assert "RPT_DEADLINE" not in dry_run(SCONTROL_END_TIME="2030-01-01T06:00:00", SLURM_JOB_END_TIME=end)
    assert "RPT_DEADLINE" not in dry_run(SCONTROL_END_TIME="Unknown")
    assert "RPT_DEADLINE" not in dry_run()


@pytest.mark.e2e
def test_time_budget_stops_early_with_a_checkpoint_and_the_requeue_status(cluster, tmp_path):
    """An hour left and a 2-hour budget: the stage stops after its first step (never before one), checkpoints,
    writes the requeue marker and exits 99; the same launch without the budget runs to the end."""
    run = new_run(cluster, "budget")
    marker = tmp_path / "requeue.marker"
    env = {**clean_env(), "RPT_DEADLINE": str(time.time() + 3600), "RPT_REQUEUE_MARKER": str(marker)}
    cmd = [sys.executable, "-m", "rpt.cli", "pretrain", f"run.root={cluster / 'runs'}", "run.name=budget",
           "experiment=smoke", "pretrain.steps=4", "pretrain.log_every=1", "pretrain.checkpoint_every=1000"]
    stopped = subprocess.run([*cmd, "run.save_before_minutes=120"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert stopped.returncode == 99, stopped.stderr[-3000:]
    assert "time budget" in stopped.stderr
    assert latest_step(run, "pretrain") == 1
    assert json.loads(marker.read_text())["step"] == 1
    assert not (run / "done" / "pretrain.json").exists()
    done = subprocess.run([*cmd, "run.save_before_minutes=0"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert latest_step(run, "pretrain") == 4 and (run / "done" / "pretrain.json").exists()


def test_job_deadline_comes_from_rpt_deadline_then_slurm():
    from rpt.train.preemption import TimeBudget, job_deadline

    assert job_deadline({}) is None
    assert job_deadline({"SLURM_JOB_END_TIME": "1800000000"}) == 1800000000.0
    assert job_deadline({"SLURM_JOB_END_TIME": "1800000000", "RPT_DEADLINE": "1700000000.5"}) == 1700000000.5
    with pytest.raises(ValueError, match="RPT_DEADLINE='tomorrow'"):
        job_deadline({"RPT_DEADLINE": "tomorrow"})
    budget = TimeBudget(deadline=1000.0, reserve_s=300.0)
    assert not budget.out_of_time(now=999.0)  # no step run yet: never stops before one
    budget.step_done(100.0)
    assert not budget.out_of_time(now=599.0) and budget.out_of_time(now=601.0)  # 300 s + the 100 s step


def test_save_before_minutes_must_not_be_negative():
    from rpt.config import RunConfig

    with pytest.raises(ValueError, match="save_before_minutes"):
        RunConfig(save_before_minutes=-1)


def test_rank_layout_of_an_srun_task():
    from rpt.runtime import slurm_rank_env

    task = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4",
            "MASTER_ADDR": "node001", "MASTER_PORT": "21234"}
    assert slurm_rank_env(task) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "21234"}
    assert slurm_rank_env({**task, "RANK": "0"}) == {}  # torchrun's variables win
    batch_shell = {"SLURM_PROCID": "0", "SLURM_NTASKS": "16"}  # a plain `rpt` in the job script: a world of one
    assert slurm_rank_env(batch_shell) == {}
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):  # several tasks that could never meet
        slurm_rank_env({k: v for k, v in task.items() if not k.startswith("MASTER")})

"""The Slurm job script end to end, without Slurm: stand-in ``srun`` and ``scontrol`` executables on PATH (``srun``
starts the tasks as local processes with the SLURM_* rank variables, passes signals on and exits with their worst
status; ``scontrol`` records its calls). SIGUSR1 to the tasks — what ``--signal=USR1@120`` makes slurmstepd do —
must make both ranks checkpoint at the same step, the script requeue the job, and the requeued job resume to the
uninterrupted run's metrics, step for step. Also: the time budget (``run.save_before_minutes``) and how the rank
layout is read from Slurm's variables."""

from __future__ import annotations

import functools
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
# log_every=4: a preemption lands between two rows, so the resumed run must carry the loss window over
PRETRAIN = ["experiment=smoke", "pretrain.steps=12", "pretrain.log_every=4", "pretrain.checkpoint_every=1000"]

# Slurm's srun, as far as the job script uses it: --nodes x --ntasks-per-node tasks, each in its own session (as
# slurmstepd starts them: outside the batch script's process group), with SLURM_PROCID/LOCALID/NTASKS set,
# --export=ALL,K=V, --output with %t; USR1/USR2/INT it receives go on to every task, while TERM or HUP make it
# SIGKILL them (real srun's "forcing job termination"); --kill-on-bad-exit=1 kills the other tasks (SIGKILL) once
# one exits non-zero; the exit status is the worst task's (128+N for a signal N).
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

def forward(signum, frame):
    for t in tasks:
        if t.poll() is None:
            t.send_signal(signum)

def force_termination(signum, frame):  # srun: "forcing job termination", the tasks get SIGKILL
    for t in tasks:
        if t.poll() is None:
            t.kill()

for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):  # before any task starts, as srun's own
    signal.signal(sig, forward)
for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, force_termination)
for rank in range(ntasks):
    task_env = {{**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node), "SLURM_NTASKS": str(ntasks),
                "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_NODEID": str(rank // per_node), "SLURM_STEP_ID": "0"}}
    out = open(opts["output"].replace("%t", str(rank)), "a")
    tasks.append(subprocess.Popen(args, env=task_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
with open(os.environ["SRUN_TASK_PIDS"], "w") as f:
    f.write(" ".join(str(t.pid) for t in tasks))
while any(t.poll() is None for t in tasks):
    if opts.get("kill-on-bad-exit") == "1" and any(t.returncode for t in tasks if t.returncode is not None):
        for t in tasks:
            if t.poll() is None:
                t.kill()
    time.sleep(0.05)
sys.exit(max(t.returncode if t.returncode >= 0 else 128 - t.returncode for t in tasks))
'''

# Slurm's scontrol, as far as the job script uses it: `show hostnames`, `show job` (JobState as Slurm 22.05 shows
# it while the batch script still runs: COMPLETING after any cancel, requeue or preemption; StdErr: the job's output
# file, where slurmstepd writes why the job was signalled) and `requeue`, which fails as Slurm's does when Slurm
# requeued the job already (SCONTROL_REQUEUE_ERROR).
SCONTROL = '''#!/usr/bin/env bash
echo "$*" >> "$SCONTROL_CALLS"
if [[ "$1 $2" == "show hostnames" ]]; then tr ',' '\\n' <<< "$3"; fi
if [[ "$1 $2" == "show job" ]]; then
  echo "JobId=$3 JobName=rpt"
  echo "   JobState=${SCONTROL_JOB_STATE:-RUNNING} Reason=None Dependency=(null)"
  [[ -n "${SCONTROL_END_TIME:-}" ]] && echo "   StartTime=2030-01-01T00:00:00 EndTime=$SCONTROL_END_TIME Deadline=N/A"
  echo "   StdErr=${SCONTROL_STDERR:-/dev/null}"
fi
if [[ "$1" == requeue && -n "${SCONTROL_REQUEUE_ERROR:-}" ]]; then echo "$SCONTROL_REQUEUE_ERROR" >&2; exit 1; fi
exit 0
'''

# A stand-in rank for the tests of the script's own decisions (seconds, not a training run): run as
# `$PYTHON -m rpt.cli ...`, it logs "ready" and every signal it gets to rank.<SLURM_PROCID>; on USR1 or TERM it does
# what rpt does (rank 0 writes the requeue marker, every rank exits 99). RANK_DIES_OF=USR1 makes it die of that
# signal at once, as a task does before rpt has installed its handlers. As the script's config check
# (`$PYTHON -m rpt.cli check ...`) it writes `checking` and passes, after RANK_CHECK_SECONDS.
RANK = '''#!/usr/bin/env bash
if [[ "$3" == check ]]; then
  touch "$RANK_LOG_DIR/checking"; sleep "${RANK_CHECK_SECONDS:-0}"; echo "ok: checked"; exit 0
fi
log="$RANK_LOG_DIR/rank.$SLURM_PROCID"
[[ -n "${RANK_DIES_OF:-}" ]] && kill -s "$RANK_DIES_OF" $$
stop() {
  echo "$1" >> "$log"
  [[ "$SLURM_PROCID" == 0 ]] && echo '{"step": 1}' > "$RPT_REQUEUE_MARKER"
  sleep 0.5  # every rank has its signal before the first exit (srun --kill-on-bad-exit kills the rest)
  exit 99
}
trap 'stop USR1' USR1
trap 'stop TERM' TERM
echo ready >> "$log"
for _ in $(seq 600); do sleep 0.1; done
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latest_step(run_dir: Path, stage: str) -> int:
    return int((run_dir / "checkpoints" / stage / "latest").read_text().strip().split("_")[1])


def write_stand_ins(home: Path) -> Path:
    """``home``/bin with the stand-in srun, scontrol and rank; returns ``home``."""
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN.format(python=sys.executable))
    (bin_dir / "scontrol").write_text(SCONTROL)
    (bin_dir / "rank").write_text(RANK)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return home


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A directory with the stand-in executables and one prepared run (tokenizer + data) to copy."""
    home = write_stand_ins(tmp_path_factory.mktemp("cluster"))
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
            "SLURM_JOB_ID": JOB_ID, "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "1",
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


@functools.cache
def real_slurm() -> str | None:
    """Why the real-Slurm tests (tests/test_slurm_real.py) cannot run here, or None when they can: sinfo answers and
    the cluster is launch/slurm/local_cluster.sh's (ClusterName=rpt-local), or RPT_SLURM_TESTS=1 says another one
    is fine to submit test jobs to."""
    if not shutil.which("sinfo"):
        return "no sinfo: start the local test cluster with `launch/slurm/local_cluster.sh start`"
    try:  # a configured Slurm whose controller is down makes sinfo retry for long: 5 s is plenty for a live one
        up = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=5)
        if up.returncode != 0 or not up.stdout.strip():
            return f"sinfo does not answer: {up.stderr.strip()[:200]}"
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=5).stdout
    except subprocess.TimeoutExpired:
        return "sinfo does not answer within 5 s"
    if "rpt-local" not in config and os.environ.get("RPT_SLURM_TESTS") != "1":
        return "Slurm answers but is not the local test cluster (set RPT_SLURM_TESTS=1 to submit test jobs to it)"
    return None


@pytest.fixture(scope="module")
def reference(cluster) -> Path:
    """The uninterrupted run (PRETRAIN through the job script and the stand-ins) that every preempted one must
    reproduce."""
    reference = new_run(cluster, "reference")
    job = sbatch(cluster, "reference", job_env(cluster))
    out = finish(job, cluster)
    assert job.returncode == 0 and not requeues(cluster), out
    assert [r["step"] for r in stage_rows(reference, "pretrain")] == [4, 8, 12]
    return reference


@pytest.mark.e2e
@pytest.mark.multiprocess
@pytest.mark.skipif(real_slurm() is None, reason="a real Slurm answers: tests/test_slurm_real.py runs the USR1 → "
                    "checkpoint → requeue → resume on it instead of the stand-ins")
def test_usr1_to_the_tasks_checkpoints_requeues_and_the_requeued_job_resumes_exactly(cluster, reference):
    """The stand-in srun as slurmstepd would: USR1 to every task once the first row is out (step 4 of 12, so the
    ranks stop between two rows of log_every=4: the resumed row must average the same steps)."""
    (cluster / "scontrol.calls").unlink(missing_ok=True)
    run = new_run(cluster, "preempted")
    job = sbatch(cluster, "preempted", job_env(cluster))
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:  # a row for step 4 is out: the signal lands mid-stage
        if (run / "metrics.jsonl").exists() and len(stage_rows(run, "pretrain")) >= 1:
            for pid in (cluster / "srun.pids").read_text().split():  # what slurmstepd does at USR1@120
                os.kill(int(pid), signal.SIGUSR1)
            break
        time.sleep(0.05)
    out = finish(job, cluster)
    assert job.returncode == 0, out  # the script requeued and ended cleanly
    assert requeues(cluster) == [f"requeue {JOB_ID}"], out
    stopped = latest_step(run, "pretrain")
    assert 4 <= stopped < 12, out  # a checkpoint at the step the ranks agreed on, although checkpoint_every=1000
    assert [r["step"] for r in stage_rows(run, "pretrain")] == list(range(4, stopped + 1, 4))
    assert not (run / "done" / "pretrain.json").exists()
    assert not (cluster / "logs" / f"rpt-{JOB_ID}.requeue").exists()  # the marker is consumed by the requeue

    job = sbatch(cluster, "preempted", job_env(cluster, restart=1))  # the requeued job: the same command
    out = finish(job, cluster)
    assert job.returncode == 0 and len(requeues(cluster)) == 1, out
    assert (run / "done" / "pretrain.json").exists()
    assert stage_rows(run, "pretrain") == stage_rows(reference, "pretrain")


def rank_job(home: Path, **extra) -> tuple[subprocess.Popen, Path]:
    """The job script with stand-in ranks (two tasks) in ``home``; returns the job and the ranks' log directory."""
    logs = home / "ranks"
    logs.mkdir(exist_ok=True)
    env = job_env(home, PYTHON=str(home / "bin" / "rank"), RANK_LOG_DIR=str(logs), **extra)
    job = subprocess.Popen(["bash", str(SBATCH), "pretrain"], cwd=home, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    return job, logs


def wait_ready(job: subprocess.Popen, logs: Path) -> None:
    deadline = time.time() + 30
    while not all((logs / f"rank.{r}").exists() for r in (0, 1)):
        assert job.poll() is None and time.time() < deadline, job.communicate()[0]
        time.sleep(0.05)


def signal_ranks(home: Path, sig: int) -> None:
    """What slurmstepd does for a step signal (--signal=USR1@120, scancel): signal every task."""
    for pid in (home / "srun.pids").read_text().split():
        os.kill(int(pid), sig)


def test_term_to_the_job_script_reaches_every_rank_as_usr1(tmp_path):
    """A TERM for the batch shell only (`--signal=B:TERM@60`, `scancel --batch`) must reach the ranks as a
    checkpoint request: srun takes a TERM as "kill the step" (the stand-in kills them as it does), so the script
    passes on USR1 instead, then requeues."""
    home = write_stand_ins(tmp_path)
    job, logs = rank_job(home)
    wait_ready(job, logs)
    job.send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0 and requeues(home) == [f"requeue {JOB_ID}"], out
    assert [(logs / f"rank.{r}").read_text().split() for r in (0, 1)] == [["ready", "USR1"]] * 2


@pytest.mark.parametrize("why, requeued", [("", False), (" DUE TO TIME LIMIT", True), (" DUE TO PREEMPTION", True)])
def test_a_plain_scancel_is_not_requeued_but_a_time_limit_or_preemption_is(tmp_path, why, requeued):
    """scancel, a time limit and a preemption all send SIGTERM to the tasks and the script, and all show
    JobState=COMPLETING meanwhile (Slurm 22.05); what tells them apart is slurmstepd's line in the job's output. A
    cancelled job must stay cancelled: requeueing it would restart it (Slurm accepts the requeue)."""
    home = write_stand_ins(tmp_path)
    output = home / "rpt-4242.out"
    output.write_text(f"slurmstepd: error: *** JOB {JOB_ID} ON node1 CANCELLED AT 2030-01-01T00:00:00 DUE TO JOB "
                      "REQUEUE ***\n")  # an earlier launch's: only this launch's part of the file counts
    job, logs = rank_job(home, SCONTROL_STDERR=str(output))
    wait_ready(job, logs)
    with output.open("a") as f:
        f.write(f"slurmstepd: error: *** JOB {JOB_ID} ON node1 CANCELLED AT 2030-01-01T00:01:00{why} ***\n")
    signal_ranks(home, signal.SIGTERM)
    job.send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=60)
    assert requeues(home) == ([f"requeue {JOB_ID}"] if requeued else []), out
    assert (job.returncode == 0) == requeued, out  # a cancelled job ends with its tasks' status
    assert requeued or "was cancelled: not requeueing" in out


@pytest.mark.parametrize("sig", ["USR1", "TERM"])
def test_a_rank_killed_by_the_signal_during_start_up_is_requeued(tmp_path, sig):
    """A signal that lands before rpt has installed its handlers kills the task (status 138 or 143): nothing is
    lost, so the job is requeued rather than failed."""
    home = write_stand_ins(tmp_path)
    job, _ = rank_job(home, RANK_DIES_OF=sig)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0 and requeues(home) == [f"requeue {JOB_ID}"], out
    assert f"died of SIG{sig}" in out


def test_a_job_that_slurm_requeued_already_ends_cleanly(tmp_path):
    """`scontrol requeue` from outside (or a preemption in requeue mode) requeues the job before the ranks have
    checkpointed; the script's own requeue then fails ("Job is pending execution"), which must not fail the job."""
    home = write_stand_ins(tmp_path)
    job, logs = rank_job(home, SCONTROL_JOB_STATE="COMPLETING",
                         SCONTROL_REQUEUE_ERROR=f"Job is pending execution for job {JOB_ID}")
    wait_ready(job, logs)
    signal_ranks(home, signal.SIGTERM)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0 and "already requeued by Slurm" in out, out


README_LINES = [  # literal: tests/test_readme_coverage.py reads them
    "rpt check pipeline run.name=smoke experiment=smoke",
]


def rpt_lines(out: str) -> list[str]:
    """The lines of a job's output that are not the job script's own (``[<time>] ...``)."""
    return [line for line in out.splitlines() if line.strip() and not line.startswith("[")]


def test_rpt_check_passes_a_good_call_and_refuses_a_mistake_in_one_line_writing_nothing(tmp_path):
    """The README's line before `sbatch`: the config the job will run with is checked in seconds, without the queue
    wait, and a mistake Hydra finds (a key the config lacks) is one `rpt:` line with the likely fix, status 2."""
    rpt = str(Path(sys.executable).parent / "rpt")
    words = README_LINES[0].split()[1:]
    ok = subprocess.run([rpt, *words], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: "), ok.stderr[-3000:]
    typo = subprocess.run([rpt, *words, "rpt.stepz=3"], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert typo.returncode == 2 and not typo.stdout, typo.stderr[-3000:]
    assert typo.stderr.splitlines() == ["rpt: Could not override 'rpt.stepz': Key 'stepz' not in 'TrainLoopConfig' "
                                        "(did you mean steps?)"], typo.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # nothing written, no run directory


def test_a_config_mistake_ends_the_job_in_one_line_before_srun_and_is_not_requeued(tmp_path):
    """The job script checks the config once on the batch host (`rpt check`) before `srun`: a value of the wrong
    type ends the job there, its output one `rpt:` line with the job's status 2, no task started and no requeue
    (before, every rank found it after the queue wait and the output said only "finished with status 1")."""
    home = write_stand_ins(tmp_path)
    job = sbatch(home, "typo", job_env(home), "model.hidden_size=abc")
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 2, out
    assert rpt_lines(out) == ["rpt: Error merging override model.hidden_size=abc: Value 'abc' of type 'str' could "
                              "not be converted to Integer"], out
    assert not (home / "srun.pids").exists() and requeues(home) == [], out  # srun never ran
    assert not (home / "runs").exists() and "Traceback" not in out


def test_a_signal_during_the_config_check_requeues_without_starting_the_tasks(tmp_path):
    """A USR1 or TERM for the script (`--signal=B:USR1@120`, a preemption) while it checks the config: nothing has
    started, so no `srun`, and the job is requeued."""
    home = write_stand_ins(tmp_path)
    job, logs = rank_job(home, RANK_CHECK_SECONDS="2")
    deadline = time.time() + 30
    while not (logs / "checking").exists():  # the check runs (the script's traps are set before it)
        assert job.poll() is None and time.time() < deadline, job.communicate()[0]
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0 and requeues(home) == [f"requeue {JOB_ID}"], out
    assert "SIGUSR1 came before the tasks started" in out and not (home / "srun.pids").exists(), out


# `$PYTHON -m rpt.cli ...` with a USR1 that lands while the interpreter finalizes, after the work: first what
# CPython's finalization does (every signal handler set from Python back to the default action; SIG_IGN is kept),
# then the signal (in the tasks, not in the script's config check). The atexit hook is registered before rpt runs,
# so it runs after rpt's own.
FINALIZING = '''#!{python}
import atexit, os, runpy, signal, sys

def finalizing():
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    print("finalizing: sending SIGUSR1", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGUSR1)

if sys.argv[3:4] != ["check"]:
    atexit.register(finalizing)
sys.argv = ["rpt", *sys.argv[3:]]  # after `-m rpt.cli`
runpy.run_module("rpt.cli", run_name="__main__", alter_sys=True)
'''


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_a_usr1_while_a_finished_task_exits_neither_kills_it_nor_requeues_the_job(cluster, tmp_path):
    """A USR1 that lands after the stage finished, while a task's Python finalizes, killed it with status 138
    (CPython had reset rpt's handler), and the script requeued the job as "died of SIGUSR1 ... (start-up)". rpt now
    ignores the signals once its work is over: the tasks exit 0 and the job ends as finished."""
    new_run(cluster, "finalizing")
    python = tmp_path / "python"
    python.write_text(FINALIZING.format(python=sys.executable))
    python.chmod(0o755)
    env = job_env(cluster, PYTHON=str(python), SLURM_JOB_ID="4243", SCONTROL_CALLS=str(tmp_path / "scontrol.calls"))
    job = subprocess.Popen(["bash", str(SBATCH), "prep", f"run.root={cluster / 'runs'}", "run.name=finalizing",
                            "experiment=smoke"], cwd=cluster, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    out, _ = job.communicate(timeout=300)
    logs = [(cluster / "logs" / f"rpt-4243-{rank}.log").read_text() for rank in (0, 1)]
    assert job.returncode == 0 and requeues(tmp_path) == [], out + "".join(log[-3000:] for log in logs)
    assert "finished with status 0" in out and "died of" not in out, out
    for log in logs:
        assert "stage prep: already finished" in log and "finalizing: sending SIGUSR1" in log, log[-3000:]


def test_tasks_per_node_come_from_slurm_and_the_script_asks_for_no_gpus(tmp_path):
    """The task count is Slurm's (--ntasks-per-node), else the GPUs per node, else SLURM_NTASKS over the nodes; the
    header must not demand GPUs, which a CPU node refuses ("Invalid generic resource specification")."""
    def tasks_per_node(**extra) -> str:
        env = {**clean_env(), "DRY_RUN": "1", "PYTHON": sys.executable, **extra}
        out = subprocess.run(["bash", str(SBATCH), "pretrain"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, check=True).stdout
        return out.split("--ntasks-per-node ")[1].split()[0]

    assert tasks_per_node(SLURM_NTASKS_PER_NODE="2", SLURM_GPUS_PER_NODE="8") == "2"
    assert tasks_per_node(SLURM_GPUS_PER_NODE="h100:4") == "4"
    assert tasks_per_node(GPUS_PER_NODE="0", SLURM_NTASKS="6", SLURM_NNODES="3") == "2"
    assert tasks_per_node() == "8"
    header = [line for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH")]
    assert header and not any("gpus" in line or "gres" in line for line in header)


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
    writes the requeue marker and exits 99, saying it was the time budget; the same launch without the budget runs
    to the end, and its rows (log_every=3: the stop falls between two) equal an uninterrupted run's."""
    run = new_run(cluster, "budget")
    marker = tmp_path / "requeue.marker"
    env = {**clean_env(), "RPT_DEADLINE": str(time.time() + 3600), "RPT_REQUEUE_MARKER": str(marker)}

    def pretrain(name: str, *extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "rpt.cli", "pretrain", f"run.root={cluster / 'runs'}", f"run.name={name}",
               "experiment=smoke", "pretrain.steps=4", "pretrain.log_every=3", "pretrain.checkpoint_every=1000"]
        return subprocess.run([*cmd, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    stopped = pretrain("budget", "run.save_before_minutes=120")
    assert stopped.returncode == 99, stopped.stderr[-3000:]
    assert "checkpointed at step 1 on the time budget" in stopped.stderr, stopped.stderr[-3000:]
    assert "preemption signal" not in stopped.stderr
    assert latest_step(run, "pretrain") == 1
    assert json.loads(marker.read_text())["step"] == 1
    assert not (run / "done" / "pretrain.json").exists()
    done = pretrain("budget", "run.save_before_minutes=0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert latest_step(run, "pretrain") == 4 and (run / "done" / "pretrain.json").exists()
    new_run(cluster, "budget_reference")
    assert pretrain("budget_reference").returncode == 0
    assert [r["step"] for r in stage_rows(run, "pretrain")] == [3, 4]
    assert stage_rows(run, "pretrain") == stage_rows(cluster / "runs" / "budget_reference", "pretrain")


@pytest.mark.e2e
def test_a_signal_during_start_up_is_a_checkpoint_request_not_death(cluster, tmp_path):
    """`python -m rpt.cli` installs its USR1/TERM handlers before its imports (seconds of them): a USR1 that lands
    during `import hydra` makes the first training step end in a checkpoint and exit 99; before, it killed the task.
    The resumed pipeline then ends naming the run, not a report it did not write."""
    run = new_run(cluster, "early")
    code = ("import builtins, os, runpy, signal, sys\n"
            "real_import = builtins.__import__\n"
            "def hooked(name, *args, **kwargs):\n"
            "    if name == 'hydra' and not hasattr(builtins, 'signalled'):\n"
            "        builtins.signalled = True\n"
            "        os.kill(os.getpid(), signal.SIGUSR1)\n"
            "    return real_import(name, *args, **kwargs)\n"
            "builtins.__import__ = hooked\n"
            "sys.argv = ['rpt', *sys.argv[1:]]\n"
            "runpy.run_module('rpt.cli', run_name='__main__', alter_sys=True)\n")
    args = ["pipeline", f"run.root={cluster / 'runs'}", "run.name=early", "experiment=smoke", "stages=[prep,pretrain]",
            "pretrain.steps=3", "pretrain.checkpoint_every=1000"]
    early = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=clean_env(), capture_output=True,
                           text=True, timeout=300)
    assert early.returncode == 99, early.stderr[-3000:]
    assert "received SIGUSR1" in early.stderr and latest_step(run, "pretrain") == 1
    done = subprocess.run([sys.executable, "-m", "rpt.cli", *args], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"pipeline finished: {run}" in done.stderr and "report.md" not in done.stderr


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


# hydra/launcher=rpt_slurm (submitit): what a task of such a job does on a signal, with submitit's own handlers bound
# first as submitit.core._submit binds them, and the stand-in scontrol (no Slurm needed; tests/test_slurm_real.py
# runs the whole sweep on a real one)
SUBMITIT_TASK = '''
import os, signal, sys
from submitit import JobEnvironment
from submitit.core.utils import DelayedSubmission

class Task:  # checkpointable, as hydra-submitit's launcher is
    def __call__(self):
        return 0
    def checkpoint(self):
        return DelayedSubmission(self)

env = JobEnvironment()
delayed = DelayedSubmission(Task())
delayed.set_timeout(10, int(sys.argv[1]))
delayed.dump(env.paths.submitted_pickle)
env._handle_signals(env.paths, delayed)
from rpt.train import preemption, submitit_job
preemption.install()
os.kill(os.getpid(), signal.SIGUSR2)
os.kill(os.getpid(), signal.SIGUSR2)  # twice: this re-entered submitit's handler (AssertionError mid-step)
print("flag", preemption._requested, preemption._received)
stop = preemption.Preempted("pretrain", 7)
try:
    submitit_job.requeue(stop, is_main=True, timed_out=preemption.timed_out(stop))
except submitit_job.NotRequeued as err:
    print("not requeued:", err)
print("countdown", DelayedSubmission.load(env.paths.submitted_pickle)._timeout_countdown)
'''


def submitit_task(tmp_path: Path, countdown: int, **extra) -> tuple[subprocess.CompletedProcess, list[str]]:
    home = write_stand_ins(tmp_path)
    folder = home / "submitit" / JOB_ID
    folder.mkdir(parents=True)
    env = {**clean_env(), "PATH": f"{home / 'bin'}:{os.environ['PATH']}", "SUBMITIT_EXECUTOR": "slurm",
           "SUBMITIT_FOLDER": str(folder), "SLURM_JOB_ID": JOB_ID, "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost",
           "SCONTROL_CALLS": str(home / "scontrol.calls"), **extra}
    proc = subprocess.run([sys.executable, "-c", SUBMITIT_TASK, str(countdown)], env=env, capture_output=True,
                          text=True, timeout=60, cwd=home)
    return proc, requeues(home)


def test_submitit_usr2_twice_is_one_checkpoint_request_and_one_counted_requeue(tmp_path):
    """In a task of the Hydra/submitit launcher rpt handles submitit's USR2 itself: two in a row set the
    checkpoint flag (no AssertionError, no exit from inside the step), and after the checkpoint the job is requeued
    once with one of the launcher's timeouts counted in submitit's pickle, which the requeued job loads."""
    proc, calls = submitit_task(tmp_path, 3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flag True ['SIGUSR2', 'SIGUSR2']" in proc.stdout and "countdown 2" in proc.stdout, proc.stdout
    assert calls == [f"requeue {JOB_ID}"] and "not requeued" not in proc.stdout


@pytest.mark.parametrize("countdown, stderr_line, why", [
    (0, "", "timed out too many times"),
    (3, f"slurmstepd: error: *** JOB {JOB_ID} ON vm CANCELLED AT 2026-12-07T22:27:10 ***", "was cancelled"),
])
def test_a_submitit_job_that_is_not_requeued_fails_plainly(tmp_path, countdown, stderr_line, why):
    """Out of timeouts, or cancelled by a plain scancel (slurmstepd's JOB line, not the STEP line that
    `scancel --signal=TERM` also writes): not requeued, and NotRequeued is an ordinary exception, which Hydra records
    as the point's failure and submitit writes as its result, so the sweep process ends instead of waiting."""
    err = tmp_path / "job.err"
    err.write_text(f"slurmstepd: error: *** STEP {JOB_ID}.0 ON vm CANCELLED AT 2026-12-07T22:27:09 ***\n"
                   f"{stderr_line}\n")
    proc, calls = submitit_task(tmp_path, countdown, SCONTROL_STDERR=str(err))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not requeued:" in proc.stdout and why in proc.stdout and calls == [], proc.stdout
    from rpt.train.submitit_job import NotRequeued

    assert issubclass(NotRequeued, Exception)  # not SystemExit: run_job and process_job catch it


@pytest.mark.parametrize("mistake, rc, said", [
    ("pretrain.stepz=3", 1, "Could not override 'pretrain.stepz'"),
    ("run.save_before_minutes=-1", 2, "rpt: run.save_before_minutes must be >= 0"),
])
def test_a_sweep_with_a_config_mistake_is_refused_before_any_submission(tmp_path, mistake, rc, said):
    """`--multirun hydra/launcher=rpt_slurm` with a key the config lacks (Hydra's own words) or a value the schema
    refuses (one `rpt:` line): no traceback, and no job submitted (no submitit folder) to fail after its queue wait."""
    proc = subprocess.run([str(Path(sys.executable).parent / "rpt"), "pretrain", "--multirun",
                           "hydra/launcher=rpt_slurm", f"run.root={tmp_path}", "run.name=a,b", mistake],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc and said in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "multirun").exists(), proc.stderr[-3000:]


def test_a_refusal_in_a_sweep_point_is_an_error_the_sweep_sees_not_an_exit(monkeypatch, capsys):
    """A mistake found only in the job (e.g. against the run's memory): the one `rpt:` line, then, in a submitit
    task, an ordinary exception (Hydra records the point as failed and submitit writes its result, so the sweep
    process ends) instead of SystemExit(2), which left submitit no result and the sweep waiting forever."""
    from rpt.cli import refusing

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SUBMITIT_FOLDER", "/nonexistent")
    with pytest.raises(RuntimeError, match="rpt: run.name 'a/b' must be one directory"):
        with refusing((ValueError,), debug=False):
            raise ValueError("run.name 'a/b' must be one directory")
    assert "rpt: run.name 'a/b' must be one directory" in capsys.readouterr().err
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    with pytest.raises(SystemExit):
        with refusing((ValueError,), debug=False):
            raise ValueError("run.name 'a/b' must be one directory")

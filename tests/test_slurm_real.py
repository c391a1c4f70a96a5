"""launch/slurm/rpt.sbatch under a real Slurm: the one launch/slurm/local_cluster.sh starts on this machine (CI's
.ci/run starts it before `make test`). What the stand-ins of tests/test_slurm.py cannot show: how slurmctld,
slurmstepd and srun really deliver signals, requeue and restart a job. Skipped, with the reason, where no such
Slurm answers; the stand-in tests run either way (their USR1 → requeue → resume test only where this one cannot).

Kept short (the suite has a time budget): three jobs of two tasks each, one after the other (the local node has two
CPUs): the job script's two, and one sweep point of the Hydra/submitit launcher (hydra/launcher=rpt_slurm). The
local cluster holds a requeued job for 6 s, not Slurm's default 121 s (`AuthInfo=cred_expire=5`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import stage_rows
from tests.test_slurm import PRETRAIN, ROOT, clean_env, cluster, real_slurm, reference  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.multiprocess,
              pytest.mark.skipif(real_slurm() is not None, reason=f"no real Slurm: {real_slurm()}")]

README_LINES = [  # literal: tests/test_readme_coverage.py reads them
    "sbatch --ntasks-per-node=2 --cpus-per-task=1 launch/slurm/rpt.sbatch pipeline run.name=smoke experiment=smoke",
    "launch/slurm/local_cluster.sh start",
]
README_SBATCH = README_LINES[0]
SCRIPT = str(ROOT / "launch" / "slurm" / "rpt.sbatch")


def env() -> dict:
    """What the job inherits from sbatch (--export=ALL by default): this interpreter, one thread per task."""
    return {**clean_env(), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}:{clean_env()['PATH']}"}


def submit(cwd: Path, words: list[str]) -> str:
    (cwd / "logs").mkdir(exist_ok=True)
    proc = subprocess.run(["sbatch", "--parsable", *words], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def wait_for(what, timeout: float, job_id: str, cwd: Path):
    """Poll ``what()`` until it is truthy; on a timeout, fail showing the job and its output."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    subprocess.run(["scancel", job_id], timeout=30)
    pytest.fail(f"timed out: {job(job_id)}\n{tail(output(cwd, job_id))}")


def output(cwd: Path, job_id: str) -> str:
    """The job's output file and its ranks' logs, whole."""
    logs = sorted((cwd / "logs").glob(f"rpt-{job_id}*"))
    return "\n".join(f"== {p.name}\n{p.read_text()}" for p in logs)


def tail(text: str) -> str:
    return text[-4000:]


def rows(run: Path, stage: str = "pretrain") -> list[dict]:
    return stage_rows(run, stage) if (run / "metrics.jsonl").exists() else []


def test_the_readme_sbatch_line_runs_through_a_usr1_requeue_to_the_report(cluster, reference, tmp_path):  # noqa: F811
    """The README's sbatch line (smoke sizes, this interpreter) on the real scheduler: Slurm's USR1 to the tasks
    (what --signal=USR1@120 does, sent now with `scancel --signal=USR1`) lands mid-pretrain; the ranks checkpoint,
    the script requeues, Slurm restarts the job and it resumes: the pipeline reaches its report, and every
    non-timing pretrain metric equals the uninterrupted run's."""
    shutil.copytree(cluster / "runs" / "prepared", tmp_path / "runs" / "smoke")  # prep done: the pipeline skips it
    words = README_SBATCH.split()[1:]
    job_id = submit(tmp_path, [SCRIPT if w == "launch/slurm/rpt.sbatch" else w for w in words] + PRETRAIN[1:])
    run = tmp_path / "runs" / "smoke"
    wait_for(lambda: rows(run), 240, job_id, tmp_path)  # the row of step 4 of 12
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=30)
    wait_for(lambda: job(job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 420, job_id,
             tmp_path)
    info, out = job(job_id), output(tmp_path, job_id)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1" and info["ExitCode"] == "0:0", tail(out)
    assert "checkpointed for requeue" in out and "requeueing job" in out and "(restart 1)" in out, tail(out)
    assert "on a preemption signal" in out, tail(out)
    assert (run / "report" / "report.md").exists() and (run / "done" / "report.json").exists()
    assert rows(run) == stage_rows(reference, "pretrain")


def test_the_time_limit_signals_first_and_requeues_and_a_plain_scancel_ends_the_job(cluster, tmp_path):  # noqa: F811
    """`--time=1 --signal=USR1@45`: Slurm signals the tasks before the limit (during start-up or training), they
    checkpoint and the job is requeued, not killed. The requeued job, given time, trains on from that checkpoint;
    then a plain `scancel` stops it for good: CANCELLED, not requeued (the script checks why it was signalled)."""
    shutil.copytree(cluster / "runs" / "prepared", tmp_path / "runs" / "limited")
    run = tmp_path / "runs" / "limited"
    job_id = submit(tmp_path, ["--ntasks-per-node=2", "--cpus-per-task=1", "--time=1", "--signal=USR1@45", SCRIPT,
                               "pretrain", f"run.root={tmp_path / 'runs'}", "run.name=limited", "experiment=smoke",
                               "pretrain.steps=20000", "pretrain.log_every=1", "pretrain.checkpoint_every=100000"])
    # (steps enough that the signal, 15 s after the start, lands in training on a fast machine too: 400 steps took
    # 10 s on CI's and ended before it)
    wait_for(lambda: job(job_id).get("Restarts") == "1", 150, job_id, tmp_path)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=10"], check=True, timeout=30)
    out = output(tmp_path, job_id)
    assert "checkpointed for requeue" in out and "Killed" not in out, tail(out)
    stopped = len(rows(run))
    assert stopped >= 1 and (run / "checkpoints" / "pretrain" / "latest").read_text().strip() == f"step_{stopped:06d}"

    wait_for(lambda: "(restart 1)" in output(tmp_path, job_id) and len(rows(run)) > stopped, 150, job_id, tmp_path)
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    wait_for(lambda: job(job_id).get("JobState") == "CANCELLED", 120, job_id, tmp_path)
    # A job the script requeued would never show CANCELLED: Slurm takes it from COMPLETING straight to PENDING and
    # counts the restart at once (Restarts=2), not after the requeue hold. Still CANCELLED a moment later: for good.
    time.sleep(1)
    info, out = job(job_id), output(tmp_path, job_id)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "1", tail(out)
    assert "was cancelled: not requeueing" in out, tail(out)
    assert [r["step"] for r in rows(run)] == list(range(1, len(rows(run)) + 1))  # resumed, no step run twice


def test_a_job_with_a_config_mistake_fails_at_once_in_one_line_and_is_not_requeued(tmp_path):
    """A typo'd key through the README's sbatch line: the script's check on the batch host refuses it before
    `srun`, so the job's output file holds rpt's one line (not "finished with status 1" with the error in every
    rank's log), no rank log exists, and the job ends FAILED with status 2, not requeued (a few seconds)."""
    words = [SCRIPT if w == "launch/slurm/rpt.sbatch" else w for w in README_SBATCH.split()[1:]]
    job_id = submit(tmp_path, [*words, f"run.root={tmp_path / 'runs'}", "rpt.stepz=3"])
    wait_for(lambda: job(job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 120, job_id,
             tmp_path)
    info, out = job(job_id), output(tmp_path, job_id)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0" and info["Restarts"] == "0", tail(out)
    said = [line for line in out.splitlines()[1:] if line.strip() and not line.startswith("[")]  # not the script's
    assert said == ["rpt: Could not override 'rpt.stepz': Key 'stepz' not in 'TrainLoopConfig' (did you mean "
                    "steps?)"], tail(out)
    assert [p.name for p in (tmp_path / "logs").iterdir()] == [f"rpt-{job_id}.out"], tail(out)  # no task started
    assert not (tmp_path / "runs").exists()


def test_starting_the_local_cluster_again_changes_nothing():
    """The README's (and CI's) start line is idempotent: with Slurm up it only says so."""
    proc = subprocess.run(["bash", "-c", README_LINES[1]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Slurm is up" in proc.stderr, proc.stderr
    assert subprocess.run([str(ROOT / "launch" / "slurm" / "local_cluster.sh"), "status"], timeout=60).returncode == 0


def sweep_on_the_local_node(tasks: int) -> list[str]:
    """hydra/launcher=rpt_slurm on the local node (2 CPUs, no GPU): ``tasks`` one-CPU tasks per sweep point."""
    return ["hydra/launcher=rpt_slurm", f"hydra.launcher.tasks_per_node={tasks}", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]


SWEEP = sweep_on_the_local_node(2)  # two ranks: the first requeues, every one checkpoints


def sweep_job(tmp_path: Path, sweep: subprocess.Popen) -> str:
    """The Slurm id of the sweep's only job (its submitit folder's name), once submitted."""
    folder = tmp_path / "runs" / "multirun" / ".submitit"
    deadline = time.time() + 60
    while time.time() < deadline and sweep.poll() is None:
        jobs = [p.name for p in folder.glob("*") if p.is_dir()] if folder.exists() else []
        if jobs:
            return jobs[0]
        time.sleep(0.2)
    sweep.kill()
    pytest.fail(f"no job submitted: {(tmp_path / 'sweep.out').read_text()[-4000:]}")


def test_the_hydra_launcher_requeues_on_term_and_a_doubled_usr2_and_a_plain_scancel_ends_the_sweep(
        cluster, tmp_path):  # noqa: F811
    """hydra/launcher=rpt_slurm (submitit) on the real scheduler: a TERM to the tasks (not a preemption: Slurm does
    not requeue) checkpoints and rpt requeues the job itself, where it used to exit 99 and FAIL the array task with
    the sweep process waiting forever; submitit's USR2 twice in a row checkpoints and requeues once, counting one
    timeout, where the second used to re-enter submitit's handler (AssertionError mid-step); a plain scancel then
    ends the sweep process with the reason instead of leaving it waiting. Every step runs once across the launches."""
    shutil.copytree(cluster / "runs" / "prepared", tmp_path / "runs" / "swept")
    run = tmp_path / "runs" / "swept"
    rpt = str(Path(sys.executable).parent / "rpt")
    sweep = subprocess.Popen([rpt, "pretrain", "--multirun", *SWEEP, f"run.root={tmp_path / 'runs'}",
                              "run.name=swept", "experiment=smoke", "pretrain.steps=100000", "pretrain.log_every=1",
                              "pretrain.checkpoint_every=100000"], cwd=tmp_path, env=env(),
                             stdout=(tmp_path / "sweep.out").open("w"), stderr=subprocess.STDOUT)
    try:
        job_id = sweep_job(tmp_path, sweep)
        logs = tmp_path / "runs" / "multirun" / ".submitit" / job_id

        def out() -> str:
            return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*_log.err")))

        def trains_after(restarts: str, steps: int):
            return lambda: job(job_id).get("Restarts") == restarts and len(rows(run)) > steps + 3

        wait_for(lambda: len(rows(run)) > 3, 120, job_id, tmp_path)
        subprocess.run(["scancel", "--signal=TERM", job_id], check=True, timeout=30)
        wait_for(lambda: job(job_id).get("Restarts") == "1", 120, job_id, tmp_path)
        stopped = len(rows(run))
        assert "requeued: it resumes from this checkpoint" in out(), out()
        wait_for(trains_after("1", stopped), 150, job_id, tmp_path)

        for _ in range(2):
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        wait_for(lambda: job(job_id).get("Restarts") == "2", 120, job_id, tmp_path)
        stopped = len(rows(run))
        assert "A temporary saved file" not in out() and "2 timeout(s) left" in out(), out()
        wait_for(trains_after("2", stopped), 150, job_id, tmp_path)

        subprocess.run(["scancel", job_id], check=True, timeout=30)
        sweep.wait(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    text = (tmp_path / "sweep.out").read_text()
    assert sweep.returncode != 0 and "was cancelled" in text and "not requeued" in text, text[-4000:]
    wait_for(lambda: job(job_id).get("JobState") == "CANCELLED", 60, job_id, tmp_path)
    assert job(job_id)["Restarts"] == "2"
    assert [r["step"] for r in rows(run)] == list(range(1, len(rows(run)) + 1))  # resumed, no step run twice


def test_a_hydra_launcher_sweep_submits_one_job_per_point_and_each_reaches_its_report(tmp_path):
    """`rpt pipeline --multirun hydra/launcher=rpt_slurm` with two points (smoke sizes, one task each, so both run
    at once on the local node's 2 CPUs; the test above runs two ranks per point): one Slurm array task per point,
    each runs the whole pipeline to its own report, and the sweep process returns 0 once both are done."""
    rpt = str(Path(sys.executable).parent / "rpt")
    with (tmp_path / "sweep.out").open("w") as out:
        proc = subprocess.run([rpt, "pipeline", "--multirun", *sweep_on_the_local_node(1),
                               f"run.root={tmp_path / 'runs'}",
                               "run.name=pa,pb", "experiment=smoke"], cwd=tmp_path, env=env(), stdout=out,
                              stderr=subprocess.STDOUT, timeout=420)
    text = (tmp_path / "sweep.out").read_text()
    assert proc.returncode == 0, text[-4000:]
    folders = sorted(p.name for p in (tmp_path / "runs" / "multirun" / ".submitit").iterdir()
                     if p.is_dir() and "_" in p.name)  # <array job>_<task>: one per point
    assert len(folders) == 2 and folders[0].endswith("_0") and folders[1].endswith("_1"), folders
    for name in ("pa", "pb"):
        run = tmp_path / "runs" / name
        assert (run / "report" / "report.md").exists() and (run / "done" / "report.json").exists(), text[-4000:]

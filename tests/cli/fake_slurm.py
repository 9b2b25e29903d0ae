"""A stand-in for SLURM's ``sbatch``, ``srun`` and ``sacct`` (tests of ``launcher=slurm``).

:func:`install` writes the three commands into a directory to put first on PATH. ``sbatch FILE`` records
what it is given (its arguments, the ``#SBATCH`` flags and the script) as one JSON line in
``$FAKE_SLURM_LOG`` and then, like SLURM:

* ``FAKE_SLURM_MODE=run``: answers ``Submitted batch job <id>`` and, in a detached process (like a
  scheduler, after the submitter has stored the jobs' inputs under the job id), runs every array task of the
  script, one after the other, with the environment SLURM gives a task (``SLURM_JOB_ID``,
  ``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID``, ``SLURM_PROCID`` …);
* ``FAKE_SLURM_MODE=record``: answers ``sbatch: error: …`` with exit 1 (the asks are recorded, no job runs).

``srun [options] CMD…`` runs CMD with its ``--output``/``--error`` (``%A %a %j %t`` filled in); ``sacct``
reports each recorded task's state (PENDING, RUNNING, COMPLETED or FAILED).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path


def install(bin_dir: Path, log: Path) -> dict:
    """Write ``sbatch``/``srun``/``sacct`` into ``bin_dir``; returns the environment to run a command with."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for role in ("sbatch", "srun", "sacct"):
        p = bin_dir / role
        p.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {role} "$@"\n')
        p.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["FAKE_SLURM_LOG"] = str(log)
    return env


def read_log(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def sbatch_flags(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines of a job script → {key: value}."""
    out = {}
    for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, flags=re.M):
        out[m.group(1)] = (m.group(2) or "").strip()
    return out


def _array_tasks(spec: str | None) -> list[int]:
    if not spec:
        return [-1]
    spec = spec.split("%")[0]
    tasks: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        tasks += list(range(int(a), int(b or a) + 1))
    return tasks


def _next_id(log: Path) -> int:
    return 4242 + len(read_log(log))


def sbatch(args: list[str]) -> int:
    log = Path(os.environ["FAKE_SLURM_LOG"])
    script_path = Path(args[-1])
    script = script_path.read_text()
    flags = sbatch_flags(script)
    job_id = _next_id(log)
    tasks = _array_tasks(flags.get("array"))
    with open(log, "a") as f:
        f.write(json.dumps({"args": args, "flags": flags, "script": script, "job_id": job_id,
                            "tasks": tasks}) + "\n")
    if os.environ.get("FAKE_SLURM_MODE", "run") != "run":
        print("sbatch: error: the stand-in records only (FAKE_SLURM_MODE=record)", file=sys.stderr)
        return 1
    ntasks = int(flags.get("ntasks-per-node") or 1) * int(flags.get("nodes") or 1)
    if ntasks != 1:
        print(f"sbatch: error: the stand-in runs single-task jobs only (asked {ntasks})", file=sys.stderr)
        return 1
    copy = _state_dir() / f"{job_id}.sh"  # the submitter moves its script once it knows the job id
    copy.write_text(script)
    subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_run", str(copy), str(job_id),
                      ",".join(map(str, tasks))], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    print(f"Submitted batch job {job_id}")
    return 0


def _state_dir() -> Path:
    d = Path(os.environ["FAKE_SLURM_LOG"] + ".state")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _task_id(job_id: int | str, t: int) -> str:
    return f"{job_id}_{t}" if t >= 0 else str(job_id)


def run_tasks(args: list[str]) -> int:
    """The scheduler side: wait until the submitter stored each task's input next to its log, run it."""
    import time

    script_path, job_id, tasks = Path(args[0]), int(args[1]), [int(t) for t in args[2].split(",")]
    flags = sbatch_flags(script_path.read_text())
    states = _state_dir()
    for i, t in enumerate(tasks):
        tid = _task_id(job_id, t)
        (states / tid).write_text("PENDING")
        env = dict(os.environ)
        env.update({"SLURM_JOB_ID": str(job_id * 100 + i), "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                    "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
                    "SLURM_JOB_NODELIST": "localhost"})
        if t >= 0:
            env.update({"SLURM_ARRAY_JOB_ID": str(job_id), "SLURM_ARRAY_TASK_ID": str(t)})
        folder = Path(flags["output"].replace("%A", str(job_id)).replace("%a", str(max(t, 0)))
                      .replace("%j", tid)).parent
        for _ in range(600):  # the submitter moves the pickled job into <folder> right after sbatch returns
            if folder.is_dir() and any(folder.glob("*_submitted.pkl")):
                break
            time.sleep(0.1)
        (states / tid).write_text("RUNNING")
        rc = subprocess.run(["bash", str(script_path)], env=env, check=False).returncode
        (states / tid).write_text("COMPLETED" if rc == 0 else "FAILED")
    return 0


def _fill(pattern: str) -> str:
    env = os.environ
    job = env.get("SLURM_JOB_ID", "0")
    return (pattern.replace("%A", env.get("SLURM_ARRAY_JOB_ID", job)).replace("%a", env.get("SLURM_ARRAY_TASK_ID", "0"))
            .replace("%j", job).replace("%t", "0"))


def srun(args: list[str]) -> int:
    out = err = None
    i = 0
    while i < len(args) and args[i].startswith("-"):
        a = args[i]
        if a in ("--output", "--error"):
            val = _fill(args[i + 1])
            out, err = (val, err) if a == "--output" else (out, val)
            i += 2
        else:
            i += 1
    cmd = args[i:]
    fo = open(out, "a") if out else None
    fe = open(err, "a") if err else None
    try:
        return subprocess.run(cmd, stdout=fo, stderr=fe or fo, check=False).returncode
    finally:
        for f in (fo, fe):
            if f is not None:
                f.close()


def sacct(args: list[str]) -> int:
    print("JobID|State|NodeList")
    states = _state_dir()
    for rec in read_log(Path(os.environ["FAKE_SLURM_LOG"])):
        for t in rec["tasks"]:
            tid = _task_id(rec["job_id"], t)
            st = (states / tid).read_text() if (states / tid).is_file() else "PENDING"
            print(f"{tid}|{st}|localhost")
    return 0


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    raise SystemExit({"sbatch": sbatch, "srun": srun, "sacct": sacct, "_run": run_tasks}[role](rest))

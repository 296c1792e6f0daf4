"""Cluster profiles: YAML files describing SLURM worker jobs, turned into dask-jobqueue keyword arguments."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Environment every worker job exports, whatever the cluster's sbatch --export policy: no telemetry, no hub.
WORKER_ENV: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

# Imported by every worker at start-up (see flows/worker_setup.py).
WORKER_PRELOAD = "askshift.flows.worker_setup"

GRES_REJECTED = "Invalid generic resource (gres) specification"


class ClusterProfileError(ValueError):
    """A profile that cannot work: the message says which field to change."""


def walltime_seconds(walltime: str) -> int:
    """Seconds in a SLURM time limit, read as sbatch reads it: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S`` (so ``"30:00"`` is 30 minutes, not 30 hours)."""
    text = walltime.strip()
    days, _, clock = text.rpartition("-") if "-" in text else ("", "", text)
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or (days and not days.isdigit()) or len(parts) > 3:
        raise ValueError(f"walltime {walltime!r} is not a SLURM time limit such as '04:00:00' (H:M:S) or "
                         "'1-00:00:00' (D-H:M:S)")
    numbers = [int(p) for p in parts]
    if days:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(numbers) == 3:
        hours, minutes, seconds = numbers
    else:  # M or M:S
        hours, (minutes, seconds) = 0, (numbers + [0])[:2]
    return (hours * 60 + minutes) * 60 + seconds


def duration_seconds(duration: str) -> float:
    """Seconds in a Dask duration such as ``55m``, ``90s``, ``1h``."""
    from dask.utils import parse_timedelta

    try:  # the parser the Dask worker applies to --lifetime itself
        return float(parse_timedelta(duration, default="seconds"))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"duration {duration!r} is not a number with a unit such as s, m, h (e.g. '55m')") from exc


class ClusterProfile(BaseModel):
    """One kind of SLURM worker job. Every field has the meaning it has in sbatch / dask-jobqueue."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_name: str = Field("askshift-worker", description="sbatch -J")
    partition: str | None = Field(None, description="sbatch -p (None: the cluster's default partition)")
    account: str | None = Field(None, description="sbatch -A")
    cores: int = Field(1, ge=1, description="CPU cores per job (sbatch --cpus-per-task)")
    processes: int = Field(1, ge=1, description="Dask worker processes per job")
    memory: str = Field("4GB", description="memory per job (sbatch --mem), e.g. '16GB'")
    walltime: str = Field("01:00:00", description="sbatch -t, [D-]HH:MM:SS")
    gpus: int = Field(0, ge=0, description="GPUs per job: adds --gres=gpu[:type]:N and a Dask resource GPU=N")
    gpu_type: str | None = Field(None, description="GRES type, e.g. 'a100' gives --gres=gpu:a100:N")
    job_script_prologue: list[str] = Field(default_factory=list, description="shell lines run before the worker, "
                                           "e.g. 'source /path/to/askshift/.venv/bin/activate'")
    job_extra_directives: list[str] = Field(default_factory=list, description="extra #SBATCH lines, e.g. '--qos=normal'")
    job_directives_skip: list[str] = Field(default_factory=list, description="drop default #SBATCH lines containing these, "
                                           "e.g. '--mem' when the site wants --mem-per-gpu")
    worker_lifetime: str | None = Field(None, description="Dask worker --lifetime, shorter than walltime (e.g. '55m'): "
                                        "workers leave gracefully and adapt starts fresh jobs")
    worker_lifetime_stagger: str | None = Field(None, description="--lifetime-stagger, so workers do not all leave at once")
    adapt_minimum: int = Field(0, ge=0, description="adaptive scaling: fewest jobs kept")
    adapt_maximum: int = Field(2, ge=1, description="adaptive scaling: most jobs at once")
    adapt_idle: str = Field("60s", description="how long a worker job may sit idle before adaptive scaling cancels "
                            "it: a new job pays SLURM's queue wait and the worker's start-up again")
    local_directory: str | None = Field(None, description="node-local scratch for Dask spill files (e.g. '$TMPDIR')")
    log_directory: str | None = Field(None, description="folder for the jobs' stdout/stderr files")
    interface: str | None = Field(None, description="network interface workers and scheduler use (e.g. 'ib0'; 'lo' "
                                  "on a single-node cluster)")
    scheduler_host: str | None = Field(None, description="address the Dask scheduler binds (default: the interface's)")
    python: str | None = Field(None, description="interpreter on the nodes (default: the submitting one)")
    death_timeout: int = Field(120, ge=1, description="seconds a worker waits for an unreachable scheduler")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables exported in each job")
    preload: list[str] = Field(default_factory=list, description="extra Dask worker preload modules or files "
                               "(site plugins); askshift's own askshift.flows.worker_setup always comes first")

    @field_validator("walltime")
    @classmethod
    def _walltime_parses(cls, value: str) -> str:
        walltime_seconds(value)
        return value

    @field_validator("memory")
    @classmethod
    def _memory_parses(cls, value: str) -> str:
        from dask.utils import parse_bytes

        try:
            parse_bytes(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"memory {value!r} is not a size such as '4GB' or '512MiB'") from exc
        return value

    @field_validator("worker_lifetime", "worker_lifetime_stagger", "adapt_idle")
    @classmethod
    def _duration_parses(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterProfile":
        if self.adapt_minimum > self.adapt_maximum:
            raise ValueError(f"adapt_minimum ({self.adapt_minimum}) is above adapt_maximum ({self.adapt_maximum})")
        if self.processes > self.cores:
            raise ValueError(f"processes ({self.processes}) is above cores ({self.cores}): each process needs a core")
        if self.gpus and self.gpus % self.processes:
            raise ValueError(f"gpus ({self.gpus}) must be a multiple of processes ({self.processes}) "
                             "so each worker process declares whole GPUs")
        if self.worker_lifetime is not None:
            lifetime = duration_seconds(self.worker_lifetime)
            stagger = duration_seconds(self.worker_lifetime_stagger) if self.worker_lifetime_stagger else 0.0
            if lifetime + stagger >= walltime_seconds(self.walltime):
                raise ValueError(f"worker_lifetime + worker_lifetime_stagger ({self.worker_lifetime} + "
                                 f"{self.worker_lifetime_stagger or '0s'}) must be shorter than walltime "
                                 f"({self.walltime}) so workers leave before SLURM kills them")
        return self

    # --- derived values ---------------------------------------------------------------------
    @property
    def gpus_per_worker(self) -> int:
        return self.gpus // self.processes

    def gres_directive(self) -> str | None:
        """``--gres=gpu[:type]:N``, only when the profile asks for GPUs."""
        if not self.gpus:
            return None
        kind = f"gpu:{self.gpu_type}" if self.gpu_type else "gpu"
        return f"--gres={kind}:{self.gpus}"

    def worker_extra_args(self) -> list[str]:
        args: list[str] = []
        for module in (WORKER_PRELOAD, *self.preload):
            args += ["--preload", module]
        if self.gpus:
            # One GPU task holds one unit: a worker with GPU=1 runs one GPU task at a time.
            args += ["--resources", f"GPU={self.gpus_per_worker}"]
        if self.worker_lifetime:
            args += ["--lifetime", self.worker_lifetime]
            if self.worker_lifetime_stagger:
                args += ["--lifetime-stagger", self.worker_lifetime_stagger]
        return args

    def job_kwargs(self, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments shared by ``SLURMCluster`` and ``SLURMJob`` (everything but the scheduler)."""
        env = {**WORKER_ENV, **self.env, **(extra_env or {})}
        prologue = [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
        prologue += list(self.job_script_prologue)
        directives = list(self.job_extra_directives)
        gres = self.gres_directive()
        if gres:
            directives.append(gres)
        kwargs: dict[str, Any] = {
            "job_name": self.job_name,
            "queue": self.partition,
            "account": self.account,
            "cores": self.cores,
            "processes": self.processes,
            "memory": self.memory,
            "walltime": self.walltime,
            "job_script_prologue": prologue,
            "job_extra_directives": directives,
            "job_directives_skip": list(self.job_directives_skip),
            "worker_extra_args": self.worker_extra_args(),
            "python": self.python or sys.executable,
            "death_timeout": self.death_timeout,
        }
        for key in ("interface", "local_directory"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        if self.log_directory is not None:
            # #SBATCH lines are not shell-expanded, and dask-jobqueue creates the folder here: expand now.
            kwargs["log_directory"] = os.path.expandvars(os.path.expanduser(self.log_directory))
        return kwargs

    def cluster_kwargs(self, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``dask_jobqueue.SLURMCluster``."""
        kwargs = self.job_kwargs(extra_env)
        scheduler_options: dict[str, Any] = {"dashboard_address": None}
        if self.scheduler_host:
            scheduler_options["host"] = self.scheduler_host
        elif self.interface:
            scheduler_options["interface"] = self.interface
        kwargs["scheduler_options"] = scheduler_options
        return kwargs

    def adapt_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SLURMCluster.adapt`` (counted in jobs, not worker processes)."""
        # Dask retires a worker after `wait_count` consecutive decisions (one per `interval`) that it is not needed;
        # the default (3 x 1 s) cancels jobs between two phases of a flow and the next phase waits for new ones.
        interval = 2.0
        wait_count = max(1, round(duration_seconds(self.adapt_idle) / interval))
        return {"minimum_jobs": self.adapt_minimum, "maximum_jobs": self.adapt_maximum,
                "interval": f"{interval:g}s", "wait_count": wait_count}


def load_profile(path: str | Path) -> ClusterProfile:
    """Read a profile YAML; errors name the file and the field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ClusterProfileError(f"cluster profile {str(path)!r} does not exist "
                                  "(see deployments/slurm-local.yaml and deployments/slurm-gpu.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ClusterProfileError(f"cluster profile {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ClusterProfileError(f"cluster profile {str(path)!r} must be a mapping of field: value")
    try:
        return ClusterProfile(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'profile'}: {err['msg']}"
                             for err in exc.errors())
        raise ClusterProfileError(f"cluster profile {str(path)!r}: {problems}") from exc


def job_script(profile: ClusterProfile, scheduler_address: str = "tcp://SCHEDULER:8786",
               extra_env: dict[str, str] | None = None) -> str:
    """The sbatch script dask-jobqueue submits for one worker job (rendered by dask-jobqueue itself).

    The scheduler address is only known once a cluster starts; the placeholder marks where it goes.
    """
    from dask_jobqueue.slurm import SLURMJob

    kwargs = profile.job_kwargs(extra_env)
    log_directory = kwargs.pop("log_directory", None)
    if log_directory is None:
        return SLURMJob(scheduler=scheduler_address, name="askshift-worker", **kwargs).job_script()
    # dask-jobqueue creates the log folder when a job object is made; printing a script must not.
    with tempfile.TemporaryDirectory() as placeholder:
        script = SLURMJob(scheduler=scheduler_address, name="askshift-worker", log_directory=placeholder,
                          **kwargs).job_script()
    return script.replace(placeholder, log_directory)


def explain_sbatch_error(profile: ClusterProfile, stderr: str) -> str:
    """One clear line for an sbatch rejection, naming the profile field to change."""
    text = " ".join(stderr.split())
    if "invalid partition" in text.lower():
        return f"SLURM has no partition {profile.partition!r}: pick one listed by 'sinfo -s' ({text})"
    if "invalid account" in text.lower():
        return f"SLURM rejects account {profile.account!r}: check 'sacctmgr show assoc user=$USER' ({text})"
    if GRES_REJECTED.lower() in text.lower():
        where = f"partition {profile.partition!r}" if profile.partition else "the default partition"
        return (f"the profile asks for {profile.gpus} GPU(s) per job ({profile.gres_directive()}) but SLURM rejects it: "
                f"{where} has no such GPUs configured ('sinfo -o %G' shows the partition's GRES). "
                "Set gpus: 0 for CPU workers or choose a GPU partition / gpu_type that exists")
    if "node configuration is not available" in text.lower():
        return (f"no node can satisfy cores={profile.cores}, memory={profile.memory}, gpus={profile.gpus} "
                f"per job: lower them to fit a node ('sinfo -o \"%P %c %m %G\"') ({text})")
    return f"sbatch rejected the worker job: {text}"


def partition_gres(partition: str | None) -> list[str]:
    """The GRES column of ``sinfo`` for a partition; ``["(null)"]`` means no GPUs configured."""
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise ClusterProfileError(f"'sinfo' failed: {out.stderr.strip() or out.stdout.strip()}")
    return sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})


def check_submission(profile: ClusterProfile) -> str:
    """Ask SLURM (``sbatch --test-only``) whether it would accept this profile's worker job.

    Returns sbatch's answer when accepted; raises ``ClusterProfileError`` with a clear message otherwise.
    A rejected job would otherwise fail inside dask-jobqueue's adaptive loop and the flow would wait forever.
    """
    if shutil.which("sbatch") is None:
        raise ClusterProfileError("'sbatch' is not on PATH: run on a SLURM login node (or start the test cluster: "
                                  "deployments/slurm/local-cluster.sh up)")
    if profile.partition:
        # sbatch reports a bad GPU request before a bad partition: check the partition first.
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
        known = sorted({p.strip().rstrip("*") for p in out.stdout.split()})
        if out.returncode == 0 and known and profile.partition not in known:
            raise ClusterProfileError(f"SLURM has no partition {profile.partition!r}: set partition to one of "
                                      f"{', '.join(known)} ('sinfo -s')")
    if profile.gpus:
        gres = partition_gres(profile.partition)
        if gres and all(g == "(null)" for g in gres):
            raise ClusterProfileError(explain_sbatch_error(profile, GRES_REJECTED + " (sinfo -o %G: (null))"))
    script = job_script(profile)
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="askshift-check-") as fh:
        fh.write(script)
        fh.flush()
        out = subprocess.run(["sbatch", "--test-only", fh.name], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ClusterProfileError(explain_sbatch_error(profile, out.stderr or out.stdout))
    return (out.stderr or out.stdout).strip()

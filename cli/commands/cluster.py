"""``askshift cluster job-script|check PROFILE``: inspect a SLURM cluster profile before anything is submitted."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cluster", help="inspect a SLURM cluster profile (job script, submission check)",
                            description="Inspect a cluster profile (YAML, see deployments/slurm-*.yaml).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    script = actions.add_parser("job-script", help="print the sbatch script each Dask worker job is submitted with",
                                description="Print the sbatch script dask-jobqueue would submit for one worker job "
                                            "of PROFILE. The scheduler address is a placeholder: it is only known "
                                            "once a flow starts the cluster.")
    script.add_argument("profile", metavar="PROFILE", help="cluster profile YAML")
    script.set_defaults(func=_job_script)

    check = actions.add_parser("check", help="ask SLURM (sbatch --test-only) whether it accepts the worker job",
                               description="Validate PROFILE and ask SLURM whether it would accept one worker job "
                                           "(sbatch --test-only: nothing is queued). Detects GPU requests on "
                                           "partitions without GPUs, unknown partitions and oversized jobs.")
    check.add_argument("profile", metavar="PROFILE", help="cluster profile YAML")
    check.set_defaults(func=_check)


def _load(path: str):
    from askshift.cli.main import CliError
    from askshift.flows.cluster import ClusterProfileError, load_profile

    try:
        return load_profile(path)
    except ClusterProfileError as exc:
        raise CliError(str(exc)) from exc


def _job_script(args: argparse.Namespace) -> int:
    from askshift.flows.cluster import job_script

    profile = _load(args.profile)
    # The API URL a flow exports to its workers is only known at run time; show where it goes.
    print(job_script(profile, extra_env={"PREFECT_API_URL": "http://API_HOST:PORT/api"}),
          end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    from askshift.cli.main import CliError
    from askshift.flows.cluster import ClusterProfileError, check_submission

    profile = _load(args.profile)
    try:
        answer = check_submission(profile)
    except ClusterProfileError as exc:
        raise CliError(str(exc)) from exc
    print(f"ok: SLURM would accept a worker job of {args.profile}: {answer}")
    return 0

"""Start a Dask cluster on SLURM for mfsbi and keep it up until Ctrl-C.

    pip install dask-jobqueue
    export DASK_CONFIG=$PWD/deploy/slurm.yaml
    python deploy/slurm_cluster.py --jobs 32 --gpu-jobs 1
    # in another shell, with the address it printed:
    mfsbi run --task ou2 --method mf-npe --dask-address tcp://<login-node>:8786
    # or, through a Prefect deployment:
    mfsbi submit mfsbi-amortized --param task=ou2 --param dask_address=tcp://<login-node>:8786 --follow

CPU workers come from ``SLURMCluster`` (``jobqueue.slurm`` in slurm.yaml). GPU workers (Dask resource
``GPU=1``, where training lands) are plain ``sbatch`` jobs that join the same scheduler, with the
``mfsbi.slurm-gpu`` settings.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import time


def gpu_sbatch_command(address: str) -> list[str]:
    import dask.config

    gpu = dask.config.get("mfsbi.slurm-gpu")
    worker = ["dask", "worker", address, "--nthreads", "1", "--memory-limit", gpu["memory"],
              "--no-dashboard", *gpu["worker-extra-args"]]
    return ["sbatch", "--job-name", "mfsbi-gpu-worker", "--cpus-per-task", str(gpu["cores"]),
            "--mem", gpu["memory"].replace("GiB", "G"), "--time", gpu["walltime"],
            *gpu["job-extra-directives"], "--wrap", shlex.join(worker)]


def main() -> None:
    from dask_jobqueue import SLURMCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="CPU worker jobs (one worker each)")
    parser.add_argument("--gpu-jobs", type=int, default=0, help="GPU worker jobs (Dask resource GPU=1)")
    parser.add_argument("--dry-run", action="store_true", help="print the job scripts and exit")
    args = parser.parse_args()

    cluster = SLURMCluster()  # every setting from jobqueue.slurm (DASK_CONFIG=deploy/slurm.yaml)
    if args.dry_run:
        print(cluster.job_script())
        print(shlex.join(gpu_sbatch_command(cluster.scheduler_address)))
        cluster.close()
        return
    cluster.scale(jobs=args.jobs)
    for _ in range(args.gpu_jobs):
        subprocess.run(gpu_sbatch_command(cluster.scheduler_address), check=True)
    print(f"Dask scheduler: {cluster.scheduler_address}  (dashboard {cluster.dashboard_link})")
    print(f"use it with: mfsbi run ... --dask-address {cluster.scheduler_address}")
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        cluster.close()


if __name__ == "__main__":
    main()

"""Deconvolve a folder on a SLURM cluster through dask-jobqueue (a documented template: edit, then run).

This is not run by the tests: it needs a SLURM cluster, a shared file system that the login
node and the compute nodes both see, and ``pip install 'dask-jobqueue>=0.8.2' 'deconv3d[distributed]'``
in an environment the compute nodes can activate.

How it works: ``SLURMCluster`` submits SLURM jobs, each starting dask workers that connect back
to a scheduler running here (on the login node, or better inside an interactive allocation).
``deconv3d`` sends the blocks of every image to those workers; the outputs, their temporary
names and the completion records live on the shared file system, so a batch cut short by the
wall-clock limit resumes where it stopped when this script (or ``deconv3d batch``) runs again.

The same thing from the command line, once a scheduler is up (e.g. started by this script with
``--serve``, which prints its address and waits)::

    deconv3d batch /shared/raw -o /shared/deconvolved --psf /shared/psf.tif \\
        --memory-limit 12GB --scheduler tcp://HOST:PORT

Resources: each worker process runs one block at a time (``processes == cores`` below, one
thread each), so give every job ``memory`` of at least ``processes x --memory-limit``; the memory
model then keeps each block within its share. For GPUs, ask for one GPU per job
(``job_extra_directives=["--gres=gpu:1"]``), run one worker process per job and set
``"device": "cuda"`` in ``SETTINGS`` below.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

# ---- edit these for your cluster ----------------------------------------------------------
QUEUE = "general"  # SLURM partition
ACCOUNT = None  # SLURM account, if your site needs one
JOBS = 4  # SLURM jobs (each one node's worth of workers)
CORES_PER_JOB = 8  # worker processes per job, one thread each
MEMORY_PER_JOB = "64GB"  # at least CORES_PER_JOB x MEMORY_LIMIT_PER_BLOCK plus some headroom
MEMORY_LIMIT_PER_BLOCK = "6GB"  # passed as memory_limit: the memory model sizes blocks for it
WALLTIME = "04:00:00"
ENV_SETUP = ["source ~/venvs/deconv3d/bin/activate"]  # run in each job before the workers start
LOCAL_DIRECTORY = "${TMPDIR:-/tmp}"  # node-local scratch for dask's spill files (an empty one kills the workers)
START_FRACTION = 0.5  # start once this share of the workers has connected (or after WAIT_SECONDS with any)
WAIT_SECONDS = 1800  # the queue may take a while
SETTINGS = {"method": "rl", "iterations": 30, "psf": "/shared/psf.tif", "device": "cpu",
            "memory_limit": MEMORY_LIMIT_PER_BLOCK}
# --------------------------------------------------------------------------------------------


def require_jobqueue():
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        sys.exit("examples/slurm_jobqueue.py needs dask-jobqueue: pip install 'dask-jobqueue>=0.8.2' "
                 "'deconv3d[distributed]' (and a SLURM cluster to submit to)")
    return SLURMCluster


def make_cluster():
    SLURMCluster = require_jobqueue()
    # python="python": the interpreter that ENV_SETUP activates on the node (the default is this one's path)
    cluster = SLURMCluster(queue=QUEUE, account=ACCOUNT, cores=CORES_PER_JOB, processes=CORES_PER_JOB,
                           memory=MEMORY_PER_JOB, walltime=WALLTIME, job_script_prologue=ENV_SETUP,
                           local_directory=LOCAL_DIRECTORY, python="python")  # cores == processes: 1 thread each
    print(cluster.job_script())  # the sbatch script each job runs: check it once
    cluster.scale(jobs=JOBS)
    return cluster


def run(input_dir: Path, output_dir: Path) -> int:
    from distributed import Client

    from deconv3d.pipeline.batch import make_settings, report_as_files_finish, run_batch, write_reports
    from deconv3d.pipeline.files import deconvolve_file

    settings = make_settings(SETTINGS)  # validated before any job is submitted
    cluster = make_cluster()
    with cluster, Client(cluster) as client:
        wait_for_workers(client, JOBS * CORES_PER_JOB)
        print(f"{len(client.nthreads())} workers connected to {client.scheduler.address}")

        def one(path, output, input_sha256):
            info = deconvolve_file(path, output, settings, client=client, checksum=input_sha256)
            print(f"{path.name}: {info.blocks} blocks in {info.seconds:.0f} s", flush=True)

        start = time.perf_counter()
        # the report as files finish too: a job killed at its time limit leaves one of the files it finished
        rows = run_batch(input_dir, output_dir, settings, one, report=report_as_files_finish(output_dir))
    write_reports(output_dir, rows)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"{len(rows) - len(failed)} of {len(rows)} files done in {time.perf_counter() - start:.0f} s; "
          f"report {output_dir / 'batch_report.json'}")
    return 3 if failed else 0


def wait_for_workers(client, wanted: int) -> None:
    """Wait until ``START_FRACTION`` of ``wanted`` workers have connected (a file's blocks in flight are
    planned from the workers present when it starts), or until ``WAIT_SECONDS`` have passed with at
    least one."""
    target = max(1, int(wanted * START_FRACTION))
    try:
        client.wait_for_workers(target, timeout=WAIT_SECONDS)
    except TimeoutError:  # distributed raises the built-in one
        if not client.nthreads():
            raise
        print(f"only {len(client.nthreads())} of {target} workers after {WAIT_SECONDS} s: starting anyway")


def serve() -> None:
    """Start the cluster, print its address for ``deconv3d batch --scheduler``, and wait."""
    cluster = make_cluster()
    print(f"scheduler: {cluster.scheduler_address} (Ctrl-C stops the cluster)", flush=True)
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input_dir", nargs="?", type=Path, help="folder of TIFF/OME-Zarr stacks (shared FS)")
    parser.add_argument("-o", "--output", type=Path, help="output folder (shared FS)")
    parser.add_argument("--serve", action="store_true", help="only start the cluster and print its address")
    args = parser.parse_args()
    if not args.serve and (args.input_dir is None or args.output is None):
        parser.error("give INPUT_DIR and -o OUTPUT (or --serve)")
    require_jobqueue()  # a clear message before anything else when it is missing
    if shutil.which("sbatch") is None:
        sys.exit("sbatch not found: run this on a SLURM login node (or inside an allocation)")
    if args.serve:
        serve()
        return
    from deconv3d.errors import InputError

    try:
        sys.exit(run(args.input_dir, args.output))
    except InputError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()

"""Segment a folder of slides on a SLURM cluster through Dask: dask-jobqueue starts the workers as SLURM
jobs, `magnet segment --cluster` runs every unit of work as a Dask task on them.

    pip install 'magnet-cli[dask]' dask-jobqueue
    python examples/cluster/segment_dask_jobqueue.py /shared/slides /shared/masks --jobs 8

Workers must see the input, the output folder and the model on a shared filesystem. One worker process
per job with one Dask thread: the engine runs its own reader and writer threads and uses the job's cores
for its convolutions. For GPUs, ask for one GPU per job (job_extra_directives=["--gres=gpu:1"]) and pass
--device cuda: each worker then sees one device.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dask_jobqueue import SLURMCluster

from magnet_cli import segment
from magnet_cli.settings import RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slides", type=Path)
    parser.add_argument("masks", type=Path)
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs (one worker each)")
    args = parser.parse_args()
    cluster = SLURMCluster(
        cores=8, processes=1, memory="4GB", walltime="02:00:00",
        job_script_prologue=["export OMP_NUM_THREADS=8"],
    )
    cluster.scale(jobs=args.jobs)
    try:
        # The same as `magnet segment SLIDES -o MASKS --cluster tcp://...` from a shell.
        results = segment([args.slides], args.masks, run=RunSettings(cluster=cluster.scheduler_address, resume=True, progress=True))
    finally:
        cluster.close()
    for result in results:
        print(result.status, result.input, result.output, result.error or "")


if __name__ == "__main__":
    main()

"""Units of work as Dask distributed tasks (`segment --cluster`), on a scheduler we do not write.

The driver lays out the partial store and the input's pyramid, submits one task per unit, and publishes
when every unit is in the ledger. A task carries only names and settings; workers open the input and
the partial store themselves, read their windows and write their chunks (no pixel data goes through
the scheduler). Each worker process loads the model once and keeps it for later tasks. A worker that
dies costs its unit: Dask runs the task again elsewhere, and the unit's rerun writes the same bytes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

from magnet_cli.errors import UsageError

if TYPE_CHECKING:
    from magnet_cli.segmentation import ImageJob

LOCAL_PREFIX = "local:"
EXTRA_HINT = "--cluster needs Dask distributed: pip install 'magnet-cli[dask]'"

_engines: dict[str, Any] = {}  # per worker process: one engine per (model, inference settings)


def parse_cluster(address: str) -> tuple[str, int | None]:
    """`local:N` -> ("local", N); `tcp://HOST:PORT` (or another Dask address) -> (address, None)."""
    text = address.strip()
    if text.startswith(LOCAL_PREFIX):
        try:
            workers = int(text[len(LOCAL_PREFIX):])
        except ValueError:
            raise UsageError(f"--cluster {address!r}: expected local:N with N worker processes, e.g. local:2") from None
        if not 1 <= workers <= 1024:
            raise UsageError(f"--cluster {address!r}: N must be from 1 to 1024")
        return "local", workers
    if "://" not in text:
        raise UsageError(f"--cluster {address!r}: expected tcp://HOST:PORT (a running `dask scheduler`) or local:N")
    return text, None


def client_for(address: str):  # noqa: ANN201 (distributed.Client, an optional dependency)
    """A Dask client: a new LocalCluster for `local:N`, else a connection to a running scheduler."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError(EXTRA_HINT) from None
    target, workers = parse_cluster(address)
    if target == "local":
        assert workers is not None
        # One thread per worker process: the engine runs its own reader and writer threads, and torch's
        # intra-op threads are set per task so that workers share the cores instead of oversubscribing.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster)
    try:
        return Client(target, timeout="30s")
    except (OSError, TimeoutError) as error:
        raise UsageError(f"--cluster {address}: cannot reach the Dask scheduler ({error})") from None


def close_client(client: Any) -> None:
    """Disconnect; a LocalCluster this process started (`local:N`) is shut down with its workers."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def threads_for(client: Any) -> int | None:
    """Intra-op threads per task: this host's cores shared by a local cluster's workers; None (torch's
    default, or OMP_NUM_THREADS) for workers on other hosts, whose cores we cannot see from here."""
    cluster = getattr(client, "cluster", None)
    if cluster is None or not hasattr(cluster, "workers"):
        return None
    return max(1, (os.cpu_count() or 1) // max(1, len(cluster.workers)))


def run_tasks(
    client: Any,
    work: dict[int, tuple[ImageJob, Sequence[str]]],
    threads: int | None,
    on_done: Callable[[int, dict], None],
    on_error: Callable[[int, BaseException], None],
) -> None:
    """Run every named unit of every image as one task, all submitted at once. `on_done(image, stats)`
    follows each finished unit; the first failing unit of an image fails the image (`on_error`) and its
    other tasks are cancelled, while the other images go on."""
    from distributed import as_completed

    futures = {}
    for index, (job, units) in work.items():
        for name in units:
            future = client.submit(unit_task, job, name, threads, key=f"magnet-{job.fingerprint[:12]}-{name}", pure=False)
            futures[future] = index
    failed: set[int] = set()
    try:
        for future in as_completed(futures):
            index = futures[future]
            if index in failed or future.cancelled():
                continue
            try:
                stats = future.result()
            except Exception as error:  # a bad image (or a worker error): that image fails, the rest go on
                failed.add(index)
                on_error(index, error)
                for other, owner in futures.items():
                    if owner == index:
                        other.cancel()
                continue
            on_done(index, stats)
    except BaseException:
        client.cancel(list(futures))
        raise


def unit_task(job: ImageJob, unit: str, threads: int | None) -> dict:
    """On a worker: do one unit of one image into the shared partial store (skipped if already done)."""
    import torch

    from magnet_cli.pipeline import Engine
    from magnet_cli.segmentation import do_units, resolve_model

    if threads:
        torch.set_num_threads(threads)
    key = repr((job.model, job.inference))
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = Engine(resolve_model(job.model), job.inference)
    return do_units(engine, job, [unit])

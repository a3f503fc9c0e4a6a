"""The ``ray`` executor of :func:`imseg.batch.run_batch`: the same batch run on a Ray cluster (or a local Ray).

Built on Ray Data: the driver lists the images (paths every worker can read) and plans the run (names,
resume); a dataset of those tasks goes through ``map_batches`` with a pool of actors. Each actor gets
the job's ``recipe`` (or the job itself when it has none) and the :class:`~imseg.batch.ImageWriter`
once, through the object store; its constructor builds the job, loading the model weights on the
worker (and its device: ``auto`` picks the worker's GPU); then, per image, it reads the file, runs ``job.process`` and writes the
outputs and the done marker itself with the same atomic writes as the local runner. The driver only
receives one small row per image (its ``describe`` facts or its failure reason).

A killed actor is restarted and its unfinished batch retried (``max_restarts`` / ``max_task_retries``):
outputs are written atomically and the marker last, so a retried image is written again to the same
files and nothing is lost, duplicated or half-written.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .batch import BatchJob, ImageWriter, Outcome, Task, error_reason
from .errors import ConfigError, ImsegError

RAY_EXTRA = "pip install 'imseg[ray]'"


class WorkerError(ImsegError):
    """An image's failure as a worker reported it (its one-line reason)."""


def import_ray() -> Any:
    """``ray`` and ``ray.data``, or a :class:`ConfigError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - the executor is built on Ray Data
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed ({exc}); install it with "
                          f"{RAY_EXTRA}, or use --engine local.") from None
    return ray


class ImageActor:
    """A Ray Data actor: loads the job once, then processes and writes batches of images."""

    def __init__(self, payload: Any, threads: int) -> None:
        import ray

        if isinstance(payload, ray.ObjectRef):
            payload = ray.get(payload)
        job, self.writer = payload
        self.job = job() if callable(job) and not isinstance(job, BatchJob) else job
        torch = sys.modules.get("torch")  # a job without torch (classical) need not import it
        if torch is not None and threads > 0:
            torch.set_num_threads(threads)

    def __call__(self, batch: dict) -> dict:
        rows: dict[str, list] = {"index": [], "info": [], "result": [], "error": [], "seconds": []}
        for index, path, name, earlier in zip(batch["index"], batch["path"], batch["name"], batch["earlier"],
                                              strict=True):
            task = Task(int(index), Path(str(path)), str(name), json.loads(str(earlier)))
            info, result, error, seconds = run_task(self.job, self.writer, task)
            rows["index"].append(task.index)
            rows["info"].append(json.dumps(info))
            rows["result"].append(result)
            rows["error"].append(error)
            rows["seconds"].append(seconds)
        return rows


def run_task(job: BatchJob, writer: ImageWriter | None, task: Task) -> tuple[dict | None, bytes, str, float]:
    """Process one image and write it (``writer``) or return it pickled (no writer): (describe facts,
    pickled result, "" or the failure reason, seconds taken)."""
    start = time.perf_counter()
    info, payload = None, b""
    try:
        result = job.process(task.path)
        if writer is None:
            from ray import cloudpickle

            payload = cloudpickle.dumps(result)
        else:
            info = writer.write(job, task, result, time.perf_counter() - start)
    except Exception as exc:  # this image's failure; the batch goes on
        return None, b"", error_reason(exc, task.path) or type(exc).__name__, time.perf_counter() - start
    return info, payload, "", time.perf_counter() - start


class RayExecutor:
    """Runs a batch on Ray: ``workers`` actors, each with ``cpus_per_worker`` CPUs (its torch threads) and
    ``gpus_per_worker`` GPUs, taking ``batch_size`` images at a time.

    ``address`` None starts a local Ray sized to this machine (or uses one already started in this
    process); ``"auto"`` joins the cluster this machine belongs to; ``"ray://host:port"`` connects a client.
    """

    def __init__(self, address: str | None = None, workers: int = 2, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, batch_size: int = 1, max_restarts: int = 3,
                 progress: bool = False) -> None:
        for flag, value in (("--workers", workers), ("--batch-size", batch_size)):
            if int(value) < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}.")
        for flag, value in (("--cpus-per-worker", cpus_per_worker), ("--gpus-per-worker", gpus_per_worker)):
            if value < 0:
                raise ConfigError(f"{flag} must not be negative, got {value}.")
        self.address, self.workers, self.batch_size = address, int(workers), int(batch_size)
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker
        self.max_restarts, self.progress = max_restarts, progress
        self.ray = import_ray()

    def start(self) -> None:
        """Connect to (or start) Ray once per process."""
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            cpus = max(os.cpu_count() or 1, int(self.workers * max(self.cpus_per_worker, 1)))
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)

    def map(self, job: BatchJob, items: Sequence[tuple[int, Path]]) -> Iterator[Outcome]:
        """Process on the actors and send each result back (pickled) for the caller to write."""
        yield from self._outcomes(job, [Task(index, Path(path), "") for index, path in items], None)

    def map_written(self, job: BatchJob, tasks: Sequence[Task], writer: ImageWriter) -> Iterator[Outcome]:
        """Process and write every task on the actors; yield one written (or failed) outcome per task."""
        yield from self._outcomes(job, tasks, writer)

    def _outcomes(self, job: BatchJob, tasks: Sequence[Task], writer: ImageWriter | None) -> Iterator[Outcome]:
        from ray import cloudpickle

        if not tasks:
            return
        self.start()
        dataset = self._dataset(job, tasks, writer)
        by_index = {task.index: task for task in tasks}
        seen: set[int] = set()
        try:
            for row in dataset.iter_rows():
                index = int(row["index"])
                if index in seen:  # a retried batch reports an image again; it was written once more, identically
                    continue
                seen.add(index)
                task, seconds = by_index[index], float(row["seconds"])
                if row["error"]:
                    yield Outcome(index, task.path, error=WorkerError(str(row["error"])), seconds=seconds)
                elif writer is None:
                    yield Outcome(index, task.path, result=cloudpickle.loads(row["result"]), seconds=seconds)
                else:
                    yield Outcome(index, task.path, seconds=seconds, written=json.loads(str(row["info"])) or {})
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except Exception as exc:  # the cluster gave up (retries spent): the images not reported are failures
            reason = f"Ray worker failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            for task in tasks:
                if task.index not in seen:
                    yield Outcome(task.index, task.path, error=WorkerError(reason))

    def _dataset(self, job: BatchJob, tasks: Sequence[Task], writer: ImageWriter | None) -> Any:
        ray = self.ray
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = self.progress
        rows = [{"index": t.index, "path": str(t.path), "name": t.name, "earlier": json.dumps(t.earlier)}
                for t in tasks]
        blocks = min(len(rows), self.workers * 4)  # enough blocks to keep every actor busy
        payload = ray.put((job.recipe or job, writer))  # shipped once; every actor reads it from the object store
        resources = {"num_cpus": self.cpus_per_worker}
        if self.gpus_per_worker:
            resources["num_gpus"] = self.gpus_per_worker
        with warnings.catch_warnings():
            # bounded restarts have no named parameter yet; Ray Data's default retries a poison image forever
            warnings.simplefilter("ignore", DeprecationWarning)
            return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
                ImageActor, fn_constructor_args=(payload, int(self.cpus_per_worker)), batch_size=self.batch_size,
                compute=ray.data.ActorPoolStrategy(size=self.workers),
                max_restarts=self.max_restarts, max_task_retries=self.max_restarts,
                **resources)

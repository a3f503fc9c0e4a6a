"""The batch runner every folder-level command uses: images in, per-image outputs and a summary out.

``run_batch(sources, job, out_dir)`` lists the images, names each one's outputs (its file stem, or
``stem-<hash>`` when another image owns that stem), skips images a done marker records as finished
with the same settings, hands the rest to an executor (``job.process``), writes each result
(``job.write``), replaces an image's earlier outputs completely, writes its marker last, then runs
``job.finish`` (folder-level files such as one ``coco.json``). Every image and every write goes
through the same failure handling: a bad file or a failed write is recorded with its reason and
the run goes on; the returned :class:`BatchSummary` says what happened.

Executors run ``job.process`` (the expensive part) and may yield outcomes in any order.
``LocalExecutor`` runs in-process and the runner writes each result; an executor with
``map_written(job, tasks, writer)`` (the Ray one, :mod:`imseg.batch_ray`) also writes on its workers
through the same :class:`ImageWriter`, so every executor produces the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, ImsegError

MARKER_DIR = "done"


class BatchJob:
    """What a batch command does to one image. Subclasses set ``name``, ``verb`` and ``settings``
    and implement :meth:`process` and :meth:`write`; the other hooks have working defaults."""

    #: the command, for the summary title (``"segment"``)
    name: str = "batch"
    #: what happened to a finished image, for the summary (``"segmented"``)
    verb: str = "processed"
    #: JSON-able: a done marker counts only for exactly these settings
    settings: dict = {}
    #: picklable, no arguments, builds this same job (model included) in another process; None: ship the job
    recipe: Callable[[], BatchJob] | None = None

    def process(self, image_path: Path) -> Any:
        """The expensive, write-free part for one image (it may run in another process)."""
        raise NotImplementedError

    def write(self, result: Any, out_dir: Path, name: str) -> list[Path]:
        """Write ``result`` under ``out_dir`` as ``name``; return every file written (all under ``out_dir``)."""
        raise NotImplementedError

    def describe(self, result: Any) -> dict:
        """JSON-able facts about a result for its marker and the summary; ``masks`` fills the table's column."""
        return {}

    def required(self, out_dir: Path, name: str) -> list[Path]:
        """Files a finished image must have besides those its marker lists (e.g. an overlay asked for now)."""
        return []

    def finish(self, out_dir: Path, records: Callable[[], list[dict]]) -> list[Path]:
        """Folder-level outputs; ``records()`` reads the markers of every image done in ``out_dir`` with these
        settings (this run and earlier ones)."""
        return []


@dataclass
class Outcome:
    """One image's result from an executor: ``result``, or the ``error`` that stopped it."""

    index: int
    path: Path
    result: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    #: set when the executor already wrote the outputs and marker: the job's ``describe`` of the result
    written: dict | None = None


@dataclass(frozen=True)
class Task:
    """One image to do: its index in the listing, path, output name and the marker it had before this run."""

    index: int
    path: Path
    name: str
    earlier: dict | None = None


class Executor(Protocol):
    def map(self, job: BatchJob, items: Sequence[tuple[int, Path]]) -> Iterator[Outcome]:
        """Run ``job.process`` on each ``(index, path)``; yield one :class:`Outcome` per item, in any order.
        An exception from ``process`` becomes the outcome's ``error``; it never ends the iteration."""
        ...


class LocalExecutor:
    """Runs every image in this process, one after another."""

    def map(self, job: BatchJob, items: Sequence[tuple[int, Path]]) -> Iterator[Outcome]:
        for index, path in items:
            start = time.perf_counter()
            try:
                result = job.process(path)
            except Exception as exc:  # any error is this image's failure; the others go on
                yield Outcome(index, path, error=exc, seconds=time.perf_counter() - start)
                continue
            yield Outcome(index, path, result=result, seconds=time.perf_counter() - start)


def _ray_executor(**options: Any) -> Executor:
    from .batch_ray import RayExecutor  # Ray is imported only when asked for

    return RayExecutor(**options)


EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": _ray_executor}


def get_executor(executor: str | Executor) -> Executor:
    """An executor by name (``local``, ``ray`` with its defaults) or the instance given."""
    if not isinstance(executor, str):
        return executor
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}.")
    return EXECUTORS[executor]()


@dataclass
class Failure:
    """Something that could not be done: an image (``image=True``) or a folder-level output."""

    where: str
    reason: str
    image: bool = True


@dataclass
class BatchSummary:
    """What a run did. ``images`` counts the images listed, ``done`` those written in this run."""

    command: str
    verb: str
    out_dir: Path
    images: int = 0
    done: int = 0
    skipped: int = 0
    redone: int = 0
    masks: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    interrupted: bool = False
    rows: dict[int, tuple[str, str, str, str]] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Images that failed (folder-level failures are listed in ``failures`` but not counted here)."""
        return sum(f.image for f in self.failures)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """130 when interrupted, 1 when anything failed, else 0."""
        return 130 if self.interrupted else 1 if self.failures else 0

    def print(self, console: Any = None) -> None:
        """A table of the images, then totals, speed and every failure with its reason (rich)."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console(soft_wrap=True, highlight=False)
        table = Table(title=f"imseg {self.command} -> {self.out_dir}")
        for col in ("image", "masks", "seconds", "status"):
            table.add_column(col)
        for index in sorted(self.rows):
            table.add_row(*self.rows[index])
        console.print(table)
        say = lambda text: console.print(text, markup=False, soft_wrap=True)  # noqa: E731 - paths are not markup
        if self.redone:
            say(f"{self.redone} image(s) done earlier in {self.out_dir} with other settings (or outputs missing) "
                f"were {self.verb} again.")
        say(f"{self.done} {self.verb}, {self.skipped} skipped (already done), {self.failed} failed; "
            f"outputs in {self.out_dir}")
        say(f"{self.done} image(s), {self.masks} mask(s) in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)")
        if self.workers > 1:
            say(f"{self.workers} workers: {self.images_per_second / self.workers:.2f} images/s per worker")
        if self.failed:
            say(f"{self.failed} of {self.images} image(s) failed:")
        for failure in self.failures:
            say(f"  {failure.where}: {failure.reason}" if failure.image else
                f"could not write {failure.where}: {failure.reason}")
        if self.interrupted:
            say("interrupted: run the same command again to resume.")


def error_reason(exc: BaseException, where: str | os.PathLike | None = None) -> str:
    """A one-line reason: our own messages and OS errors as they are, anything else with its type; without a
    leading ``where: `` (the summary shows where)."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
        if exc.filename is not None and str(exc.filename) != str(where):
            reason += f": {exc.filename}"
    else:
        reason = str(exc) if isinstance(exc, ImsegError | OSError) else f"{type(exc).__name__}: {exc}"
    prefix = f"{where}: "
    return reason[len(prefix):] if where is not None and reason.startswith(prefix) else reason


# ----------------------------------------------------------------------------- out dir, markers, names


def prepare_out_dir(out_dir: str | os.PathLike, option: str = "--out") -> Path:
    """``out_dir`` created and checked writable; a :class:`ConfigError` up front rather than one per image."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{option} {root} is a file; pass a directory (it is created when missing).")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".imseg-write-check.", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{option} {root} is not writable ({exc.strerror or exc}); pass a directory you can "
                          f"write to.") from None
    return root


class Markers:
    """Done markers, ``<out>/done/<name>.json``: one JSON record per finished image. A record holds the
    image, its resolved ``source`` (which owns the name), the job's ``settings`` and the ``files`` it
    wrote, relative to the out dir; ``settings`` None marks an image whose outputs are being replaced."""

    def __init__(self, out_dir: Path) -> None:
        self.directory = Path(out_dir) / MARKER_DIR

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def read(self, name: str) -> dict | None:
        """The record, or None when there is none or it cannot be read (the image is then redone)."""
        return read_marker(self.path(name))

    def write(self, name: str, record: dict) -> None:
        from . import io

        io.write_bytes(self.path(name), json.dumps(record).encode("utf-8"))

    def records(self, settings: dict) -> list[dict]:
        """Every readable record made with ``settings``, by name."""
        found = (read_marker(p) for p in sorted(self.directory.glob("*.json")))
        return [r for r in found if r is not None and r.get("settings") == settings]


def read_marker(path: Path) -> dict | None:
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or "image" not in info or not isinstance(info.get("files", []), list):
        return None
    return info


def output_names(images: Sequence[Path], markers: Markers | None = None) -> list[str]:
    """One output name per image, unique and the same on every run into the same out dir.

    An image gets its file stem unless another image already owns that name (in this run, or by a
    done marker from an earlier run); then it gets ``stem-<8 hex digits of its absolute path>``.
    """
    taken: dict[str, str] = {}
    names = []
    for path in images:
        key = str(Path(path).resolve())
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
        for name in (path.stem, f"{path.stem}-{digest}"):
            owner = taken.get(name)
            if owner is None and markers is not None:
                info = markers.read(name)
                owner = None if info is None else info.get("source", str(Path(info["image"]).resolve()))
            if owner is None or owner == key:
                break
        taken[name] = key
        names.append(name)
    return names


# ----------------------------------------------------------------------------- the runner


def list_sources(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """:func:`imseg.io.list_images` of ``sources``, where a ``.txt`` file is a list of image paths, one a line
    (blank lines and ``#`` comments skipped; relative paths are relative to the list's folder). On a
    cluster, every path must be readable by every worker (a shared file system)."""
    from .errors import InputError
    from .io import list_images

    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    expanded: list[str | os.PathLike] = []
    for item in items:
        path = Path(item)
        if path.suffix.lower() != ".txt" or not path.is_file():
            expanded.append(item)
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the list of image paths ({exc}).") from None
        listed = [path.parent / line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not listed:
            raise InputError(f"{path}: the list of image paths is empty; write one image path a line.")
        expanded += listed
    return list_images(expanded)


def run_batch(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    job: BatchJob,
    out_dir: str | os.PathLike,
    executor: str | Executor = "local",
    *,
    resume: bool = True,
    console: Any = None,
) -> BatchSummary:
    """Run ``job`` over every image of ``sources`` (a file, a directory, a glob, a ``.txt`` list of image
    paths, or a list of them).

    With ``resume`` (the default) each finished image gets a done marker under ``out_dir/done`` and a
    later run with the same ``job.settings`` skips it; without, every image is done and no marker is
    written. ``console`` (rich) receives the progress bar and one line per failure as it happens
    (default: stderr). Raises :class:`~imseg.errors.ImsegError` only before any image is touched (no
    images, an unwritable ``out_dir``, an unknown executor); everything later ends up in the summary.
    """
    runner = get_executor(executor)
    images = list_sources(sources)
    root = prepare_out_dir(out_dir)
    run = _Run(job, root, images, Markers(root) if resume else None, console)
    start = time.perf_counter()
    todo = run.plan()
    run.summary.workers = int(getattr(runner, "workers", 1))
    try:
        with run.progress(total=len(images), completed=len(images) - len(todo)) as advance:
            map_written = getattr(runner, "map_written", None)
            outcomes = (runner.map(job, todo) if map_written is None else
                        map_written(job, [run.task(index, path) for index, path in todo], run.writer))
            for outcome in outcomes:
                run.settle(outcome)
                advance(outcome.path.name)
    except KeyboardInterrupt:  # what is finished stays finished; the folder outputs still cover it
        run.summary.interrupted = True
    run.finish()
    run.summary.seconds = time.perf_counter() - start
    return run.summary


class ImageWriter:
    """Writes one image's outputs, replacing its earlier ones, then its done marker (when resuming).

    Plain data (out dir, settings), so it pickles: a worker process calls the same :meth:`write` the
    runner does. Every file is written atomically and the marker last, so a write that is cut short
    (a killed worker) leaves the image not done, and doing it again gives the same files.
    """

    def __init__(self, root: Path, settings: dict, resume: bool = True) -> None:
        self.root, self.settings, self.resume = Path(root), settings, resume

    def write(self, job: BatchJob, task: Task, result: Any, seconds: float) -> dict:
        """Write ``result`` for ``task``; return ``job.describe(result)``."""
        markers = Markers(self.root) if self.resume else None
        files = self._replace_outputs(job, markers, result, task.name, task.earlier)
        info = job.describe(result)
        if markers is not None:  # written last: the image is done
            markers.write(task.name, {"image": str(task.path), "source": str(Path(task.path).resolve()),
                                      "stem": task.name, "settings": self.settings, "files": files,
                                      "seconds": round(seconds, 3), **info})
        return info

    def _replace_outputs(self, job: BatchJob, markers: Markers | None, result: Any, name: str,
                         earlier: dict | None) -> list[str]:
        """Write the new outputs, then remove the earlier ones the new set does not contain."""
        old = [str(rel) for rel in earlier.get("files", [])] if earlier is not None else []
        if earlier is not None and markers is not None:
            # the old record stops counting before its files change; it keeps the list of them
            markers.write(name, {**earlier, "settings": None})
        written = [self._relative(job, p) for p in job.write(result, self.root, name)]
        for rel in sorted(set(old) - set(written)):
            self._remove(rel)
        return written

    def _relative(self, job: BatchJob, path: str | os.PathLike) -> str:
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            raise ConfigError(f"{job.name} wrote {path} outside the out dir {self.root}.") from None

    def _remove(self, rel: str) -> None:
        """Delete an earlier output (and folders it leaves empty); never anything outside the out dir."""
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts or parts[0] == MARKER_DIR:
            return
        target = self.root / rel
        target.unlink(missing_ok=True)
        parent = target.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


class _Run:
    """The state of one :func:`run_batch` call: planning, writing each outcome, the folder outputs."""

    def __init__(self, job: BatchJob, root: Path, images: list[Path], markers: Markers | None, console: Any) -> None:
        from rich.console import Console

        self.job, self.root, self.images, self.markers = job, root, images, markers
        self.names = output_names(images, markers)
        self.settings = json.loads(json.dumps(job.settings))  # as the markers read it back
        self.summary = BatchSummary(job.name, job.verb, root, images=len(images))
        self.console = console or Console(stderr=True, soft_wrap=True, highlight=False)
        self.earlier: dict[int, dict | None] = {}
        self.writer = ImageWriter(root, self.settings, markers is not None)

    def plan(self) -> list[tuple[int, Path]]:
        """The images still to do; the others are counted as skipped."""
        todo = []
        for index, (path, name) in enumerate(zip(self.images, self.names, strict=True)):
            earlier = self.markers.read(name) if self.markers is not None else None
            if earlier is not None and self._is_done(earlier, name):
                self.summary.skipped += 1
                self.summary.rows[index] = (path.name, "-", "-", "skipped (done)")
                continue
            self.summary.redone += earlier is not None
            self.earlier[index] = earlier
            todo.append((index, path))
        return todo

    def _is_done(self, record: dict, name: str) -> bool:
        if record.get("settings") != self.settings:
            return False
        files = [self.root / rel for rel in record.get("files", [])]
        return all(p.is_file() for p in [*files, *self.job.required(self.root, name)])

    def task(self, index: int, path: Path) -> Task:
        return Task(index, path, self.names[index], self.earlier.get(index))

    def progress(self, total: int, completed: int):
        """A context giving ``advance(name)``; the bar is drawn on the console and removed at the end."""
        import contextlib

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=self.console, transient=True)

        @contextlib.contextmanager
        def running():
            with bar:
                task = bar.add_task(self.job.name, total=total, completed=completed)
                yield lambda name: bar.update(task, advance=1, description=f"{self.job.verb} {name}")

        return running()

    def settle(self, outcome: Outcome) -> None:
        """Write one image's outputs and marker (unless the executor did), or record why it failed."""
        index, path = outcome.index, outcome.path
        error, info = outcome.error, outcome.written or {}
        if error is None and outcome.written is None:
            try:
                info = self.writer.write(self.job, self.task(index, path), outcome.result, outcome.seconds)
            except Exception as exc:  # a failed write is this image's failure, like a corrupt file
                error = exc
        if error is not None:
            self._fail(index, path, error)
            return
        self.summary.done += 1
        masks = info.get("masks")
        self.summary.masks += int(masks or 0)
        self.summary.rows[index] = (path.name, "-" if masks is None else str(masks), f"{outcome.seconds:.1f}", "ok")

    def _fail(self, index: int, path: Path, error: BaseException) -> None:
        from rich.text import Text

        reason = error_reason(error, path)
        self.summary.failures.append(Failure(str(path), reason))
        self.summary.rows[index] = (path.name, "-", "-", "FAILED")
        self.console.print(Text.assemble(("failed", "red"), f" {path}: {reason}"), soft_wrap=True)

    def finish(self) -> None:
        """The job's folder-level outputs, through the same failure handling."""
        from rich.text import Text

        markers = self.markers
        try:
            self.job.finish(self.root, lambda: markers.records(self.settings) if markers is not None else [])
        except Exception as exc:
            where = getattr(exc, "filename", None) or f"{self.root} ({self.job.name} folder outputs)"
            failure = Failure(str(where), error_reason(exc, where), image=False)
            self.summary.failures.append(failure)
            self.console.print(Text.assemble(("failed", "red"), f" {failure.where}: {failure.reason}"), soft_wrap=True)


# ----------------------------------------------------------------------------- sharded rows, one COCO JSON


def coco_from_rows(rows: Sequence[dict]) -> dict:
    """One COCO dataset from per-image rows (``image``: its path, ``stem``, and that image's own COCO
    ``images`` / ``annotations`` / ``categories``), ids numbered in ``stem`` order; an image's
    ``file_name`` is its bare file name unless two images share it (then its path)."""
    from collections import Counter

    rows = sorted(rows, key=lambda row: row["stem"])
    name_count = Counter(Path(row["image"]).name for row in rows)
    dataset: dict = {"images": [], "annotations": [], "categories": []}
    cats: dict = {}
    for image_id, row in enumerate(rows, start=1):
        name = Path(row["image"]).name
        for image in row["images"]:
            dataset["images"].append({**image, "id": image_id,
                                      "file_name": name if name_count[name] == 1 else row["image"]})
        for ann in row["annotations"]:
            dataset["annotations"].append({**ann, "id": len(dataset["annotations"]) + 1, "image_id": image_id})
        cats.update({c["id"]: c for c in row["categories"]})
    dataset["categories"] = [cats[k] for k in sorted(cats)] or [{"id": 1, "name": "object"}]
    return dataset


def write_shards(rows: Sequence[dict], directory: Path, shards: int) -> list[Path]:
    """``rows`` (sorted by ``stem``) as ``shards`` JSON-lines files ``part-NNNNN-of-MMMMM.jsonl``, each written
    atomically; earlier part files of another count are removed."""
    from . import io

    rows = sorted(rows, key=lambda row: row["stem"])
    shards = max(1, min(int(shards), len(rows) or 1))
    size = -(-len(rows) // shards) if rows else 0
    paths = []
    for k in range(shards):
        lines = "".join(json.dumps(row) + "\n" for row in rows[k * size:(k + 1) * size])
        paths.append(io.write_bytes(directory / f"part-{k:05d}-of-{shards:05d}.jsonl", lines.encode("utf-8")))
    for stale in set(directory.glob("part-*.jsonl")) - {Path(p) for p in paths}:
        stale.unlink(missing_ok=True)
    return paths


def merge_shards(shards: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Merge JSON-lines shards (files, or a folder of ``*.jsonl``) into one COCO JSON at ``out``; an image
    that appears in several shards is kept once (the last one read). Returns ``out``."""
    from . import io
    from .errors import InputError

    sources = [shards] if isinstance(shards, str | os.PathLike) else list(shards)
    files: list[Path] = []
    for source in map(Path, sources):
        files += sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    if not files:
        raise InputError(f"no .jsonl shards in {', '.join(map(str, sources))}; pass the shards/ folder of an "
                         f"'imseg segment --format jsonl' run or its part files.")
    rows: dict[str, dict] = {}
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"{path}: cannot read shard ({exc.strerror or exc}).") from None
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
                if not all(isinstance(row[key], list) for key in ("images", "annotations", "categories")):
                    raise TypeError
                rows[str(Path(row["image"]).resolve())] = {**row, "stem": str(row["stem"])}
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{path}:{number}: not an imseg shard row (JSON with image, stem, images, "
                                 f"annotations, categories).") from None
    return io.write_bytes(Path(out), json.dumps(coco_from_rows(list(rows.values()))).encode("utf-8"))

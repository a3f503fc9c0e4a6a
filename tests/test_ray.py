"""The Ray executor (imseg.batch_ray) against the local one on real photos: identical outputs for classical
and SAM jobs, a killed worker retried with nothing lost or duplicated, resuming an interrupted run, the CLI
flags, and the clear error without Ray installed. One local Ray (2 CPUs) serves the whole module."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imseg.batch import MARKER_DIR, run_batch
from imseg.cli import app
from imseg.errors import ConfigError
from imseg.jobs import ClassicalJob, build_classical_job, build_segment_job


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: 2 CPUs, no dashboard; this module's jobs pickled by value for the workers."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle  # the pickler Ray ships objects with

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def horses(data_dir, tmp_path) -> Path:
    """Three Weizmann horse photos and a truncated JPEG."""
    folder = tmp_path / "horses"
    folder.mkdir()
    photos = sorted((data_dir / "weizmann-horse" / "images").glob("*.jpg"))[:3]
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    (folder / "cut.jpg").write_bytes(photos[0].read_bytes()[:2000])
    return folder


def ray_executor(**options):
    from imseg.batch_ray import RayExecutor

    return RayExecutor(workers=2, cpus_per_worker=1, **options)


def outputs(root: Path) -> dict[str, bytes]:
    """Every output file by relative path (markers hold timings, so they are compared separately)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != MARKER_DIR}


def marker_files(root: Path) -> dict[str, list[str]]:
    return {p.stem: json.loads(p.read_text())["files"] for p in sorted((root / MARKER_DIR).glob("*.json"))}


def assert_same_run(local_root: Path, ray_root: Path, local, remote) -> None:
    assert (remote.done, remote.masks, remote.failed, remote.exit_code) == (local.done, local.masks, local.failed, 1)
    assert [f.where for f in remote.failures] == [f.where for f in local.failures]
    assert outputs(ray_root) == outputs(local_root)  # masks byte-identical, coco.json equal
    if (local_root / MARKER_DIR).is_dir():
        assert marker_files(ray_root) == marker_files(local_root)


@pytest.mark.slow
def test_otsu_coco_matches_local(ray_cluster, horses, tmp_path):
    job = build_segment_job("otsu", fmt="coco", overlay=True)
    local = run_batch(horses, job, tmp_path / "local")
    remote = run_batch(horses, job, tmp_path / "ray", executor=ray_executor())
    assert local.done == 3 and local.failures[0].where.endswith("cut.jpg")
    assert_same_run(tmp_path / "local", tmp_path / "ray", local, remote)
    coco = json.loads((tmp_path / "ray" / "coco.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == local.masks > 0
    assert remote.workers == 2


@pytest.mark.slow
def test_classical_labels_match_local(ray_cluster, horses, tmp_path):
    job = build_classical_job("otsu")
    local = run_batch(horses, job, tmp_path / "local", resume=False)
    remote = run_batch(horses, job, tmp_path / "ray", executor=ray_executor(batch_size=2), resume=False)
    assert_same_run(tmp_path / "local", tmp_path / "ray", local, remote)
    assert sorted(outputs(tmp_path / "ray")) == sorted(f"{p.stem}.png" for p in horses.glob("horse*.jpg"))


@pytest.mark.slow
def test_sam_random_weights_match_local(ray_cluster, horses, tmp_path, make_sam_checkpoint):
    job = build_segment_job("mobile-sam", checkpoint=str(make_sam_checkpoint("vit_t")), device="cpu", fmt="coco",
                            prompts={"box": [20.0, 20.0, 200.0, 180.0]})
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker (cpus_per_worker=1): float sums in the same order, same scores
    try:
        local = run_batch(horses, job, tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    remote = run_batch(horses, job, tmp_path / "ray", executor=ray_executor())
    assert local.done == 3 and local.masks > 0
    assert_same_run(tmp_path / "local", tmp_path / "ray", local, remote)


class PlainMap:
    """The Ray executor through the plain protocol: results come back to the runner, which writes them."""

    def __init__(self) -> None:
        self.inner = ray_executor()

    def map(self, job, items):
        return self.inner.map(job, items)


@pytest.mark.slow
def test_plain_map_results_written_by_the_runner(ray_cluster, horses, tmp_path):
    job = build_segment_job("otsu", fmt="rle")
    local = run_batch(horses, job, tmp_path / "local")
    remote = run_batch(horses, job, tmp_path / "ray", executor=PlainMap())
    assert_same_run(tmp_path / "local", tmp_path / "ray", local, remote)


class DiesOnce(ClassicalJob):
    """Otsu, but the worker process exits (as if killed) the first time it reaches ``victim``; a file in
    ``attempts`` records the first attempt so the retry goes through."""

    def __init__(self, victim: str, attempts: Path) -> None:
        base = build_classical_job("otsu")
        super().__init__(base.segmenter, base.settings, base.pipeline)
        self.victim, self.attempts = victim, attempts

    def process(self, image_path):
        if image_path.name == self.victim:
            flag = self.attempts / f"{image_path.name}.attempted"
            if not flag.exists():
                flag.write_text("1")
                os._exit(1)
        return super().process(image_path)


@pytest.mark.slow
def test_killed_worker_is_retried_nothing_lost_or_duplicated(ray_cluster, horses, tmp_path):
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    victim = sorted(horses.glob("horse*.jpg"))[1].name
    local = run_batch(horses, build_classical_job("otsu"), tmp_path / "local")
    remote = run_batch(horses, DiesOnce(victim, attempts), tmp_path / "ray", executor=ray_executor())
    assert (attempts / f"{victim}.attempted").exists()  # the worker really died once
    assert_same_run(tmp_path / "local", tmp_path / "ray", local, remote)
    assert sorted(remote.rows) == [0, 1, 2, 3] and remote.done == 3  # one row per image, none twice
    assert not list((tmp_path / "ray").rglob("*.tmp*")) and not list((tmp_path / "ray").rglob(".*"))


class StopAfter:
    """Wraps the Ray executor; interrupted (as by Ctrl-C) after ``n`` outcomes."""

    def __init__(self, n: int) -> None:
        self.inner, self.n, self.workers = ray_executor(), n, 2

    def map_written(self, job, tasks, writer):
        for count, outcome in enumerate(self.inner.map_written(job, tasks, writer)):
            if count == self.n:
                raise KeyboardInterrupt
            yield outcome


@pytest.mark.slow
def test_interrupted_run_resumes(ray_cluster, horses, tmp_path):
    job = build_segment_job("otsu", fmt="coco")
    first = run_batch(horses, job, tmp_path / "ray", executor=StopAfter(2))
    assert first.interrupted and first.exit_code == 130 and first.done + first.failed == 2
    second = run_batch(horses, job, tmp_path / "ray", executor=ray_executor())
    # what the workers finished before the interrupt (at least what the driver saw) is skipped
    assert second.skipped >= first.done and second.skipped + second.done == 3 and second.failed == 1
    local = run_batch(horses, job, tmp_path / "local")
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    third = run_batch(horses, job, tmp_path / "ray", executor=ray_executor())
    assert (third.skipped, third.done) == (3, 0)
    assert local.masks == json.loads((tmp_path / "ray" / "coco.json").read_text())["annotations"][-1]["id"]


@pytest.mark.slow
def test_cli_engine_ray(ray_cluster, horses, tmp_path):
    out_local, out_ray = tmp_path / "local", tmp_path / "ray"
    runner = CliRunner()
    local = runner.invoke(app, ["classical", str(horses), "--out", str(out_local)])
    remote = runner.invoke(app, ["classical", str(horses), "--out", str(out_ray), "--engine", "ray",
                                 "--workers", "2", "--cpus-per-worker", "1", "--batch-size", "2"])
    assert (local.exit_code, remote.exit_code) == (1, 1), remote.output
    assert "cut.jpg" in remote.output and "per worker" in remote.output
    assert outputs(out_ray) == outputs(out_local)
    seg = runner.invoke(app, ["segment", str(horses), "--model", "otsu", "--format", "coco", "--out",
                              str(tmp_path / "seg"), "--engine", "ray", "--workers", "2"])
    assert seg.exit_code == 1 and (tmp_path / "seg" / "coco.json").is_file(), seg.output


def test_without_ray_a_clear_error(monkeypatch, horses, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ConfigError, match=r"--engine ray needs Ray Data.*pip install 'imseg\[ray\]'"):
        run_batch(horses, build_classical_job("otsu"), tmp_path / "out", executor="ray")
    result = CliRunner().invoke(app, ["classical", str(horses), "--out", str(tmp_path / "o"), "--engine", "ray"])
    assert result.exit_code == 2 and "imseg[ray]" in result.output
    assert not (tmp_path / "o").exists()


def test_engine_flags_checked(tmp_path):
    pytest.importorskip("ray")
    from imseg.batch_ray import RayExecutor

    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        RayExecutor(workers=0)
    result = CliRunner().invoke(app, ["classical", str(tmp_path), "--engine", "spark"])
    assert result.exit_code == 2 and "--engine must be local or ray" in result.output


@pytest.mark.slow
def test_jsonl_shards_merge_to_the_local_coco(ray_cluster, horses, tmp_path):
    local = run_batch(horses, build_segment_job("otsu", fmt="coco"), tmp_path / "local")
    remote = run_batch(horses, build_segment_job("otsu", fmt="jsonl", shards=2), tmp_path / "ray",
                       executor=ray_executor())
    assert (remote.done, remote.masks, remote.failed) == (local.done, local.masks, 1)
    parts = sorted((tmp_path / "ray" / "shards").glob("*.jsonl"))
    assert [p.name for p in parts] == ["part-00000-of-00002.jsonl", "part-00001-of-00002.jsonl"]
    assert sum(len(p.read_text().splitlines()) for p in parts) == 3  # one row per image
    assert not (tmp_path / "ray" / "masks").exists()
    result = CliRunner().invoke(app, ["merge-shards", str(tmp_path / "ray" / "shards"), "--out",
                                      str(tmp_path / "merged.json")])
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged == json.loads((tmp_path / "local" / "coco.json").read_text())


def test_merge_shards_keeps_an_image_once_and_rejects_bad_rows(tmp_path):
    from imseg.batch import merge_shards
    from imseg.errors import InputError

    row = {"image": "/data/a.jpg", "stem": "a", "images": [{"id": 0, "file_name": "a", "height": 2, "width": 3}],
           "annotations": [{"id": 9, "image_id": 0, "category_id": 1, "area": 1}],
           "categories": [{"id": 1, "name": "object"}]}
    other = {**row, "image": "/data/b.jpg", "stem": "b"}
    (tmp_path / "p0.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(other) + "\n")
    (tmp_path / "p1.jsonl").write_text(json.dumps(row) + "\n")  # a row written again by a retried worker
    coco = json.loads(merge_shards([tmp_path / "p0.jsonl", tmp_path / "p1.jsonl"], tmp_path / "c.json").read_text())
    assert [(i["id"], i["file_name"]) for i in coco["images"]] == [(1, "a.jpg"), (2, "b.jpg")]
    assert [(a["id"], a["image_id"]) for a in coco["annotations"]] == [(1, 1), (2, 2)]
    (tmp_path / "bad.jsonl").write_text('{"image": "x"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: not an imseg shard row"):
        merge_shards(tmp_path / "bad.jsonl", tmp_path / "c.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .jsonl shards"):
        merge_shards(tmp_path / "empty", tmp_path / "c.json")
    with pytest.raises(InputError, match="missing.jsonl: cannot read shard"):
        merge_shards(tmp_path / "missing.jsonl", tmp_path / "c.json")


def test_text_file_of_paths_is_a_source(horses, tmp_path):
    from imseg.errors import InputError

    listing = horses / "images.txt"
    listing.write_text("# the photos\n" + "".join(f"{p.name}\n" for p in sorted(horses.glob("*.jpg"))) + "\n")
    job = build_classical_job("otsu")
    from_list = run_batch(listing, job, tmp_path / "list", resume=False)
    from_folder = run_batch(horses, job, tmp_path / "folder", resume=False)
    assert (from_list.images, from_list.done, from_list.failed) == (from_folder.images, 3, 1) == (4, 3, 1)
    assert outputs(tmp_path / "list") == outputs(tmp_path / "folder")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(InputError, match="empty.txt: the list of image paths is empty"):
        run_batch(tmp_path / "empty.txt", job, tmp_path / "o")

"""imseg finetune: a random-init MobileSAM on a few real horse photos at a small input size (the loop, the
embedding cache, resume, the time budget, the official loaders reading the result)."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch

from imseg.finetune.train import finetune

IMGSZ = 64  # MobileSAM's TinyViT at 64 px: a 4 x 4 embedding grid, cheap enough for tests


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def horse(data_dir):
    root = data_dir / "weizmann-horse"
    if not root.is_dir():
        pytest.skip("weizmann-horse not present")
    return {"path": str(root), "train": ["horse001", "horse002", "horse003", "horse004"],
            "val": ["horse009", "horse012"]}


def _options(tmp, data, **extra):
    base = dict(data=data, model="mobile-sam", random_init=True, imgsz=IMGSZ, epochs=3, batch=2, lr=1e-3,
                precision="32", clicks=1, project=str(tmp / "runs"), cache_dir=str(tmp / "cache"), progress=False,
                warmup=0.0)
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def run(horse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    return tmp, finetune(**_options(tmp, horse, name="base"))


def test_loss_falls_and_epoch_two_hits_the_cache(run):
    tmp, result = run
    rows = _rows(result.run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    # epoch 0 encodes the 4 train + 2 val images once; later epochs read every embedding from disk
    assert int(rows[0]["encoder_calls"]) == 6 and int(rows[0]["cache_misses"]) == 6
    for r in rows[1:]:
        assert int(r["encoder_calls"]) == 0 and int(r["cache_hits"]) == 6
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert len(list((tmp / "cache").glob("*/*/*.pt"))) == 6
    assert (result.run_dir / "results.png").is_file()
    assert 0.0 <= result.metrics["box_miou"] <= 1.0


def test_encoder_is_not_called_when_every_embedding_is_cached(run, horse):
    tmp, _ = run
    from imseg.sam.tiny_vit import TinyViT

    calls = []
    original = TinyViT.forward

    def counting(self, x):
        calls.append(x.shape)
        return original(self, x)

    TinyViT.forward = counting
    try:
        finetune(**_options(tmp, horse, name="cached", epochs=1))
    finally:
        TinyViT.forward = original
    assert calls == []


def test_official_loaders_read_the_result_and_imseg_loads_the_run(run):
    _, result = run
    from mobile_sam import sam_model_registry

    import imseg
    from imseg.sam.checkpoint import build_model, get_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = sam_model_registry["vit_t"](checkpoint=str(result.best)).eval()
    ours = build_model(get_config("vit_t"))
    ours.load_state_dict(torch.load(result.best, weights_only=True))
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[100.0, 200.0, 600.0, 700.0]])
    with torch.no_grad():
        outs = []
        for model in (official, ours):
            sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
            outs.append(model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, False))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5) and torch.allclose(outs[0][1], outs[1][1], atol=1e-5)

    segmenter = imseg.load(result.run_dir)
    assert segmenter.model.image_encoder.img_size == IMGSZ
    image = np.zeros((48, 80, 3), np.uint8)
    masks = segmenter.segment(image, box=(10, 5, 60, 40))
    assert len(masks) >= 1 and masks.masks.shape[-2:] == (48, 80)


def test_resume_continues_the_run(tmp_path, horse):
    tmp = tmp_path
    first = finetune(**_options(tmp, horse, name="resumed", epochs=1))
    again = finetune(resume=first.run_dir, epochs=2)
    assert again.run_dir == first.run_dir
    assert [int(r["epoch"]) for r in _rows(first.run_dir)] == [0, 1]


def test_time_budget_stops_saves_and_validates(tmp_path, horse):
    tmp = tmp_path
    # one image a step: the budget is over after the first step, in the middle of the first epoch
    result = finetune(**_options(tmp, horse, name="timed", epochs=50, time=1e-4, batch=1))
    assert result.stopped_by_time and result.steps == 1
    rows = _rows(result.run_dir)
    assert len(rows) == 1 and rows[0]["val_box_miou"] != ""
    assert result.last.is_file() and result.best.is_file() and (result.run_dir / "weights" / "last.ckpt").is_file()


def test_lora_run_saves_merged_official_weights(run, horse):
    tmp, _ = run
    from mobile_sam import sam_model_registry

    result = finetune(**_options(tmp, horse, name="lora", epochs=1, train="lora", lora_rank=4))
    state = torch.load(result.last, weights_only=True)
    assert not any("lora" in key for key in state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sam_model_registry["vit_t"](checkpoint=str(result.last))  # strict load into the official model


def test_val_reports_before_and_after(run):
    _, result = run
    from imseg.finetune.evaluate import evaluate_run

    scores = evaluate_run(result.run_dir, split="val")
    assert set(scores) == {"start", "fine-tuned"}
    for row in scores.values():
        assert {"box_mIoU", "mIoU@1", "mIoU@3", "mIoU@5", "NoC@85", "NoC@90"} <= set(row)
        assert 1 <= row["NoC@90"] <= 20 and row["objects"] == 2
    assert scores["start"] != scores["fine-tuned"]


def test_export_and_cli_val_of_a_run(run, tmp_path):
    _, result = run
    import json

    from typer.testing import CliRunner

    from imseg.cli import app
    from imseg.export import export_model

    manifest = export_model(run=str(result.run_dir), out=tmp_path / "export")
    info = json.loads(manifest.read_text())
    assert info["img_size"] == IMGSZ and all((manifest.parent / f).is_file() for f in info["files"].values())
    out = CliRunner().invoke(app, ["val", "--run", str(result.run_dir)])
    assert out.exit_code == 0, out.output
    assert "fine-tuned" in out.output and "start" in out.output and "NoC@90" in out.output

"""imseg finetune with SAM 2.1 (Hiera-T, 64 px, a tiny synthetic set of bright squares): the official sam2 code
loads the saved weights and decodes as ours, the loss falls, the frozen encoder stays bitwise equal while
``--train all`` moves it, and SAM and SAM 2 never share embedding-cache entries."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch

from imseg.finetune.train import finetune

IMGSZ = 64  # Hiera-T at 64 px: a 4 x 4 embedding grid
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """images/ + masks/: one bright square per 64 x 64 noisy image (the box prompt is nearly the answer)."""
    from imseg.io import write_image

    root = tmp_path_factory.mktemp("squares")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    stems = [f"s{i}" for i in range(6)]
    for stem in stems:
        image = rng.integers(0, 60, (64, 64, 3)).astype(np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        y, x, side = (int(v) for v in rng.integers(4, 28, 3))
        side += 8
        image[y:y + side, x:x + side] = 220
        mask[y:y + side, x:x + side] = 1
        write_image(root / "images" / f"{stem}.png", image)
        write_image(root / "masks" / f"{stem}.png", mask)
    (root / "split.json").write_text(json.dumps({"train": stems[:4], "val": stems[4:]}))
    return {"path": str(root), "train": stems[:4], "val": stems[4:]}


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory):
    """A random SAM 2.1 Hiera-T of the official code, saved in the official layout."""
    from conftest import build_official_sam2

    path = tmp_path_factory.mktemp("sam2_ckpt") / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": build_official_sam2("t").state_dict()}, path)
    return path


def _options(tmp, data, checkpoint, **extra):
    base = dict(data=data, model="sam2.1-t", checkpoint=str(checkpoint), imgsz=IMGSZ, epochs=3, batch=2, lr=1e-3,
                precision="32", clicks=1, project=str(tmp / "runs"), cache_dir=str(tmp / "cache"), progress=False,
                warmup=0.0)
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def run(squares, start_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft_sam2")
    return tmp, finetune(**_options(tmp, squares, start_checkpoint, name="decoder", logger="csv,tensorboard"))


def _encoder_side(state):
    from imseg.finetune.sam2_recipe import ENCODER_SIDE

    return {k: v for k, v in state.items() if k.startswith(("image_encoder.", *ENCODER_SIDE))}


def test_loss_falls_and_later_epochs_read_the_cache(run):
    tmp, result = run
    rows = _rows(result.run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["train_iou"]) > float(rows[0]["train_iou"])
    assert int(rows[0]["encoder_calls"]) == 6
    assert all(int(r["encoder_calls"]) == 0 and int(r["cache_hits"]) == 6 for r in rows[1:])
    entries = list((tmp / "cache").glob("*/*/*.pt"))
    assert len(entries) == 6 and all(p.parent.parent.name.startswith("sam2-") for p in entries)
    entry = torch.load(entries[0], weights_only=True)
    assert entry["embedding"].shape == (256, 4, 4)
    assert [tuple(t.shape) for t in entry["high_res_feats"]] == [(32, 16, 16), (64, 8, 8)]


def test_tensorboard_holds_the_validation_scores_and_box_overlays(run):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    _, result = run
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={IMAGES: 0}).Reload()
    scores = [e.value for e in events.Scalars("val/box_miou")]
    assert len(scores) == 3
    assert scores[-1] == pytest.approx(float(_rows(result.run_dir)[-1]["val_box_miou"]), abs=1e-6)
    overlays = [tag for tag in events.Tags()["images"] if tag.startswith("val/overlay")]
    assert overlays and len(events.Images(overlays[0])) == 3


def test_frozen_encoder_is_bitwise_unchanged_and_the_decoder_trained(run, start_checkpoint):
    _, result = run
    start = torch.load(start_checkpoint, weights_only=True)["model"]
    saved = torch.load(result.last, weights_only=True)
    assert set(saved) == {"model"} and set(saved["model"]) == set(start)
    tuned = saved["model"]
    for key, value in _encoder_side(start).items():
        assert torch.equal(tuned[key], value), key
    decoder = [k for k in start if k.startswith("sam_mask_decoder.transformer.")]
    assert any(not torch.equal(tuned[k], start[k]) for k in decoder)


def test_official_sam2_loads_the_run_and_decodes_as_imseg(run):
    _, result = run
    from sam2.build_sam import build_sam2

    import imseg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_sam2(CONFIG, str(result.best), device="cpu")  # strict, at the official 1024 px
        official = build_sam2(CONFIG, str(result.best), device="cpu",
                              hydra_overrides_extra=[f"++model.image_size={IMGSZ}"])
    ours = imseg.load(result.run_dir, device="cpu").model
    image = torch.randn(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    coords = torch.tensor([[[8.0, 10.0], [40.0, 50.0], [30.0, 20.0]], [[5.0, 6.0], [60.0, 33.0], [12.0, 40.0]]])
    labels = torch.tensor([[2, 3, 1], [2, 3, 0]], dtype=torch.int)
    with torch.no_grad():
        backbone = official.forward_image(image)
        _, feats, _, sizes = official._prepare_backbone_features(backbone)
        feats[-1] = feats[-1] + official.no_mem_embed
        levels = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(feats, sizes, strict=True)]
        embed, high_res = ours.image_features(image)
        assert torch.allclose(embed, levels[-1], atol=1e-5)
        for a, b in zip(high_res, levels[:-1], strict=True):
            assert torch.allclose(a, b, atol=1e-5)
        outs = []
        for model, feats in ((official, levels), (ours, [*high_res, embed])):
            sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            outs.append(model.sam_mask_decoder(
                image_embeddings=feats[-1], image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
                repeat_image=True, high_res_features=feats[:-1]))
    for a, b in zip(outs[0], outs[1], strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_imseg_load_segments_and_val_reports_before_and_after(run):
    _, result = run
    from typer.testing import CliRunner

    import imseg
    from imseg.cli import app
    from imseg.sam2.segmenter import Sam2Segmenter

    segmenter = imseg.load(result.run_dir, device="cpu")
    assert isinstance(segmenter, Sam2Segmenter) and segmenter.model.image_size == IMGSZ
    masks = segmenter.segment(np.zeros((48, 80, 3), np.uint8), box=(10, 5, 60, 40))
    assert len(masks) >= 1 and masks.masks.shape[-2:] == (48, 80)
    out = CliRunner().invoke(app, ["val", "--run", str(result.run_dir)])
    assert out.exit_code == 0, out.output
    assert "fine-tuned" in out.output and "start" in out.output and "NoC@90" in out.output


def test_export_at_the_run_size_segments_like_the_run(run, squares, tmp_path):
    """A run at 64 px exports at 64 px (16 x 16 low-res masks) and its ONNX Runtime engine answers as the run."""
    _, result = run
    import imseg
    from imseg.export import export_model
    from imseg.export.ort_sam2 import OrtSam2Segmenter
    from imseg.io import read_image

    manifest = export_model(run=str(result.run_dir), out=tmp_path / "export")
    info = json.loads(manifest.read_text())
    assert info["family"] == "sam2" and info["img_size"] == IMGSZ and info["low_res_size"] == IMGSZ // 4
    exported, tuned = imseg.load(manifest.parent, device="cpu"), imseg.load(result.run_dir, device="cpu")
    assert isinstance(exported, OrtSam2Segmenter)
    image = read_image(f"{squares['path']}/images/{squares['val'][0]}.png")
    for prompt in ({"box": (8, 8, 40, 40)}, {"points": [(20, 20), (50, 50)], "labels": [1, 0], "multimask": True}):
        ours, ref = exported.segment(image, **prompt), tuned.segment(image, **prompt)
        assert len(ours) == len(ref) >= 1
        for a, b in zip(ours.masks, ref.masks, strict=True):
            assert np.logical_xor(a, b).sum() <= 0.01 * max(1, np.logical_or(a, b).sum())
        np.testing.assert_allclose(ours.scores, ref.scores, atol=1e-3)
        lo, lr = ours.fields["low_res_logits"], ref.fields["low_res_logits"]
        assert lo.shape[-2:] == (IMGSZ // 4, IMGSZ // 4)
        assert np.abs(lo - lr).max() <= 1e-3 * max(1.0, np.abs(lr).max())


def test_cli_train_all_moves_the_encoder(squares, start_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from imseg.cli import app

    args = ["finetune", "--data", squares["path"], "--model", "sam2.1-t", "--checkpoint", str(start_checkpoint),
            "--train", "all", "--epochs", "1", "--imgsz", str(IMGSZ), "--batch", "2", "--clicks", "1", "--lr", "1e-3",
            "--precision", "32", "--cache-dir", str(tmp_path / "cache"), "--project", str(tmp_path / "runs"),
            "--name", "all"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    start = _encoder_side(torch.load(start_checkpoint, weights_only=True)["model"])
    tuned = torch.load(tmp_path / "runs" / "all" / "weights" / "last.pt", weights_only=True)["model"]
    trunk = [k for k in start if k.startswith("image_encoder.trunk.blocks.")]
    assert trunk and all(not torch.equal(tuned[k], start[k]) for k in trunk if k.endswith("qkv.weight"))
    assert not (tmp_path / "cache").exists()  # nothing is cached while the encoder trains


def test_sam_and_sam2_cache_keys_differ(tmp_path):
    from imseg.finetune.cache import EmbeddingCache, model_key
    from imseg.finetune.run import build_start_model

    sam, _ = build_start_model("mobile-sam", None, IMGSZ, allow_random=True)
    sam2, _ = build_start_model("sam2.1-t", None, IMGSZ, allow_random=True)
    sam_key, sam2_key = model_key(sam, IMGSZ), model_key(sam2, IMGSZ)
    assert sam2_key.startswith("sam2-") and not sam_key.startswith("sam2-") and sam_key != sam2_key
    # the SAM 2 key covers the decoder's high-resolution projections, whose outputs are cached too
    with torch.no_grad():
        sam2.sam_mask_decoder.conv_s0.bias.add_(1.0)
    assert model_key(sam2, IMGSZ) != sam2_key
    # an entry without high-resolution features (a SAM entry) is never served from a SAM 2 cache
    cache = EmbeddingCache(tmp_path, sam2_key)
    cache.put("ab" * 32, torch.zeros(256, 4, 4), (IMGSZ, IMGSZ), (64, 64))
    with pytest.warns(UserWarning, match="high-resolution"):
        assert cache.get("ab" * 32) is None


def test_bad_starts_are_clear_errors(make_sam_checkpoint, start_checkpoint):
    from imseg.errors import CheckpointError, ConfigError
    from imseg.finetune.run import build_start_model

    with pytest.raises(CheckpointError, match="not a SAM 2 checkpoint.*sam2.1-hiera-t"):
        build_start_model("sam2.1-t", make_sam_checkpoint("vit_t"), IMGSZ)
    with pytest.raises(CheckpointError, match="SAM 2.1 hiera_t checkpoint.*--model sam2.1-t"):
        build_start_model("mobile-sam", start_checkpoint, IMGSZ)
    with pytest.raises(CheckpointError, match="hiera_t.*hiera_s"):
        build_start_model("sam2.1-s", start_checkpoint, IMGSZ)
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_start_model("sam2.1-t", None, 80, allow_random=True)


def test_official_loss_is_the_sam2_training_config_loss(monkeypatch):
    """The rounds' loss with ``loss="official"`` equals the loss of the official SAM 2.1 training config
    (instantiated from the sam2 package's yaml) on the same multistep outputs."""
    import importlib.resources

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from imseg.finetune import sam2_recipe
    from imseg.finetune.recipe import Recipe
    from imseg.sam2.checkpoint import build_model

    yaml = importlib.resources.files("sam2") / "configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"
    official = instantiate(OmegaConf.load(str(yaml)).trainer.loss.all)
    seen = []
    ours = sam2_recipe.sam2_loss

    def recording(name):
        loss = ours(name)

        def call(outs, targets):
            seen.append((outs, targets))
            return loss(outs, targets)

        return call

    monkeypatch.setattr(sam2_recipe, "sam2_loss", recording)
    torch.manual_seed(0)
    model = build_model("hiera_t", image_size=IMGSZ).train()
    with torch.no_grad():
        embed, high_res = model.image_features(torch.randn(1, 3, IMGSZ, IMGSZ))
    gt = torch.zeros(2, IMGSZ, IMGSZ)
    gt[0, 5:30, 8:40] = 1
    gt[1, 40:60, 20:50] = 1
    recipe = Recipe(prompts=("point", "mask"), clicks=2, loss="official")
    total, _ = sam2_recipe.sam2_rounds(model, {"image_embed": embed, "high_res_feats": high_res}, gt, recipe,
                                       torch.Generator().manual_seed(0))
    (outs, targets), = seen
    assert [m.shape[1] for m in outs[0]["multistep_pred_multimasks_high_res"]] == [3, 1, 1]
    expected = official(outs, targets)["core_loss"]
    assert total.requires_grad and torch.allclose(total, expected, atol=1e-6, rtol=0)

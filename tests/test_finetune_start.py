"""How a fine-tuning run's start shapes it: a whole MobileSAM from random weights trains its encoder's BatchNorm
statistics and every layer at a from-scratch learning rate; a checkpoint start keeps its statistics and the
recipe's fine-tuning rates; a trained encoder runs once on a step's stacked images, as it would one by one."""

from __future__ import annotations

import pytest
import torch

from imseg.finetune.module import sam_embed, sam_embed_batch, trains_encoder_norms
from imseg.finetune.run import build_start_model, official_state_dict
from imseg.finetune.train import PRETRAINED_DEFAULTS, RANDOM_WHOLE_DEFAULTS, FinetuneConfig, finetune, start_defaults

IMGSZ = 64
RANDOM = "random initialisation"


@pytest.fixture(scope="module")
def horse(data_dir):
    root = data_dir / "weizmann-horse"
    if not root.is_dir():
        pytest.skip("weizmann-horse not present")
    return {"path": str(root), "train": ["horse001", "horse002", "horse003", "horse004"], "val": ["horse009"]}


def _options(tmp, data, **extra):
    return dict(data=data, model="mobile-sam", random_init=True, imgsz=IMGSZ, epochs=1, batch=2, precision="32",
                clicks=0, train="all", project=str(tmp / "runs"), cache_dir=str(tmp / "cache"), progress=False,
                warmup=0.0, **extra)


def _bn_stats(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("image_encoder.") and k.endswith("running_var")}


def test_the_start_sets_the_learning_rate_and_layer_decay_unless_given():
    assert trains_encoder_norms("all", RANDOM)
    assert not trains_encoder_norms("all", "checkpoint x.pt")
    assert not trains_encoder_norms("decoder+prompt", RANDOM) and not trains_encoder_norms("lora", RANDOM)
    pick = lambda cfg, start: (lambda c: (c.lr, c.layer_decay))(start_defaults(cfg, start))  # noqa: E731
    assert pick(FinetuneConfig(train="all"), RANDOM) == RANDOM_WHOLE_DEFAULTS == (5e-4, 1.0)
    assert pick(FinetuneConfig(train="all"), "checkpoint x.pt") == PRETRAINED_DEFAULTS == (1e-4, 0.8)
    assert pick(FinetuneConfig(train="decoder+prompt"), RANDOM) == PRETRAINED_DEFAULTS
    assert pick(FinetuneConfig(train="all", lr=3e-3, layer_decay=0.5), RANDOM) == (3e-3, 0.5)


def test_a_random_whole_model_trains_its_batchnorm_statistics(tmp_path, horse):
    initial, _ = build_start_model("mobile-sam", None, IMGSZ, allow_random=True, seed=0)
    before = _bn_stats(official_state_dict(initial))
    assert before and all(torch.equal(v, torch.ones_like(v)) for v in before.values())
    result = finetune(**_options(tmp_path, horse, name="random"))
    after = _bn_stats(torch.load(result.last, weights_only=True))
    assert after.keys() == before.keys()
    moved = [k for k in before if not torch.allclose(before[k], after[k])]
    assert len(moved) == len(before)
    saved = (result.run_dir / "config.yaml").read_text()
    assert "lr: 0.0005" in saved and "layer_decay: 1.0" in saved


def test_a_checkpoint_start_keeps_its_batchnorm_statistics(tmp_path, horse):
    initial, _ = build_start_model("mobile-sam", None, IMGSZ, allow_random=True, seed=0)
    state = official_state_dict(initial)
    for value in _bn_stats(state).values():  # statistics a pretrained encoder would have learned
        value.copy_(torch.linspace(0.5, 2.0, value.numel()).reshape(value.shape))
    checkpoint = tmp_path / "start.pt"
    torch.save(state, checkpoint)
    result = finetune(**_options(tmp_path, horse, name="pretrained", checkpoint=str(checkpoint)))
    after = _bn_stats(torch.load(result.last, weights_only=True))
    assert all(torch.equal(after[k], v) for k, v in _bn_stats(state).items())
    saved = (result.run_dir / "config.yaml").read_text()
    assert "lr: 0.0001" in saved and "layer_decay: 0.8" in saved


def test_one_encoder_pass_over_the_batch_equals_one_image_at_a_time():
    model, _ = build_start_model("mobile-sam", None, IMGSZ, allow_random=True, seed=0)
    model.eval()

    class Holder:  # what sam_embed reads of the LightningModule
        device = torch.device("cpu")
        encoder_calls = 0
        frozen = False
        cache = None

    holder = Holder()
    holder.model = model
    gen = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, IMGSZ, w, generator=gen) * 255} for w in (IMGSZ, 48)]
    with torch.no_grad():
        together = sam_embed_batch(holder, items)
        alone = [sam_embed(holder, item) for item in items]
    assert holder.encoder_calls == 4 and sam_embed_batch(holder, []) == []
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_training_items_are_jittered_with_their_masks_and_repeat_per_epoch(tmp_path):
    import numpy as np

    from imseg.finetune.dataset import FinetuneDataset
    from imseg.io import write_image

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[10:30, 5:25] = (200, 60, 40)  # an object off-centre, so a flip moves it
    path = tmp_path / "a.png"
    write_image(path, rgb)

    class Sample:
        image = str(path)

        def masks(self):
            return (rgb[..., 0] > 0)[None]

    train = FinetuneDataset([Sample()], 64, None, augment=True, seed=3)
    sizes = set()
    for epoch in range(8):
        train.epoch = epoch
        item = train[0]
        again = train[0]
        assert torch.equal(item["image"], again["image"]) and torch.equal(item["masks"], again["masks"])
        h, w = item["input_size"]
        sizes.add((h, w))
        assert item["image"].shape[1:] == (h, w) and item["masks"].shape == (1, 64, 64)
        assert 0.74 * 43 <= w * 40 / 60 <= 43 and not item["masks"][:, h:].any() and not item["masks"][:, :, w:].any()
        bright = item["image"].mean(0) > 40  # the object's pixels, whatever the colour jitter did
        mask = item["masks"][0, :h, :w] > 0.5
        assert (bright & mask).sum() / (bright | mask).sum() > 0.85
    assert len(sizes) > 1
    plain = FinetuneDataset([Sample()], 64, None)[0]
    assert plain["input_size"] == (43, 64) and plain["image"].max() == 200

"""Tiny random-weight Grounding DINO / OWLv2 / CLIP builders, phrase handling, and the detectors.

No weights can be downloaded in tests: the models are built from tiny configurations, Grounding DINO's
BERT tokenizer from a small WordPiece vocabulary written here (users get the real one from the hub),
and OWLv2's CLIP tokenizer from the BPE vocabulary open_clip ships.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

import torch  # noqa: E402

from imseg.errors import ConfigError, PromptError, WeightsError  # noqa: E402
from imseg.text import GroundingDinoDetector, Owlv2Detector, build_detector, parse_phrases  # noqa: E402
from imseg.text.phrases import grounding_text, phrase_of_token, phrase_scores  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "an", "the", "horse", "rider", "grass", "sky",
         "cat", "cats", "remote", "control", "person", "dog", "brown", "on", "of", "##s", "long"]


def tiny_grounding_dino(seed: int = 0, num_queries: int = 30, **kwargs) -> GroundingDinoDetector:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, do_lower_case=True)
    processor = GroundingDinoProcessor(GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
                                       tokenizer)
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=4, out_features=["stage2", "stage3", "stage4"])
    bert = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=256)
    config = GroundingDinoConfig(backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1,
                                 decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                                 decoder_attention_heads=2, num_queries=num_queries, num_feature_levels=4,
                                 encoder_n_points=2, decoder_n_points=2)
    torch.manual_seed(seed)
    return GroundingDinoDetector(GroundingDinoForObjectDetection(config), processor, **kwargs)


def clip_tokenizer():
    """transformers' CLIPTokenizer over open_clip's bundled BPE vocabulary (the real CLIP vocabulary)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {specials.get(k, k): v for k, v in simple.encoder.items()}
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_owlv2(seed: int = 0, **kwargs) -> Owlv2Detector:
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    processor = Owlv2Processor(Owlv2ImageProcessor(size={"height": 64, "width": 64}), clip_tokenizer())
    config = Owlv2Config(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config)
    with torch.no_grad():  # small box offsets around OWLv2's per-patch prior boxes, so random boxes have a size
        torch.nn.init.normal_(model.box_head.dense2.weight, std=0.01)
        torch.nn.init.zeros_(model.box_head.dense2.bias)
    return Owlv2Detector(model, processor, **kwargs)


def tiny_clip_labeler(seed: int = 0, **kwargs):
    import open_clip

    from imseg.text import ClipLabeler

    open_clip.factory._MODEL_CONFIGS.setdefault("imseg-test-tiny-clip", dict(
        embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, head_width=16, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)))
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms("imseg-test-tiny-clip")
    return ClipLabeler(model, preprocess, open_clip.get_tokenizer("imseg-test-tiny-clip"), **kwargs)


def count_calls(module: torch.nn.Module) -> list[int]:
    """A one-element list incremented on every forward of ``module``."""
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture(scope="module")
def gdino() -> GroundingDinoDetector:
    return tiny_grounding_dino(box_threshold=0.3, text_threshold=0.2)


@pytest.fixture(scope="module")
def owlv2() -> Owlv2Detector:
    return tiny_owlv2(box_threshold=0.0)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- phrases
def test_parse_phrases_splits_strips_and_lowercases():
    assert parse_phrases("Horse. a  Rider.") == ["horse", "a rider"]
    assert parse_phrases("horse") == ["horse"]
    assert parse_phrases(["Horse ", "rider."]) == ["horse", "rider"]
    assert grounding_text(["horse", "a rider"]) == "horse. a rider."


@pytest.mark.parametrize("text", ["", ".", "horse..rider", "horse. . rider", ["horse", " "], [], "horse. Horse."])
def test_parse_phrases_refuses_empty_and_duplicate_phrases(text):
    with pytest.raises(PromptError, match="phrase|text"):
        parse_phrases(text)


def test_parse_phrases_matches_the_processor_merge():
    from transformers.models.grounding_dino.processing_grounding_dino import _merge_candidate_labels_text

    labels = ["A cat", " a Remote control "]
    assert grounding_text(parse_phrases(labels)) == _merge_candidate_labels_text(labels)


def test_phrase_of_token_follows_the_separators():
    ids = [2, 6, 13, 5, 6, 15, 16, 5, 3]  # [CLS] a cat . a remote control . [SEP]
    assert phrase_of_token(ids, {5}, {0, 1, 2, 3, 4}).tolist() == [-1, 0, 0, -1, 1, 1, 1, -1, -1]


# ----------------------------------------------------------------------------- Grounding DINO
def test_grounding_dino_phrase_mapping_agrees_with_the_library(gdino):
    """The documented example "a cat. a remote control.": boxes whose token logits light up one phrase's
    words get that phrase, as the library's text labels say."""
    from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoObjectDetectionOutput

    phrases = parse_phrases("a cat. a remote control.")
    caption, token_phrase = gdino._caption_ids(phrases)
    ids = torch.tensor([gdino.processor.tokenizer(caption)["input_ids"]])
    words = gdino.processor.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    lit = [["a", "cat"], ["a", "remote", "control"], ["remote"], ["cat"], ["control"]]
    logits = torch.full((1, len(lit), 256), -9.0)
    for box, on in enumerate(lit):
        for pos, word in enumerate(words):
            in_phrase = token_phrase[pos] == (0 if "cat" in on else 1)
            if word in on and in_phrase:
                logits[0, box, pos] = 3.0 - 0.1 * pos
    outputs = GroundingDinoObjectDetectionOutput(logits=logits, pred_boxes=torch.full((1, len(lit), 4), 0.5))
    library = gdino.processor.post_process_grounded_object_detection(outputs, ids, threshold=0.3,
                                                                      text_threshold=0.3)[0]["text_labels"]
    mine = phrase_scores(logits[0].sigmoid().numpy(), token_phrase, len(phrases)).argmax(axis=1)
    assert library == ["a cat", "a remote control", "remote", "cat", "control"]
    for label, k in zip(library, mine, strict=True):
        assert set(label.split()) <= set(phrases[k].split())
    assert mine.tolist() == [0, 1, 1, 0, 1]


def test_grounding_dino_detect_matches_post_processing(gdino, photo):
    phrases = ["horse", "rider", "grass"]
    boxes, scores, index = gdino.detect(photo, phrases)
    assert boxes.shape == (len(scores), 4) and boxes.dtype == np.float32 and len(index) == len(scores)
    assert len(scores) > 0, "the random detector should find some boxes at these thresholds"
    assert set(index.tolist()) <= {0, 1, 2} and (scores > gdino.text_threshold).all()
    inputs = gdino.processor(images=photo, text=grounding_text(phrases), return_tensors="pt")
    with torch.inference_mode():
        out = gdino.model(**inputs)
    ref = gdino.processor.post_process_grounded_object_detection(
        out, inputs["input_ids"], threshold=gdino.box_threshold, text_threshold=gdino.text_threshold,
        target_sizes=[photo.shape[:2]])[0]
    # every box we return is one of the library's, and its phrase's words are among the library's label
    for b, k in zip(boxes, index, strict=True):
        j = int(np.argmin(np.abs(ref["boxes"].numpy() - b).sum(axis=1)))
        assert np.allclose(ref["boxes"][j].numpy(), b, atol=1e-4)
        assert phrases[k] in ref["text_labels"][j].replace(".", " ").split()


def test_grounding_dino_encodes_the_image_once_for_any_number_of_phrases(photo):
    det = tiny_grounding_dino(box_threshold=0.3, text_threshold=0.2)
    image_calls = count_calls(det.model.model.backbone)
    text_calls = count_calls(det.model.model.text_backbone)
    det.detect(photo, ["horse"])
    det.detect(photo, ["horse", "rider", "grass", "sky", "dog"])
    assert image_calls[0] == 2 and text_calls[0] == 2


def test_grounding_dino_refuses_text_over_its_token_limit(gdino, photo):
    with pytest.raises(PromptError, match="reads at most 256"):
        gdino.detect(photo, ["long " * 300, "horse"])


# ----------------------------------------------------------------------------- OWLv2
def test_owlv2_detect_returns_boxes_per_phrase_and_encodes_once(photo):
    det = tiny_owlv2(box_threshold=0.0)
    calls = count_calls(det.model.owlv2.vision_model)
    boxes, scores, index = det.detect(photo, ["horse", "rider", "grass"])
    assert calls[0] == 1
    assert boxes.shape == (len(scores), 4) and len(scores) > 0 and set(index.tolist()) <= {0, 1, 2}
    # boxes are in original-image pixels: OWLv2 pads to a square, the post-processing scales by the long side
    inputs = det.processor(text=[["horse", "rider", "grass"]], images=photo, return_tensors="pt")
    with torch.inference_mode():
        out = det.model(**inputs)
    logits = out.logits[0].max(-1)
    assert np.allclose(np.sort(scores), np.sort(logits.values.sigmoid().numpy()), atol=1e-5)


def test_owlv2_refuses_a_phrase_over_its_token_limit(owlv2, photo):
    boxes, _, index = owlv2.detect(photo, ["horse", "a brown horse standing on the green grass of a field"])
    assert len(boxes) and set(index.tolist()) <= {0, 1}  # phrases of different lengths share one padded batch
    with pytest.raises(PromptError, match="reads at most 16"):
        owlv2.detect(photo, ["horse", "a very long description of a brown horse standing on the green grass of a "
                                      "field today"])


# ----------------------------------------------------------------------------- weights
def test_missing_weights_say_what_to_place_where(tmp_path):
    with pytest.raises(WeightsError, match="HF_HOME.*local directory"):
        GroundingDinoDetector.from_pretrained(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="unknown detector"):
        build_detector("yolo-world")


def test_specs_table_is_light_and_complete():
    import subprocess
    import sys

    code = ("import sys; import imseg.text.specs as s; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "print(sorted(s.DETECTOR_WEIGHTS), sorted(s.CLIP_WEIGHTS))")
    # close_fds=False lets subprocess use posix_spawn: no fork of this test process and its native threads
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         close_fds=False).stdout
    assert "grounding-dino-tiny" in out and "owlv2-base" in out and "clip-vit-b-32" in out


@pytest.mark.slow
def test_offline_hub_names_raise_weights_errors(tmp_path):
    """With the hub unreachable and an empty cache, both the detector and CLIP say what to place where."""
    import os
    import subprocess
    import sys

    code = (
        "from imseg.errors import WeightsError\n"
        "from imseg.text import ClipLabeler, GroundingDinoDetector\n"
        "for make in (lambda: GroundingDinoDetector.from_pretrained('IDEA-Research/grounding-dino-tiny'),\n"
        "             lambda: ClipLabeler.from_pretrained('clip-vit-b-32', device='cpu')):\n"
        "    try:\n"
        "        make()\n"
        "    except WeightsError as exc:\n"
        "        print('WEIGHTS-ERROR', 'HF_HOME' in str(exc), 'hf download' in str(exc))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300).stdout
    assert out.count("WEIGHTS-ERROR True True") == 2, out


def test_unknown_clip_name_is_a_config_error():
    from imseg.text import ClipLabeler

    with pytest.raises(ConfigError, match="unknown CLIP checkpoint"):
        ClipLabeler.from_pretrained("clip-vit-z-99", device="cpu")


def test_weights_commands_know_the_text_checkpoints(tmp_path):
    """`imseg weights list/path/download` cover the detector and CLIP checkpoints (Hugging Face cache);
    offline, the download names the hub id and where to put the files."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}

    def imseg(*args):
        return subprocess.run([sys.executable, "-m", "imseg", "weights", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    listed = imseg("list")
    assert listed.returncode == 0 and "grounding-dino-tiny" in listed.stdout and "clip-vit-b-32" in listed.stdout
    assert "IDEA-Research/grounding-dino-tiny" in listed.stdout
    path = imseg("path", "grounding-dino-tiny")
    assert path.returncode == 0
    assert path.stdout.strip() == str(tmp_path / "hf" / "hub" / "models--IDEA-Research--grounding-dino-tiny")
    down = imseg("download", "clip-vit-b-32")
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in down.stderr + down.stdout

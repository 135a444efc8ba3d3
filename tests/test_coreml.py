"""Core ML export: an ML program classifier with an image input, class labels, softmax
probabilities and the unknown score, checked structurally (Core ML cannot run on Linux)."""

from __future__ import annotations

import sys

import pytest

from headstart.deploy.coreml import NOT_CHECKED, load_spec
from headstart.deploy.export import ExportError, export, read_metadata

from .conftest import run_cli

pytestmark = pytest.mark.slow  # every test converts a model


@pytest.mark.parametrize("name", ["hymenoptera", "steel"])
def test_coreml_package_has_the_structure_an_app_needs(deploy_models, name, tmp_path):
    clf, model_dir, images = deploy_models[name]
    if name == "steel":  # through the CLI, as a user runs it: it says what was not checked
        cli = run_cli("export", model_dir, "--format", "coreml", "--out", tmp_path,
                      *[a for f in images[:8] for a in ("--samples", f)])
        assert cli.returncode == 0 and "Traceback" not in cli.stderr, cli.stderr
        assert "not checked" in cli.stdout and NOT_CHECKED in " ".join(cli.stdout.split())
        assert "checked     structure: image_input, class_labels, probabilities_from_softmax" \
            in cli.stdout
    else:
        r = export(model_dir, "coreml", tmp_path, samples=images[:8])
        assert r["path"] == str(tmp_path / "model.mlpackage")
        assert r["parity"]["numeric"] is False and r["parity"]["note"] == NOT_CHECKED
        assert all(r["parity"]["structure"].values())
    package = tmp_path / "model.mlpackage"
    assert (package / "Manifest.json").is_file()
    limit = sys.getrecursionlimit()
    spec = load_spec(package)
    assert sys.getrecursionlimit() == limit  # coremltools' import changes nothing global
    image = spec.description.input[0].type
    assert image.WhichOneof("Type") == "imageType"
    s = clf.backbone_.preprocess.size
    assert (image.imageType.width, image.imageType.height) == (s, s)
    outputs = {o.name for o in spec.description.output}
    assert {"classLabel", "classLabel_probs", "unknown_score"} <= outputs
    meta = read_metadata(package)
    assert meta["classes"] == clf.classes_
    assert meta["unknown_threshold"] == pytest.approx(clf.ood_.threshold_)


def test_a_broken_package_in_the_way_is_never_replaced(deploy_models, tmp_path):
    _, model_dir, images = deploy_models["hymenoptera"]
    mine = tmp_path / "model.mlpackage"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own folder")
    with pytest.raises(ExportError, match="holds something other than"):
        export(model_dir, "coreml", tmp_path, samples=images[:4])
    assert (mine / "notes.txt").read_text() == "my own folder"

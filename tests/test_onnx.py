"""model.onnx: written by train, checked against model.keras, used by predict without Keras."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from catsdogs import export
from catsdogs.cli import cli
from catsdogs.predict import Predictor, choose_engine
from tests.helpers import assert_clean_exit


def test_train_writes_a_checked_onnx_file(trained_model):
    info = json.loads((trained_model / "model.json").read_text())
    assert (trained_model / "model.onnx").is_file()
    assert info["onnx"]["file"] == "model.onnx"
    assert 0 <= info["onnx"]["max_difference"] <= export.TOLERANCE
    # tied to the exact files: the ONNX export and the model.keras it came from
    assert info["onnx"]["sha256"] == export.file_sha256(trained_model / "model.onnx")
    assert info["onnx"]["keras_sha256"] == export.file_sha256(trained_model / "model.keras")


def test_onnx_and_keras_agree_on_every_probability(trained_model, unseen_photos):
    paths = [p for group in unseen_photos.values() for p in group]
    fast = Predictor(trained_model, engine="onnx")
    slow = Predictor(trained_model, engine="keras")
    assert (fast.engine, slow.engine) == ("onnx", "keras")
    a = np.stack([p.scores for p in fast.predict_paths(paths)])
    b = np.stack([p.scores for p in slow.predict_paths(paths)])
    assert a.shape == (8, 2)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    # and on arbitrary pixels, not only on easy photos
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, size=(16, 24, 24, 3), dtype=np.uint8)
    np.testing.assert_allclose(fast.probabilities(noise), slow.probabilities(noise),
                               rtol=0, atol=1e-4)


def test_predict_imports_neither_tensorflow_nor_keras(trained_model, unseen_photos):
    photo = unseen_photos["dogs"][0]
    code = (
        "import sys\n"
        "from catsdogs.cli import cli\n"
        f"cli(['predict', {str(photo)!r}, '--model', {str(trained_model)!r}],"
        " standalone_mode=False)\n"
        "print('HEAVY', sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{photo}: dogs (" in done.stdout
    assert "HEAVY []" in done.stdout, done.stdout


def test_falls_back_to_keras_without_onnx(runner, trained_model, unseen_photos, tmp_path,
                                          monkeypatch):
    bare = tmp_path / "bare"
    shutil.copytree(trained_model, bare)
    (bare / "model.onnx").unlink()
    predictor = Predictor(bare)
    assert predictor.engine == "keras"
    [answer] = predictor.predict_paths([unseen_photos["cats"][0]])
    assert answer.label == "cats"
    # asking for onnx explicitly is a clear error, not a silent fallback
    result = runner.invoke(cli, ["predict", str(unseen_photos["cats"][0]), "--model",
                                 str(bare), "--engine", "onnx"])
    assert result.exit_code == 1 and "no model.onnx" in result.output
    # no onnxruntime installed: keras, even with the file there
    monkeypatch.setattr(export, "onnxruntime_available", lambda: False)
    assert choose_engine(Predictor(trained_model, engine="keras").info) == ("keras", None)


def test_a_changed_onnx_file_is_not_used(runner, trained_model, unseen_photos, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    photo = str(unseen_photos["cats"][0])
    # auto: model.json's fingerprint shows the file changed; model.keras answers, with a note
    result = runner.invoke(cli, ["predict", photo, "--model", str(broken)])
    assert result.exit_code == 0, result.output
    assert "note: model.onnx changed after training: predicting with model.keras" in (
        result.stderr)
    assert f"{photo}: cats (" in result.stdout
    # asked for by name: a one-line error
    result = runner.invoke(cli, ["predict", photo, "--model", str(broken), "--engine", "onnx"])
    assert_clean_exit(result, 1, f"Error: {broken / 'model.onnx'} changed after training; "
                                 "use --engine keras, or train again")


def test_broken_onnx_file_without_fingerprints_is_a_clear_error(runner, trained_model,
                                                                unseen_photos, tmp_path):
    """A model folder from before model.json recorded fingerprints: the file is tried."""
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken)
    meta = json.loads((broken / "model.json").read_text())
    meta["onnx"] = {"file": "model.onnx", "max_difference": 0.0}
    (broken / "model.json").write_text(json.dumps(meta))
    (broken / "model.onnx").write_bytes(b"not a model")
    result = runner.invoke(cli, ["predict", str(unseen_photos["cats"][0]), "--model",
                                 str(broken)])
    assert_clean_exit(result, 1)
    [line] = result.stderr.splitlines()  # the rest of the line is onnxruntime's own words
    assert line.startswith(f"Error: cannot load {broken / 'model.onnx'}: "), line


def test_onnx_of_another_model_keras_is_not_used(trained_model, unseen_photos, tmp_path):
    """model.keras replaced after training (fine-tuned by hand, say): the old model.onnx no
    longer describes it, so auto predicts with model.keras, the reference."""
    from catsdogs.model_folder import load_keras_model, read_model_info

    changed = tmp_path / "changed"
    shutil.copytree(trained_model, changed)
    model = load_keras_model(read_model_info(changed))
    weights = model.layers[-1].get_weights()
    model.layers[-1].set_weights([weights[0], weights[1] + 3.0])  # pushes towards "dogs"
    (changed / "model.keras").unlink()
    model.save(changed / "model.keras")

    predictor = Predictor(changed)
    assert predictor.engine == "keras"
    assert "different model.keras" in predictor.note
    photos = unseen_photos["cats"] + unseen_photos["dogs"]
    auto = np.stack([p.scores for p in predictor.predict_paths(photos)])
    keras_engine = Predictor(changed, engine="keras")
    assert keras_engine.note is None
    reference = np.stack([p.scores for p in keras_engine.predict_paths(photos)])
    old_onnx = np.stack([p.scores for p in Predictor(trained_model).predict_paths(photos)])
    np.testing.assert_allclose(auto, reference, atol=1e-6)
    assert np.abs(auto - old_onnx).max() > 0.01  # what the stale ONNX file would have said
    with pytest.raises(ValueError, match="different model.keras"):
        Predictor(changed, engine="onnx")


def test_failed_export_leaves_no_file_and_says_why(trained_model, tmp_path, monkeypatch):
    from catsdogs.model_folder import load_keras_model, read_model_info

    model = load_keras_model(read_model_info(trained_model))

    def refuse(*args, **kwargs):
        raise RuntimeError("this backend cannot export")

    monkeypatch.setattr(model, "export", refuse)
    status = export.export_onnx(model, tmp_path / "model.onnx")
    assert status["file"] is None and "cannot export" in status["note"]
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("engine", ["onnx", "keras"])
def test_engines_reject_a_model_that_disagrees_with_model_json(trained_model, tmp_path,
                                                              engine):
    wrong = tmp_path / "wrong"
    shutil.copytree(trained_model, wrong)
    meta = json.loads((wrong / "model.json").read_text())
    meta["image_size"] = 32
    (wrong / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="32"):
        Predictor(wrong, engine=engine)

"""visualize: feature maps, filters and an occlusion heat map, as labelled PNGs."""

from __future__ import annotations

import json

import cv2
import numpy as np

from catsdogs.cli import cli
from catsdogs.visualize import occlusion_map


def test_visualize_writes_the_pngs(runner, trained_model, unseen_photos, tmp_path):
    photo = unseen_photos["dogs"][0]
    out = tmp_path / "why"
    result = runner.invoke(cli, ["visualize", str(photo), "--model", str(trained_model),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    alone = runner.invoke(cli, ["predict", str(photo), "--model", str(trained_model),
                                "--no-tta", "--json", "--engine", "keras"])
    probability = json.loads(alone.stdout)[0]["probability"]
    # the maps are of the photo alone, and so is the answer printed beside them
    assert f"{photo}: dogs ({probability:.1%}, the photo alone)\n" in result.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["features_1_block1_conv.png", "filters.png", "heatmap.png",
                     "visualization.json"]
    for name in names[:-1]:
        picture = cv2.imread(str(out / name))
        assert picture is not None and min(picture.shape[:2]) > 100, name
        assert picture.std() > 10, f"{name} is blank"
    meta = json.loads((out / "visualization.json").read_text())
    assert meta["label"] == "dogs" and meta["occlusion"] == {"patch": 3, "stride": 1}
    again = runner.invoke(cli, ["visualize", str(photo), "--model", str(trained_model),
                                "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output


def test_occlusion_finds_the_region_the_score_depends_on():
    """A 'model' whose score is the brightness of the top-left quarter: hiding that quarter
    lowers it, hiding anything farther than one square away does not."""
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:16, :16] = 255

    def predict(batch):
        score = batch[:, :16, :16].mean(axis=(1, 2, 3)) / 255
        return np.stack([1 - score, score], axis=1)

    heat, patch, stride = occlusion_map(predict, pixels, target=1)
    assert (patch, stride) == (4, 2) and heat.shape == (32, 32)
    assert heat[:16, :16].min() > 0
    assert np.abs(heat[16 + patch :, :]).max() == 0 and np.abs(heat[:, 16 + patch :]).max() == 0
    assert heat[:12, :12].min() > heat[16:20, 16:20].max()


def test_visualize_errors(runner, trained_model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    result = runner.invoke(cli, ["visualize", str(bad), "--model", str(trained_model),
                                 "--out", str(tmp_path / "v")])
    assert result.exit_code == 1 and "not an image" in result.output
    assert not (tmp_path / "v").exists()
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "a.txt").write_text("x")
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.full((30, 30, 3), 128, np.uint8))
    result = runner.invoke(cli, ["visualize", str(photo), "--model", str(trained_model),
                                 "--out", str(keep), "--force"])
    assert result.exit_code == 1 and (keep / "a.txt").read_text() == "x"

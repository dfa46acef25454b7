"""``visualize(image, model_dir, out)``: what the network sees in one photo, as PNGs.

* ``features_<n>_<layer>.png``: the feature maps of each convolution block for the photo
  (the 32 most active channels when there are more);
* ``filters.png``: the first convolution layer's learned filters, as small RGB pictures;
* ``heatmap.png``: occlusion sensitivity: a grey square is slid over the photo and the drop
  in the predicted class's probability is drawn where the square was. It needs nothing but
  predictions, so it works the same on every Keras backend.

Every panel is labelled with the layer's name and the shape it shows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs import __version__
from catsdogs.model_folder import load_keras_model, read_model_info
from data_prep import safeio
from data_prep.discover import printable
from data_prep.images import ImageError, load_image

FORMAT = "catsdogs-visualization/1"
MARKER = "visualization.json"
MAX_CHANNELS = 32
MAX_FEATURE_LAYERS = 8  # more convolutions (a pretrained backbone): one per resolution
DISPLAY_SIZE = 256


@dataclass
class VisualizationResult:
    out: Path
    label: str
    probability: float
    files: list[str]


def is_visualization(folder: Path) -> bool:
    """True for a folder written by :func:`visualize`."""
    return (folder / MARKER).is_file()


def check_out_folder(out: Path, force: bool) -> None:
    """Replace only a visualization folder of ours, and that only with ``force``."""
    safeio.check_replaceable(out, force, is_visualization, "a catsdogs visualization",
                             "a visualization")


def panel_grid(plt: Any, count: int, cell: tuple[float, float], title_room: float
               ) -> tuple[Any, Any]:
    """A figure of ``count`` small panels, at most 8 a row, each ``cell`` inches (width,
    height), with ``title_room`` inches on top; every panel's axes hidden."""
    columns = min(8, count)
    rows = -(-count // columns)
    figure, grid = plt.subplots(rows, columns, squeeze=False,
                                figsize=(cell[0] * columns, cell[1] * rows + title_room))
    for axes in grid.flat:
        axes.axis("off")
    return figure, grid


def layer_outputs(model: Any, batch: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """Every layer of the model with its output for ``batch``, in order (inference mode).

    A model nested in a Sequential (a pretrained backbone) gives its own layers' outputs
    too, before its own.
    """
    from catsdogs.backend import keras as import_keras

    keras = import_keras()
    outputs = []
    if isinstance(model, keras.Sequential):
        x = keras.ops.convert_to_tensor(batch)
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                outputs.extend(layer_outputs(layer, keras.ops.convert_to_numpy(x)))
            x = layer(x, training=False)
            outputs.append((layer, keras.ops.convert_to_numpy(x)))
        return outputs
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers[1:]])
    values = probe.predict_on_batch(batch)
    return list(zip(model.layers[1:], [np.asarray(v) for v in values], strict=True))


def chosen_convolutions(convolutions: list[tuple[Any, np.ndarray]]
                        ) -> list[tuple[Any, np.ndarray]]:
    """All convolutions when there are at most ``MAX_FEATURE_LAYERS``; otherwise (a
    pretrained backbone's dozens) the first, and the last at each resolution, leaving out
    1×1 maps (squeeze-and-excitation)."""
    if len(convolutions) <= MAX_FEATURE_LAYERS:
        return convolutions
    spatial = [(layer, value) for layer, value in convolutions[1:] if value.shape[1] > 1]
    kept = [convolutions[0]]
    for index, (layer, value) in enumerate(spatial):
        last = index + 1 == len(spatial) or spatial[index + 1][1].shape[1] != value.shape[1]
        if last:
            kept.append((layer, value))
    return kept


def occlusion_map(
    predict: Any, pixels: np.ndarray, target: int, patch: int | None = None,
    stride: int | None = None,
) -> tuple[np.ndarray, int, int]:
    """(heat, patch, stride): for each pixel, the mean drop in ``target``'s probability when a
    grey square (the photo's mean colour) covers it. Positive: the region argued for the
    class; negative: against it."""
    size = pixels.shape[0]
    patch = patch or max(2, size // 8)
    stride = stride or max(1, patch // 2)
    starts = list(range(0, max(1, size - patch + 1), stride))
    if starts[-1] != size - patch:
        starts.append(max(0, size - patch))
    fill = pixels.reshape(-1, pixels.shape[-1]).mean(axis=0)
    base = float(predict(pixels[None].astype("float32"))[0, target])
    boxes = [(top, left) for top in starts for left in starts]
    drops = np.zeros((size, size))
    covered = np.zeros((size, size))
    for begin in range(0, len(boxes), 64):
        chunk = boxes[begin : begin + 64]
        batch = np.repeat(pixels[None].astype("float32"), len(chunk), axis=0)
        for k, (top, left) in enumerate(chunk):
            batch[k, top : top + patch, left : left + patch] = fill
        scores = predict(batch)[:, target]
        for (top, left), score in zip(chunk, scores, strict=True):
            drops[top : top + patch, left : left + patch] += base - float(score)
            covered[top : top + patch, left : left + patch] += 1
    return drops / np.maximum(covered, 1), patch, stride


def shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(side)) for side in shape)


def normalized(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=float)


def visualize(
    image: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    force: bool = False,
) -> VisualizationResult:
    """Draw the feature maps, first-layer filters and occlusion heat map for ``image``."""
    image_path, out_path = Path(image), Path(out)
    if not image_path.is_file():
        raise FileNotFoundError(f"no such photo: {image_path}")
    info = read_model_info(model_dir)
    try:
        pixels = load_image(image_path, info.image_size, info.resize_policy, info.channels)
        display = load_image(image_path, max(DISPLAY_SIZE, info.image_size), info.resize_policy)
    except ImageError as error:
        raise ValueError(f"{image_path}: {error.reason}") from None
    check_out_folder(out_path, force)  # refuse before loading the model; checked again below
    model = load_keras_model(info)
    predict = probabilities(model, len(info.classes))
    scores = predict(pixels[None].astype("float32"))[0]
    target = int(np.argmax(scores))
    label, probability = info.classes[target], float(scores[target])
    verdict = f"{printable(image_path.name)}: {label} ({probability:.1%})"
    with safeio.output_folder(out_path, kind="visualization", force=force,
                              is_ours=is_visualization) as build:
        first = draw_feature_maps(build.path, model, pixels, verdict, info.keras_path)
        draw_filters(build.path, first)
        occlusion = draw_heatmap(build.path, predict, pixels, display, target, label, verdict)
        files = sorted(p.name for p in build.path.iterdir())
        safeio.write_json_atomic(build.path / MARKER, {
            "format": FORMAT,
            "image": str(image_path.resolve()),
            "model": str(Path(model_dir).resolve()),
            "label": label,
            "probability": probability,
            "probabilities": dict(zip(info.classes, map(float, scores), strict=True)),
            "occlusion": occlusion,
            "files": files,
            "catsdogs_version": __version__,
        })
    return VisualizationResult(out_path, label, probability, files)


def probabilities(model: Any, num_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a batch of photos to one probability per class (two for a binary
    model's single sigmoid output)."""

    def predict(batch: np.ndarray) -> np.ndarray:
        raw = np.asarray(model.predict_on_batch(batch), dtype="float64")
        if num_classes == 2:
            positive = raw.reshape(-1)
            return np.stack([1 - positive, positive], axis=1)
        return raw

    return predict


def draw_feature_maps(folder: Path, model: Any, pixels: np.ndarray, verdict: str,
                      keras_path: Path) -> Any:
    """``features_<n>_<layer>.png`` for each convolution block; returns the first
    convolution layer."""
    from catsdogs.backend import keras as import_keras
    from catsdogs.plots import pyplot, save

    keras, plt = import_keras(), pyplot()
    layers = layer_outputs(model, pixels[None].astype("float32"))
    convolutions = chosen_convolutions([(layer, value) for layer, value in layers
                                        if isinstance(layer, keras.layers.Conv2D)])
    if not convolutions:
        raise ValueError(f"{keras_path} has no Conv2D layer to visualize")
    for number, (layer, value) in enumerate(convolutions, start=1):
        maps = value[0]
        channels = maps.shape[-1]
        shown = min(channels, MAX_CHANNELS)
        figure, grid = panel_grid(plt, shown, (1.6, 1.75), 0.9)
        strongest = np.argsort(-maps.reshape(-1, channels).mean(axis=0), kind="stable")
        chosen = sorted(int(c) for c in strongest[:shown])
        for channel, axes in zip(chosen, grid.flat, strict=False):
            axes.imshow(maps[:, :, channel], cmap="viridis", interpolation="nearest")
            axes.set_title(f"{layer.name}[{channel}]", fontsize=7)
        more = f", the {shown} most active of {channels} channels" if shown < channels else ""
        figure.suptitle(
            f"{layer.name} ({type(layer).__name__}) feature maps: output "
            f"{shape_text(maps.shape)}{more}\n{verdict}", fontsize=10)
        save(figure, folder / f"features_{number}_{layer.name}.png")
    return convolutions[0][0]


def draw_filters(folder: Path, first: Any) -> None:
    """``filters.png``: the first convolution layer's learned filters."""
    from catsdogs.backend import keras as import_keras
    from catsdogs.plots import pyplot, save

    keras, plt = import_keras(), pyplot()
    kernel = np.asarray(keras.ops.convert_to_numpy(first.kernel))  # (k, k, in, out)
    count = min(kernel.shape[-1], 64)
    figure, grid = panel_grid(plt, count, (1.3, 1.45), 0.8)
    for index, axes in zip(range(count), grid.flat, strict=False):
        weights = kernel[:, :, :, index]
        picture = normalized(weights) if weights.shape[-1] == 3 else \
            normalized(weights.mean(axis=-1))
        axes.imshow(picture, cmap=None if picture.ndim == 3 else "gray",
                    interpolation="nearest")
        axes.set_title(f"filter {index}", fontsize=7)
    figure.suptitle(
        f"{first.name} ({type(first).__name__}) learned filters: kernel "
        f"{shape_text(kernel.shape)} (height×width×in×out), each scaled to its own range",
        fontsize=9)
    save(figure, folder / "filters.png")


def draw_heatmap(folder: Path, predict: Callable[[np.ndarray], np.ndarray],
                 pixels: np.ndarray, display: np.ndarray, target: int, label: str,
                 verdict: str) -> dict[str, int]:
    """``heatmap.png``: occlusion sensitivity; returns its patch and stride."""
    import cv2

    from catsdogs.plots import pyplot, save

    plt = pyplot()
    heat, patch, stride = occlusion_map(predict, pixels, target)
    side = display.shape[0]
    big = cv2.resize(heat, (side, side), interpolation=cv2.INTER_CUBIC)
    limit = float(np.abs(heat).max()) or 1e-6
    figure, grid = plt.subplots(1, 3, figsize=(14, 5), layout="constrained")
    grid[0].imshow(display)
    grid[0].set_title(f"{verdict}\nphoto; model input {shape_text(pixels.shape)}")
    shown = grid[1].imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit,
                           interpolation="nearest")
    grid[1].set_title(f"occlusion sensitivity {shape_text(heat.shape)}\n"
                      f"{patch}px grey square, stride {stride}px")
    figure.colorbar(shown, ax=grid[1], fraction=0.046, pad=0.04, label=f"drop in p({label})")
    grid[2].imshow(display)
    positive = np.clip(big / max(float(big.max()), 1e-12), 0, 1)
    grid[2].imshow(positive, cmap="jet", alpha=0.75 * positive, vmin=0, vmax=1)
    grid[2].set_title(f"regions that drove '{label}'")
    for axes in grid:
        axes.axis("off")
    save(figure, folder / "heatmap.png")
    return {"patch": patch, "stride": stride}

"""The settings of a model and of its training, as two dataclasses written into ``model.json``.

Each field is the one source for its setting: its default, and in its metadata (see
:func:`setting`) the option name, help text, bounds and choices. The ``train`` and ``summary``
command-line options, the recipe files they read (``--config``), the validation below and the
option reference (``docs/options.md``) are all made from these fields, so a new setting is
one new field here.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import InitVar, asdict, dataclass, fields
from typing import Any

ACTIVATIONS = ("relu", "gelu", "silu", "elu", "selu", "tanh", "leaky_relu", "sigmoid", "linear")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PADDINGS = ("valid", "same")
POOLS = ("max", "avg")
CONVS = ("standard", "separable")
CHANNELS = (1, 3)
HEADS = ("auto", "flatten", "gap")
LR_SCHEDULES = ("constant", "cosine", "step", "plateau")
MONITORS = ("val_loss", "val_accuracy")
KEEPS = ("auto", "best", "last")
DEVICES = ("auto", "cpu")
PRECISIONS = ("auto", "mixed", "bfloat16", "float32")
JIT_COMPILE = ("auto", "on", "off")
# Pretrained backbones from Keras Applications (see catsdogs.backbone); "none": the conv blocks.
BACKBONES = ("none", "mobilenet_v3_small", "efficientnet_b0")
BACKBONE_MIN_SIZE = 32
CLASS_WEIGHTS = ("none", "balanced")
AUGMENTS = ("crop", "layers", "none")
# The order of a block's layers when it has batch normalization. Pooling first runs the
# normalization and the activation on a quarter of the pixels (see docs/ARCHITECTURE.md).
BLOCK_ORDERS = ("conv-pool-norm", "conv-norm-pool")
# What a model.json written before a setting existed meant by its absence.
ABSENT_MEANS = {"block_order": "conv-norm-pool"}
TRAINING_ABSENT_MEANS = {"train_scale": 1.0, "keep": "best"}
# From this many blocks a model is "deep": batch normalization and the global-average-pooling
# head are on by default ("auto"), while one- and two-block models (the classic article's, the
# textbook networks) stay plain, with Flatten.
DEEP_BLOCKS = 3
# The side of the training crops as a share of the prepared photos' side, for a model whose
# input size is free (--train-scale auto): a random crop shows an animal larger than the
# whole photo does, so a network trained on crops at 80% of the size it predicts at sees
# animals of the same apparent size in both (Touvron et al. 2019, "Fixing the train-test
# resolution discrepancy"). Measured in benchmarks/RESULTS.md.
AUTO_TRAIN_SCALE = 0.8

# The default length's time limit, in seconds: without --epochs or --budget (given, or set by a
# --config recipe) `train` runs the default epochs within this time, the schedule fitted to
# the epochs that fit, on a machine too slow to run them all in it; so `prepare` then `train`
# of 2,000 photos stay within 20 minutes on a busy laptop too (issue 12). On the idle 2-core
# machine of benchmarks/RESULTS.md 146 of the default 150 epochs fit (17.9 minutes).
DEFAULT_TIME_LIMIT = 18 * 60.0

TRAIN_AND_SUMMARY = ("train", "summary")


def is_time_limited_default(epochs: int, budget: float) -> bool:
    """Whether a run of ``epochs`` within ``budget`` seconds is the default length under
    ``DEFAULT_TIME_LIMIT`` (the budget ``train`` sets when neither --epochs nor --budget is
    given), rather than a budget the user chose."""
    return epochs == TrainConfig().epochs and budget == DEFAULT_TIME_LIMIT


def setting(
    default: Any,
    help: str,
    *,
    option: str | None = None,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    choices: tuple[Any, ...] | None = None,
    default_text: str | None = None,
    zero_means_none: bool = False,
    commands: tuple[str, ...] = TRAIN_AND_SUMMARY,
    legacy: dict[Any, Any] | None = None,
) -> Any:
    """A dataclass field that describes a command-line setting.

    ``option`` is the option name without dashes (default: the field name with dashes),
    which is also the key in a recipe file. ``min``/``max`` bound a number (each element of a
    tuple), exclusive where ``min_open``/``max_open``; ``choices`` lists the allowed strings.
    ``default_text`` is shown instead of the default in help; ``zero_means_none`` lets a
    tuple be given as ``0`` for "none". ``commands`` are those that take the option.
    Choices may be numbers (``(1, 3)``) for a whole-number setting. ``legacy`` maps values of
    an older form of the setting (``True``) to their meaning now (``"crop"``), so old
    ``model.json`` files and recipes still load; a ``False`` key also makes ``--no-OPTION``.
    """
    metadata = {
        "help": help, "option": option, "min": min, "max": max, "min_open": min_open,
        "max_open": max_open, "choices": choices, "default_text": default_text,
        "zero_means_none": zero_means_none, "commands": commands, "legacy": legacy or {},
    }
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default=tuple(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """One field of a config dataclass, as the command line and recipe files see it."""

    field: str
    option: str
    # "int", "float", "str", "bool", "bool|None" (None: auto), "tuple[int]" (a list of
    # whole numbers), "int|tuple[int]" (one number, or one per block: ``6,16``) or
    # "str|tuple[str]" (one string, or one per block: ``same,valid``)
    kind: str
    default: Any
    help: str
    min: float | None
    max: float | None
    min_open: bool
    max_open: bool
    choices: tuple[Any, ...] | None
    default_text: str | None
    zero_means_none: bool
    commands: tuple[str, ...]
    group: str  # "model" or "training"
    legacy: dict[Any, Any] = dataclasses.field(default_factory=dict)

    def upgrade(self, value: Any) -> Any:
        """``value``, or what it means now when it is a legacy value (``True`` → ``"crop"``)."""
        for old, new in self.legacy.items():
            if value is old or (type(value) is type(old) and value == old):
                return new
        return value

    def check(self, value: Any) -> None:
        """Raise ValueError when ``value`` (or an element of a tuple) is outside the bounds or
        choices."""
        items = value if isinstance(value, tuple) else (value,)
        if self.choices is not None and any(item not in self.choices for item in items):
            raise ValueError(f"{self.option} must be one of "
                             f"{', '.join(map(str, self.choices))}, got {value!r}")
        if self.kind not in ("int", "float", "duration", "tuple[int]", "int|tuple[int]"):
            return
        numbers = items
        for number in numbers:
            if self.min is not None and (number <= self.min if self.min_open
                                         else number < self.min):
                word = "above" if self.min_open else "at least"
                raise ValueError(f"{self.option} must be {word} {self.min:g}, got {value}")
            if self.max is not None and (number >= self.max if self.max_open
                                         else number > self.max):
                word = "below" if self.max_open else "at most"
                raise ValueError(f"{self.option} must be {word} {self.max:g}, got {value}")


KINDS = {"int": "int", "float": "float", "str": "str", "bool": "bool",
         "bool | None": "bool|None", "tuple[int, ...]": "tuple[int]",
         "int | tuple[int, ...]": "int|tuple[int]", "str | tuple[str, ...]": "str|tuple[str]",
         "Duration": "duration"}
# A length of time in seconds, given as text: 90s, 5m, 1h, 1h30m (see parse_duration).
Duration = float
LIST_KINDS = ("tuple[int]", "int|tuple[int]")
PER_BLOCK_KINDS = ("int|tuple[int]", "str|tuple[str]")


@functools.cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings of a config dataclass, in field order."""
    group = {"ModelConfig": "model", "TrainConfig": "training"}.get(cls.__name__, "other")
    found = []
    for item in fields(cls):
        meta = item.metadata
        found.append(Setting(
            field=item.name, option=meta["option"] or item.name.replace("_", "-"),
            kind=KINDS[str(item.type)], default=item.default, help=meta["help"],
            min=meta["min"], max=meta["max"], min_open=meta["min_open"],
            max_open=meta["max_open"], choices=meta["choices"],
            default_text=meta["default_text"], zero_means_none=meta["zero_means_none"],
            commands=meta["commands"], group=group, legacy=meta["legacy"],
        ))
    return tuple(found)


def all_settings() -> tuple[Setting, ...]:
    """Every setting of the model and of the training, model first."""
    return settings_of(ModelConfig) + settings_of(TrainConfig)


def check_settings(config: Any) -> None:
    """Check every field of a config dataclass against the bounds and choices of its setting.

    Lists (from ``model.json``) become tuples first.
    """
    for item in settings_of(type(config)):
        value = item.upgrade(getattr(config, item.field))
        setattr(config, item.field, value)
        if item.kind in LIST_KINDS and isinstance(value, (list, tuple)):
            setattr(config, item.field, tuple(int(unit) for unit in value))
        elif item.kind == "str|tuple[str]" and isinstance(value, (list, tuple)):
            setattr(config, item.field, tuple(str(unit) for unit in value))
        item.check(getattr(config, item.field))


class PerBlockError(ValueError):
    """A per-block setting given as a list whose length is not the number of blocks."""

    def __init__(self, option: str, count: int, blocks: int) -> None:
        self.option = option
        self.detail = (f"{count} values for {blocks} block{'s' if blocks != 1 else ''}: "
                       "give one value, or one per block")
        super().__init__(f"{option}: {self.detail}")


@dataclass
class ModelConfig:
    """The architecture: ``blocks`` × (Conv2D [+ BatchNorm] + pooling), a head, the output.

    The defaults are the default recipe, a model that learns cats from dogs on a CPU; the
    classic Keras article's model is
    ``ModelConfig(image_size=300, blocks=1, filters=10, kernel_size=5, dense=(), dropout_rate=0)``.
    ``batch_norm=None`` and ``head="auto"`` mean batch normalization and global average
    pooling for ``DEEP_BLOCKS`` blocks or more, none and Flatten below.
    ``filters``, ``kernel_size`` and ``padding`` take one value, or a tuple of one per block
    (LeNet: ``filters=(6, 16), kernel_size=5, padding=("same", "valid")``).

    ``check_size=False`` leaves out the check that the blocks fit ``image_size`` (``train``
    learns the size from the dataset, and checks then).
    """

    image_size: int = setting(
        128, "Side in pixels of the square input images.", option="size", min=8, max=2048,
        commands=("summary",))
    channels: int = setting(
        3, "Channels of the input images: 3 for colour (RGB), 1 for gray.", choices=CHANNELS,
        commands=("summary",))
    num_classes: int = setting(
        2, "Number of classes.", option="classes", min=2, commands=("summary",))
    blocks: int = setting(5, "Number of Conv2D + pooling blocks.", min=1, max=10)
    filters: int | tuple[int, ...] = setting(
        20, "Filters of the first Conv2D, each later block doubling them; or one number per "
        "block (6,16).", min=1, max=1024)
    kernel_size: int | tuple[int, ...] = setting(
        3, "Side of the square convolution kernels; or one per block (5,5).", min=1, max=15)
    conv: str = setting(
        "standard", "standard: Conv2D in every block; separable: SeparableConv2D (a depthwise "
        "then a 1x1 pointwise convolution, fewer parameters and multiplications) in every "
        "block but the first, whose few input channels leave a depthwise step little to do.",
        choices=CONVS)
    pool_size: int = setting(2, "Side of the pooling windows.", min=1, max=8)
    pool: str = setting("max", "Pooling after each block: max or avg (average).",
                        choices=POOLS)
    padding: str | tuple[str, ...] = setting(
        "valid", "Convolution padding; or one per block (same,valid).", choices=PADDINGS)
    activation: str = setting(
        "relu", "Activation of the convolutions and of the hidden Dense layers.",
        choices=ACTIVATIONS)
    dense: tuple[int, ...] = setting(
        (), "Comma-separated units of hidden Dense layers; 0 for none.", min=1,
        zero_means_none=True)
    dropout_rate: float = setting(
        0.3, "Dropout rate before each Dense layer and the output; 0 for none.",
        option="dropout", min=0, max=1, max_open=True)
    batch_norm: bool | None = setting(
        None, "BatchNormalization after each Conv2D.",
        default_text=f"on for {DEEP_BLOCKS} blocks or more")
    block_order: str = setting(
        "conv-pool-norm", "Order of each block's layers with batch norm: conv-pool-norm "
        "(pooling first, so batch norm and the activation run on a quarter of the pixels: "
        "about 1.9x faster on a CPU) or conv-norm-pool (the textbook order).",
        choices=BLOCK_ORDERS)
    head: str = setting(
        "auto", "flatten: Flatten the last feature map (the input size is then fixed); gap: "
        "global average pooling (one value per filter; any input size, so the network can "
        f"train on smaller crops than it predicts on, see --train-scale); auto: gap for "
        f"{DEEP_BLOCKS} blocks or more, flatten below.", choices=HEADS)
    backbone: str = setting(
        "none", "A pretrained network from Keras Applications in place of the convolution "
        "blocks (which the block settings then do not shape), with a new head: global "
        "average pooling, --dense, --dropout, the output. Needs RGB images of at least "
        f"{BACKBONE_MIN_SIZE} px.", choices=BACKBONES)
    check_size: InitVar[bool] = True

    def __post_init__(self, check_size: bool) -> None:
        self.validate(check_size)

    @property
    def use_batch_norm(self) -> bool:
        """``batch_norm`` with "auto" (None) resolved."""
        if self.batch_norm is None:
            return self.blocks >= DEEP_BLOCKS
        return bool(self.batch_norm)

    @property
    def head_type(self) -> str:
        """``head`` with "auto" resolved: "gap" or "flatten"."""
        if self.head == "auto":
            return "gap" if self.blocks >= DEEP_BLOCKS else "flatten"
        return self.head

    @property
    def any_input_size(self) -> bool:
        """Whether the network takes photos of any size (global average pooling, no
        pretrained backbone): it can then train at one size and predict at another."""
        return self.backbone == "none" and self.head_type == "gap"

    def block_filters(self) -> tuple[int, ...]:
        """The filters of each block's Conv2D: as given, or doubling from ``filters``."""
        if isinstance(self.filters, tuple):
            return self.filters
        return tuple(self.filters * 2**block for block in range(self.blocks))

    def block_kernel_sizes(self) -> tuple[int, ...]:
        """The kernel side of each block's Conv2D."""
        return per_block(self.kernel_size, self.blocks)

    def block_paddings(self) -> tuple[str, ...]:
        """The padding of each block's Conv2D."""
        return per_block(self.padding, self.blocks)

    def validate(self, check_size: bool = True) -> None:
        """Raise ValueError on a setting out of bounds, a per-block list that does not have
        one value per block (:class:`PerBlockError`), or, with ``check_size``, blocks that
        shrink the image to nothing."""
        check_settings(self)
        if self.backbone != "none":
            self.check_backbone_input()
            return
        for item in settings_of(ModelConfig):
            value = getattr(self, item.field)
            if item.kind in PER_BLOCK_KINDS and isinstance(value, tuple) \
                    and len(value) != self.blocks:
                raise PerBlockError(item.option, len(value), self.blocks)
        if check_size:
            self.check_blocks_fit()

    def check_backbone_input(self) -> None:
        """Raise ValueError for images a pretrained backbone cannot take."""
        if self.channels != 3:
            raise ValueError(f"--backbone {self.backbone} needs RGB images; prepare them "
                             "with --color rgb")
        if self.image_size < BACKBONE_MIN_SIZE:
            raise ValueError(
                f"--backbone {self.backbone} needs images of at least {BACKBONE_MIN_SIZE} "
                f"px, got {self.image_size} px; prepare them with --size "
                f"{BACKBONE_MIN_SIZE} or more")

    def check_blocks_fit(self) -> None:
        """Raise ValueError when the blocks shrink an ``image_size`` image to nothing."""
        side = self.image_size
        for block, (kernel, padding) in enumerate(
                zip(self.block_kernel_sizes(), self.block_paddings(), strict=True)):
            if padding == "valid":
                side -= kernel - 1
            side //= self.pool_size
            if side < 1:
                raise ValueError(
                    f"{self.blocks} blocks shrink a {self.image_size}px image to nothing at "
                    f"block {block + 1}; use fewer --blocks, a larger --size or --padding same"
                )

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config a ``model.json``'s ``model`` table describes; a setting it lacks (it
        was written before the setting existed) means what it meant then."""
        known = {f.name for f in fields(cls)}
        values = {**ABSENT_MEANS, **data}
        return cls(**{key: value for key, value in values.items() if key in known})


def per_block(value: Any, blocks: int) -> tuple[Any, ...]:
    """A per-block setting as one value per block: a tuple as it is, one value repeated."""
    return value if isinstance(value, tuple) else (value,) * blocks


@dataclass
class TrainConfig:
    """How to train: epochs, batches, the validation split, optimizer, schedule, regularization.

    The defaults are the default recipe (fits in 20 minutes on a 2-core CPU for 2,000 photos
    at 128 px).
    """

    epochs: int = setting(
        150, "Passes over the training photos. Without --epochs and --budget, the default "
        f"ones stop at {DEFAULT_TIME_LIMIT / 60:g} minutes, the learning-rate schedule "
        "fitted to those that fit, on a machine too slow to run them all in that time.",
        min=1, max=10_000, commands=("train",))
    batch_size: int = setting(
        32, "Photos per training step (per GPU, or per worker, when training is distributed).",
        min=1, max=4096, commands=("train",))
    validation_split: float = setting(
        0.1, "Share of photos held out (stratified, seeded) to validate on. With the last "
        "epoch kept (the default) they only report; with --keep best or --patience they "
        "choose the epoch, and 0.2 chooses it on more photos.", min=0, max=1,
        min_open=True, max_open=True, commands=("train",))
    learning_rate: float = setting(3e-3, "Peak learning rate.", min=0, min_open=True,
                                   commands=("train",))
    optimizer: str = setting("adamw", "Optimizer.", choices=OPTIMIZERS, commands=("train",))
    weight_decay: float = setting(1e-4, "Decoupled weight decay; 0 for none.", min=0,
                                  commands=("train",))
    lr_schedule: str = setting(
        "cosine", "constant; cosine (warm-up, then decay to 1%); step (÷10 at 1/2 and 3/4 of "
        "the epochs); plateau (÷5 after 3 epochs without improvement).", choices=LR_SCHEDULES,
        commands=("train",))
    warmup_epochs: int = setting(2, "Epochs of linear warm-up for the cosine schedule.", min=0,
                                 max=1000, commands=("train",))
    label_smoothing: float = setting(
        0.1, "Label smoothing of the cross-entropy loss.", min=0, max=1, max_open=True,
        commands=("train",))
    augment: str = setting(
        "crop", "Augmentation while training (never at prediction). crop: random resized "
        "crops, mirror flips, brightness, contrast and saturation, one colour photo in ten "
        "turned gray, done on the photos in the "
        "input pipeline; layers: Keras layers for flips, rotations, zooms, shifts and "
        "contrast (slower); none (also --no-augment).", choices=AUGMENTS,
        legacy={True: "crop", False: "none"}, commands=("train",))
    train_scale: float = setting(
        0.0, "Train on photos this share of the prepared size (random crops, or whole photos "
        "without --augment crop, resized), and validate and predict at the prepared size: "
        "the network then sees animals at the same apparent size in training crops and in "
        "whole photos. Needs a model that takes any input size (--head gap, no --backbone). "
        f"0: auto, {AUTO_TRAIN_SCALE:g} for such a model and 1 otherwise.", min=0, max=1,
        default_text=f"auto: {AUTO_TRAIN_SCALE:g} with --head gap, else 1",
        commands=("train",))
    mixup: float = setting(
        0.0, "Mixup: train on blends of two photos (and of their labels) with a share drawn "
        "from Beta(MIXUP, MIXUP), e.g. 0.2; 0: none.", min=0, max=10, commands=("train",))
    ema: float = setting(
        0.0, "Momentum (per step) of the moving average of the weights that is validated "
        "and saved (e.g. 0.99), lowered for runs under ~1,000 steps; 0: none.",
        min=0, max=1, max_open=True, commands=("train",))
    budget: Duration = setting(
        0.0, "Train for this long (90s, 5m, 1h, set-up included): the epochs and the "
        "learning-rate schedule are fitted to it from the measured epoch time; 0 for no "
        "limit. With --epochs, whichever ends first.", min=0, default_text="none",
        commands=("train",))
    monitor: str = setting("val_loss", "Validation metric that picks the best epoch.",
                           choices=MONITORS, commands=("train",))
    keep: str = setting(
        "auto", "The epoch whose weights are saved. last: the last finished one, where the "
        "learning-rate schedule ends, whose validation figures are then a fair estimate (no "
        "epoch was chosen on them); best: the best by --monitor; auto: last, or best with "
        "--patience.", choices=KEEPS, commands=("train",))
    patience: int = setting(
        0, "Stop after this many epochs without a better --monitor, and keep the best epoch "
        "(not with --keep last); 0 never stops.", min=0, max=10_000, commands=("train",))
    device: str = setting("auto", "auto: a GPU when there is one; cpu: the CPU even then.",
                          choices=DEVICES, commands=("train",))
    precision: str = setting(
        "auto", "Arithmetic of the training step (the weights and the saved model stay "
        "float32). auto: mixed on a GPU; on the CPU bfloat16 with --budget where the CPU "
        "computes it natively (catsdogs info: cpu_bfloat16), else float32. mixed: float16. "
        "bfloat16: faster only on such a CPU; with --budget more epochs fit, while at the "
        "default length it scored about 2 points lower in our runs.",
        choices=PRECISIONS, commands=("train",))
    jit_compile: str = setting(
        "auto", "XLA compilation of the training step; auto: Keras decides (off on a CPU "
        "with TensorFlow).", choices=JIT_COMPILE, commands=("train",))
    seed: int = setting(
        1337, "Seed for the split, the shuffling, augmentation and the initial weights.",
        commands=("train",))
    class_weight: str = setting(
        "none", "balanced: weigh each photo's loss by n_photos / (n_classes × its class's "
        "photos), so that a rarer class counts as much as a common one.",
        choices=CLASS_WEIGHTS, commands=("train",))
    weights: str = setting(
        "imagenet", "Initial weights of --backbone: imagenet (downloaded by Keras on first use "
        "and cached in ~/.keras/models), none (random), or the path of a weights file "
        "(Keras' ImageNet .h5 file for that backbone, or a .weights.h5 saved from it).",
        commands=("train",))
    fine_tune_epochs: int = setting(
        0, "With --backbone: after --epochs with the backbone frozen, this many more epochs "
        "with its top layers unfrozen (batch normalization stays frozen, in inference mode).",
        min=0, max=10_000, commands=("train",))
    fine_tune_layers: int = setting(
        30, "Layers at the top of the backbone that --fine-tune-epochs trains.", min=1,
        max=10_000, commands=("train",))
    fine_tune_learning_rate: float = setting(
        1e-5, "Constant learning rate of the fine-tuning epochs.", min=0, min_open=True,
        commands=("train",))

    def __post_init__(self) -> None:
        check_settings(self)
        if self.patience and self.keep == "last":
            raise ValueError("--patience stops training when --monitor stops improving, to "
                             "keep the best epoch: use it with --keep best")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def resolved_keep(self) -> str:
        """``keep`` with "auto" resolved: the best epoch when --patience stops training
        early, else the last one."""
        if self.keep != "auto":
            return self.keep
        return "best" if self.patience else "last"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config a ``model.json``'s ``training`` table (or a checkpoint's) describes; a
        setting it lacks means what it meant before the setting existed."""
        known = {f.name for f in fields(cls)}
        values = {**TRAINING_ABSENT_MEANS, **data}
        return cls(**{key: value for key, value in values.items() if key in known})

    def resolved_train_scale(self, model: ModelConfig) -> float:
        """``train_scale`` with 0 ("auto") resolved for ``model``; ValueError for a scale
        below 1 that ``model`` cannot train at (a Flatten head or a backbone fixes the
        input size). :meth:`train_size` also checks that the blocks fit."""
        if self.train_scale == 0:
            return AUTO_TRAIN_SCALE if model.any_input_size else 1.0
        if self.train_scale < 1 and not model.any_input_size:
            what = (f"--backbone {model.backbone}" if model.backbone != "none"
                    else "a Flatten head")
            raise ValueError(f"--train-scale {self.train_scale:g} needs a model that takes "
                             f"any input size, and {what} fixes it: use --head gap, or "
                             "--train-scale 1")
        return self.train_scale

    def train_size(self, model: ModelConfig) -> int:
        """The side in pixels of the photos trained on, for ``model`` at its image size
        (``resolved_train_scale`` × ``model.image_size``, rounded); ValueError when
        ``model``'s blocks shrink it to nothing."""
        scale = self.resolved_train_scale(model)
        side = max(1, int(round(model.image_size * scale)))
        if side != model.image_size and model.backbone == "none":
            try:
                dataclasses.replace(model, image_size=side, check_size=False).check_blocks_fit()
            except ValueError as error:
                raise ValueError(f"--train-scale {scale:g} trains on {side}px photos: "
                                 f"{error}") from None
        return side


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float) -> float:
    """``"90s"`` → 90.0, ``"5m"`` → 300.0, ``"1h30m"`` → 5400.0, ``"45"`` → 45.0 (seconds)."""
    import re

    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        compact = str(text).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh]?)", compact)
        if not compact or "".join(number + unit for number, unit in parts) != compact \
                or len(parts) > 1 and any(not unit for _, unit in parts):
            raise ValueError(f"a duration is a number with s, m or h (90s, 5m, 1h30m), "
                             f"got {text!r}")
        seconds = sum(float(number) * DURATION_UNITS[unit or "s"] for number, unit in parts)
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """300 → ``"5m"``, 5400 → ``"1h30m"``, 90 → ``"90s"``, 0 → ``"0"``."""
    if seconds <= 0:
        return "0"
    whole = int(round(seconds))
    if whole != seconds or whole % 60:
        return f"{seconds:g}s"
    hours, minutes = divmod(whole // 60, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")


def parse_int_list(text: str, option: str = "dense", zero_means_none: bool = True
                   ) -> tuple[int, ...]:
    """``"256,64"`` → ``(256, 64)``; ``"0"`` or ``""`` → ``()`` when ``zero_means_none``."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    try:
        units = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"--{option} takes comma-separated whole numbers, got {text!r}"
                         ) from None
    if zero_means_none and units in ((0,), ()):
        return ()
    if not units:
        raise ValueError(f"--{option} takes at least one whole number, got {text!r}")
    return units


def parse_dense(text: str) -> tuple[int, ...]:
    """``"256,64"`` → ``(256, 64)``; ``"0"`` or ``""`` → no hidden layer."""
    units = parse_int_list(text)
    if any(u < 1 for u in units):
        raise ValueError(f"--dense sizes must be positive (or a single 0), got {text!r}")
    return units

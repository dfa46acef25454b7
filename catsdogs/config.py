"""Configuration as small dataclasses, written into ``model.json``: a model says how it was made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ACTIVATIONS = ("relu", "gelu", "silu", "elu", "selu", "tanh", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PADDINGS = ("valid", "same")
HEADS = ("flatten", "gap")
LR_SCHEDULES = ("constant", "cosine", "step", "plateau")
MONITORS = ("val_loss", "val_accuracy")
DEVICES = ("auto", "cpu")
PRECISIONS = ("auto", "mixed", "float32")
JIT_COMPILE = ("auto", "on", "off")
# Batch normalization is on by default ("auto") from this many blocks: deep enough to need it,
# while one- and two-block models (the classic article's) stay plain.
BATCH_NORM_AUTO_BLOCKS = 3


@dataclass
class ModelConfig:
    """The architecture: ``blocks`` × (Conv2D [+ BatchNorm] + MaxPooling2D), a head, the output.

    The defaults are the default recipe, a model that learns cats from dogs on a CPU; the
    classic Keras article's model is
    ``ModelConfig(image_size=300, blocks=1, filters=10, kernel_size=5, dense=(), dropout_rate=0)``.
    ``batch_norm=None`` means "auto": on for ``BATCH_NORM_AUTO_BLOCKS`` blocks or more.
    """

    image_size: int = 128
    num_classes: int = 2
    blocks: int = 5
    filters: int = 16
    kernel_size: int = 3
    pool_size: int = 2
    padding: str = "valid"
    activation: str = "relu"
    dense: tuple[int, ...] = ()
    dropout_rate: float = 0.3
    batch_norm: bool | None = None
    head: str = "flatten"

    def __post_init__(self) -> None:
        self.dense = tuple(int(units) for units in self.dense)
        self.validate()

    @property
    def use_batch_norm(self) -> bool:
        """``batch_norm`` with "auto" (None) resolved."""
        if self.batch_norm is None:
            return self.blocks >= BATCH_NORM_AUTO_BLOCKS
        return bool(self.batch_norm)

    def validate(self) -> None:
        positive = {
            "image_size": self.image_size,
            "blocks": self.blocks,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "pool_size": self.pool_size,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.num_classes < 2:
            raise ValueError(f"need at least two classes, got {self.num_classes}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if any(units < 1 for units in self.dense):
            raise ValueError(f"dense layer sizes must be positive, got {self.dense}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout_rate}")
        side = self.image_size
        for block in range(self.blocks):
            if self.padding == "valid":
                side -= self.kernel_size - 1
            side //= self.pool_size
            if side < 1:
                raise ValueError(
                    f"{self.blocks} blocks shrink a {self.image_size}px image to nothing at "
                    f"block {block + 1}; use fewer --blocks, a larger --size or --padding same"
                )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dense"] = list(self.dense)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class TrainConfig:
    """How to train: epochs, batches, the validation split, optimizer, schedule, regularization.

    The defaults are the default recipe (fits in 20 minutes on a 2-core CPU for 2,000 photos
    at 128 px).
    """

    epochs: int = 80
    batch_size: int = 32
    validation_split: float = 0.2
    learning_rate: float = 3e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    augment: bool = True
    monitor: str = "val_loss"
    patience: int = 0
    device: str = "auto"
    precision: str = "auto"
    jit_compile: str = "auto"
    seed: int = 1337

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0.0 < self.validation_split < 1.0:
            raise ValueError(
                f"validation split must be between 0 and 1, got {self.validation_split}"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning rate must be positive, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be 0 or more, got {self.weight_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup epochs must be 0 or more, got {self.warmup_epochs}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be 0 (off) or more, got {self.patience}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.jit_compile not in JIT_COMPILE:
            raise ValueError(f"jit_compile must be one of {JIT_COMPILE}, got {self.jit_compile!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def parse_dense(text: str) -> tuple[int, ...]:
    """``"256,64"`` → ``(256, 64)``; ``"0"`` or ``""`` → no hidden layer."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        units = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"--dense takes comma-separated whole numbers, got {text!r}") from None
    if units == (0,) or not units:
        return ()
    if any(u < 1 for u in units):
        raise ValueError(f"--dense sizes must be positive (or a single 0), got {text!r}")
    return units

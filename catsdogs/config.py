"""Configuration as small dataclasses, written into ``model.json``: a model says how it was made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

ACTIVATIONS = ("relu", "gelu", "silu", "elu", "selu", "tanh", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PADDINGS = ("valid", "same")


@dataclass
class ModelConfig:
    """The architecture: ``blocks`` × (Conv2D + MaxPooling2D), a head, and the output layer.

    The defaults give a model that learns cats from dogs; the classic Keras article's model is
    ``ModelConfig(image_size=300, blocks=1, filters=10, kernel_size=5, dense=())``.
    """

    image_size: int = 128
    num_classes: int = 2
    blocks: int = 4
    filters: int = 32
    kernel_size: int = 3
    pool_size: int = 2
    padding: str = "same"
    activation: str = "relu"
    dense: tuple[int, ...] = (128,)
    dropout_rate: float = 0.3

    def __post_init__(self) -> None:
        self.dense = tuple(int(units) for units in self.dense)
        self.validate()

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
    """How to train: epochs, batches, the validation split, the optimizer."""

    epochs: int = 30
    batch_size: int = 32
    validation_split: float = 0.2
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    seed: int = 1337
    extra: dict[str, Any] = field(default_factory=dict)

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

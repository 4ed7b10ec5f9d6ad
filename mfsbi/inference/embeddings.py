"""Embedding networks for x: the identity, and a small CNN for images (GaussianBlob)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["EMBEDDINGS", "ImageEmbedding", "make_embedding"]

EMBEDDINGS = ("identity", "cnn")


class ImageEmbedding(nn.Module):
    """A CNN summarising a flat single-channel image into ``features`` numbers.

    Three strided convolutions then an adaptive pool, so any image of at least 16×16 pixels works
    (the paper's 256×256 GaussianBlob, or smaller test images) with the same weights' shapes.

    Arguments:
        x_shape: ``(height, width)`` of the image; inputs arrive flat, ``(n, height * width)``.
        features: the size of the embedding.
    """

    def __init__(self, x_shape: tuple[int, int], features: int = 32) -> None:
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * 16, 64), nn.ReLU(),
            nn.Linear(64, features),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(-1, 1, *self.x_shape))


def make_embedding(name: str, x_shape: tuple[int, ...] | None) -> nn.Module:
    """The embedding network called ``name`` for x of shape ``x_shape``.

    Arguments:
        name: ``"identity"`` or ``"cnn"``.
        x_shape: the unflattened shape of one x (required for ``"cnn"``: two dimensions).
    """
    if name == "identity":
        return nn.Identity()
    if name == "cnn":
        if x_shape is None or len(x_shape) != 2:
            raise ValueError(f"embedding 'cnn' needs a two-dimensional x_shape, got {x_shape!r}")
        return ImageEmbedding(tuple(x_shape))
    raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {name!r}")

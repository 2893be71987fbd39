"""LeNet for small histopathology patches (the seed project's patch classifier).

Architecture (LeCun et al., "Gradient-based learning applied to document recognition", Proc. IEEE 86(11),
1998, in the variant the seed project trained on 28 x 28 slide patches, malignant vs benign):

    conv 5x5, 20 filters -> ReLU -> max-pool 2x2
    conv 5x5, 50 filters -> ReLU -> max-pool 2x2
    flatten -> dense 500 -> ReLU -> dense num_classes

The seed (Keras) ended with a softmax layer; here the network returns **logits** and the softmax belongs to the
loss (``torch.nn.CrossEntropyLoss``) or to post-processing (``monai.transforms.Activations(softmax=True)``), as
MONAI's classifiers do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LeNet"]


class LeNet(nn.Module):
    """Two conv/ReLU/max-pool blocks (20 and 50 filters of 5 x 5), dense 500, dense ``num_classes``.

    Args:
        spatial_dims: number of spatial dimensions; only 2 is supported (as in the seed).
        in_channels: input channels (3 for RGB patches).
        num_classes: output classes (2 for benign vs malignant).
        input_size: patch size ``H`` (int, square) or ``(H, W)``, in pixels; fixes the size of the first dense
            layer, so the network accepts only this input size. Default 28, the seed's patch size.
        padding: zero padding of the 5 x 5 convolutions. Default 2 = "same", as the seed's Keras
            ``padding="same"`` (28 -> 28 -> 14 -> 14 -> 7, so 50 x 7 x 7 = 2450 features); 0 gives the original
            1998 "valid" convolutions (28 -> 24 -> 12 -> 8 -> 4, 800 features).
        dropout: dropout probability before the last dense layer (0 = none, the seed used none).

    Raises:
        ValueError: ``spatial_dims`` is not 2; ``in_channels``/``num_classes`` not positive; ``padding`` negative;
            ``input_size`` too small to survive the two conv + pool stages (the message names ``input_size``
            and the smallest valid size).

    Shapes:
        ``forward``: ``(B, in_channels, H, W)`` float -> ``(B, num_classes)`` logits (float).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 2,
        input_size: int | Sequence[int] = 28,
        padding: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"LeNet supports spatial_dims=2 only, got spatial_dims={spatial_dims}")
        if int(in_channels) < 1 or int(num_classes) < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
        if int(padding) < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
        if len(size) != 2:
            raise ValueError(f"input_size must be an int or (H, W), got {input_size!r}")
        out = tuple(self._feature_size(s, padding) for s in size)
        if min(out) < 1:
            smallest = next(s for s in range(1, 64) if self._feature_size(s, padding) >= 1)
            raise ValueError(
                f"input_size={input_size!r} is too small for LeNet with padding={padding}: two 5x5 conv + 2x2 "
                f"max-pool stages leave {out}; use input_size >= {smallest}"
            )
        self.input_size = size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5, padding=padding),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5, padding=padding),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * out[0] * out[1], 500),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Linear(500, num_classes),
        )

    @staticmethod
    def _feature_size(size: int, padding: int) -> int:
        """Side length after (conv 5 -> pool 2) twice; < 1 when the input is too small."""
        for _ in range(2):
            size = size + 2 * padding - 4
            if size < 2:
                return 0
            size //= 2
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify patches.

        Args:
            x: ``(B, in_channels, H, W)`` float tensor, ``(H, W) == input_size``.

        Returns:
            ``(B, num_classes)`` logits.
        """
        x = self.features(x)  # (B, 50, H', W')
        return self.classifier(x)  # (B, num_classes)

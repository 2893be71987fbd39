"""The HD95 empty-mask rule: one empty mask scores the image diagonal, two empty masks NaN."""

import math

import torch

from medpipe.metrics import image_diagonal, score_empty_masks


def _onehot(fg):
    fg = torch.as_tensor(fg, dtype=torch.float32)
    return torch.stack([1 - fg, fg])  # (2, H, W)


def test_image_diagonal():
    assert image_diagonal((256, 256)) == math.sqrt(2 * 255**2)
    assert image_diagonal((3, 4, 5)) == math.sqrt(4 + 9 + 16)


def test_score_empty_masks_replaces_only_empty_cases():
    full, empty = torch.zeros(8, 6), torch.zeros(8, 6)
    full[2:5, 1:4] = 1
    y_pred = torch.stack([_onehot(full), _onehot(empty), _onehot(empty), _onehot(full)])  # (4, 2, 8, 6)
    y = torch.stack([_onehot(full), _onehot(full), _onehot(empty), _onehot(empty)])
    hd = torch.tensor([[1.5], [float("nan")], [float("inf")], [float("nan")]])
    scored = score_empty_masks(hd, y_pred, y)
    diag = image_diagonal((8, 6))
    assert scored.distances[0, 0] == 1.5
    assert scored.distances[1, 0] == torch.tensor(diag) and scored.distances[3, 0] == torch.tensor(diag)
    assert torch.isnan(scored.distances[2, 0])
    assert (scored.n_one_empty, scored.n_both_empty) == (2, 1)
    assert scored.distances.dtype == hd.dtype and scored.distances.shape == (4, 1)

"""build_evaluator keeps the softmax for the official ISBI-2012 v_rand / v_info and scores it as isbi2012_scores."""

import numpy as np
import pytest
import torch
from PIL import Image

from medpipe import metrics as M
from medpipe.config import validate_config
from medpipe.engine.trainer import build_evaluator


class _ImageAsLogits(torch.nn.Module):
    """Logits (membrane, cell) = (-4 (x - 0.5), 4 (x - 0.5)): the softmax cell probability is sigmoid(8 (x - 0.5))."""

    def forward(self, x):
        return torch.cat([-4 * (x - 0.5), 4 * (x - 0.5)], dim=1)


def test_evaluator_official_scores_equal_isbi2012_scores(tmp_path, small_em, datasets):
    cfg = validate_config({
        "name": "em_isbi", "output_dir": str(tmp_path / "a"),
        "data": {"root": str(small_em), "images": "image/*.png", "labels": "label/*.png"},
        "transforms": {"train": [{"name": "EnsureTyped", "keys": ["image", "label"]}],
                       "val": [{"name": "EnsureTyped", "keys": ["image", "label"]}]},
        "net": {"name": "basic_unet", "features": [4, 4, 8, 16, 32, 4]},
        "train": {"max_epochs": 1, "batch_size": 1, "device": "cpu", "progress": False},
        "metrics": {"names": ["dice", "v_rand", "v_info", "v_rand_unthinned"], "key_metric": "v_rand"},
        "infer": {"roi_size": [96, 96], "sw_batch_size": 1, "overlap": 0.0},
    })
    rng = np.random.default_rng(0)
    batches, cells, labels = [], [], []
    for n in range(2):
        lab = (np.asarray(Image.open(datasets / f"isbi2012_em/train/label/{n}.png"))[:96, :96] > 127)
        img = np.clip(lab + rng.normal(0, 0.3, lab.shape), 0, 1).astype(np.float32)
        batches.append({"image": torch.from_numpy(img)[None, None], "label": torch.from_numpy(lab)[None, None].float()})
        cells.append(torch.softmax(_ImageAsLogits()(torch.from_numpy(img)[None, None]), 1)[0, 1].double().numpy())
        labels.append(lab)
    evaluator = build_evaluator(cfg, _ImageAsLogits(), batches, torch.device("cpu"))
    evaluator.run()
    expected = M.isbi2012_scores(np.stack(cells), np.stack(labels))
    assert evaluator.state.metrics["v_rand"] == pytest.approx(expected["v_rand"], rel=1e-6)
    assert evaluator.state.metrics["v_info"] == pytest.approx(expected["v_info"], rel=1e-6)
    unthinned = np.mean([M.v_rand_unthinned((c > 0.5).astype(np.int64), lab.astype(np.int64))
                         for c, lab in zip(cells, labels)])
    assert evaluator.state.metrics["v_rand_unthinned"] == pytest.approx(unthinned)
    assert evaluator.state.metrics["v_rand"] > evaluator.state.metrics["v_rand_unthinned"]

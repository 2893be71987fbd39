"""The segmentation finish on a tiny real EM run: per-case scores on the original grid, their means equal MONAI's
evaluator, intervals, per-case tables; test-time mirroring and post-processing re-scored with medpipe.evaluate."""

import csv
import json

import numpy as np
import pytest
import torch

from medpipe.config import validate_config
from medpipe.workflow import run_pipeline
from tests.test_run_e2e import _cfg_dict

NAMES = ["dice", "pixel_accuracy", "v_rand", "v_info", "hd95", "v_rand_unthinned"]


@pytest.fixture(scope="module")
def em_run(tmp_path_factory, datasets):
    from tests.conftest import link_em

    tmp = tmp_path_factory.mktemp("segfinish")
    root = link_em(tmp / "em", datasets, 4, 0)
    d = _cfg_dict(tmp, root, epochs=1)
    d["data"].pop("test_images")
    d["data"]["split"] = {"val": ["2.png", "3.png"]}
    d["metrics"] = {"names": NAMES, "key_metric": "dice", "intervals": {"n_resamples": 200, "seed": 1}}
    d["infer"].update(save_probabilities=False)
    d["tracking"]["enabled"] = False
    cfg = validate_config(d)
    return cfg, run_pipeline(cfg)


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_recomputed_means_equal_the_monai_evaluator(em_run):
    from medpipe.data.loaders import build_dataset, build_loader
    from medpipe.data.transforms import build_transforms
    from medpipe.engine.trainer import build_evaluator
    from medpipe.nets import build_net

    cfg, result = em_run
    out, final = result.output_dir, result.metrics
    net = build_net(cfg.net)
    best = sorted((out / "checkpoints").glob("best_*.pt"))[-1]
    state = torch.load(best, weights_only=True)
    net.load_state_dict(state.get("net", state))
    val_tf = build_transforms(cfg.transforms.val, "transforms.val")
    cases = json.loads((out / "manifest.json").read_text())["val"]
    loader = build_loader(build_dataset(cases, val_tf, cfg.data.model_copy(update={"cache": "none"})), 2, False)
    evaluator = build_evaluator(cfg, net, loader, torch.device("cpu"))
    evaluator.run()
    for name in NAMES:  # same grid (no spatial transform): the per-case recomputation equals MONAI's handlers
        assert final[f"best_val_{name}"] == pytest.approx(float(evaluator.state.metrics[name]), abs=1e-6), name


def test_per_case_table_means_and_intervals(em_run):
    cfg, result = em_run
    out, final = result.output_dir, result.metrics
    rows = _read_csv(out / "predictions" / "val_per_case.csv")
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == ["2.png", "3.png"] and list(rows[0]) == ["image", *NAMES]
    for name in NAMES:
        col = [float(r[name]) for r in rows]
        # official v_rand / v_info: each case's score at the chosen threshold, whose mean is the split's score
        assert np.mean(col) == pytest.approx(final[f"best_val_{name}"], abs=1e-12), name
        low, high = final[f"best_val_{name}_ci_low"], final[f"best_val_{name}_ci_high"]
        assert min(col) - 1e-12 <= low <= high <= max(col) + 1e-12
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["intervals"]["n_resamples"] == 200 and "postprocessing" not in metrics
    assert set(metrics["isbi2012"]["val"]) == {"v_rand_threshold", "v_info_threshold"}


def _tta_by_hand(cfg, out, cases):
    """Independent: the best net, the sliding window on the image and its mirror images, mean softmax."""
    from monai.inferers import SlidingWindowInferer
    from PIL import Image

    from medpipe.nets import build_net

    net = build_net(cfg.net).eval()
    state = torch.load(sorted((out / "checkpoints").glob("best_*.pt"))[-1], weights_only=True)
    net.load_state_dict(state.get("net", state))
    inferer = SlidingWindowInferer(roi_size=(128, 128), sw_batch_size=8, overlap=0.25, mode="gaussian",
                                   sigma_scale=0.125)
    probs = []
    with torch.no_grad():
        for case in cases:
            x = torch.from_numpy(np.asarray(Image.open(case["image"]), dtype=np.float32) / 255)[None, None]
            maps = [torch.flip(torch.softmax(inferer(torch.flip(x, d) if d else x, net), 1), d) if d
                    else torch.softmax(inferer(x, net), 1) for d in [(), (2,), (3,), (2, 3)]]
            probs.append(torch.stack(maps).mean(0)[0].numpy())
    return probs


def test_tta_and_postprocess_rescored_by_evaluate(em_run):
    from PIL import Image

    from medpipe.metrics import isbi2012_scores
    from medpipe.workflow.evaluate import evaluate_run

    cfg, result = em_run
    again = evaluate_run(str(result.output_dir), ["infer.tta=true", "infer.postprocess=auto"])
    metrics = json.loads((again.output_dir / "metrics.json").read_text())
    post = metrics["postprocessing"]
    assert post["steps"] == [] and post["val_dice_after"] == post["val_dice_before"]  # EM: hundreds of cells
    cases = json.loads((result.output_dir / "manifest.json").read_text())["val"]
    probs = _tta_by_hand(cfg, result.output_dir, cases)
    labels = [np.asarray(Image.open(c["label"])) > 127 for c in cases]
    dice = [2 * np.sum((p.argmax(0) == 1) & t) / (np.sum(p.argmax(0) == 1) + np.sum(t))
            for p, t in zip(probs, labels)]
    assert again.metrics["best_val_dice"] == pytest.approx(np.mean(dice), abs=1e-5)
    assert post["val_dice_before"] == pytest.approx(np.mean(dice), abs=1e-5)
    official = isbi2012_scores(np.stack([p[1] for p in probs]), np.stack(labels))
    assert again.metrics["best_val_v_rand"] == pytest.approx(official["v_rand"], abs=1e-5)
    assert again.metrics["best_val_v_info"] == pytest.approx(official["v_info"], abs=1e-5)
    assert again.metrics["best_val_dice"] != result.metrics["best_val_dice"]  # mirroring changed the prediction
    # the official score is the maximum over thresholds of the mean over cases; its interval is around it
    assert again.metrics["best_val_v_rand_ci_low"] <= again.metrics["best_val_v_rand"] <= again.metrics[
        "best_val_v_rand_ci_high"]


def test_label_on_grid_is_the_file_label_through_value_maps_not_resampling(datasets, tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapLabelValued, Resized, Rotate90d
    from PIL import Image

    from medpipe.workflow.seg_eval import label_on_grid

    src = datasets / "isbi2012_em" / "train"
    case = {"image": str(src / "image" / "0.png"), "label": str(src / "label" / "0.png")}
    truth = (np.asarray(Image.open(case["label"])) > 127).astype(np.int64)
    head = [LoadImaged(keys=["image", "label"], reader="PILReader", reverse_indexing=False),
            EnsureChannelFirstd(keys=["image", "label"], channel_dim="no_channel"),
            MapLabelValued(keys="label", orig_labels=[0, 255], target_labels=[0, 1])]
    for tail in ([], [Resized(keys=["image"], spatial_size=(64, 64)), Resized(keys="label", spatial_size=(64, 64),
                                                                              mode="nearest")],
                 [Rotate90d(keys=["image", "label"]), Resized(keys=["image", "label"], spatial_size=(100, 80),
                                                              mode=("area", "nearest"))]):
        got = label_on_grid(case, Compose(head + tail))
        np.testing.assert_array_equal(got, truth)  # exactly the file's label, whatever the spatial steps


def test_ensemble_of_one_model_twice_is_that_model(em_run, tmp_path):
    """The segmentation ensemble path (load_trained, mean softmax, per-case scores) on the run's own validation
    cases: two copies of one model must score exactly what the run reported for them."""
    from medpipe.workflow.ensemble import ensemble_test

    cfg, result = em_run
    out = result.output_dir
    cases = json.loads((out / "manifest.json").read_text())["val"]
    flat, section = ensemble_test(cfg, [out, out], [[], []], cases, tmp_path)
    assert section["n_models"] == 2 and section["n_test"] == 2 and section["postprocessing"] == "none"
    own = _read_csv(out / "predictions" / "val_per_case.csv")
    ens = _read_csv(tmp_path / "ensemble" / "test_per_case.csv")
    for name in NAMES:
        assert [float(r[name]) for r in ens] == pytest.approx([float(r[name]) for r in own], abs=1e-9), name
        assert flat[f"ensemble_test_{name}"] == pytest.approx(result.metrics[f"best_val_{name}"], abs=1e-9)
    assert flat["ensemble_test_dice_ci_low"] == pytest.approx(result.metrics["best_val_dice_ci_low"])

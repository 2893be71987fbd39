"""MONAI bundle export: ``python -m medpipe.export RUN --format bundle`` writes a bundle that MONAI's own tools check
and run, and whose output equals what ``medpipe.run`` wrote (probabilities to 1e-4, masks exactly); pipelines with
medpipe-only parts are refused with the part named."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medpipe.bundle import BundleError, check_bundle_support
from medpipe.config import validate_config
from medpipe.export import main
from medpipe.runs import load_trained
from tests.conftest import link_em
from tests.serve.models import cls_run, mlflow_store  # noqa: F401  (fixtures)
from tests.subsets import first_rows, link_subset, read_rows
from tests.test_run_e2e import _cfg_dict

for _extra in ("jsonschema", "fire"):  # MONAI's metadata check; python -m monai.bundle
    pytest.importorskip(_extra, reason=f"MONAI bundles need {_extra}: pip install 'medpipe[export]'")


@pytest.fixture(scope="module")
def em_run(tmp_path_factory, datasets):
    """A 1-epoch EM U-Net run of ``tests/test_run_e2e.py`` (4 images, 2 test images with saved probabilities)."""
    from medpipe.workflow import run_pipeline

    tmp = tmp_path_factory.mktemp("em_bundle")
    d = _cfg_dict(tmp, link_em(tmp / "em", datasets, 4, 2), epochs=1)
    d["tracking"]["enabled"] = False
    return run_pipeline(validate_config(d)).output_dir


def _targets(node):
    if isinstance(node, dict):
        yield from ([node["_target_"]] if "_target_" in node else [])
        for v in node.values():
            yield from _targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _targets(v)


def _workflow(bundle, images, out):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"), logging_file=False,
                        workflow_type="infer", bundle_root=str(bundle), datalist=[str(i) for i in images],
                        output_dir=str(out), device="$torch.device('cpu')")
    wf.initialize()
    wf.run()
    return wf.evaluator.state.output


def test_em_bundle_is_checked_by_monai_and_reproduces_the_run(em_run, tmp_path):
    from monai.bundle import verify_metadata, verify_net_in_out

    bundle = tmp_path / "bundle"
    assert main([str(em_run), "--format", "bundle", "-o", str(bundle)]) == 0
    for f in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts",
              "docs/README.md", "docs/metadata_schema.json", "LICENSE"):
        assert (bundle / f).is_file(), f
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    inp, out = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert inp["num_channels"] == 1 and inp["spatial_shape"] == [128, 128] and inp["value_range"] == [0.0, 1.0]
    assert out["num_channels"] == 2 and out["channel_def"]["1"].startswith("class 1 (label value 255")
    assert meta["eval_metrics"]["best_val_dice"] > 0 and meta["monai_version"] and meta["pytorch_version"]
    v = meta["medpipe"]["verification"]
    assert v["bundle_max_abs_prob_diff"] <= 1e-4 and v["bundle_same_decision"] and v["max_abs_logit_diff"] <= 1e-4
    infer = json.loads((bundle / "configs/inference.json").read_text())
    targets = list(_targets(infer))
    assert targets and all(t.startswith("monai.") for t in targets), targets
    assert {"monai.networks.nets.BasicUNet", "monai.inferers.SlidingWindowInferer", "monai.transforms.Activationsd",
            "monai.transforms.AsDiscreted", "monai.transforms.SaveImaged"} <= set(targets)

    # MONAI's own checks, offline (the schema file exists, so verify_metadata downloads nothing)
    verify_metadata(meta_file=str(bundle / "configs/metadata.json"), filepath=str(bundle / "docs/metadata_schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs/metadata.json"),
                      config_file=str(bundle / "configs/inference.json"), device="cpu")
    # the weights: a plain state dict (tensors only) equal to the run's best checkpoint, and TorchScript
    state = torch.load(bundle / "models/model.pt", weights_only=True)
    best = torch.load(next((em_run / "checkpoints").glob("best_*.pt")), weights_only=True)
    best = best.get("net", best)
    assert state.keys() == best.keys() and all(torch.equal(state[k], best[k]) for k in state)
    assert isinstance(torch.jit.load(str(bundle / "models/model.ts")), torch.jit.ScriptModule)
    readme = (bundle / "docs/README.md").read_text()
    assert "not a medical device" in readme and "best_val_dice" in readme and "## Model card" in readme
    assert "Cardona" in (bundle / "LICENSE").read_text()  # the data licence, from the dataset's PROVENANCE.md

    # the bundle's inference through monai.bundle on a real test image == what medpipe.run wrote for it
    manifest = json.loads((em_run / "manifest.json").read_text())
    image = manifest["test"][0]["image"]
    got = _workflow(bundle, [image], tmp_path / "eval")[0]
    prob = np.load(em_run / "predictions" / "test" / "0_prob.npy")
    assert np.abs(np.asarray(got["prob"])[1] - prob).max() <= 1e-4
    written = np.asarray(Image.open(tmp_path / "eval" / "0_seg.png"))
    assert np.array_equal(written, np.asarray(Image.open(em_run / "predictions" / "test" / "0.png")))

    # and from the command line, as the README says
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--dataset_dir", str(em_run.parent.parent / "em" / "test"), "--device", "$torch.device('cpu')"]
    done = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for stem in ("0", "1"):
        assert np.array_equal(np.asarray(Image.open(bundle / "eval" / f"{stem}_seg.png")),
                              np.asarray(Image.open(em_run / "predictions" / "test" / f"{stem}.png")))


@pytest.fixture(scope="module")
def covid_run(tmp_path_factory, datasets):
    """A 1-epoch 3-class ResNet-18 on 4 train + 2 val real COVID-QU-Ex X-rays per class, 64 x 64."""
    from medpipe.workflow import run_pipeline

    tmp = tmp_path_factory.mktemp("covid_bundle")
    src = datasets / "covid_qu_ex"
    rows = read_rows(src / "labels.csv")
    picked = [r for split, n in (("train", 4), ("val", 2)) for label in ("COVID-19", "Non-COVID", "Normal")
              for r in first_rows(rows, n, sort_by="image", split=split, label=label)]
    root = link_subset(src, picked, "image", tmp / "covid", "labels.csv")
    from tests.test_run_classification import ROOT

    d = yaml.safe_load((ROOT / "pipelines" / "covid_xray.yaml").read_text())
    d.update(name="covid_bundle", output_dir=str(tmp / "artifacts"))
    d["data"].update(root=str(root))
    for chain in ("train", "val"):
        d["transforms"][chain] = [t for t in d["transforms"][chain] if not t["name"].startswith("Rand")]
        for t in d["transforms"][chain]:
            if t["name"] == "Resized":
                t["spatial_size"] = [64, 64]
    d["train"].update(max_epochs=1, batch_size=6, val_batch_size=6, progress=False, device="cpu")
    d["tracking"] = {"enabled": False}
    return run_pipeline(validate_config(d)).output_dir


def test_classifier_bundle_gives_the_run_probabilities(covid_run, tmp_path):
    bundle = tmp_path / "bundle"
    assert main([str(covid_run), "--format", "bundle", "-o", str(bundle)]) == 0
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    out = meta["network_data_format"]["outputs"]["pred"]
    assert out["num_channels"] == 3 and out["channel_def"] == {"0": "COVID-19", "1": "Non-COVID", "2": "Normal"}
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64]
    targets = set(_targets(json.loads((bundle / "configs/inference.json").read_text())))
    assert {"monai.networks.nets.ResNet", "monai.inferers.SimpleInferer", "monai.transforms.NormalizeIntensityd",
            "monai.handlers.ClassificationSaver"} <= targets

    trained = load_trained(str(covid_run))
    images = [c["image"] for c in json.loads((covid_run / "manifest.json").read_text())["test"][:3]]
    _workflow(bundle, images, tmp_path / "eval")
    with open(tmp_path / "eval" / "predictions.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == len(images)
    for image, row in zip(images, rows):
        x = trained.transform({"image": image})["image"][None].float()
        with torch.no_grad():
            ref = torch.softmax(trained.net(x), 1)[0].numpy()
        assert row[0] == image and np.abs(np.asarray(row[1:], dtype=float) - ref).max() <= 1e-4


def test_medpipe_only_parts_are_refused_by_name(cls_run, tmp_path, capsys):
    # the pneumonia classifier converts X-rays with medpipe's ToGrayscaled: no MONAI class does that
    out = tmp_path / "refused"
    assert main([str(cls_run.output_dir), "--format", "bundle", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "transforms.val[2] ToGrayscaled is medpipe's own transform" in err and "--format torchscript" in err
    assert "Traceback" not in err and not out.exists()

    base = cls_run.cfg.model_dump()
    lenet = {**base, "net": {"name": "lenet", "in_channels": 1, "num_classes": 2, "input_size": 64}}
    with pytest.raises(BundleError, match="net 'lenet' is medpipe's own class"):
        check_bundle_support(validate_config(lenet))


def test_names_that_monai_would_run_as_code_are_refused(covid_run, tmp_path, capsys):
    # a run folder from someone else: its class names end up in metadata.json, which monai.bundle parses; a name
    # starting with '$' would be evaluated as Python there, so the export refuses it
    import shutil

    run = shutil.copytree(covid_run, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["classes"] = ["$__import__('os').getcwd()", "Non-COVID", "Normal"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main([str(run), "--format", "bundle", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "metadata.network_data_format.outputs.pred.channel_def.0: the value \"$__import__" in err
    assert "reads as code or a reference" in err and "Traceback" not in err and not (tmp_path / "b").exists()


def test_postprocessing_spec_becomes_monai_transforms_with_the_same_masks(datasets):
    """A run's keep-largest-component spec runs in the bundle as MONAI transforms and gives
    ``apply_postprocess``'s mask on a real label with small components added."""
    from monai.bundle import ConfigParser

    from medpipe.bundle import inference_config
    from medpipe.inference.postprocess import apply_postprocess
    from tests.serve.test_reported import seg_cfg

    cfg = validate_config(seg_cfg(datasets))
    spec = {"method": "keep_largest_component", "steps": [[1]]}
    post = inference_config(cfg, postprocess=spec)["postprocessing"]["transforms"]
    keep = [t for t in post if t["_target_"].endswith("KeepLargestConnectedComponentd")]
    assert [t["applied_labels"] for t in keep] == [[1]]
    label = (np.asarray(Image.open(datasets / "isbi2012_em" / "train" / "label" / "0.png")) > 0).astype(np.int64)
    mask = np.zeros_like(label)
    mask[:200, :200] = label[:200, :200]  # real cells (one component under full connectivity)
    mask[300:305, 300:305] = 1  # and a small separate one
    parser = ConfigParser({"t": keep[0]})
    out = parser.get_parsed_content("t")({"pred": torch.tensor(mask)[None]})["pred"][0]  # a copy: it works in place
    np.testing.assert_array_equal(np.asarray(out), apply_postprocess(mask, spec))
    assert np.asarray(out).sum() < mask.sum()  # it removed components

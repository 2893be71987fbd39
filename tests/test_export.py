"""Export round trips: TorchScript and ONNX (through onnxruntime) give the original network's outputs on a real
image, for the EM U-Net (sliding window) and the X-ray classifier; the JSON spec describes the pipeline."""

import json

import numpy as np
import pytest
import torch

from medpipe.export import ExportError, export_model, main
from medpipe.runs import load_trained

from tests.serve.models import cls_run, mlflow_store, seg_run  # noqa: F401  (fixtures)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_classifier_export_round_trip(cls_run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="needs the export extra: pip install 'medpipe[export]'")
        ort = pytest.importorskip("onnxruntime", reason="needs the export extra: pip install 'medpipe[export]'")
    res = export_model(cls_run.model_uri, fmt, tmp_path / fmt, tracking_uri=cls_run.tracking_uri)
    spec = json.loads(res.spec_path.read_text())
    assert spec["task"] == "classification" and spec["postprocessing"]["classes"] == ["NORMAL", "PNEUMONIA"]
    assert spec["postprocessing"]["threshold"] == pytest.approx(cls_run.metrics["best_val_threshold"])
    assert [t["name"] for t in spec["preprocessing"]] == ["LoadImaged", "EnsureChannelFirstd", "ToGrayscaled",
                                                         "Resized", "ScaleIntensityRanged"]
    assert spec["preprocessing"][3]["args"]["spatial_size"] == [64, 64]
    v = spec["verification"]
    assert v["max_abs_logit_diff"] is not None and v["max_abs_logit_diff"] <= 1e-4 and v["same_argmax"]
    assert v["image"].endswith(".jpeg")

    # independently: load the exported file and compare on another real X-ray
    served = load_trained(str(cls_run.output_dir))
    image = json.loads((cls_run.output_dir / "manifest.json").read_text())["test"][0]["image"]
    x = served.transform({"image": image})["image"][None].float()
    with torch.no_grad():
        ref = served.net(x).numpy()
    if fmt == "torchscript":
        got = torch.jit.load(str(res.model_path)).eval()(x).detach().numpy()
    else:
        sess = ort.InferenceSession(str(res.model_path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"image": x.numpy()})[0]
        assert sess.run(None, {"image": np.concatenate([x.numpy()] * 3)})[0].shape == (3, 2)  # dynamic batch
    assert got.shape == (1, 2) and np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_segmenter_export_round_trip(seg_run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="needs the export extra: pip install 'medpipe[export]'")
    assert main([str(seg_run.output_dir), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    spec = json.loads((tmp_path / fmt / "pipeline.json").read_text())
    assert spec["task"] == "segmentation" and spec["input"]["example_shape"] == [1, 1, 256, 256]
    sw = spec["postprocessing"]["sliding_window"]
    assert sw["roi_size"] == [256, 256] and sw["overlap"] == 0.25
    assert spec["verification"]["max_abs_logit_diff"] <= 1e-4 and spec["verification"]["same_argmax"]
    assert spec["verification"]["tensor_shape"] == [1, 1, 512, 512]  # a whole real EM section
    assert (tmp_path / fmt / ("model.ts" if fmt == "torchscript" else "model.onnx")).stat().st_size > 10_000
    card = (tmp_path / fmt / "model_card.md").read_text()  # the run's own card travels with the model
    assert card == (seg_run.output_dir / "model_card.md").read_text() and "not a medical device" in card


def test_export_fails_loudly_on_mismatch_and_bad_args(seg_run, cls_run, tmp_path, capsys):
    with pytest.raises(ExportError, match="differs from the original"):
        export_model(str(cls_run.output_dir), "torchscript", tmp_path / "a", atol=-1.0)
    assert main([str(seg_run.output_dir), "--format", "torchscript", "--out", str(tmp_path / "b"),
                 "--image", str(tmp_path / "missing.png")]) == 2
    assert "no real image" in capsys.readouterr().err
    assert main([str(tmp_path / "no_such_run"), "--format", "onnx"]) == 2
    assert "neither an MLflow model URI" in capsys.readouterr().err


def test_export_records_what_the_run_reported(datasets, tmp_path):
    """A run folder with calibration, OOD and TTA exports them in pipeline.json; a segmenter its post-processing."""
    from tests.serve.test_reported import cls_cfg, make_run, seg_cfg

    ood = {"score": "energy", "threshold": -1.5, "coverage": 0.95}
    run = make_run(tmp_path / "cls", cls_cfg(datasets), infer={"tta": True, "tta_axes": [1]},
                   metrics={"calibration": {"method": "temperature", "temperature": 1.8}, "ood": ood})
    image = sorted((datasets / "kermany_pneumonia_cxr" / "test" / "NORMAL").glob("*.jpeg"))[0]
    spec = export_model(str(run), "torchscript", tmp_path / "ts", image=str(image)).spec
    post, rep = spec["postprocessing"], spec["reported"]
    assert post["temperature"] == 1.8 and post["activation"] == "softmax(logits / 1.8)" and post["ood"] == ood
    assert post["tta"] is True and rep["tta"]["enabled"] is True and rep["tta"]["spatial_axes"] == [1]
    assert rep["temperature"] == 1.8 and rep["ood"]["threshold"] == -1.5
    post_spec = {"per_class": {"1": True}, "val_dice_before": 0.7, "val_dice_after": 0.75}
    seg = make_run(tmp_path / "seg", seg_cfg(datasets), metrics={"postprocessing": post_spec})
    em = datasets / "isbi2012_em" / "train" / "image" / "0.png"
    spec = export_model(str(seg), "torchscript", tmp_path / "seg_ts", image=str(em)).spec
    assert spec["postprocessing"]["postprocess"] == post_spec and spec["reported"]["postprocess"] == post_spec
    assert spec["reported"]["tta"]["enabled"] is False

"""The served model applies what its run reported (issue 12): the temperature, the OOD threshold, TTA, the
post-processing spec; DICOM modality / body part checks; Grad-CAM explanations. Run folders are written here as
``medpipe.run`` leaves them (the pipelines of ``models.py`` with seeded weights, and the issue-12 sections in their
``metrics.json`` / ``config.resolved.yaml``); the expected answers are computed independently (torch flips, scipy)
on real X-rays, EM sections and pydicom's DICOM files."""

import base64
import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy.special import logsumexp, softmax

from tests.serve.models import CHAN, CLS_TRANSFORMS, CXR, LOAD, MAP, SCALE, cxr_files

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'medpipe[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from medpipe.runs import load_trained  # noqa: E402
from medpipe.serve.app import ServeSettings, create_app  # noqa: E402
from medpipe.serve.model import load_model  # noqa: E402


def dicom_bytes(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} not found (RG*.dcm need the pydicom-data package)"
    with open(path, "rb") as fh:
        return fh.read()


def make_run(dest, cfg_dict, metrics=None, infer=None, data=None):
    """A run folder (config.resolved.yaml, seeded weights as checkpoints/best_*.pt, metrics.json with ``metrics``)
    of ``cfg_dict`` with ``infer`` / ``data`` merged in: what ``medpipe.run`` leaves for serving, without training
    (the answers checked here are functions of whatever weights the network has)."""
    from medpipe.config import resolved_dict, validate_config
    from medpipe.nets import build_net

    d = json.loads(json.dumps(cfg_dict))
    if infer:
        d["infer"] = {**(d.get("infer") or {}), **infer}
    d["data"].update(data or {})
    cfg = validate_config(d)
    (dest / "checkpoints").mkdir(parents=True)
    (dest / "config.resolved.yaml").write_text(yaml.safe_dump(resolved_dict(cfg), sort_keys=False))
    torch.manual_seed(0)
    torch.save({"net": build_net(cfg.net).state_dict()}, dest / "checkpoints" / "best_key_metric=0.5.pt")
    base = {"final": {}, "classes": ["NORMAL", "PNEUMONIA"], "threshold": 0.5} if cfg.task == "classification" \
        else {"final": {}}
    (dest / "metrics.json").write_text(json.dumps({**base, **(metrics or {})}))
    return dest


def cls_cfg(datasets):
    """The serve tests' X-ray classifier (models.py) on the real Kermany folders."""
    return {"name": "cxr_reported", "task": "classification", "output_dir": "unused",
            "data": {"root": str(datasets / CXR), "images": "train/*/*.jpeg", "class_from": "folder"},
            "transforms": {"train": CLS_TRANSFORMS, "val": CLS_TRANSFORMS},
            "net": {"name": "resnet18", "in_channels": 1, "num_classes": 2}, "train": {"max_epochs": 1}}


def seg_cfg(datasets):
    """The serve tests' EM U-Net (models.py) on the real ISBI-2012 images."""
    return {"name": "em_reported", "output_dir": "unused",
            "data": {"root": str(datasets / "isbi2012_em" / "train"), "images": "image/*.png",
                     "labels": "label/*.png"},
            "transforms": {"train": [LOAD, CHAN, SCALE, MAP], "val": [LOAD, CHAN, SCALE, MAP]},
            "net": {"name": "basic_unet", "features": [4, 4, 8, 16, 32, 4]}, "train": {"max_epochs": 1},
            "infer": {"roi_size": [256, 256], "sw_batch_size": 4, "overlap": 0.25}}


def _write(path, array):
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return str(path)


def post(client, data, name="x.jpeg", **params):
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")}, params=params)


def logits_of(run_dir, image):
    """Logits of the run's network on ``image`` through its transforms, computed here: ``(x, (1, K) float64)``."""
    t = load_trained(str(run_dir))
    x = torch.as_tensor(t.transform({"image": str(image)})["image"])[None].float()
    with torch.no_grad():
        return t, x, t.net(x).double().numpy()


def test_temperature_and_ood_are_applied(datasets, tmp_path):
    image = cxr_files(datasets, "test", "PNEUMONIA", 1, skip=4)[0]
    plain_run = make_run(tmp_path / "plain", cls_cfg(datasets))
    _, _, z = logits_of(plain_run, image)
    energy = float(-logsumexp(z, axis=1)[0])
    run = make_run(tmp_path / "run", cls_cfg(datasets), metrics={
        "calibration": {"method": "temperature", "temperature": 2.5, "val": {}, "test": {}},
        "ood": {"score": "energy", "threshold": energy - 0.01, "coverage": 0.95}})
    model = load_model(str(run))
    assert model.trained.temperature == 2.5 and model.trained.ood["score"] == "energy"
    client = TestClient(create_app(model))
    body = post(client, image.read_bytes()).json()
    want = softmax(z / 2.5, axis=1)[0]
    got = np.array([body["probabilities"]["NORMAL"], body["probabilities"]["PNEUMONIA"]])
    assert np.abs(got - want).max() < 1e-6
    assert np.abs(got - softmax(z, axis=1)[0]).max() > 1e-4  # the temperature changed them
    assert body["temperature"] == 2.5 and "softmax(logits / 2.5)" in body["decision_rule"]
    assert body["ood_score"] == pytest.approx(energy, abs=1e-5) and body["ood_threshold"] == energy - 0.01
    assert body["out_of_distribution"] is True and body["warnings"] == []
    m = client.get("/model").json()
    assert m["temperature"] == 2.5 and m["ood"]["threshold"] == energy - 0.01
    plain = TestClient(create_app(load_model(str(plain_run)))).get("/model").json()
    assert plain["temperature"] is None and plain["ood"] is None


def test_classifier_tta_is_the_mean_of_flipped_predictions(datasets, tmp_path):
    pytest.importorskip("medpipe.inference.tta")
    image = cxr_files(datasets, "test", "NORMAL", 1, skip=2)[0]
    t, x, _ = logits_of(make_run(tmp_path / "plain", cls_cfg(datasets)), image)
    with torch.no_grad():
        want = np.mean([torch.softmax(t.net(torch.flip(x, dims)), 1)[0].double().numpy()
                        for dims in ([], [2], [3], [2, 3])], axis=0)
    run = make_run(tmp_path / "run", cls_cfg(datasets), infer={"tta": True})
    body = post(TestClient(create_app(load_model(str(run)))), image.read_bytes()).json()
    assert body["tta"] is True
    assert body["probabilities"]["PNEUMONIA"] == pytest.approx(want[1], abs=1e-6)
    one = make_run(tmp_path / "one", cls_cfg(datasets), infer={"tta": True, "tta_axes": [1]})
    body = post(TestClient(create_app(load_model(str(one)))), image.read_bytes()).json()
    with torch.no_grad():
        want = np.mean([torch.softmax(t.net(torch.flip(x, d)), 1)[0].double().numpy() for d in ([], [3])], axis=0)
    assert body["probabilities"]["PNEUMONIA"] == pytest.approx(want[1], abs=1e-6)


@pytest.fixture(scope="module")
def chest_model(datasets, tmp_path_factory):
    """The classifier as trained on [CR, DX] / [CHEST] images."""
    run = make_run(tmp_path_factory.mktemp("chest") / "run", cls_cfg(datasets),
                   data={"modality": ["CR", "DX"], "body_part": ["CHEST"]})
    return load_model(str(run))


def test_dicom_of_another_modality_or_body_part_is_refused(chest_model):
    client = TestClient(create_app(chest_model))
    r = post(client, dicom_bytes("CT_small.dcm"), "CT_small.dcm")
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "\n" not in detail
    assert "DICOM Modality (0008,0060) is 'CT'" in detail and "trained on CR, DX" in detail
    assert "BodyPartExamined (0018,0015) is missing" in detail and "CHEST" in detail
    assert "--allow-mismatch" in detail
    r = post(client, dicom_bytes("RG3_UNCR.dcm"), "RG3_UNCR.dcm")  # CR of an extremity
    assert r.status_code == 422 and "BodyPartExamined (0018,0015) is 'EXTREMITY'" in r.json()["detail"]
    assert "Modality" not in r.json()["detail"].split("BodyPart")[0]
    r = post(client, dicom_bytes("RG1_UNCI.dcm"), "RG1_UNCI.dcm")  # CR chest: answered
    assert r.status_code == 200 and r.json()["warnings"] == []
    assert client.get("/model").json()["input"]["dicom_expected"] == {"Modality": ["CR", "DX"],
                                                                      "BodyPartExamined": ["CHEST"]}


def test_allow_mismatch_answers_with_warnings(chest_model, datasets):
    client = TestClient(create_app(chest_model, ServeSettings(allow_mismatch=True)))
    r = post(client, dicom_bytes("CT_small.dcm"), "CT_small.dcm")
    assert r.status_code == 200, r.text
    warnings = r.json()["warnings"]
    assert len(warnings) == 2 and "Modality (0008,0060) is 'CT'" in warnings[0] and "missing" in warnings[1]
    assert r.json()["label"] in ("NORMAL", "PNEUMONIA")
    jpeg = cxr_files(datasets, "test", "NORMAL", 1)[0]  # no DICOM tags to check
    assert post(client, jpeg.read_bytes()).json()["warnings"] == []


def test_explain_returns_a_heatmap_png_of_the_input_size(datasets, tmp_path):
    pytest.importorskip("medpipe.inference.explain")
    client = TestClient(create_app(load_model(str(make_run(tmp_path / "cls", cls_cfg(datasets))))))
    jpeg = cxr_files(datasets, "test", "PNEUMONIA", 1, skip=1)[0]
    grey = np.asarray(Image.open(jpeg).convert("L"))[:, 30:190]  # a non-square X-ray: the layout is checked too
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey)).save(buf, format="PNG")
    body = post(client, buf.getvalue(), "x.png", explain="true").json()
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["explanation_png"]))))
    assert png.shape == (224, 160, 3) and png.dtype == np.uint8
    assert np.abs(png.astype(float) - grey[..., None]).mean() > 1.0  # not the plain image
    from medpipe.inference.explain import class_activation_maps, overlay_heatmap

    run = load_trained(str(tmp_path / "cls"))
    x = torch.as_tensor(run.transform({"image": _write(tmp_path / "g.png", grey)})["image"])[None].float()
    cam = class_activation_maps(run.net, x, class_index=body["label_index"])[0]  # (H, W): rows first here
    assert np.abs(png.astype(int) - overlay_heatmap(grey, cam).astype(int)).max() <= 1
    assert "explanation_png" not in post(client, jpeg.read_bytes()).json()
    dcm = post(client, dicom_bytes("RG1_UNCI.dcm"), "RG1_UNCI.dcm", explain="true").json()
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(dcm["explanation_png"])))).shape == (1955, 1841, 3)
    seg = TestClient(create_app(load_model(str(make_run(tmp_path / "seg", seg_cfg(datasets))))))
    em = datasets / "isbi2012_em" / "train" / "image" / "0.png"
    r = post(seg, em.read_bytes(), "0.png", explain="true")
    assert r.status_code == 422 and "classifiers" in r.json()["detail"]

"""DICOM SEG from the serve API, with the tiny EM segmenter trained by ``medpipe.run`` (tests/serve/models.py):
``format=dicom-seg`` answers the SEG file, ``dicom_seg=true`` adds it to the JSON; both read back with pydicom +
highdicom equal the served mask and reference the uploaded slice; other uploads and models get 422."""

import base64
import io

import numpy as np
import pydicom
import pytest
from PIL import Image

hd = pytest.importorskip("highdicom")
pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'medpipe[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from medpipe.serve.app import create_app  # noqa: E402
from medpipe.serve.model import load_model  # noqa: E402


def dicom_bytes(name):
    from pydicom.data import get_testdata_file

    with open(get_testdata_file(name), "rb") as fh:
        return fh.read()


@pytest.fixture(scope="module")
def seg_client(seg_run):
    return TestClient(create_app(load_model(str(seg_run.output_dir))))


@pytest.fixture(scope="module")
def cls_client(cls_run):
    return TestClient(create_app(load_model(str(cls_run.output_dir))))


def post(client, data: bytes, name, **params):
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")}, params=params)


def seg_pixels(data: bytes, source) -> np.ndarray:
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(data)))
    refs = [i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence]
    assert refs == [source.SOPInstanceUID] and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ManufacturerModelName == "em_serve_tiny" and seg.SegmentSequence[0].SegmentLabel == "class 1"
    return seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_dicom_seg_file_and_json_equal_the_served_mask(seg_client, name):
    data = dicom_bytes(name)
    source = pydicom.dcmread(io.BytesIO(data))
    r = post(seg_client, data, name, dicom_seg="true")
    assert r.status_code == 200, r.text
    body = r.json()
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"])))) > 0  # (Rows, Columns)
    from_json = seg_pixels(base64.b64decode(body["dicom_seg_b64"]), source)
    assert from_json.shape == (source.Rows, source.Columns) and np.array_equal(from_json.astype(bool), mask)

    r = post(seg_client, data, name, format="dicom-seg")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert "segmentation.seg.dcm" in r.headers["content-disposition"]
    assert np.array_equal(seg_pixels(r.content, source), from_json)


def test_dicom_seg_refused_for_other_uploads_and_models(seg_client, cls_client, datasets):
    png = (datasets / "isbi2012_em" / "train" / "image" / "0.png").read_bytes()
    r = post(seg_client, png, "0.png", format="dicom-seg")
    assert r.status_code == 422 and "needs a DICOM upload" in r.json()["detail"]
    assert "this upload is a PNG file" in r.json()["detail"]
    r = post(seg_client, png, "0.png", dicom_seg="true")
    assert r.status_code == 422 and "needs a DICOM upload" in r.json()["detail"]
    r = post(cls_client, dicom_bytes("CT_small.dcm"), "CT_small.dcm", format="dicom-seg")
    assert r.status_code == 422 and "needs a segmentation model" in r.json()["detail"]

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes("CT_small.dcm")))
    del ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    r = post(seg_client, buf.getvalue(), "no_uid.dcm", format="dicom-seg")
    assert r.status_code == 422
    assert r.json()["detail"].startswith("the DICOM upload: cannot be referenced by a DICOM SEG: missing SOP "
                                         "Instance UID (0008,0018)")
    r = post(seg_client, buf.getvalue(), "no_uid.dcm")  # without the SEG, the same file is predicted
    assert r.status_code == 200 and "dicom_seg_b64" not in r.json()
    r = post(seg_client, png, "0.png", format="nifti")
    assert r.status_code == 422
    assert seg_client.get("/health").json()["status"] == "ok"

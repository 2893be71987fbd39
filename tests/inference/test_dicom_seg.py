"""DICOM SEG output on pydicom's real CT/MR slices and the pydicom-data chest radiograph: written, read back with
pydicom + highdicom and compared with the mask exactly; the loader's layout; sources a SEG cannot reference; and
``predict_cases`` writing ``<stem>.seg.dcm`` next to the mask of a DICOM case (the CLI path)."""

import functools
import shutil

import numpy as np
import pydicom
import pytest
import torch

hd = pytest.importorskip("highdicom")

from medpipe import __version__  # noqa: E402
from medpipe.inference.dicom_seg import (DicomSegError, build_dicom_seg, is_dicom_file, loader_transposes,  # noqa
                                         mask_on_source_grid, probe_dicom, probe_png, read_source, write_dicom_seg)


def dicom_file(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} not found (RG1_UNCI.dcm needs the pydicom-data package)"
    return path


def synthetic_mask(rows, cols, k=3):
    """An asymmetric class-index mask: a block of class 1, a corner of class 2 (if k > 2)."""
    mask = np.zeros((rows, cols), np.uint8)
    mask[rows // 4: rows // 2, cols // 3: cols // 2 + 3] = 1
    if k > 2:
        mask[:5, :9] = 2
    return mask


def read_back(path, ds):
    """``(segmentation, (Rows, Columns) label map)`` of a SEG file, by the source's SOP Instance UID."""
    seg = hd.seg.segread(str(path))
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], combine_segments=True)
    return seg, pixels[0]


def referenced_uids(seg):
    return [item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm"])
def test_seg_round_trip_equals_mask_and_references_source(tmp_path, name):
    """CT (128 x 128, with Frame of Reference), MR (64 x 64), CR radiograph (1955 x 1841, no Frame of Reference,
    Pixel Spacing 0\\0): pixels identical, source referenced, labels and algorithm as documented."""
    ds = pydicom.dcmread(dicom_file(name))
    mask = synthetic_mask(ds.Rows, ds.Columns)
    out = write_dicom_seg(mask, dicom_file(name), tmp_path / "out" / "x.seg.dcm", ["background", "membrane", "cell"],
                          num_classes=3, pipeline="em_unet", run_id="abc123")
    seg, pixels = read_back(out, ds)
    assert pixels.shape == mask.shape and np.array_equal(pixels, mask)
    assert referenced_uids(seg) == [ds.SOPInstanceUID]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ds.SeriesInstanceUID
    assert seg.StudyInstanceUID == ds.StudyInstanceUID and seg.SeriesInstanceUID != ds.SeriesInstanceUID
    assert seg.get("FrameOfReferenceUID") == ds.get("FrameOfReferenceUID")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["membrane", "cell"]
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion, algo.AlgorithmSource) == ("em_unet", __version__, "medpipe")
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # SCT Tissue
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.DeviceSerialNumber) == ("medpipe", "em_unet", "abc123")
    if ds.get("FrameOfReferenceUID"):
        spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert [float(v) for v in spacing] == [float(v) for v in ds.PixelSpacing]


def test_default_labels_and_empty_segments(tmp_path):
    """No class names: ``class <k>``; a class absent from the mask is still a segment (empty)."""
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    mask = synthetic_mask(ds.Rows, ds.Columns, k=2)
    out = write_dicom_seg(mask, ds, tmp_path / "x.seg.dcm", num_classes=4)
    seg, pixels = read_back(out, ds)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["class 1", "class 2", "class 3"]
    assert np.array_equal(pixels, mask)
    empty = build_dicom_seg(np.zeros((ds.Rows, ds.Columns), np.uint8), ds)
    assert empty.NumberOfFrames == 1 and not empty.pixel_array.any()


def test_loader_layout_is_probed_and_square_masks_are_put_right(tmp_path):
    """MONAI's DICOM readers load a slice as (Columns, Rows): a square CT mask in that layout is transposed back."""
    from monai.transforms import Compose, LoadImaged

    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    probe = functools.partial(probe_dicom, ds)
    assert loader_transposes(Compose([LoadImaged(keys="image", reader="PydicomReader")]), probe, ".dcm") is True
    assert loader_transposes(Compose([LoadImaged(keys="image", reader="ITKReader")]), probe, ".dcm") is True
    assert loader_transposes(LoadImaged(keys="image", reader="PILReader", reverse_indexing=False), probe_png,
                             ".png") is False
    assert loader_transposes(Compose([LoadImaged(keys="image", reader="PILReader")]), probe_png, ".png") is True
    mask = synthetic_mask(ds.Rows, ds.Columns)
    out = write_dicom_seg(mask.T, ds, tmp_path / "t.seg.dcm", transposed=True, num_classes=3)
    assert np.array_equal(read_back(out, ds)[1], mask)
    rg = pydicom.dcmread(dicom_file("RG1_UNCI.dcm"), stop_before_pixels=True)  # not square: the shape tells
    assert mask_on_source_grid(np.zeros((1841, 1955, 1)), rg.Rows, rg.Columns).shape == (1955, 1841)
    with pytest.raises(DicomSegError, match=r"mask has shape \(100, 100\); expected \(128, 128\)"):
        build_dicom_seg(np.zeros((100, 100), np.uint8), ds)
    with pytest.raises(DicomSegError, match="class indices 0 .. 7; expected 0 .. 2"):
        build_dicom_seg(np.where(mask > 0, 7, 0).astype(np.uint8), ds, num_classes=3)


def test_sources_a_seg_cannot_reference_are_refused(tmp_path):
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))
    for keyword in ("SOPInstanceUID", "StudyInstanceUID"):
        delattr(ct, keyword)
    no_uid = tmp_path / "no_uid.dcm"
    ct.save_as(no_uid)
    with pytest.raises(DicomSegError) as err:
        write_dicom_seg(np.zeros((128, 128), np.uint8), no_uid, tmp_path / "x.seg.dcm")
    msg = str(err.value)
    assert msg.startswith(str(no_uid)) and "SOP Instance UID (0008,0018)" in msg and "Study Instance UID" in msg
    assert "\n" not in msg and not (tmp_path / "x.seg.dcm").exists()

    png = tmp_path / "picture.dcm"  # a PNG named .dcm
    shutil.copy(dicom_file("CT_small.dcm"), png)
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    with pytest.raises(DicomSegError, match="picture.dcm: not a readable DICOM file"):
        read_source(png)
    with pytest.raises(DicomSegError, match="has 10 frames; DICOM SEG output is written for single-frame"):
        read_source(dicom_file("emri_small.dcm"))
    assert is_dicom_file(dicom_file("CT_small.dcm")) and not is_dicom_file(tmp_path)


class _Bright(torch.nn.Module):
    """Logits ``(background, foreground) = (0.5 - x, x - 0.5)``: foreground where the scaled image is bright."""

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def test_predict_cases_writes_seg_next_to_mask_for_dicom_cases(tmp_path):
    """The CLI path: a DICOM case gets ``<stem>.seg.dcm`` whose pixels are the PNG mask on the source's grid (the
    loader read the square CT as (Columns, Rows)); a DICOM without UIDs keeps its mask and is noted, not fatal."""
    from monai.inferers import SimpleInferer
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd
    from PIL import Image

    from medpipe.inference.predict import predict_cases

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(dicom_file("CT_small.dcm"), src / "ct.dcm")
    ct = pydicom.dcmread(src / "ct.dcm")
    del ct.SOPInstanceUID
    ct.save_as(src / "no_uid.dcm")
    transform = Compose([LoadImaged(keys="image", reader="PydicomReader"), EnsureChannelFirstd(keys="image"),
                         ScaleIntensityd(keys="image")])
    cases = [{"image": str(src / "ct.dcm")}, {"image": str(src / "no_uid.dcm")}]
    recs = predict_cases(_Bright(), cases, transform, SimpleInferer(), "cpu", tmp_path / "pred", 2,
                         class_names=["background", "bone"], pipeline_name="ct_tiny", run_id="r1")
    assert recs[0]["dicom_seg"] == str(tmp_path / "pred" / "ct.seg.dcm")
    ds = pydicom.dcmread(src / "ct.dcm")
    seg, pixels = read_back(recs[0]["dicom_seg"], ds)
    png_mask = np.asarray(Image.open(recs[0]["mask"])) > 0  # as the loader laid it out: (Columns, Rows)
    assert np.array_equal(pixels.astype(bool), png_mask.T) and 0 < pixels.sum() < pixels.size
    # independently: bright pixels of the source in (Rows, Columns) order
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    bright = (values - values.min()) / (values.max() - values.min()) > 0.5
    assert np.mean(pixels.astype(bool) == bright) > 0.999
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["bone"] and referenced_uids(seg) == [ds.SOPInstanceUID]
    assert "dicom_seg" not in recs[1] and "SOP Instance UID" in recs[1]["dicom_seg_error"]
    assert (tmp_path / "pred" / "no_uid.png").exists() and not (tmp_path / "pred" / "no_uid.seg.dcm").exists()

"""Test helpers: real MSD hippocampus volumes re-written with other orientations and spacings, as NIfTI, as ITK files
and as DICOM series (pydicom), so that each format can be compared with the NIfTI of the same volume."""

import os

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

HIPPO = "msd_hippocampus"
#: a uint8 volume (integral values: exact in a 16-bit DICOM) of 35 x 51 x 35 voxels
UINT8_CASE = "hippocampus_001"


def real_volume(datasets, case=UINT8_CASE, label=False):
    """``(array (I, J, K), RAS affine)`` of a real hippocampus image (or its label)."""
    img = nib.load(str(datasets / HIPPO / ("labelsTr" if label else "imagesTr") / f"{case}.nii.gz"))
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)


def non_ras_affine(spacing=(0.9, 1.3, 2.0), origin=(12.5, -30.0, 7.25)):
    """A non-RAS affine (LAS-like rows flipped, axes permuted: i -> anterior/posterior, j -> left/right) with
    non-1 mm spacing: array axis 0 runs posterior, axis 1 left, axis 2 superior."""
    a = np.zeros((4, 4))
    a[1, 0] = -spacing[0]  # i -> -A (posterior)
    a[0, 1] = -spacing[1]  # j -> -R (left)
    a[2, 2] = spacing[2]   # k -> S
    a[:3, 3] = origin
    a[3, 3] = 1
    return a


def save_nifti(path, array, affine):
    """Write ``array`` with ``affine`` as NIfTI (its dtype kept); returns ``path`` as str."""
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def write_series(folder, array, affine, series_uid=None, description="test series", study_uid=None,
                 frame_uid=None, shuffle_names=True):
    """Write ``array`` ``(I, J, K)`` (integral values, 0..65535) with RAS ``affine`` as a DICOM MR series, one
    slice file per ``k`` (Columns = I, Rows = J), position, orientation and spacing from the affine.

    File names are shuffled against the slice order (so a reader must sort by position). Returns the list of
    ``(path, SOPInstanceUID)`` in slice order.
    """
    os.makedirs(folder, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    col_vec, row_vec, slice_vec = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    sx, sy, sz = (float(np.linalg.norm(v)) for v in (col_vec, row_vec, slice_vec))
    iop = [float(v) for v in np.concatenate([col_vec / sx, row_vec / sy])]
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    n = array.shape[2]
    order = np.random.default_rng(0).permutation(n) if shuffle_names else np.arange(n)
    written = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = os.path.join(folder, f"IM{order[k]:04d}.dcm")
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.PatientName, ds.StudyDate = "MR", "HIPPO001", "Test^Hippo", "20240101"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = "1", 1, int(order[k]) + 1, ""
        ds.SeriesDescription, ds.Manufacturer, ds.ReferringPhysicianName = description, "test", ""
        ds.PatientBirthDate, ds.PatientSex, ds.StudyTime = "", "O", "000000"
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [float(v) for v in lps[:3, 3] + k * slice_vec]
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(array[:, :, k].T.astype("<u2")).tobytes()
        ds.save_as(path, enforce_file_format=True)
        written.append((path, ds.SOPInstanceUID))
    return written

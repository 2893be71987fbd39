"""Predict whole images with a trained network and write the masks.

Each case goes through the pipeline's inference transforms, the sliding-window inferer, a softmax (or, with
test-time augmentation, the mean softmax over mirrored copies: :func:`medpipe.inference.tta.tta_softmax`), MONAI's
``Invertd`` (undoing invertible spatial transforms so the mask matches the original file's grid), the argmax and
the run's post-processing (:func:`medpipe.inference.postprocess.apply_postprocess`), and is written as a PNG
(``0``/``255`` for two classes, class indices otherwise) or NIfTI mask. A NIfTI mask of a volume (NIfTI, NRRD /
MetaImage, DICOM series folder) has its input's shape and RAS affine, read from the input's header
(:func:`medpipe.data.volumes.volume_geometry`), so it overlays the input in any viewer whatever ``Orientationd`` /
``Spacingd`` did in between. A case whose image is a single DICOM file or a DICOM series folder also gets
``<stem>.seg.dcm``, a DICOM SEG referencing it (every slice of a series; :mod:`medpipe.inference.dicom_seg`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from medpipe.data.volumes import volume_geometry
from medpipe.inference.dicom_seg import is_dicom_file, is_dicom_series
from medpipe.inference.postprocess import apply_postprocess
from medpipe.inference.tta import tta_softmax

logger = logging.getLogger(__name__)

__all__ = ["predict_case", "predict_cases", "write_mask", "mask_to_uint8"]


def _stem(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


@torch.inference_mode()
def predict_case(net: torch.nn.Module, case: Dict, transform, inferer, device, data: Optional[Dict] = None,
                 tta: bool = False, tta_axes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Class probabilities for one case on its original pixel grid.

    Args:
        net: network returning logits ``(1, K, *spatial)``; put in eval mode here.
        case: ``{"image": path, ...}``.
        transform: the inference ``Compose`` (loads the file; invertible spatial ops are undone).
        inferer: e.g. ``SlidingWindowInferer``.
        device: torch device.
        data: ``transform(case)`` when the caller has already computed it (e.g. to check the input shape).
        tta: test-time augmentation: the mean softmax of ``inferer(x, net)`` over the mirrored copies of the input
            along every combination of ``tta_axes`` (:func:`medpipe.inference.tta.tta_softmax`, nnU-Net's mirroring).
        tta_axes: spatial axes mirrored (0 = first spatial axis); default all.

    Returns:
        ``(K, *spatial)`` float32 softmax probabilities on the original image's grid.

    Raises:
        Exception: whatever the transforms raise for an unreadable case.
    """
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    net.eval()
    data = transform(dict(case)) if data is None else data
    image = data["image"]
    x = image[None].to(device)
    if tta:
        prob = tta_softmax(lambda t: inferer(t, net), x, tta_axes, flip_back=True)[0].cpu()
    else:
        prob = torch.softmax(inferer(x, net).float(), dim=1)[0].cpu()
    prob = prob.as_tensor() if isinstance(prob, MetaTensor) else prob
    if isinstance(image, MetaTensor) and image.applied_operations:
        data["pred"] = MetaTensor(prob, meta=image.meta, applied_operations=list(image.applied_operations))
        data = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False)(data)
        prob = data["pred"]
    return np.asarray(prob.detach().cpu() if isinstance(prob, torch.Tensor) else prob, dtype=np.float32)


def mask_to_uint8(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A class-index mask as 8-bit pixels.

    Args:
        mask: integer class indices, any shape (e.g. ``(H, W)``).
        num_classes: number of classes ``K``.

    Returns:
        uint8 array of ``mask``'s shape: with 2 classes ``0``/``255`` (the input label convention), otherwise the
        class indices themselves.
    """
    return (mask * 255).astype(np.uint8) if num_classes == 2 else mask.astype(np.uint8)


def _on_reference_grid(mask: np.ndarray, reference: Optional[str], series_uid) -> Tuple[np.ndarray, np.ndarray]:
    """``(mask, affine)``: the reference volume's RAS affine (identity when it is no volume) and the mask shaped
    as the volume (singleton axes dropped or added)."""
    geometry = volume_geometry(reference, series_uid) if reference else None
    if geometry is None:
        return mask, np.eye(4)
    shape, affine = geometry
    if tuple(mask.shape) != tuple(shape):
        if tuple(s for s in mask.shape if s != 1) != tuple(s for s in shape if s != 1):
            raise ValueError(f"mask of {reference}: shape {tuple(mask.shape)} is not the input's shape {tuple(shape)}; "
                             "expected a mask on the input's grid (are the spatial transforms invertible, so that "
                             "Invertd undoes them?)")
        mask = mask.reshape(shape)
    return mask, affine


def write_mask(mask: np.ndarray, path: Path, num_classes: int, reference: str = None, series_uid=None) -> Path:
    """Write a class-index mask.

    Args:
        mask: ``(H, W)`` (PNG) or ``(H, W[, D])`` (NIfTI) integer class indices.
        path: output file; ``.png`` or ``.nii.gz``.
        num_classes: with 2 classes a PNG stores ``0``/``255`` (the input label convention); otherwise the
            class indices themselves.
        reference: for NIfTI, the input the mask was predicted from: a volume (NIfTI, NRRD / MetaImage, DICOM
            series folder) gives the mask its shape and RAS affine (:func:`medpipe.data.volumes.volume_geometry`);
            anything else or ``None``: the identity affine.
        series_uid: for a DICOM series folder holding several series, the ``data.series_uid`` it was read with.

    Returns:
        ``path``.

    Raises:
        ValueError: a PNG asked for a mask that is not 2-D; a NIfTI mask whose shape is not its reference volume's
            (names the input and both shapes). DataError: the reference's header cannot be read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        from PIL import Image

        if mask.ndim != 2:
            raise ValueError(f"PNG output needs a 2D mask, got shape {mask.shape}; use output_format: nifti")
        Image.fromarray(mask_to_uint8(mask, num_classes)).save(path)
    else:
        import nibabel as nib

        mask, affine = _on_reference_grid(np.asarray(mask), reference, series_uid)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(path))
    return path


class _DicomSegWriter:
    """Writes ``<stem>.seg.dcm`` for the DICOM cases of one :func:`predict_cases` call; the loader's layout is
    probed once, with the first DICOM case's header."""

    def __init__(self, transform, num_classes: int, class_names, pipeline_name: str, run_id, series_uid=None):
        self.transform, self.num_classes, self.class_names = transform, num_classes, class_names
        self.pipeline_name, self.run_id, self.series_uid = pipeline_name, run_id, series_uid
        self.transposed: Optional[bool] = None
        self.probed = False

    def __call__(self, mask: np.ndarray, image: str, out: Path, rec: Dict) -> None:
        """Write the SEG of ``mask`` over ``image``; a source a SEG cannot reference is logged and noted in
        ``rec["dicom_seg_error"]``, the mask is kept."""
        import functools

        from medpipe.inference import dicom_seg

        try:
            if os.path.isdir(image):  # a series: the mask is (Columns, Rows, Slices) as DicomSeriesReader loads it
                rec["dicom_seg"] = str(dicom_seg.write_dicom_seg_series(
                    mask, image, out, series_uid=self.series_uid, class_names=self.class_names,
                    num_classes=self.num_classes, pipeline=self.pipeline_name, run_id=self.run_id))
                return
            ds = dicom_seg.read_source(image)
            if not self.probed:
                self.transposed = dicom_seg.loader_transposes(self.transform,
                                                              functools.partial(dicom_seg.probe_dicom, ds), ".dcm")
                self.probed = True
            rec["dicom_seg"] = str(dicom_seg.write_dicom_seg(
                mask, ds, out, self.class_names, num_classes=self.num_classes, pipeline=self.pipeline_name,
                run_id=self.run_id, transposed=self.transposed, name=image))
        except dicom_seg.DicomSegError as exc:
            logger.warning("no DICOM SEG: %s", exc)
            rec["dicom_seg_error"] = str(exc)


def predict_cases(net, cases: Sequence[Dict], transform, inferer, device, out_dir: Path, num_classes: int,
                  output_format: str = "png", save_probabilities: bool = False, progress: bool = False,
                  class_names: Optional[Sequence[str]] = None, pipeline_name: str = "medpipe",
                  run_id: Optional[str] = None, *, tta: bool = False, tta_axes: Optional[Sequence[int]] = None,
                  postprocess: Optional[Dict[str, Any]] = None,
                  probabilities: Optional[Sequence[np.ndarray]] = None, series_uid: Optional[Sequence[str]] = None,
                  on_case: Optional[Callable[[Dict, np.ndarray, np.ndarray], Optional[Dict]]] = None) -> List[Dict]:
    """Predict every case and write ``<out_dir>/<stem>.png`` (or ``.nii.gz``).

    The mask is the argmax of the probabilities, post-processed by ``postprocess`` when given. With
    ``save_probabilities`` also ``<stem>_prob.npy``: float32 foreground probability ``(H, W)`` for two
    classes, else all class probabilities ``(K, H, W)``. A NIfTI mask of a volume has the input's shape and affine
    (:func:`write_mask`). A case whose image is a single DICOM file (a CT/MR slice, a CR/DX radiograph) or a DICOM
    series folder also gets ``<stem>.seg.dcm``, a binary DICOM SEG with one segment per foreground class that
    references the image, every slice of a series (:func:`medpipe.inference.dicom_seg.write_dicom_seg`,
    :func:`~medpipe.inference.dicom_seg.write_dicom_seg_series`); an image a SEG cannot reference (no SOP Instance
    UID, several frames, ...) is logged as a warning and noted in the record, its mask is kept.

    Args:
        net: network returning logits ``(1, K, *spatial)``.
        cases: ``{"image": path[, "label": path]}`` records.
        transform: the inference ``Compose`` (see :func:`predict_case`).
        inferer: e.g. ``SlidingWindowInferer`` (:func:`medpipe.inference.sliding.build_inferer`).
        device: torch device.
        out_dir: output folder (created).
        num_classes: ``K``; with 2 a PNG stores ``0``/``255``.
        output_format: ``"png"`` (2-D) or ``"nifti"``.
        save_probabilities: also write the probabilities as ``.npy``.
        progress: tqdm progress bar over cases.
        class_names: ``K`` class names for the DICOM SEG's segment labels (default ``class <k>``).
        pipeline_name: the pipeline's name (the DICOM SEG's algorithm and series description).
        run_id: the MLflow run id (the DICOM SEG's device serial number), or ``None``.
        tta: average the softmax over mirrored copies (:func:`predict_case`).
        tta_axes: spatial axes mirrored by ``tta``; default all.
        postprocess: a spec of :func:`medpipe.inference.postprocess.choose_postprocess` applied to every mask, or
            ``None``.
        probabilities: ``(K, *spatial)`` probabilities already predicted for each case (same order), to write
            without predicting again.
        series_uid: ``data.series_uid``, for DICOM series folders holding several series (the mask's reference
            grid and the SEG's source slices).
        on_case: called as ``on_case(case, probabilities, mask)`` for every case (e.g. to score it); a dict it
            returns is merged into the case's record.

    Returns:
        One record per case: ``{"image", "label" (if any), "mask", "probabilities" (if saved), "dicom_seg"
        (DICOM inputs) or "dicom_seg_error" (a DICOM a SEG cannot reference)}`` and what ``on_case`` returned.

    Raises:
        ValueError: ``probabilities`` does not hold one array per case.
    """
    if probabilities is not None and len(probabilities) != len(cases):
        raise ValueError(f"probabilities: expected one array per case ({len(cases)}), got {len(probabilities)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = ".png" if output_format == "png" else ".nii.gz"
    records = []
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc=f"predict {out_dir.name}", leave=False)
    seg_writer = _DicomSegWriter(transform, num_classes, class_names, pipeline_name, run_id, series_uid)
    for i, case in enumerate(iterator):
        prob = (probabilities[i] if probabilities is not None
                else predict_case(net, case, transform, inferer, device, tta=tta, tta_axes=tta_axes))
        mask = prob.argmax(0)
        if postprocess:
            mask = apply_postprocess(mask, postprocess)
        stem = _stem(case["image"])
        rec = {"image": case["image"], "mask": str(write_mask(mask, out_dir / f"{stem}{ext}", num_classes,
                                                              case["image"], series_uid))}
        if "label" in case:
            rec["label"] = case["label"]
        if is_dicom_file(case["image"]) or is_dicom_series(case["image"]):
            seg_writer(mask, case["image"], out_dir / f"{stem}.seg.dcm", rec)
        if save_probabilities:
            p = out_dir / f"{stem}_prob.npy"
            np.save(p, prob[1] if num_classes == 2 else prob)
            rec["probabilities"] = str(p)
        if on_case is not None:
            rec.update(on_case(case, prob, mask) or {})
        records.append(rec)
    logger.info("wrote %d masks to %s", len(records), out_dir)
    return records

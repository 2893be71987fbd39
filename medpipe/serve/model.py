"""A trained pipeline (network + its own inference transforms) that predicts one uploaded image.

:func:`load_model` loads the run with :func:`medpipe.runs.load_trained`, which accepts

* an MLflow model URI, ``runs:/<run_id>/model``, ``models:/<name>/<version>`` or ``models:/<name>@<alias>``:
  the weights come from the logged model, the pipeline from the run's ``config.resolved.yaml`` and
  ``metrics.json`` artifacts;
* a run's artifact folder, ``<output_dir>/<run>/`` as ``medpipe.run`` writes it (weights from
  ``checkpoints/best_*.pt``, key ``net``), or a downloaded MLflow run artifact folder (weights from its
  ``model/`` MLflow model).

The network is rebuilt with :func:`medpipe.nets.build_net` from the resolved config and given the weights; the
inputs go through ``PipelineConfig.infer_transforms()`` built by :func:`medpipe.data.transforms.build_transforms`;
segmenters predict with :func:`medpipe.inference.predict.predict_case` and the run's sliding-window settings:
the same code path as ``medpipe.run``. Classifiers give ``softmax(net(x))`` (what ``medpipe.run``'s evaluation
computes) and the label by the run's operating threshold (two classes, from ``metrics.json``) or argmax.

Weights are loaded as tensors only; a run folder whose weights exist only as a pickled MLflow model is served only
with ``trust_pickle=True`` (``--trust-pickle``), which runs whatever code the pickle holds: use it only for run
folders you made yourself. ``GET /model`` shows no absolute server paths: a folder is named by its last component
and absolute paths in transform arguments by their file name.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from medpipe.config import PipelineConfig
from medpipe.runs import TrainedRun, is_model_uri, load_trained
from medpipe.serve.checks import check_dicom_upload, dicom_expectations
from medpipe.serve.images import DecodedImage, InputError, pillow_allows
from medpipe.serve.limits import Deadline
from medpipe.serve.previews import grey_to_rgb_png, png_b64, preview_png

logger = logging.getLogger(__name__)

__all__ = ["ServedModel", "load_model", "scratch_dir", "public_source"]

_GREY_MODES = ("L", "I;16", "I")


def scratch_dir() -> str:
    """Where an upload is written for the length of one prediction: ``/dev/shm`` (memory) when writable,
    else the system temporary folder."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def public_source(source: str) -> str:
    """What the server may show of where its model came from: an MLflow model URI as it is, a folder by its last
    component only (``/srv/runs/em_unet-2026.../`` -> ``em_unet-2026...``)."""
    source = str(source)
    return source if is_model_uri(source) else (Path(source).name or source)


def _without_paths(value: Any) -> Any:
    """``value`` (JSON-like) with every absolute path string replaced by its file name."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_paths(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return Path(value).name
    return value


@dataclass
class ServedModel:
    """A trained pipeline ready to predict single images.

    Build it with :func:`load_model`. :meth:`predict` is thread-safe (one prediction at a time).

    Attributes:
        trained: the :class:`medpipe.runs.TrainedRun` (config, network, transforms, inferer, classes, threshold,
            metrics, source, run id).
        keep_uploads: folder where each upload is kept (``None``: nothing is kept on disk).
    """

    trained: TrainedRun
    keep_uploads: Optional[Path] = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _layout: Dict[str, Optional[bool]] = field(default_factory=dict, repr=False)

    @property
    def cfg(self) -> PipelineConfig:
        """The run's resolved config."""
        return self.trained.cfg

    @property
    def task(self) -> str:
        """``classification`` or ``segmentation``."""
        return self.cfg.task

    @property
    def net(self):
        """The network in eval mode on :attr:`device`."""
        return self.trained.net

    @property
    def transform(self):
        """The pipeline's inference ``Compose`` (starts with its ``LoadImaged``)."""
        return self.trained.transform

    @property
    def inferer(self):
        """``SlidingWindowInferer`` for segmenters, else ``None``."""
        return self.trained.inferer

    @property
    def device(self):
        """The torch device of :attr:`net`."""
        return self.trained.device

    def describe(self) -> Dict[str, Any]:
        """What ``GET /model`` returns: pipeline name, task, classes, the run's metrics, the input spec."""
        cfg, run = self.cfg, self.trained
        metrics = run.metrics or {}
        out: Dict[str, Any] = {
            "pipeline": cfg.name, "task": cfg.task, "source": public_source(run.source), "run_id": run.run_id,
            "net": cfg.net.name, "classes": run.classes, "metrics": metrics.get("final", {}),
            "input": self.input_spec(), "tta": run.tta,
        }
        if cfg.task == "classification":
            out.update({"threshold": run.threshold, "decision_rule": self._decision_rule(),
                        "temperature": run.temperature, "ood": run.ood})
            for split in ("test", "val"):
                if isinstance(metrics.get(split), dict):
                    out.setdefault("evaluated_on", split)
                    out.setdefault("num_samples", metrics[split].get("num_samples"))
        else:
            out["num_classes"] = cfg.net.out_channels
            out["sliding_window"] = {"roi_size": list(cfg.infer.roi_size), "overlap": cfg.infer.overlap,
                                     "sw_batch_size": cfg.infer.sw_batch_size, "mode": cfg.infer.mode}
            out["postprocessing"] = run.postprocess
        return _without_paths(out)

    def input_spec(self) -> Dict[str, Any]:
        """Accepted files and what the network receives."""
        net = self.cfg.net
        return {
            "formats": ["png", "jpeg", "dicom"],
            "spatial_dims": net.spatial_dims, "in_channels": net.in_channels,
            "tensor": f"(1, {net.in_channels}, H, W) float32" if net.spatial_dims == 2 else
                      f"(1, {net.in_channels}, H, W, D) float32",
            "transforms": [{"name": t.name, **_without_paths(t.kwargs)} for t in self.cfg.infer_transforms()],
            "dicom_expected": dicom_expectations(self.cfg),
        }

    def _decision_rule(self) -> str:
        classes, thr = self.trained.classes or [], self.trained.threshold
        temp = self.trained.temperature
        how = (f"; P = softmax(logits / {temp:.6g}) (temperature fitted on validation)" if temp else "") + \
            ("; mean over mirrored copies (TTA)" if self.trained.tta else "")
        if thr is not None and len(classes) == 2:
            return f"{classes[1]} if P({classes[1]}) >= {thr:.6g}, else {classes[0]}{how}"
        return f"the most probable class (argmax){how}"

    # ---------------------------------------------------------------------------------------------- predict
    def predict_file(self, path: str, deadline: Optional[Deadline] = None, explain: bool = False) -> Dict[str, Any]:
        """Predict an image file through the pipeline's transforms.

        Args:
            path: a file the pipeline's ``LoadImaged`` reads (PNG/JPEG for the bundled pipelines).
            deadline: the request's time limit, checked before and after the transforms and before every forward
                pass of the network (each sliding-window batch, each mirrored copy, the explanation's); ``None``:
                no limit.
            explain: classifiers: add ``"heatmap"``, :func:`medpipe.serve.outputs.explanation_heatmap`.

        Returns:
            Classifier: :func:`medpipe.serve.outputs.classify` (``probabilities`` (C,) float64, ``label_index``,
            ``logits``, ``ood`` when the run has a threshold). Segmenter:
            ``{"probabilities": (K, H, W) float32 array on the file's pixel grid, "mask": (H, W) int64}``.

        Raises:
            InputError: 422 when the transforms fail on the image or the result has the wrong number of channels
                or dimensions for the network; 503 when ``deadline`` passes.
        """
        cfg = self.cfg
        if deadline is not None:
            deadline.check("before the pipeline's transforms")
        try:
            data = self.transform({"image": path})
        except Exception as exc:  # MONAI wraps errors of a transform in RuntimeError with the chain's text
            msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            msg = msg.replace(path, "<upload>")  # no server paths in answers
            raise InputError(422, f"the image does not fit pipeline {cfg.name!r}'s transforms: {msg}") from None
        image = data["image"]
        want_ndim = cfg.net.spatial_dims + 1
        if image.ndim != want_ndim or image.shape[0] != cfg.net.in_channels:
            raise InputError(422, f"wrong channel count or dimensions: model {cfg.name!r} expects "
                             f"{cfg.net.in_channels} channel(s) of a {cfg.net.spatial_dims}D image, i.e. "
                             f"(C={cfg.net.in_channels}, spatial...) after its transforms; this image gives shape "
                             f"{tuple(image.shape)} (e.g. a colour image for a grey-level model)")
        if deadline is None:
            return self._run_net(path, data, explain)
        step = "between network windows" if cfg.task == "segmentation" else "before the network"
        hook = self.net.register_forward_pre_hook(lambda module, args: deadline.check(step))
        try:
            return self._run_net(path, data, explain)
        finally:
            hook.remove()

    def _run_net(self, path: str, data: Dict[str, Any], explain: bool = False) -> Dict[str, Any]:
        """The network part of :meth:`predict_file` on the transformed ``data``
        (:mod:`medpipe.serve.outputs`: temperature, TTA, OOD score, post-processing, explanation)."""
        import torch

        from medpipe.serve.outputs import classify, explanation_heatmap, segment

        if self.cfg.task == "segmentation":
            return segment(self.trained, path, data)
        x = torch.as_tensor(data["image"])[None].to(self.device)
        out = classify(self.trained, x)
        if explain:
            out["heatmap"] = explanation_heatmap(self.trained, x, out["label_index"])
        return out

    def _predict_bytes(self, data: bytes, suffix: str, pixels: int, deadline: Optional[Deadline],
                       explain: bool = False) -> Dict[str, Any]:
        """:meth:`predict_file` on ``data`` (``pixels`` pixels, already allowed by the server) written to a scratch
        file that is removed afterwards; one prediction at a time, waiting at most until ``deadline``."""
        fd, path = tempfile.mkstemp(suffix=suffix, prefix="medpipe-upload-", dir=scratch_dir())
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            if self.keep_uploads is not None:
                self.keep_uploads.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, self.keep_uploads / Path(path).name)
            if not self._lock.acquire(timeout=-1 if deadline is None else deadline.remaining()):
                err = deadline.error("while waiting for the predictions ahead of it")
                err.headers = {"Retry-After": str(max(1, int(deadline.limit_s)))}
                raise err
            try:
                with pillow_allows(pixels):
                    return self.predict_file(path, deadline, explain)
            finally:
                self._lock.release()
        finally:
            os.unlink(path)

    def _predict_upload(self, decoded: DecodedImage, deadline: Optional[Deadline], explain: bool = False):
        """``(raw prediction, conversion note or None)``: a grey image that does not fit a pipeline written for
        colour files (e.g. ``EnsureChannelFirstd channel_dim: -1`` then ``ToGrayscaled``, for RGB JPEGs) is tried
        once more with three equal channels."""
        try:
            return self._predict_bytes(decoded.data, decoded.suffix, decoded.pixels, deadline, explain), None
        except InputError as first:
            if first.status != 422 or decoded.mode not in _GREY_MODES:
                raise
            try:
                raw = self._predict_bytes(grey_to_rgb_png(decoded.data), ".png", decoded.pixels, deadline, explain)
            except InputError:
                raise first from None
            return raw, "grey -> RGB with three equal channels (the pipeline reads colour images)"

    def _classification_body(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        classes, run = self.trained.classes, self.trained
        return {"label": classes[raw["label_index"]], "label_index": raw["label_index"],
                "probabilities": {c: float(p) for c, p in zip(classes, raw["probabilities"])},
                "threshold": run.threshold, "decision_rule": self._decision_rule(), "temperature": run.temperature,
                "tta": run.tta, **{k: v for k, v in (raw.get("ood") or {}).items() if k != "ood_kind"}}

    def _segmentation_body(self, mask: np.ndarray, spacing) -> Dict[str, Any]:
        """Mask PNG and areas of a ``(H, W)`` int mask; ``spacing``: ``(row, column)`` mm per pixel or ``None``."""
        from medpipe.inference.predict import mask_to_uint8

        k = self.cfg.net.out_channels
        counts = np.bincount(mask.ravel(), minlength=k)  # one pass over the mask
        fg = int(mask.size - counts[0])
        px_area = spacing[0] * spacing[1] if spacing else None
        per_class = {str(c): {"pixels": int(counts[c]), "mm2": float(counts[c] * px_area) if px_area else None}
                     for c in range(1, k)}
        return {"mask_png": png_b64(mask_to_uint8(mask, k)), "mask_shape": list(mask.shape),
                "mask_encoding": "PNG, 0 = class 0, 255 = class 1" if k == 2 else "PNG, pixel = class index",
                "area": {"foreground_pixels": fg, "foreground_fraction": fg / mask.size,
                         "foreground_mm2": fg * px_area if px_area else None, "per_class": per_class}}

    def _explanation(self, heatmap: np.ndarray, decoded: DecodedImage) -> str:
        """:func:`medpipe.serve.outputs.explanation_png` with the loader's layout (asked once, with a probe PNG)."""
        from medpipe.inference.dicom_seg import loader_transposes, probe_png
        from medpipe.serve.outputs import explanation_png

        if "png" not in self._layout:
            self._layout["png"] = loader_transposes(self.transform, probe_png, ".png")
        return explanation_png(heatmap, decoded, self._layout["png"])

    def check_dicom_seg(self, decoded: DecodedImage) -> None:
        """Whether a DICOM SEG can be made of this upload's prediction, checked before predicting.

        Raises:
            InputError: 422 when the model is not a segmenter, the upload is not a DICOM file, or its header lacks
                what a SEG references (SOP Instance UID, ...; :func:`medpipe.inference.dicom_seg.read_source`).
        """
        from medpipe.inference.dicom_seg import DicomSegError, read_source

        if self.task != "segmentation":
            raise InputError(422, f"DICOM SEG output needs a segmentation model; {self.cfg.name!r} is a "
                             f"{self.task} model: leave out format=dicom-seg / dicom_seg=true")
        if decoded.format != "dicom" or decoded.dataset is None:
            raise InputError(422, f"DICOM SEG output needs a DICOM upload (the SEG references the source image's "
                             f"UIDs); this upload is a {decoded.format.upper()} file: send the .dcm file, or leave "
                             "out format=dicom-seg / dicom_seg=true")
        try:
            read_source(decoded.dataset, "the DICOM upload")
        except DicomSegError as exc:
            raise InputError(422, str(exc)) from None

    def dicom_seg(self, mask: np.ndarray, decoded: DecodedImage) -> bytes:
        """The DICOM SEG (Part 10 bytes) of a predicted ``mask`` over the DICOM upload it was predicted on.

        The mask is laid out as the pipeline's loader read the PNG rendering of the upload; that layout is asked of
        the loader once, with a 2 x 3 probe PNG (:func:`medpipe.inference.dicom_seg.loader_transposes`).

        Raises:
            InputError: 422 when highdicom refuses the source (see
                :func:`medpipe.inference.dicom_seg.build_dicom_seg`).
        """
        from medpipe.inference.dicom_seg import DicomSegError, dicom_seg_bytes, loader_transposes, probe_png

        if "png" not in self._layout:
            self._layout["png"] = loader_transposes(self.transform, probe_png, ".png")
        k = self.cfg.net.out_channels
        names = self.trained.classes if self.trained.classes and len(self.trained.classes) == k else None
        try:
            return dicom_seg_bytes(mask, decoded.dataset, class_names=names, num_classes=k, pipeline=self.cfg.name,
                                   run_id=self.trained.run_id, transposed=self._layout["png"],
                                   name="the DICOM upload")
        except DicomSegError as exc:
            raise InputError(422, str(exc)) from None

    def predict(self, decoded: DecodedImage, preview: bool = False, deadline: Optional[Deadline] = None,
                dicom_seg: bool = False, explain: bool = False, allow_mismatch: bool = False) -> Dict[str, Any]:
        """Predict a decoded upload; the JSON body of ``POST /predict``.

        The upload is written to a scratch file (``/dev/shm`` where available) for the pipeline's ``LoadImaged``
        and removed afterwards (a copy is kept in ``keep_uploads`` when set). A grey image that does not fit a
        pipeline written for colour files is tried once more as RGB with three equal channels (``input.converted``
        says so).

        Returns:
            Classifier: ``label``, ``label_index``, ``probabilities`` (class name -> probability), ``threshold``,
            ``decision_rule``, ``temperature``, ``tta``, and ``ood_score``, ``ood_threshold``,
            ``out_of_distribution`` when the run fitted an OOD threshold; ``explanation_png`` (base64 PNG of the
            class-activation heatmap over the upload, at its size) when ``explain``. Segmenter: ``mask_png``
            (base64 PNG, ``0``/``255`` for two classes, else class indices; post-processed by the run's spec),
            ``tta``, ``postprocessing``, ``area`` (foreground = every class but 0: ``pixels``, ``fraction``, ``mm2`` or ``None``
            without pixel spacing, and per class). Both: ``input`` (format, size, spacing, DICOM facts),
            ``pipeline``, ``task``, ``seconds``, ``warnings`` (DICOM tags that do not fit the training data, answered
            under ``allow_mismatch``; else ``[]``); ``preview_png`` (base64, the grey levels the model saw before
            scaling, at most 1024 px) when ``preview``; ``dicom_seg_b64`` (base64 of a DICOM SEG Part 10 file,
            :meth:`dicom_seg`) when ``dicom_seg``.

        Args:
            decoded: the checked upload (:func:`medpipe.serve.images.decode_upload`).
            preview: add ``preview_png``.
            deadline: the request's time limit (``None``: none); waiting for the prediction in progress counts.
            dicom_seg: add ``dicom_seg_b64`` (a segmenter and a DICOM upload only, checked before predicting).
            explain: add ``explanation_png`` (classifiers only; its time counts against ``deadline``).
            allow_mismatch: answer a DICOM whose modality or body part is not the training data's, with
                ``warnings`` (:func:`medpipe.serve.checks.check_dicom_upload`), instead of refusing it.

        Raises:
            InputError: see :meth:`predict_file`; 503 when ``deadline`` passes while waiting or predicting; 422 when
                ``dicom_seg`` is asked of a classifier or of an upload that is not a DICOM a SEG can reference, or
                ``explain`` of a segmenter; 422 for a DICOM of another modality or body part (see
                ``allow_mismatch``).
        """
        t0 = time.perf_counter()
        warnings = check_dicom_upload(decoded, self.cfg, allow_mismatch)
        if explain and self.task != "classification":
            raise InputError(422, f"explanations (class-activation heatmaps) are made for classifiers; "
                             f"{self.cfg.name!r} is a {self.task} model: leave out explain=true")
        if dicom_seg:
            self.check_dicom_seg(decoded)
        raw, converted = self._predict_upload(decoded, deadline, explain)
        cfg = self.cfg
        spacing = decoded.pixel_spacing_mm
        out: Dict[str, Any] = {
            "pipeline": cfg.name, "task": cfg.task,
            "input": {"format": decoded.format, "width": decoded.width, "height": decoded.height,
                      "mode": decoded.mode, "pixel_spacing_mm": list(spacing) if spacing else None,
                      **({"dicom": decoded.info} if decoded.info else {}),
                      **({"converted": converted} if converted else {})},
        }
        if cfg.task == "classification":
            out.update(self._classification_body(raw))
            if explain:
                out["explanation_png"] = self._explanation(raw["heatmap"], decoded)
        else:
            out.update(self._segmentation_body(raw["mask"], spacing))
            out.update({"tta": self.trained.tta, "postprocessing": self.trained.postprocess})
            if dicom_seg:
                out["dicom_seg_b64"] = base64.b64encode(self.dicom_seg(raw["mask"], decoded)).decode("ascii")
        if preview:
            out["preview_png"] = preview_png(decoded)
        out["warnings"] = warnings
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out


def load_model(source: str, tracking_uri: Optional[str] = None, device: str = "cpu",
               keep_uploads: Optional[str] = None, trust_pickle: bool = False) -> ServedModel:
    """Load a trained pipeline for serving.

    Args:
        source: ``runs:/<id>/model``, ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or a run folder.
        tracking_uri: MLflow tracking URI for URIs (default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        keep_uploads: folder to keep a copy of every upload in (default: keep nothing).
        trust_pickle: allow weights that can only be unpickled (an MLflow ``model/`` saved as a pickled module),
            which runs code from the run folder; default ``False``: tensors only.

    Returns:
        :class:`ServedModel`.

    Raises:
        FileNotFoundError, medpipe.config.ConfigError, mlflow.exceptions.MlflowException, RuntimeError: see
            :func:`medpipe.runs.load_trained`.
    """
    trained = load_trained(source, tracking_uri, device, trust_pickle=trust_pickle)
    cfg = trained.cfg
    logger.info("serving %s (%s, %s) from %s", cfg.name, cfg.task, cfg.net.name, source)
    return ServedModel(trained, Path(keep_uploads) if keep_uploads else None)

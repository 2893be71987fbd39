"""Load a trained pipeline (network + its own inference transforms) and predict one image.

:func:`load_model` accepts

* an MLflow model URI, ``runs:/<run_id>/model``, ``models:/<name>/<version>`` or ``models:/<name>@<alias>``:
  the weights come from the logged model, the pipeline from the run's ``config.resolved.yaml`` and
  ``metrics.json`` artifacts (through :func:`medpipe.tracking.fetch_model_run`);
* a run's artifact folder, ``<output_dir>/<run>/`` as ``medpipe.run`` writes it (weights from
  ``checkpoints/best_*.pt``, key ``net``), or a downloaded MLflow run artifact folder (weights from its
  ``model/`` MLflow model).

The network is rebuilt with :func:`medpipe.nets.build_net` from the resolved config and given the weights; the
inputs go through ``PipelineConfig.infer_transforms()`` built by :func:`medpipe.data.transforms.build_transforms`;
segmenters predict with :func:`medpipe.inference.predict.predict_case` and the run's sliding-window settings:
the same code path as ``medpipe.run``. Classifiers give ``softmax(net(x))`` (what ``medpipe.run``'s evaluation
computes) and the label by the run's operating threshold (two classes, from ``metrics.json``) or argmax.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import yaml

from medpipe.config import PipelineConfig, validate_config
from medpipe.serve.images import DecodedImage, InputError

logger = logging.getLogger(__name__)

__all__ = ["ServedModel", "load_model", "load_run_artifacts", "RunArtifacts", "scratch_dir"]


@dataclass
class RunArtifacts:
    """What a served or exported model is made of.

    Attributes:
        cfg: the run's validated resolved config.
        state_dict: the network's weights (CPU tensors).
        metrics: the run's ``metrics.json`` (``{}`` when absent).
        source: the model URI or folder it was loaded from.
        run_id: the MLflow run id, when known.
        classes: class names in index order (classifiers), else ``None``.
        threshold: operating threshold on P(class 1) of a two-class classifier, else ``None`` (argmax).
        manifest: the run's ``manifest.json`` when it was found (used by export to pick a real image).
    """

    cfg: PipelineConfig
    state_dict: Dict[str, Any]
    metrics: Dict[str, Any]
    source: str
    run_id: Optional[str] = None
    classes: Optional[List[str]] = None
    threshold: Optional[float] = None
    manifest: Optional[Dict[str, Any]] = None


def _read_json(path: Optional[Path]) -> Dict[str, Any]:
    if path is None or not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text())


def _best_checkpoint(folder: Path) -> Optional[Path]:
    ckpts = sorted((folder / "checkpoints").glob("best_*.pt"), key=lambda p: p.stat().st_mtime)
    return ckpts[-1] if ckpts else None


def _is_uri(source: str) -> bool:
    return source.startswith(("runs:/", "models:/"))


def load_run_artifacts(source: str, tracking_uri: Optional[str] = None) -> RunArtifacts:
    """Resolve ``source`` to the run's config, weights, metrics and class names.

    Args:
        source: MLflow model URI or run artifact folder (see the module docstring).
        tracking_uri: MLflow tracking/registry URI for ``runs:/`` and ``models:/`` (default: the
            ``MLFLOW_TRACKING_URI`` environment variable, else ``sqlite:///mlflow.db``, medpipe's default store).

    Raises:
        FileNotFoundError: the folder does not exist or has no ``config.resolved.yaml`` or weights.
        medpipe.config.ConfigError: the resolved config does not validate with this medpipe version.
        mlflow.exceptions.MlflowException: the URI cannot be resolved.
    """
    import torch

    manifest = None
    run_id = None
    if _is_uri(source):
        from medpipe.tracking import fetch_model_run

        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        tmp = Path(tempfile.mkdtemp(prefix="medpipe-model-"))
        try:
            got = fetch_model_run(source, tmp, tracking_uri,
                                  files=("config.resolved.yaml", "metrics.json", "manifest.json"))
            cfg_path = got["files"]["config.resolved.yaml"]
            if cfg_path is None:
                raise FileNotFoundError(f"MLflow run {got['run_id']} of {source} has no config.resolved.yaml "
                                        "artifact; was it logged by medpipe.run?")
            cfg_text = cfg_path.read_text()
            metrics = _read_json(got["files"]["metrics.json"])
            manifest = _read_json(got["files"]["manifest.json"]) or None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        state, run_id = got["state_dict"], got["run_id"]
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"model {source!r} is neither an MLflow model URI (runs:/<id>/model, "
                                    "models:/<name>/<version>) nor an existing run artifact folder")
        cfg_file = folder / "config.resolved.yaml"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{folder} has no config.resolved.yaml: expected a run folder written by "
                                    "medpipe.run (<output_dir>/<run>/)")
        cfg_text = cfg_file.read_text()
        metrics = _read_json(folder / "metrics.json")
        manifest = _read_json(folder / "manifest.json") or None
        best = _best_checkpoint(folder)
        if best is not None:
            state = torch.load(best, map_location="cpu", weights_only=True)
            state = state.get("net", state)
        elif (folder / "model" / "MLmodel").is_file():
            from medpipe.tracking import load_model_state_dict

            state = load_model_state_dict(str(folder / "model"))
        else:
            raise FileNotFoundError(f"{folder} has neither checkpoints/best_*.pt nor an MLflow model in model/")
    cfg = validate_config(yaml.safe_load(cfg_text), f"{source} (config.resolved.yaml)")
    classes = threshold = None
    if cfg.task == "classification":
        classes = metrics.get("classes") or (manifest or {}).get("classes") or cfg.data.classes
        if not classes:
            classes = [f"class_{i}" for i in range(cfg.net.num_classes)]
            logger.warning("%s: class names not found (metrics.json, manifest.json, data.classes); using %s",
                           source, classes)
        thr = metrics.get("threshold")
        threshold = float(thr) if thr is not None and cfg.net.num_classes == 2 else None
    return RunArtifacts(cfg, state, metrics, source, run_id, list(classes) if classes else None, threshold,
                        manifest)


def scratch_dir() -> str:
    """Where an upload is written for the length of one prediction: ``/dev/shm`` (memory) when writable,
    else the system temporary folder."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def _png_b64(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class ServedModel:
    """A trained pipeline ready to predict single images.

    Build it with :func:`load_model`. :meth:`predict` is thread-safe (one prediction at a time).

    Attributes:
        artifacts: :class:`RunArtifacts` it was built from.
        net: the network in eval mode on ``device``.
        transform: the pipeline's inference ``Compose`` (starts with its ``LoadImaged``).
        inferer: ``SlidingWindowInferer`` for segmenters, else ``None``.
        device: torch device.
        keep_uploads: folder where each upload is kept (``None``: nothing is kept on disk).
    """

    artifacts: RunArtifacts
    net: Any
    transform: Any
    inferer: Any
    device: Any
    keep_uploads: Optional[Path] = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def cfg(self) -> PipelineConfig:
        return self.artifacts.cfg

    @property
    def task(self) -> str:
        return self.cfg.task

    def describe(self) -> Dict[str, Any]:
        """What ``GET /model`` returns: pipeline name, task, classes, the run's metrics, the input spec."""
        cfg, art = self.cfg, self.artifacts
        final = art.metrics.get("final", {})
        out: Dict[str, Any] = {
            "pipeline": cfg.name, "task": cfg.task, "source": art.source, "run_id": art.run_id,
            "net": cfg.net.name, "classes": art.classes, "metrics": final,
            "input": self.input_spec(),
        }
        if cfg.task == "classification":
            out["threshold"] = art.threshold
            out["decision_rule"] = self._decision_rule()
            for split in ("test", "val"):
                if isinstance(art.metrics.get(split), dict):
                    m = art.metrics[split]
                    out.setdefault("evaluated_on", split)
                    out.setdefault("num_samples", m.get("num_samples"))
        else:
            out["num_classes"] = cfg.net.out_channels
            out["sliding_window"] = {"roi_size": list(cfg.infer.roi_size), "overlap": cfg.infer.overlap,
                                     "sw_batch_size": cfg.infer.sw_batch_size, "mode": cfg.infer.mode}
        return out

    def input_spec(self) -> Dict[str, Any]:
        """Accepted files and what the network receives."""
        net = self.cfg.net
        return {
            "formats": ["png", "jpeg", "dicom"],
            "spatial_dims": net.spatial_dims, "in_channels": net.in_channels,
            "tensor": f"(1, {net.in_channels}, H, W) float32" if net.spatial_dims == 2 else
                      f"(1, {net.in_channels}, H, W, D) float32",
            "transforms": [{"name": t.name, **t.kwargs} for t in self.cfg.infer_transforms()],
        }

    def _decision_rule(self) -> str:
        classes = self.artifacts.classes or []
        if self.artifacts.threshold is not None and len(classes) == 2:
            return f"{classes[1]} if P({classes[1]}) >= {self.artifacts.threshold:.6g}, else {classes[0]}"
        return "the most probable class (argmax)"

    # ---------------------------------------------------------------------------------------------- predict
    def predict_file(self, path: str) -> Dict[str, Any]:
        """Predict an image file through the pipeline's transforms.

        Args:
            path: a file the pipeline's ``LoadImaged`` reads (PNG/JPEG for the bundled pipelines).

        Returns:
            Classifier: ``{"probabilities": (C,) float64 array, "label_index": int}``. Segmenter:
            ``{"probabilities": (K, H, W) float32 array on the file's pixel grid, "mask": (H, W) int64}``.

        Raises:
            InputError: 422 when the transforms fail on the image or the result has the wrong number of channels
                or dimensions for the network.
        """
        import torch

        cfg = self.cfg
        try:
            data = self.transform({"image": path})
        except Exception as exc:  # MONAI wraps errors of a transform in RuntimeError with the chain's text
            msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise InputError(422, f"the image does not fit pipeline {cfg.name!r}'s transforms: {msg}") from None
        image = data["image"]
        want_ndim = cfg.net.spatial_dims + 1
        if image.ndim != want_ndim or image.shape[0] != cfg.net.in_channels:
            raise InputError(422, f"wrong channel count or dimensions: model {cfg.name!r} expects "
                             f"{cfg.net.in_channels} channel(s) of a {cfg.net.spatial_dims}D image, i.e. "
                             f"(C={cfg.net.in_channels}, spatial...) after its transforms; this image gives shape "
                             f"{tuple(image.shape)} (e.g. a colour image for a grey-level model)")
        if cfg.task == "segmentation":
            from medpipe.inference.predict import predict_case

            # the same function medpipe.run uses, given the transformed image it inverts the transforms of
            prob = predict_case(self.net, {"image": path}, self.transform, self.inferer, self.device, data=data)
            return {"probabilities": prob, "mask": prob.argmax(0)}
        with torch.inference_mode():
            logits = self.net(torch.as_tensor(image)[None].to(self.device))
            probs = torch.softmax(logits.float(), dim=1)[0].cpu().double().numpy()
        thr = self.artifacts.threshold
        label = int(probs[1] >= thr) if thr is not None and probs.shape[0] == 2 else int(probs.argmax())
        return {"probabilities": probs, "label_index": label}

    def _predict_bytes(self, data: bytes, suffix: str) -> Dict[str, Any]:
        """:meth:`predict_file` on ``data`` written to a scratch file that is removed afterwards."""
        fd, path = tempfile.mkstemp(suffix=suffix, prefix="medpipe-upload-", dir=scratch_dir())
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            if self.keep_uploads is not None:
                self.keep_uploads.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, self.keep_uploads / Path(path).name)
            with self._lock:
                return self.predict_file(path)
        finally:
            os.unlink(path)

    def predict(self, decoded: DecodedImage, preview: bool = False) -> Dict[str, Any]:
        """Predict a decoded upload; the JSON body of ``POST /predict``.

        The upload is written to a scratch file (``/dev/shm`` where available) for the pipeline's ``LoadImaged``
        and removed afterwards (a copy is kept in ``keep_uploads`` when set). A grey image that does not fit a
        pipeline written for colour files is tried once more as RGB with three equal channels (``input.converted``
        says so).

        Returns:
            Classifier: ``label``, ``label_index``, ``probabilities`` (class name -> probability), ``threshold``,
            ``decision_rule``. Segmenter: ``mask_png`` (base64 PNG, ``0``/``255`` for two classes, else class
            indices), ``area`` (foreground = every class but 0: ``pixels``, ``fraction``, ``mm2`` or ``None``
            without pixel spacing, and per class). Both: ``input`` (format, size, spacing, DICOM facts),
            ``pipeline``, ``task``, ``seconds``; ``preview_png`` (base64, the grey levels the model saw before
            scaling, at most 1024 px) when ``preview``.

        Raises:
            InputError: see :meth:`predict_file`.
        """
        t0 = time.perf_counter()
        converted = None
        try:
            raw = self._predict_bytes(decoded.data, decoded.suffix)
        except InputError as first:
            # A grey image for a pipeline written for colour files (e.g. EnsureChannelFirstd channel_dim: -1 then
            # ToGrayscaled, for RGB JPEGs with three equal channels): try again with three equal channels.
            if first.status != 422 or decoded.mode not in ("L", "I;16", "I"):
                raise
            try:
                raw = self._predict_bytes(_grey_to_rgb_png(decoded.data), ".png")
            except InputError:
                raise first from None
            converted = "grey -> RGB with three equal channels (the pipeline reads colour images)"
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
            classes = self.artifacts.classes
            probs = raw["probabilities"]
            out.update({"label": classes[raw["label_index"]], "label_index": raw["label_index"],
                        "probabilities": {c: float(p) for c, p in zip(classes, probs)},
                        "threshold": self.artifacts.threshold, "decision_rule": self._decision_rule()})
        else:
            mask = raw["mask"]
            k = cfg.net.out_channels
            from medpipe.inference.predict import mask_to_uint8

            png = mask_to_uint8(mask, k)
            counts = np.bincount(mask.ravel(), minlength=k)  # one pass over the mask
            fg = int(mask.size - counts[0])
            px_area = spacing[0] * spacing[1] if spacing else None
            per_class = {str(c): {"pixels": int(counts[c]), "mm2": float(counts[c] * px_area) if px_area else None}
                         for c in range(1, k)}
            out.update({"mask_png": _png_b64(png), "mask_shape": list(mask.shape),
                        "mask_encoding": "PNG, 0 = class 0, 255 = class 1" if k == 2 else "PNG, pixel = class index",
                        "area": {"foreground_pixels": fg, "foreground_fraction": fg / mask.size,
                                 "foreground_mm2": fg * px_area if px_area else None, "per_class": per_class}})
        if preview:
            out["preview_png"] = _preview(decoded)
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out


def _grey_to_rgb_png(data: bytes) -> bytes:
    """A grey PNG/JPEG re-encoded as an RGB PNG with three equal 8-bit channels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "L":
            arr = np.asarray(img).astype(np.float64)
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        rgb = img.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue()


def _preview(decoded: DecodedImage, max_side: int = 1024) -> str:
    """The upload as a (down-scaled) 8-bit PNG for display, base64."""
    from PIL import Image

    with Image.open(io.BytesIO(decoded.data)) as img:
        if img.mode not in ("L", "RGB"):
            arr = np.asarray(img).astype(np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            img = Image.fromarray(np.round((arr - lo) / (hi - lo or 1) * 255).astype(np.uint8)) if arr.ndim == 2 \
                else img.convert("RGB")
        img = img.copy()
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def load_model(source: str, tracking_uri: Optional[str] = None, device: str = "cpu",
               keep_uploads: Optional[str] = None) -> ServedModel:
    """Load a trained pipeline for serving.

    Args:
        source: ``runs:/<id>/model``, ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or a run folder.
        tracking_uri: MLflow tracking URI for URIs (see :func:`load_run_artifacts`).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        keep_uploads: folder to keep a copy of every upload in (default: keep nothing).

    Returns:
        :class:`ServedModel`.

    Raises:
        FileNotFoundError, medpipe.config.ConfigError, mlflow.exceptions.MlflowException: see
            :func:`load_run_artifacts`.
        RuntimeError: the weights do not fit the network the config describes.
    """
    import torch

    from medpipe.data.transforms import build_transforms
    from medpipe.nets import build_net

    art = load_run_artifacts(source, tracking_uri)
    cfg = art.cfg
    net = build_net(cfg.net)
    try:
        net.load_state_dict(art.state_dict)
    except RuntimeError as exc:
        raise RuntimeError(f"{source}: the weights do not fit net {cfg.net.name!r} of its config: {exc}") from None
    dev = torch.device(device)
    net = net.to(dev).eval()
    transform = build_transforms(cfg.infer_transforms(), "transforms.infer")
    inferer = None
    if cfg.task == "segmentation":
        from medpipe.inference.sliding import build_inferer

        inferer = build_inferer(cfg.infer)
    logger.info("serving %s (%s, %s) from %s", cfg.name, cfg.task, cfg.net.name, source)
    return ServedModel(art, net, transform, inferer, dev, Path(keep_uploads) if keep_uploads else None)

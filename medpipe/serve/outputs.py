"""What the served network's outputs become: the answer a trained run reported, applied exactly as it reported it.

* Classifiers: ``softmax(logits / T)`` with the run's temperature ``T`` when it fitted one (``metrics.json``
  ``calibration``; :func:`medpipe.metrics.calibration.apply_temperature`, Guo et al. 2017), the mean softmax over
  mirrored copies when ``infer.tta`` (:func:`medpipe.inference.tta.tta_softmax`, ``flip_back=False``), and the
  out-of-distribution score of the logits against the threshold fitted on validation (``metrics.json`` ``ood``;
  :func:`medpipe.metrics.ood.ood_scores`).
* Segmenters: the sliding-window inference of the run, averaged over mirrored copies when ``infer.tta``
  (``flip_back=True``), then the run's post-processing of the mask (``metrics.json`` ``postprocessing``;
  :func:`medpipe.inference.postprocess.apply_postprocess`).
* Explanations: a class-activation heatmap of a classifier's input (:mod:`medpipe.inference.explain`, MONAI's
  ``GradCAM`` / ``GradCAMpp``) laid over the upload at its own size.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from medpipe.runs import TrainedRun
from medpipe.serve.images import DecodedImage, open_image
from medpipe.serve.previews import png_b64

__all__ = ["classify", "segment", "explanation_heatmap", "explanation_png"]


def _axes(trained: TrainedRun):
    axes = trained.cfg.infer.tta_axes
    return list(axes) if axes is not None else None


def classify(trained: TrainedRun, x) -> Dict[str, Any]:
    """Class probabilities, decision and OOD score of one transformed image.

    Args:
        trained: the run (network, temperature, OOD threshold, TTA, operating threshold).
        x: ``(1, C, H, W[, D])`` float32 tensor on the run's device.

    Returns:
        ``{"logits": (K,) float64, "probabilities": (K,) float64, "label_index": int}`` and, when the run has an
        ``ood`` section, ``"ood": {"ood_score": float, "ood_threshold": float, "out_of_distribution": bool,
        "ood_kind": str}`` (higher score = more unusual; out of distribution when above the threshold).
    """
    import torch

    net, temp = trained.net, trained.temperature
    with torch.inference_mode():
        logits_t = net(x).float()
        logits = logits_t.double().cpu().numpy()
        if trained.tta:
            from medpipe.inference.tta import tta_softmax

            scale = float(temp) if temp else 1.0
            probs = tta_softmax(lambda v: net(v).float() / scale, x, _axes(trained), flip_back=False)
            probs = probs.double().cpu().numpy()[0]
        elif temp:
            from medpipe.metrics.calibration import apply_temperature

            probs = np.asarray(apply_temperature(logits, float(temp)), dtype=np.float64)[0]
        else:
            probs = torch.softmax(logits_t, dim=1)[0].double().cpu().numpy()
    thr = trained.threshold
    label = int(probs[1] >= thr) if thr is not None and probs.shape[0] == 2 else int(probs.argmax())
    out: Dict[str, Any] = {"logits": logits[0], "probabilities": probs, "label_index": label}
    if trained.ood and trained.ood.get("threshold") is not None:
        from medpipe.metrics.ood import ood_scores

        kind = trained.ood.get("score", "energy")
        score = float(np.asarray(ood_scores(logits, kind)).reshape(-1)[0])
        limit = float(trained.ood["threshold"])
        out["ood"] = {"ood_score": score, "ood_threshold": limit, "out_of_distribution": bool(score > limit),
                      "ood_kind": kind}
    return out


def segment(trained: TrainedRun, path: str, data: Dict[str, Any]) -> Dict[str, Any]:
    """Probabilities and mask of one transformed image on the file's own pixel grid.

    The run's sliding-window inference through :func:`medpipe.inference.predict.predict_case` (the code path of
    ``medpipe.run``); with ``infer.tta`` the inferer returns ``log`` of the mean softmax over mirrored copies, whose
    softmax (taken by ``predict_case``) is that mean again. The mask is the argmax, post-processed by the run's
    spec when it has one.

    Returns:
        ``{"probabilities": (K, H, W) float32, "mask": (H, W) int64}``.
    """
    import torch

    from medpipe.inference.predict import predict_case

    inferer = trained.inferer
    if trained.tta:
        from medpipe.inference.tta import tta_softmax

        base, axes = trained.inferer, _axes(trained)

        def inferer(x, net):
            """log of the mean softmax of the sliding-window logits over the mirrored copies of ``x``."""
            mean = tta_softmax(lambda v: base(v, net), x, axes, flip_back=True)
            return torch.log(mean.float().clamp_min(1e-30))

    prob = predict_case(trained.net, {"image": path}, trained.transform, inferer, trained.device, data=data)
    mask = prob.argmax(0)
    if trained.postprocess:
        from medpipe.inference.postprocess import apply_postprocess

        mask = np.asarray(apply_postprocess(mask, trained.postprocess)).astype(np.int64)
    return {"probabilities": prob, "mask": mask}


def explanation_heatmap(trained: TrainedRun, x, class_index: int) -> np.ndarray:
    """``(H', W')`` float32 heatmap in [0, 1] of ``class_index`` on the network input ``x`` ``(1, C, H', W')``.

    Kind from ``cfg.report.explain`` (``gradcam`` when it is ``none``), layer ``cfg.report.explain_layer`` (default:
    :func:`medpipe.inference.explain.default_target_layer`).
    """
    from medpipe.inference.explain import class_activation_maps

    report = trained.cfg.report
    kind = report.explain if report.explain != "none" else "gradcam"
    maps = class_activation_maps(trained.net, x, class_index=class_index, kind=kind, layer=report.explain_layer)
    return np.asarray(maps, dtype=np.float32)[0]


def explanation_png(heatmap: np.ndarray, decoded: DecodedImage, transposed: Optional[bool]) -> str:
    """The heatmap laid over the upload, at the upload's size, as a base64 PNG ``(height, width, 3)``.

    Args:
        heatmap: ``(H', W')`` in [0, 1], laid out as the pipeline's loader read the image.
        decoded: the upload (the 8-bit rendering for DICOM).
        transposed: whether the loader reads 2D images columns first (``(W, H)``;
            :func:`medpipe.inference.dicom_seg.loader_transposes`); ``None``: told by the shapes.
    """
    from medpipe.inference.explain import overlay_heatmap

    h, w = decoded.height, decoded.width
    if transposed or (transposed is None and heatmap.shape != (h, w) and heatmap.shape == (w, h)):
        heatmap = heatmap.T
    with open_image(decoded.data) as img:  # 8-bit grey/RGB as is; other bit depths are min-max scaled
        image = np.asarray(img.convert("L") if img.mode in ("P", "LA") else img.convert("RGB")
                           if img.mode in ("RGBA", "CMYK", "YCbCr") else img)
    return png_b64(overlay_heatmap(image, heatmap))  # resized bilinearly to the upload's (height, width)

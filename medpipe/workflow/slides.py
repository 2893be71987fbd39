"""Slide-heatmap runs: a classification run (``task: classification``) with ``slide_infer``, whose best network is
then slid over whole slides (tile by tile, :func:`medpipe.inference.slide.predict_slide_heatmap`) and, where a
label mask is given, scored cell by cell."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import zarr
from PIL import Image

from medpipe.data.cases import DataError, resolve_root
from medpipe.data.wsi import check_slide
from medpipe.inference.slide import predict_slide_heatmap
from medpipe.inference.slide_scoring import score_heatmap
from medpipe.runs import no_nan
from medpipe.workflow.classification import ClassificationTask
from medpipe.workflow.report import slide_report_md
from medpipe.workflow.tasks import Outcome, RunState

logger = logging.getLogger(__name__)

__all__ = ["SlideHeatmapTask", "slide_files"]


def slide_files(cfg) -> List[Tuple[Path, Optional[Path]]]:
    """``(slide, label mask or None)`` paths of ``slide_infer.slides``, resolved against ``data.root``.

    Raises:
        FileNotFoundError: a slide or mask file does not exist (names the field and the path).
    """
    if cfg.slide_infer is None:
        return []
    root = resolve_root(cfg.data.root)
    out = []
    for i, spec in enumerate(cfg.slide_infer.slides):
        paths = []
        for key in ("image", "label_mask"):
            value = getattr(spec, key)
            path = None if value is None else (Path(value) if Path(value).is_absolute() else root / value)
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"slide_infer.slides.{i}.{key}: {path} not found (relative paths are "
                                        f"relative to data.root {root})")
            paths.append(path)
        out.append((paths[0], paths[1]))
    return out


class SlideHeatmapTask(ClassificationTask):
    """Classification plus whole-slide heatmaps (``slide_infer``).

    After the classification finish (:class:`~medpipe.workflow.classification.ClassificationTask`), every slide
    of ``slide_infer.slides`` is heatmapped with the best network. Writes ``slides/<stem>_heatmap.zarr`` (kept on
    disk, not uploaded), ``slides/<stem>_heatmap.png`` and ``slides/<stem>_overlay.png`` (logged under the run's
    ``slides/`` artifacts) and ``slides/slides.json``. Metrics: ``slide_auc`` (mean over scored slides; ROC AUC of
    positive vs negative label-mask cells), ``slide_seconds``, ``slide_tiles_per_second`` and per slide
    ``slide_<stem>_<metric>``. Sensitivity, specificity and F1 of the cells use the run's operating threshold
    (0.5 for argmax runs).
    """

    name = "slides"

    def check_inputs(self) -> None:
        """A missing, truncated, too large (for memory) or 16-bit slide, or a missing mask, fails before the data
        is read, not after training (:func:`medpipe.data.wsi.check_slide`: headers only, no pixels decoded).

        Raises:
            FileNotFoundError: a slide or mask file does not exist.
            medpipe.data.wsi.SlideError: a slide cannot be read (names the file and why).
        """
        for slide, _mask in slide_files(self.cfg):
            check_slide(slide, self.cfg.slide_infer.backend)

    def finish(self, state: RunState) -> Outcome:
        """Classification finish, then heatmap and score every slide; adds ``slides`` to ``metrics.json`` and a
        section to ``report.md``."""
        outcome = super().finish(state)
        thr = outcome.sections["threshold"]
        threshold = thr if thr is not None else 0.5
        rows, scalars = self._heatmaps(state, threshold)
        outcome.final.update(scalars)
        outcome.sections["slides"] = rows
        outcome.report = (outcome.report or "") + slide_report_md(rows, threshold, self.cfg.slide_infer)
        return outcome

    def _heatmaps(self, state: RunState, threshold: float) -> Tuple[List[Dict], Dict[str, float]]:
        """Per-slide rows (for ``metrics.json`` ``slides``) and scalar metrics."""
        cfg, si, out_dir = self.cfg, self.cfg.slide_infer, state.folder.path
        slide_dir = state.folder.slides_dir
        rows, scalars = [], {}
        for slide_path, mask_path in slide_files(cfg):
            hm = predict_slide_heatmap(state.engines.net, slide_path, si, out_dir=slide_dir,
                                       input_size=cfg.slide_input_size(), device=state.engines.device,
                                       progress=cfg.train.progress)
            row = {"slide": str(slide_path), "label_mask": str(mask_path) if mask_path else None, "level": hm.level,
                   "shape": list(hm.shape), "windows": hm.n_windows, "windows_run": hm.n_windows_run,
                   "tissue_fraction": hm.tissue_fraction, "inference_seconds": hm.inference_seconds,
                   "seconds": hm.seconds, "tiles_per_second": hm.tiles_per_second,
                   "heatmap_png": str(hm.heatmap_png.relative_to(out_dir)),
                   "overlay_png": str(hm.overlay_png.relative_to(out_dir)), "settings": hm.settings}
            if mask_path is not None:
                row["score"] = score_slide(hm, mask_path, si, threshold)
            rows.append(row)
            tag = re.sub(r"[^A-Za-z0-9_]", "_", slide_path.name.split(".")[0])
            scalars.update({f"slide_{tag}_{k}": v for k, v in row.get("score", {}).items()
                            if not k.startswith("n_") and k != "threshold"})
            scalars[f"slide_{tag}_seconds"] = hm.seconds
            for p in (hm.heatmap_png, hm.overlay_png):
                state.tracker.log_artifact(p, "slides")
        aucs = [r["score"]["auc"] for r in rows if "score" in r]
        if aucs:
            scalars["slide_auc"] = float(np.mean(aucs))
        scalars["slide_seconds"] = float(sum(r["seconds"] for r in rows))
        scalars["slide_tiles_per_second"] = sum(r["windows_run"] for r in rows) / max(
            sum(r["inference_seconds"] for r in rows), 1e-9)
        (slide_dir / "slides.json").write_text(json.dumps(no_nan(rows), indent=1))
        state.tracker.log_artifact(slide_dir / "slides.json", "slides")
        return rows, scalars


def score_slide(hm, mask_path: Path, si, threshold: float) -> Dict:
    """Score one heatmap against its label mask over ``roi_size`` cells (coverage = where windows ran).

    Args:
        hm: the slide's :class:`medpipe.inference.slide.SlideHeatmap`.
        mask_path: a one-channel label image over the whole slide (any resolution: cells are mapped by size).
        si: the ``slide_infer`` config (labels of positive / negative / background cells).
        threshold: operating threshold on the heatmap's probability.

    Returns:
        :func:`medpipe.inference.slide_scoring.score_heatmap`'s dict (``auc``, ``sensitivity``, ``n_patches``, ...).

    Raises:
        DataError: the mask is not a one-channel image (names the file and its shape).
    """
    with Image.open(mask_path) as im:
        mask = np.asarray(im)
    if mask.ndim != 2:
        raise DataError(f"slide_infer label_mask {mask_path}: expected a one-channel label image, found shape "
                        f"{mask.shape} (mode {im.mode})")
    coverage = np.asarray(zarr.open_group(str(hm.zarr_path), mode="r")["weight"]) > 0
    score = score_heatmap(hm.heatmap(), mask, si.roi_size, positive_label=si.positive_label,
                          negative_label=si.negative_label, background_label=si.background_label,
                          threshold=threshold, coverage=coverage)
    logger.info("slide %s: AUC %.4f over %d cells (%d positive, %d negative, %d not inferred)", hm.slide.name,
                score["auc"], score["n_patches"], score["n_pos"], score["n_neg"], score["n_uncovered"])
    return score

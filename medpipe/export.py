"""Export a trained network to TorchScript or ONNX with a JSON of its pre- and post-processing, or as a MONAI bundle.

``python -m medpipe.export MODEL --format torchscript|onnx|bundle [-o DIR] [--image FILE] [--trust-pickle]``

``MODEL`` is an MLflow model URI (``runs:/<id>/model``, ``models:/<name>/<version>``) or a run's artifact folder,
loaded with :func:`medpipe.runs.load_trained` (as :mod:`medpipe.serve` does): the network is rebuilt from the
run's validated config and its weights read as tensors only, so nothing in the folder or model runs as code. A
model with only a pickled file (logged before medpipe wrote ``extra_files/state_dict.pt``) is refused unless
``--trust-pickle`` is given, which unpickles it: only for models you trust. Writes into ``DIR`` (default
``export/<pipeline>-<format>/``):

* ``model.ts`` (TorchScript, ``torch.jit.trace`` by default or ``torch.jit.script``) or ``model.onnx`` (ONNX,
  ``torch.onnx.export``, opset 17, dynamic batch axis), written with MONAI's ``convert_to_torchscript`` /
  ``convert_to_onnx``;
* ``pipeline.json``: the input (tensor layout, dtype, channels), the pipeline's inference transforms by MONAI
  class name with their arguments (apply them in order to ``{"image": path}``; they load the file), the
  post-processing (softmax over dim 1; classes and the operating threshold for classifiers; sliding-window
  ``roi_size``, ``overlap``, ``mode``, ``sigma_scale``, ``sw_batch_size`` for segmenters, whose exported net
  takes windows of exactly ``roi_size``), what the server applies after the network as the run reported it
  (``reported``: the temperature, OOD threshold, TTA, post-processing spec;
  :func:`medpipe.bundle_docs.reported_processing`), the run's metrics, and the verification below.

``--format bundle`` writes a MONAI bundle instead (:mod:`medpipe.bundle`: ``configs/metadata.json``,
``configs/inference.json`` of MONAI classes only, ``models/model.pt`` and ``model.ts``, ``docs/README.md`` with the
metrics and model card, ``LICENSE``), checks it with ``monai.bundle.verify_metadata`` (offline) and
``verify_net_in_out``, and runs it through ``monai.bundle.ConfigWorkflow`` on the real image: its probabilities must
equal medpipe's own inference to ``--atol`` and its written mask (or decision) exactly. Pipelines with a medpipe-only
net (``lenet``) or transform (``ToGrayscaled``) are refused, naming it, before anything is written.

Verification: a real image (``--image``, or the first existing file of the run's validation/test/train split from
``manifest.json``) goes through the pipeline's transforms; the original and the exported network must give the
same logits (max abs difference <= ``--atol``, default 1e-4) on it, whole image for classifiers, all windows of
the sliding-window inference for segmenters. ONNX is run with onnxruntime when installed (``pip install
'medpipe[export]'``); without it the ONNX file is only checked structurally (``onnx.checker``), and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from medpipe.bundle_docs import reported_processing
from medpipe.logs import configure_cli_logging
from medpipe.model_card import MODEL_CARD_FILE, run_model_card
from medpipe.runs import DEFAULT_TRACKING_URI, TrainedRun, load_trained

logger = logging.getLogger(__name__)

__all__ = ["ExportError", "ExportResult", "export_model", "pick_real_image", "main"]

_ONNX_HINT = "ONNX export needs the export extra: pip install 'medpipe[export]' (onnx, onnxruntime)"
FORMATS = ("torchscript", "onnx", "bundle")


class ExportError(RuntimeError):
    """The export failed, or the exported model's outputs differ from the original's."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured.

    Attributes:
        model_path: the TorchScript (``model.ts``) or ONNX (``model.onnx``) file.
        spec_path: ``pipeline.json``.
        spec: its content.
        max_abs_diff: largest absolute logit difference exported vs original on the real image, or ``None`` when
            the ONNX model could not be run (no onnxruntime).
    """

    model_path: Path
    spec_path: Path
    spec: Dict[str, Any]
    max_abs_diff: Optional[float]


def pick_real_image(manifest: Optional[Dict[str, Any]]) -> Optional[str]:
    """The first image of the run's ``manifest.json`` (val, then test, then train) that exists, or ``None``."""
    for split in ("val", "test", "train"):
        for case in (manifest or {}).get(split, []) or []:
            path = case.get("image") if isinstance(case, dict) else None
            if isinstance(path, str) and Path(path).is_file():
                return path
    return None


def _window(x, roi: List[int]):
    """The top-left ``roi`` window of ``x`` ``(1, C, *spatial)``, zero-padded where the image is smaller."""
    import torch

    crop = x[(slice(None), slice(None)) + tuple(slice(0, r) for r in roi)]
    pad = []
    for r, s in zip(reversed(roi), reversed(crop.shape[2:])):
        pad += [0, max(r - s, 0)]
    return torch.nn.functional.pad(crop, pad) if any(pad) else crop


def _onnx_runner(path: Path) -> Optional[Callable]:
    try:
        import onnxruntime as ort
    except ImportError:
        logger.warning("onnxruntime is not installed: the ONNX model is checked structurally only (%s)", _ONNX_HINT)
        return None
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        """``(B, C, *spatial)`` tensor -> the ONNX model's float32 logits as a CPU tensor."""
        out = session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)

    return run


def _spec(art: TrainedRun, fmt: str, method: str, example_shape, model_file: str) -> Dict[str, Any]:
    """``pipeline.json`` without its ``verification`` section."""
    cfg = art.cfg
    net = cfg.net
    post: Dict[str, Any] = {"activation": "softmax", "dim": 1}
    if cfg.task == "classification":
        post.update({"classes": art.classes, "threshold": art.threshold, "temperature": art.temperature,
                     "ood": art.ood, "tta": art.tta,
                     **({"activation": f"softmax(logits / {art.temperature:.8g})"} if art.temperature else {}),
                     "decision": (f"class 1 ({art.classes[1]}) if softmax[:, 1] >= threshold else class 0"
                                  if art.threshold is not None else "argmax over dim 1")})
        layout = f"(B, {net.in_channels}, H, W)" if net.spatial_dims == 2 else f"(B, {net.in_channels}, H, W, D)"
        output = f"(B, {net.num_classes}) float32 logits"
    else:
        inf = cfg.infer
        post.update({"num_classes": net.out_channels, "decision": "argmax over dim 1 (class index per pixel)",
                     "sliding_window": {"roi_size": list(inf.roi_size), "overlap": inf.overlap, "mode": inf.mode,
                                        "sigma_scale": inf.sigma_scale, "sw_batch_size": inf.sw_batch_size,
                                        "padding_mode": inf.padding_mode,
                                        "implementation": "monai.inferers.SlidingWindowInferer"},
                     "invert_spatial_transforms": "monai.transforms.Invertd of the pre-processing, then argmax",
                     "mask_png": "0/255 for two classes, else class indices", "tta": art.tta,
                     "postprocess": art.postprocess})
        layout = "(B, %d, %s)" % (net.in_channels, ", ".join(str(r) for r in inf.roi_size))
        output = f"(B, {net.out_channels}, {', '.join(str(r) for r in inf.roi_size)}) float32 logits"
    return {
        "pipeline": cfg.name, "task": cfg.task, "net": net.name, "source": art.source, "run_id": art.run_id,
        "format": fmt, "model_file": model_file,
        "method": method if fmt == "torchscript" else "torch.onnx.export (opset 17, dynamic batch)",
        "input": {"name": "image", "layout": layout, "dtype": "float32", "in_channels": net.in_channels,
                  "spatial_dims": net.spatial_dims, "example_shape": list(example_shape)},
        "output": {"name": "logits", "layout": output},
        "preprocessing": [{"name": t.name, "args": t.kwargs} for t in cfg.infer_transforms()],
        "preprocessing_note": "MONAI dictionary transforms applied in order to {'image': <file path>} "
                              "(the first one loads the file); the result's 'image' gets a batch axis",
        "postprocessing": post,
        "reported": reported_processing(art),
        "metrics": (art.metrics or {}).get("final", {}),
    }


def _write_model(net, example, fmt: str, method: str, out_dir: Path) -> Tuple[Path, Optional[Callable]]:
    """Write ``model.ts`` or ``model.onnx`` with MONAI's ``convert_to_torchscript`` / ``convert_to_onnx`` and
    return it with a function running it (``None``: ONNX without onnxruntime).

    MONAI's own check (``verify=True``) is not used: it compares the outputs on the example input only (one
    ``roi_size`` window for segmenters, not every window of the real image), raises ``torch.testing`` errors
    instead of giving the difference that ``pipeline.json`` records, re-seeds the process-wide random generators
    (``set_determinism(seed=0)`` then ``set_determinism(None)``), and took 8.4 s instead of 1.6 s for the tiny
    EM BasicUNet (2 CPU cores, MONAI 1.6.1, torch 2.13). Without it the files equal those of plain
    ``torch.jit.trace`` / ``torch.onnx.export`` (ONNX byte for byte; TorchScript with identical outputs),
    measured on BasicUNet and ResNet-18. :func:`_compare` checks them on the whole image instead.
    """
    import warnings

    import torch
    from monai.networks.utils import convert_to_onnx, convert_to_torchscript

    if fmt == "torchscript":
        model_path = out_dir / "model.ts"
        convert_to_torchscript(net, str(model_path), use_trace=method == "trace", inputs=(example,))
        return model_path, torch.jit.load(str(model_path), map_location="cpu").eval()
    import onnx

    model_path = out_dir / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_to_onnx(net, (example,), input_names=["image"], output_names=["logits"], opset_version=17,
                                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                                filename=str(model_path), dynamo=False)
    onnx.checker.check_model(model)
    return model_path, _onnx_runner(model_path)


def _compare(trained: TrainedRun, x, runner: Callable) -> Tuple[float, bool]:
    """``(max |logit difference|, same argmax on >= 99.99 % of outputs)`` of the exported model vs the original
    on ``x`` ``(1, C, *spatial)``: the whole image for classifiers, every window of the sliding-window inference
    for segmenters."""
    import torch

    net = trained.net
    # plain execution: TorchScript's profiling executor would spend seconds optimising during the check
    with torch.no_grad(), torch.jit.optimized_execution(False):
        if trained.cfg.task == "classification":
            ref, got = net(x), runner(x)
        else:
            ref = trained.inferer(x, net)
            got = trained.inferer(x, lambda w: runner(w.contiguous()))
    ref, got = torch.as_tensor(ref).float(), torch.as_tensor(got).float()
    return float((ref - got).abs().max()), bool((ref.argmax(1) == got.argmax(1)).float().mean() >= 0.9999)


def _compare_bundle(trained: TrainedRun, bundle_dir: Path, image: str) -> Tuple[float, bool]:
    """Run the bundle through ``monai.bundle.ConfigWorkflow`` on ``image`` and compare with medpipe's own inference:
    ``(max |probability difference|, same decision)``; for segmenters the decision is the mask file the bundle
    wrote against medpipe's argmax, for classifiers the argmax (or the operating threshold) of the probabilities."""
    import tempfile

    import torch

    from medpipe.bundle import run_bundle
    from medpipe.inference.predict import mask_to_uint8, predict_case

    cfg = trained.cfg
    with tempfile.TemporaryDirectory(prefix="medpipe-bundle-") as tmp:
        out = run_bundle(bundle_dir, [image], Path(tmp))[0]
        if cfg.task == "classification":
            x = torch.as_tensor(trained.transform({"image": image})["image"])[None].float()
            with torch.no_grad():  # the bundle divides by the run's temperature as the server does
                logits = trained.net(x.to(trained.device)).float() / float(trained.temperature or 1.0)
                ref = torch.softmax(logits, 1)[0].cpu().numpy()
            got = np.asarray(torch.as_tensor(out["pred"]).detach().cpu(), dtype=np.float32).reshape(ref.shape)
            same = bool(ref.argmax() == got.argmax()) if trained.threshold is None else \
                bool((ref[1] >= trained.threshold) == (got[1] >= trained.threshold))
            return float(np.abs(ref - got).max()), same
        ref = predict_case(trained.net, {"image": image}, trained.transform, trained.inferer, trained.device)
        mask = ref.argmax(0)  # before post-processing, which the bundle records but does not apply
        got = np.asarray(torch.as_tensor(out["prob"]).detach().cpu(), dtype=np.float32)
        masks = sorted(Path(tmp).glob("*_seg.*"))
        if not masks or got.shape != ref.shape:
            return float("inf"), False
        same = _read_mask(masks[0], ref.shape[1:])
        same = same is not None and np.array_equal(same, mask_to_uint8(mask, cfg.net.out_channels)
                                                   if masks[0].suffix == ".png" else mask)
        return float(np.abs(ref - got).max()), bool(same)


def _read_mask(path: Path, shape) -> Optional[np.ndarray]:
    """The mask file a bundle wrote as an array of ``shape`` (PNG through Pillow, NIfTI through nibabel), or
    ``None`` when its shape differs."""
    if path.suffix == ".png":
        from PIL import Image

        arr = np.asarray(Image.open(path))
    else:
        import nibabel as nib

        arr = np.asarray(nib.load(str(path)).dataobj)
    return arr if tuple(arr.shape) == tuple(shape) else None


def _export_bundle(trained: TrainedRun, x, example, image: str, out_dir: Path, method: str, atol: float
                   ) -> ExportResult:
    """Write the MONAI bundle (:mod:`medpipe.bundle`) with ``models/model.ts``, check it with MONAI's
    ``verify_metadata`` / ``verify_net_in_out``, run it through ``monai.bundle`` on the real image and compare with
    medpipe's own inference; the numbers go into ``metadata.json`` (``medpipe.verification``) and the README."""
    from medpipe.bundle import verify_bundle, write_bundle_files, write_docs

    t0 = time.time()
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    model_path, runner = _write_model(trained.net, example, "torchscript", method, out_dir / "models")
    diff, same = _compare(trained, x, runner)
    verification: Dict[str, Any] = {"image": image, "tensor_shape": list(x.shape), "atol": atol,
                                    "max_abs_logit_diff": diff, "same_argmax": same}
    write_bundle_files(trained, out_dir, verification)
    verify_bundle(out_dir)
    prob_diff, same_decision = _compare_bundle(trained, out_dir, image)
    verification.update({"bundle_max_abs_prob_diff": prob_diff, "bundle_same_decision": same_decision,
                         "checked_with": "torch.jit.load; monai.bundle.verify_metadata, verify_net_in_out, "
                                         "ConfigWorkflow", "seconds_to_export": round(time.time() - t0, 2)})
    meta = write_docs(trained, out_dir, verification)
    if diff > atol or prob_diff > atol or not same_decision:
        raise ExportError(f"the bundle differs from the original on {image}: max |logit difference| {diff:.3g} "
                          f"(TorchScript), max |probability difference| {prob_diff:.3g} and same decision "
                          f"{same_decision} (monai.bundle run); atol {atol:g} (files kept in {out_dir})")
    logger.info("exported %s as a MONAI bundle to %s", trained.cfg.name, out_dir)
    return ExportResult(model_path, out_dir / "configs" / "metadata.json", meta, diff)


def export_model(source: str, fmt: str, out_dir: Optional[Path] = None, image: Optional[str] = None,
                 tracking_uri: Optional[str] = None, method: str = "trace", atol: float = 1e-4,
                 trust_pickle: bool = False) -> ExportResult:
    """Export the network of a trained pipeline and verify it on a real image.

    Args:
        source: MLflow model URI or run artifact folder.
        fmt: ``torchscript``, ``onnx`` or ``bundle`` (a MONAI bundle folder: :mod:`medpipe.bundle`).
        out_dir: output folder (default ``export/<pipeline>-<fmt>``).
        image: a real image file for the verification (default: from the run's manifest).
        tracking_uri: MLflow tracking URI for ``runs:/`` / ``models:/``.
        method: TorchScript only: ``trace`` (with the real image, or a window of ``roi_size`` of it) or ``script``.
        atol: largest allowed absolute logit difference.
        trust_pickle: unpickle a model that has only a pickled file (see :func:`medpipe.runs.load_trained`);
            unpickling runs any code the file holds.

    Returns:
        :class:`ExportResult`; for a bundle ``model_path`` is ``models/model.ts``, ``spec_path``
        ``configs/metadata.json`` and ``spec`` the metadata (its ``medpipe.verification`` has the measurements).

    Raises:
        ValueError: unknown ``fmt``/``method``, or no real image found; the model can only be read by unpickling
            and ``trust_pickle`` is false (:class:`medpipe.runs.UntrustedModelError`); the pipeline cannot be a
            MONAI bundle (:class:`medpipe.bundle.BundleError`, naming the net or transform).
        ImportError: ``onnx`` is missing (with the install command).
        ExportError: the exported model's logits differ from the original's by more than ``atol``.
    """
    import torch

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if method not in ("trace", "script"):
        raise ValueError(f"unknown TorchScript method {method!r}; expected trace or script")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ImportError(_ONNX_HINT) from None
    trained = load_trained(source, tracking_uri, trust_pickle=trust_pickle)
    cfg = trained.cfg
    if fmt == "bundle":
        from medpipe.bundle import bundle_metadata, check_bundle_support

        check_bundle_support(cfg)  # both raise BundleError before any file is written
        bundle_metadata(trained)
    image = image or pick_real_image(trained.manifest)
    if image is None or not Path(image).is_file():
        raise ValueError(f"no real image to verify the export with: pass --image FILE "
                         f"({'not found: ' + str(image) if image else 'the run manifest lists none that exists'})")
    net = trained.net.eval()
    x = torch.as_tensor(trained.transform({"image": image})["image"])[None].float()
    example = x if cfg.task == "classification" else _window(x, list(cfg.infer.roi_size))
    out_dir = Path(out_dir or Path("export") / f"{cfg.name}-{fmt}")
    out_dir.mkdir(parents=True, exist_ok=True)

    if fmt == "bundle":
        return _export_bundle(trained, x, example, str(image), out_dir, method, atol)
    t0 = time.time()
    model_path, runner = _write_model(net, example, fmt, method, out_dir)
    seconds = time.time() - t0
    diff, same_decision = _compare(trained, x, runner) if runner is not None else (None, None)

    spec = _spec(trained, fmt, method, example.shape, model_path.name)
    spec["verification"] = {"image": str(image), "tensor_shape": list(x.shape), "atol": atol,
                            "max_abs_logit_diff": diff, "seconds_to_export": round(seconds, 2),
                            "checked_with": ("torch.jit.load" if fmt == "torchscript" else
                                             "onnxruntime" if runner is not None else
                                             "onnx.checker only (onnxruntime not installed)")}
    if diff is not None:
        spec["verification"]["same_argmax"] = same_decision
    spec_path = out_dir / "pipeline.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    (out_dir / MODEL_CARD_FILE).write_text(run_model_card(
        trained.folder.path if trained.folder is not None else None, cfg, trained.metrics or {}, trained.manifest,
        trained.run_id))
    if diff is not None and diff > atol:
        raise ExportError(f"exported {fmt} model differs from the original on {image}: max |logit difference| "
                          f"{diff:.3g} > atol {atol:g} (files kept in {out_dir})")
    logger.info("exported %s to %s (max |diff| %s)", cfg.name, model_path, diff)
    return ExportResult(model_path, spec_path, spec, diff)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medpipe.export", description=__doc__.split("\n")[0])
    p.add_argument("model", help="MLflow model URI (runs:/<id>/model, models:/<name>/<version>) or run folder")
    p.add_argument("--format", dest="fmt", choices=FORMATS, required=True)
    p.add_argument("-o", "--out", default=None, help="output folder (default export/<pipeline>-<format>)")
    p.add_argument("--image", default=None, help="real image for the equality check (default: from the run)")
    p.add_argument("--method", choices=("trace", "script"), default="trace", help="TorchScript: trace or script")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed |logit difference| (default 1e-4)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle a model that has only a pickled file (logged before medpipe wrote a weights-only "
                   "state dict); unpickling runs any code in the file: only for models you trust")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or "
                   f"{DEFAULT_TRACKING_URI})")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns 0 on success, 1 when the outputs differ, 2 for bad arguments or a missing model."""
    args = _parser().parse_args(argv)
    configure_cli_logging()
    try:
        res = export_model(args.model, args.fmt, Path(args.out) if args.out else None, args.image,
                           args.tracking_uri, args.method, args.atol, args.trust_pickle)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    v = res.spec["medpipe"]["verification"] if args.fmt == "bundle" else res.spec["verification"]
    print(f"wrote {res.model_path} and {res.spec_path}")
    print(f"  checked on {v['image']} with {v['checked_with']}: max |logit difference| {v['max_abs_logit_diff']}")
    if args.fmt == "bundle":
        print(f"  monai.bundle run vs medpipe: max |probability difference| {v['bundle_max_abs_prob_diff']}, "
              f"same decision: {v['bundle_same_decision']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one request may cost the server, and whether an upload's values fit what the pipeline expects.

* :func:`default_max_pixels`: the pixel limit sized to the model when ``--max-pixels`` is not given;
* :func:`intensity_window` and :func:`check_intensity`: a 16-bit image sent to a pipeline whose intensity transform
  was written for 8-bit images (``ScaleIntensityRanged a_min: 0, a_max: 255, clip: true``) would be clipped to a
  nearly white picture and give a confidently wrong answer; such uploads are refused with 422;
* :class:`Deadline`: the per-request time limit, checked between the steps of a prediction and before every
  forward pass of the network (each sliding window batch);
* :class:`Gate`: the bounded queue: at most ``1 + max_queue`` requests are admitted at once, the rest get 503
  with ``Retry-After``.

The standard library only at module level (no torch).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

from medpipe.serve.images import DecodedImage, InputError

__all__ = ["PIXEL_FLOOR", "PIXEL_CAP", "INPUTS_PER_REQUEST", "default_max_pixels", "IntensityWindow",
           "intensity_window", "check_intensity", "Deadline", "Gate"]

PIXEL_FLOOR = 4096 * 4096  #: the default limit is never below a 4096 x 4096 image (large radiographs)
PIXEL_CAP = 100_000_000  #: ... nor above 100 megapixels
INPUTS_PER_REQUEST = 256  #: the default limit allows this many network inputs' worth of pixels

_RESIZE = ("Resized", "Resize")
_WINDOW = ("ScaleIntensityRanged", "ScaleIntensityRange")


def _keys(kwargs: Dict[str, Any]) -> Tuple[str, ...]:
    keys = kwargs.get("keys", ("image",))
    return (keys,) if isinstance(keys, str) else tuple(keys)


def _image_transforms(cfg) -> Iterable[Any]:
    """The inference transforms that act on ``image`` (the array transforms without ``keys`` count too)."""
    return [t for t in cfg.infer_transforms() if "image" in _keys(t.kwargs)]


def _area(size, dims: int) -> int:
    sizes = [int(size)] * dims if isinstance(size, (int, float)) else [int(s) for s in size]
    return math.prod(sizes) if sizes and all(s > 0 for s in sizes) else 0


def default_max_pixels(cfg) -> Tuple[int, str]:
    """The server's pixel limit when none is given, sized to the model.

    Rule: ``INPUTS_PER_REQUEST`` (256) network inputs' worth of pixels, where one input is the sliding window
    (``infer.roi_size``) of a segmenter or the fixed size a classifier's inference transforms resize to (the last
    ``Resized`` ``spatial_size``); never below ``PIXEL_FLOOR`` (4096 x 4096 = 16,777,216) nor above ``PIXEL_CAP``
    (100,000,000). For 256 x 256 windows: 256 x 65,536 = 16,777,216 pixels (a 4096 x 4096 image, 441 windows at
    overlap 0.25); a 64 x 64 classifier gets the floor.

    Args:
        cfg: the served run's ``PipelineConfig``.

    Returns:
        ``(pixels, rule)``: the limit and one line saying how it was computed.
    """
    dims = cfg.net.spatial_dims
    if cfg.task == "segmentation":
        area, what = _area(cfg.infer.roi_size, dims), f"sliding window infer.roi_size {list(cfg.infer.roi_size)}"
    else:
        sizes = [t.kwargs.get("spatial_size") for t in _image_transforms(cfg) if t.name in _RESIZE]
        area = _area(sizes[-1], dims) if sizes and sizes[-1] is not None else 0
        what = f"Resized spatial_size {sizes[-1]}" if area else "no fixed input size"
    pixels = min(PIXEL_CAP, max(PIXEL_FLOOR, INPUTS_PER_REQUEST * area))
    rule = (f"{INPUTS_PER_REQUEST} network inputs ({what}: {area} pixels each), at least {PIXEL_FLOOR} (4096 x 4096)"
            f" and at most {PIXEL_CAP}; --max-pixels sets another limit")
    return pixels, rule


@dataclass(frozen=True)
class IntensityWindow:
    """The intensity range a pipeline's inference transforms were written for.

    Attributes:
        a_min, a_max: the input range of the first ``ScaleIntensityRanged`` on ``image``.
        clip: whether values outside are clipped.
        bits: the smallest of 8, 16, 32 bits whose unsigned range holds ``a_max``: the bit depth the training
            images had.
    """

    a_min: float
    a_max: float
    clip: bool
    bits: int

    def describe(self) -> str:
        """``ScaleIntensityRanged a_min=0, a_max=255 (8-bit images)``."""
        return (f"ScaleIntensityRanged a_min={self.a_min:g}, a_max={self.a_max:g}"
                f"{', clip' if self.clip else ''} ({self.bits}-bit images)")


def intensity_window(cfg) -> Optional[IntensityWindow]:
    """The :class:`IntensityWindow` of the served pipeline, or ``None`` when its inference transforms have no
    ``ScaleIntensityRanged`` on ``image`` (per-image normalisations such as ``NormalizeIntensityd`` or
    ``ScaleIntensityd`` do not depend on the bit depth)."""
    for t in _image_transforms(cfg):
        if t.name in _WINDOW and "a_max" in t.kwargs:
            a_min, a_max = float(t.kwargs.get("a_min", 0.0)), float(t.kwargs["a_max"])
            bits = 8 if a_max <= 255 else 16 if a_max <= 65535 else 32
            return IntensityWindow(a_min, a_max, bool(t.kwargs.get("clip", False)), bits)
    return None


def check_intensity(decoded: DecodedImage, window: Optional[IntensityWindow], pipeline: str) -> None:
    """Refuse an upload whose bit depth and values do not fit the pipeline's intensity window.

    Refused: an image deeper than the window's bit depth with values above ``a_max`` (a 16-bit PNG with values up
    to 65535 for a pipeline scaling 0..255: it would be clipped nearly white), and an 8-bit image for a window
    above 255 (it would come out nearly black). A 16-bit file whose values all lie within ``a_min..a_max`` holds
    the same numbers as the 8-bit file and is accepted.

    Args:
        decoded: the checked upload (``bits``, ``value_range``).
        window: :func:`intensity_window` of the pipeline, or ``None`` (nothing is checked).
        pipeline: the pipeline's name, for the message.

    Raises:
        InputError: 422, naming the upload's bit depth and range and what the pipeline expects.
    """
    if window is None:
        return
    what = f"the {decoded.format.upper()} upload is {decoded.bits}-bit ({decoded.mode})"
    if decoded.bits > window.bits and decoded.value_range is not None and decoded.value_range[1] > window.a_max:
        lo, hi = decoded.value_range
        raise InputError(422, f"{what} with values {lo:g}..{hi:g}, but pipeline {pipeline!r} expects "
                         f"{window.bits}-bit images with values {window.a_min:g}..{window.a_max:g} "
                         f"({window.describe()}): send the image as an {window.bits}-bit file with the grey "
                         "levels the model was trained on")
    if decoded.bits == 8 and window.bits > 8:
        raise InputError(422, f"{what}, but pipeline {pipeline!r} expects {window.bits}-bit images with values "
                         f"{window.a_min:g}..{window.a_max:g} ({window.describe()}): an 8-bit image would come out "
                         f"nearly black; send the {window.bits}-bit original")


class Deadline:
    """The time limit of one request, from its admission.

    Args:
        limit_s: seconds the request may take in all (reading the upload, waiting for the prediction in progress,
            predicting).
    """

    def __init__(self, limit_s: float):
        self.limit_s = float(limit_s)
        self.start = time.monotonic()
        self.cancelled = False

    def remaining(self) -> float:
        """Seconds left (``0.0`` when past or cancelled)."""
        return 0.0 if self.cancelled else max(0.0, self.start + self.limit_s - time.monotonic())

    def cancel(self) -> None:
        """Stop the prediction at its next :meth:`check` (the client has been answered)."""
        self.cancelled = True

    def error(self, step: str) -> InputError:
        """The 503 answered when the limit passes during ``step``."""
        return InputError(503, f"the request took longer than the limit of {self.limit_s:g} s (--timeout-s); "
                          f"stopped {step}; send a smaller image or ask the operator for a longer limit")

    def check(self, step: str) -> None:
        """Raise :meth:`error` when no time is left.

        Raises:
            InputError: 503.
        """
        if self.remaining() <= 0.0:
            raise self.error(step)


class Gate:
    """The bounded queue: admits at most ``capacity`` requests at once (the one predicting and those waiting).

    Thread-safe: requests are admitted on the event loop and released from worker threads.

    Args:
        capacity: ``1 + max_queue``, at least 1.
        timeout_s: the :class:`Deadline` of each admitted request.
    """

    def __init__(self, capacity: int, timeout_s: float):
        self.capacity = max(1, int(capacity))
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._jobs: set = set()

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet finished (a timed-out prediction counts until it has stopped)."""
        return len(self._jobs)

    def enter(self) -> Deadline:
        """Admit a request.

        Returns:
            its :class:`Deadline`; pass it to :meth:`leave` when the request's work has ended.

        Raises:
            InputError: 503 with ``Retry-After`` (seconds until the oldest admitted request's limit passes) when
                ``capacity`` requests are in flight.
        """
        with self._lock:
            if len(self._jobs) >= self.capacity:
                wait = min(job.remaining() for job in self._jobs)
                raise InputError(503, f"server busy: {len(self._jobs)} requests in progress or queued (limit "
                                 f"{self.capacity}, --max-queue); try again in a few seconds",
                                 headers={"Retry-After": str(max(1, math.ceil(wait)))})
            job = Deadline(self.timeout_s)
            self._jobs.add(job)
            return job

    def leave(self, job: Deadline) -> None:
        """Release ``job``'s place (idempotent)."""
        with self._lock:
            self._jobs.discard(job)

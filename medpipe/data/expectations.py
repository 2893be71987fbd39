"""What a pipeline's transform chains expect of the files they load, read from the chains for the integrity check.

For every key a chain's ``LoadImaged`` loads (:func:`chain_expectations`):

* **channels**: the file's samples per pixel (1 grey, 3 RGB, 4 RGBA, as Pillow and DICOM report them) are
  followed through ``EnsureChannelFirstd`` (``channel_dim``), ``ToGrayscaled`` and ``RepeatChanneld`` to what the
  network gets: ``image`` must end with ``net.in_channels`` channels, a segmentation ``label`` with one (a mask of
  class values). Any other transform whose name says it changes channels (``AsChannelLastd``, ``ConcatItemsd``,
  ``Lambdad``, ...) ends the check at that point.
* **intensity**: when the first transform that changes a key's values is ``ScaleIntensityRanged``, its window
  ``a_min``..``a_max`` (rules in :meth:`KeyExpectation.window_problem`). Scale-free transforms
  (``ScaleIntensityd``, ``NormalizeIntensityd``, percentiles) accept any range, so they set no window.
* **label values** (segmentation): each value of a label mask, mapped through every ``MapLabelValued`` on
  ``label`` in order (values not in ``orig_labels`` pass unchanged, as in MONAI), must end as a class index
  ``0..C-1``; another value-changing transform on ``label`` ends the check.

Finite values are expected of every file whatever the chain (:mod:`medpipe.data.integrity`), and of volumes the
number of spatial axes of the network (``net.spatial_dims``) and, from a DICOM series folder, the series named in
``data.series_uid`` (:class:`Expectations`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from medpipe.data.imagefile import ImageFile

__all__ = ["Window", "KeyExpectation", "Expectations", "chain_expectations", "build_expectations"]

#: transform names that change a key's values (after these the window / label-value rules no longer apply)
_VALUE_CHANGING = re.compile(r"Intensity|Normalize|Histogram|Clip|Lambda|Threshold|Contrast|Noise|Smooth|Sharpen|"
                             r"Bias|Gibbs|Spike|Rician|Discrete|Label|OneHot|MultiChannel|KSpace|Mask|Sobel|"
                             r"Gradient|Stain")
#: transform names that change a key's channels (after these the channel rule no longer applies)
_CHANNEL_CHANGING = re.compile(r"Channel|Lambda|Concat|Split|Squeeze|Discrete|Coordinate|OneHot|Stack|Transpose|"
                               r"Moveaxis|Permute|Grayscale")
_CHANNEL_STEPS = ("EnsureChannelFirstd", "ToGrayscaled", "RepeatChanneld")
_CHANNEL_NAMES = {1: "grey", 2: "grey + alpha", 3: "RGB", 4: "RGBA"}


def _keys(kw: Dict[str, Any]) -> List[str]:
    keys = kw.get("keys", [])
    return [keys] if isinstance(keys, str) else list(keys or [])


def _fmt_values(values: Sequence[float], limit: int = 12) -> str:
    shown = ", ".join(f"{float(v):g}" for v in list(values)[:limit])
    return "{" + shown + (f", ... ({len(values)} values)" if len(values) > limit else "") + "}"


def _fmt_channels(counts: Sequence[int]) -> str:
    return " or ".join(f"{c} ({_CHANNEL_NAMES.get(c, 'channels')})" for c in counts) or "none of 1-4"


@dataclass(frozen=True)
class Window:
    """The intensity window of a ``ScaleIntensityRanged``: values ``a_min..a_max`` -> ``b_min..b_max``.

    Attributes:
        where: the transform, e.g. ``"transforms.train[2] ScaleIntensityRanged"``.
        a_min, a_max: the input range it expects (file units: grey levels, HU, ...).
        b_min, b_max: the output range (``None``: MONAI then scales to 0..1).
        clip: values outside ``a_min..a_max`` are clipped to ``b_min`` / ``b_max``.
    """

    where: str
    a_min: float
    a_max: float
    b_min: Optional[float]
    b_max: Optional[float]
    clip: bool


@dataclass
class KeyExpectation:
    """What one chain expects of the files of one key (see the module docstring).

    Attributes:
        chain: the chain, e.g. ``"transforms.train"``.
        key: the case key, e.g. ``"image"`` or ``"label"``.
        channel_steps: ``(where, name, kwargs)`` of the channel transforms followed, in order.
        end_channels: channels the network must get (``image``: ``net.in_channels``; ``label``: 1), or ``None``
            (not checked: another key, or a channel-changing transform the check does not follow).
        end_what: what fixes ``end_channels``, for messages (``"net.in_channels is 3"``).
        window: the ``ScaleIntensityRanged`` window, or ``None``.
        label_maps: ``(where, orig_labels, target_labels)`` of every ``MapLabelValued`` on ``label``, or ``None``
            (label values not checked).
        n_classes: class indices ``0..n_classes-1`` a mapped label value must be (segmentation), or ``None``.
        classes_what: what fixes ``n_classes``, for messages (``"net.out_channels 2"``).
    """

    chain: str
    key: str
    channel_steps: List[Tuple[str, str, Dict[str, Any]]] = field(default_factory=list)
    end_channels: Optional[int] = None
    end_what: str = ""
    window: Optional[Window] = None
    label_maps: Optional[List[Tuple[str, list, list]]] = None
    n_classes: Optional[int] = None
    classes_what: str = ""

    # ------------------------------------------------------------------------------------------- channels
    def channels_after(self, channels: int) -> Tuple[Optional[int], Optional[str]]:
        """Follow a file of ``channels`` samples per pixel through the chain.

        Returns:
            ``(channels the network gets or None, None)``, or ``(None | count, reason)`` at the first step
            (or the end) that does not fit.
        """
        c: Optional[int] = None  # None: the channel axis is not placed yet
        for where, name, kw in self.channel_steps:
            if name == "EnsureChannelFirstd":
                dim = kw.get("channel_dim")
                if dim == "no_channel" and channels != 1:
                    return None, f"{where} (channel_dim: no_channel) expects a one-channel (grey) file"
                if dim not in (None, "no_channel") and channels == 1:
                    return None, (f"{where} (channel_dim: {dim}) expects a file with a channel axis; a one-channel "
                                  "file has none, so an image axis would become its channels")
                c = 1 if dim == "no_channel" else channels
            elif c is None:
                return None, None  # a channel transform before the axis is placed: not followed
            elif name == "ToGrayscaled":
                if c not in (1, 3, 4):
                    return None, f"{where} expects 1, 3 or 4 channels (grey, RGB, RGBA), here {c}"
                c = 1
            elif name == "RepeatChanneld":
                c *= int(kw.get("repeats", 1))
        if c is not None and self.end_channels is not None and c != self.end_channels:
            return c, f"{self.chain} gives the network {c} channels but {self.end_what}"
        return c, None

    def expected_channels(self) -> List[int]:
        """The file channel counts (of 1..4) this chain accepts."""
        return [c for c in (1, 2, 3, 4) if self.channels_after(c)[1] is None]

    def channel_problem(self, img: ImageFile) -> Optional[str]:
        """Why ``img``'s channels do not fit the chain (``None`` when they do or are unknown)."""
        if img.channels is None or not self.channel_steps:
            return None
        _, reason = self.channels_after(img.channels)
        if reason is None:
            return None
        what = _CHANNEL_NAMES.get(img.channels, "channels")
        return (f"{img.kind}: {img.channels} channels ({what}), but {reason}; expected a file with "
                f"{_fmt_channels(self.expected_channels())} channels (convert it, e.g. with Pillow's Image.convert)")

    # ------------------------------------------------------------------------------------------- intensity
    def window_problem(self, img: ImageFile) -> Optional[str]:
        """Why ``img``'s values do not fit the ``ScaleIntensityRanged`` window (``None`` when they do).

        Rules (``tol`` = 0.5 for integers, 0.1 % of the window for floats): the file is refused when

        1. more than half of its pixels lie above ``a_max`` (they would all become ``b_max``: e.g. a 16-bit PNG
           in a 0..255 pipeline becomes a constant image);
        2. all its pixels lie below ``a_min`` (a constant ``b_min`` image);
        3. it is a Pillow format (PNG, TIFF, ...) with more than 8 bits per sample, ``a_max <= 255`` and values
           above ``a_max`` (16-bit data in an 8-bit pipeline, e.g. 12-bit values in a 16-bit PNG);
        4. it holds floats spanning less than 1/255 of the window (nearly constant after scaling, e.g. values
           already scaled to 0..1 in a 0..255 pipeline).

        Values outside the window on both sides are normal (a CT window clips air and bone) and not refused.
        """
        w = self.window
        if w is None or not img.size or w.a_max <= w.a_min:
            return None
        width = w.a_max - w.a_min
        tol = 1e-3 * width if img.is_float else 0.5
        held = img.type_range()
        if held is not None and w.a_min - tol <= held[0] and held[1] <= w.a_max + tol:
            return None  # e.g. 8-bit samples in a 0..255 window: no pixel can lie outside, none is read
        lo, hi = img.value_range()
        above = img.fraction_above(w.a_max + tol)
        wide = img.via_pillow and (img.bits or 0) > 8 and w.a_max <= 255 and hi > w.a_max + tol
        expects = f"{w.where} expects values in a_min..a_max = {w.a_min:g}..{w.a_max:g}"
        found = f"{img.kind} with values {lo:g}..{hi:g}"
        fix = "save the file in the range the pipeline expects (e.g. 8 bits per sample) or change a_min/a_max"
        if above > 0.5 or wide:
            fate = (f"would all become b_max {w.b_max if w.b_max is not None else 1:g}" if w.clip
                    else "would be scaled beyond b_max")
            return f"{found}, but {expects}: {above:.1%} of its values lie above a_max and {fate}; {fix}"
        if hi < w.a_min - tol:
            return f"{found}, all below a_min, but {expects}: the scaled image would be constant; {fix}"
        if img.is_float and hi - lo < width / 255:
            return (f"{found}, a span under 1/255 of the window, but {expects}: the scaled image would be nearly "
                    f"constant (values already scaled to 0..1?); {fix}")
        return None

    # ------------------------------------------------------------------------------------------- labels
    def _mapped(self, value: float) -> float:
        for _, orig, target in self.label_maps or []:
            table = {float(o): float(t) for o, t in zip(orig, target)}
            value = table.get(float(value), float(value))
        return value

    def _is_class(self, value: float) -> bool:
        v = self._mapped(value)
        return v == int(v) and 0 <= v < (self.n_classes or 0)

    def expected_label_values(self) -> List[float]:
        """The label file values that end as class indices (``orig_labels`` of the maps and unmapped indices)."""
        candidates = {float(o) for _, orig, _ in self.label_maps or [] for o in orig}
        candidates |= {float(c) for c in range(self.n_classes or 0)}
        return sorted(v for v in candidates if self._is_class(v))

    def label_problem(self, img: ImageFile) -> Optional[str]:
        """Why ``img``'s values are not a mask of this chain's classes (``None`` when they are or unchecked)."""
        if self.label_maps is None or not self.n_classes or not img.size:
            return None
        maps = "; ".join(f"{where} maps orig_labels {orig} to target_labels {target}"
                         for where, orig, target in self.label_maps)
        how = f"{maps + ', and ' if maps else ''}{self.classes_what} means class indices 0..{self.n_classes - 1}"
        expected = _fmt_values(self.expected_label_values())
        values = img.values()
        if values is None:
            return f"{img.kind}: more than 1000 distinct values, not a label mask; {how}: expected values {expected}"
        bad = [v for v in values if not self._is_class(float(v))]
        if not bad:
            return None
        return (f"label values {_fmt_values(values)} found, {_fmt_values(bad)} not expected: {how}; expected values "
                f"{expected} (fix the mask, or map its values with MapLabelValued)")


def chain_expectations(chain: str, specs: Sequence, in_channels: Optional[int] = None,
                       n_classes: Optional[int] = None, classes_what: str = "") -> Dict[str, KeyExpectation]:
    """Read one transform chain.

    Args:
        chain: its config path, e.g. ``"transforms.train"`` (named in messages with the index of a transform).
        specs: its transform specs (objects with ``name`` and a ``kwargs`` dict,
            :class:`medpipe.config.TransformSpec`).
        in_channels: ``net.in_channels`` (what ``image`` must end with), or ``None``.
        n_classes: segmentation: number of classes of a label mask (``label`` values are then checked), or
            ``None``.
        classes_what: what sets ``n_classes``, for messages (``"net.out_channels 2"``).

    Returns:
        ``{key: KeyExpectation}`` for every key a ``LoadImaged`` of the chain loads.
    """
    out: Dict[str, KeyExpectation] = {}
    follow: Dict[str, Dict[str, bool]] = {}
    for i, spec in enumerate(specs or []):
        name, kw, where = spec.name, spec.kwargs, f"{chain}[{i}] {spec.name}"
        if name == "LoadImaged":
            for key in _keys(kw):
                is_label = key == "label" and n_classes is not None
                e = KeyExpectation(chain, key, label_maps=[] if is_label else None,
                                   n_classes=n_classes if is_label else None, classes_what=classes_what)
                if key == "image" and in_channels is not None:
                    e.end_channels, e.end_what = in_channels, f"net.in_channels is {in_channels}"
                elif is_label:
                    e.end_channels, e.end_what = 1, "a label mask must be one channel of class values"
                if kw.get("ensure_channel_first"):
                    e.channel_steps.append((where, "EnsureChannelFirstd", {}))
                out[key], follow[key] = e, {"channels": True, "values": True}
            continue
        for key in _keys(kw):
            e, state = out.get(key), follow.get(key)
            if e is None or state is None:
                continue
            if state["channels"] and name in _CHANNEL_STEPS:
                e.channel_steps.append((where, name, kw))
            elif state["channels"] and _CHANNEL_CHANGING.search(name):
                state["channels"], e.end_channels = False, None
            if not state["values"]:
                continue
            if e.label_maps is not None and name == "MapLabelValued":
                e.label_maps.append((where, list(kw.get("orig_labels", [])), list(kw.get("target_labels", []))))
            elif e.label_maps is None and name == "ScaleIntensityRanged" and e.n_classes is None:
                e.window = Window(where, float(kw.get("a_min", 0)), float(kw.get("a_max", 0)), kw.get("b_min"),
                                  kw.get("b_max"), bool(kw.get("clip", False)))
                state["values"] = False
            elif _VALUE_CHANGING.search(name):
                state["values"] = False
                if e.label_maps is not None:
                    e.label_maps = None
    return out


@dataclass
class Expectations:
    """What the chains that will load a case expect of its files.

    Attributes:
        labelled: expectations of the training and validation chains (cases with a ``label``).
        unlabelled: expectations of the inference chain (segmentation cases without a ``label``).
        spatial_dims: ``net.spatial_dims`` (3: a 4D NIfTI is refused unless its 4th axis holds ``in_channels``
            channels), or ``None`` (not checked).
        in_channels: ``net.in_channels``, or ``None``.
        series_uid: ``data.series_uid``: the *SeriesInstanceUID* (s) to read from a folder holding several DICOM
            series (:func:`medpipe.data.volumes.select_series`), or ``None``.
    """

    labelled: List[KeyExpectation] = field(default_factory=list)
    unlabelled: List[KeyExpectation] = field(default_factory=list)
    spatial_dims: Optional[int] = None
    in_channels: Optional[int] = None
    series_uid: Optional[List[str]] = None

    def for_file(self, case: Dict[str, Any], key: str) -> List[KeyExpectation]:
        """The expectations of the chains that load ``case[key]``."""
        group = self.labelled if "label" in case else self.unlabelled
        return [e for e in group if e.key == key]


def build_expectations(labelled: Dict[str, Sequence], unlabelled: Dict[str, Sequence],
                       in_channels: Optional[int] = None, n_classes: Optional[int] = None,
                       classes_what: str = "", spatial_dims: Optional[int] = None,
                       series_uid: Optional[Sequence[str]] = None) -> Expectations:
    """:func:`chain_expectations` of every chain.

    Args:
        labelled: config path -> specs of the chains that load labelled cases (``transforms.train`` / ``val``).
        unlabelled: config path -> specs of the chains that load unlabelled images (``transforms.infer``).
        in_channels, n_classes, classes_what: as for :func:`chain_expectations`.
        spatial_dims: ``net.spatial_dims`` (see :class:`Expectations`), or ``None``.
        series_uid: ``data.series_uid`` (see :class:`Expectations`), or ``None``.

    Returns:
        The :class:`Expectations`.
    """
    def read(chains: Dict[str, Sequence]) -> List[KeyExpectation]:
        return [e for chain, specs in chains.items()
                for e in chain_expectations(chain, specs, in_channels, n_classes, classes_what).values()]
    uids = [series_uid] if isinstance(series_uid, str) else (list(series_uid) if series_uid else None)
    return Expectations(read(labelled), read(unlabelled), spatial_dims, in_channels, uids)

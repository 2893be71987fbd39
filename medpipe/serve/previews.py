"""Images the server sends back or re-encodes: base64 PNGs of masks and previews, and grey uploads given three equal
channels for pipelines written for colour files. PIL and NumPy only (no torch). Uploads are opened with
:func:`medpipe.serve.images.open_image` (the server's pixel limit applies, not Pillow's process-wide one)."""

from __future__ import annotations

import base64
import io

import numpy as np

from medpipe.serve.images import DecodedImage, open_image

__all__ = ["png_b64", "grey_to_rgb_png", "preview_png"]


def png_b64(array: np.ndarray) -> str:
    """``array`` ``(H, W)`` uint8 (or ``(H, W, 3)``) encoded as a PNG, base64 ASCII."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def grey_to_rgb_png(data: bytes) -> bytes:
    """A grey PNG/JPEG re-encoded as an RGB PNG with three equal 8-bit channels (grey levels of other bit
    depths are clipped to 0..255).

    Raises:
        ValueError: ``data`` is not a PNG or JPEG file; Pillow's errors for a corrupt one.
    """
    from PIL import Image

    with open_image(data) as img:
        if img.mode != "L":
            arr = np.asarray(img).astype(np.float64)
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        rgb = img.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue()


def preview_png(decoded: DecodedImage, max_side: int = 1024) -> str:
    """The upload as an 8-bit PNG for display, base64: grey levels other than 8-bit are stretched min..max to
    0..255, and the image is shrunk (aspect kept) so that its longer side is at most ``max_side`` pixels."""
    from PIL import Image

    with open_image(decoded.data) as img:
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

"""Checking a slide file before work starts, without decoding its pixels: :func:`check_slide`.

For a pipeline's integrity check (before the first epoch): what :func:`medpipe.data.wsi.open_slide` would refuse
(truncated TIFF/DICOM, a PNG/JPEG above the memory limit or of a refused bit depth) plus a PNG/JPEG cut short,
found from its last bytes (a PNG ends with its ``IEND`` chunk, a JPEG with the ``FFD9`` end-of-image marker,
which cannot occur inside JPEG entropy-coded data), all in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from medpipe.data.wsi.base import SlideError, describe_size
from medpipe.data.wsi.memory import check_memory, resolve_memory_limit
from medpipe.data.wsi.pil import check_pixel_format, header_estimate
from medpipe.data.wsi.slide import PIL_SUFFIXES, open_slide

__all__ = ["check_slide"]

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def check_slide(
    path: str | Path,
    backend: str = "auto",
    *,
    max_memory: float | str | None = None,
    convert_16bit: bool = False,
) -> None:
    """Check that ``path`` can be opened as a slide, decoding no pixels of plain images.

    PNG/JPEG (``backend`` ``"auto"`` or ``"pil"`` and a plain-image suffix): the header (size, mode, bit depth,
    memory estimate against ``max_memory``) and the file's end. Other formats: :func:`open_slide` and close
    (headers, tile and frame tables only).

    Args:
        path: the slide file.
        backend: as for :func:`open_slide`.
        max_memory: as for :func:`open_slide`.
        convert_16bit: as for :func:`open_slide`.

    Raises:
        FileNotFoundError, ValueError, ImportError, SlideError, SlideMemoryError: as :func:`open_slide` would,
        one line naming the file; ``SlideError`` also for a PNG without its ``IEND`` chunk or a JPEG without
        its end-of-image marker (cut short).
    """
    p = Path(path).expanduser()
    if not (p.is_file() and backend in ("auto", "pil") and p.suffix.lower() in PIL_SUFFIXES):
        open_slide(p, backend, max_memory=max_memory, convert_16bit=convert_16bit).close()
        return
    from PIL import Image

    limit = resolve_memory_limit(max_memory)
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the memory limit guards the size
    try:
        with Image.open(p) as im:
            check_pixel_format(p, im, convert_16bit)
            need, what = header_estimate(im)
            fmt = im.format
    except SlideError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise SlideError(f"{p}: not an image Pillow can read ({describe_size(p)}): {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    check_memory(p, need, limit, what, "PNG/JPEG cannot be read in tiles: convert the file to a tiled pyramidal "
                 "TIFF and read that")
    with open(p, "rb") as fh:
        fh.seek(max(0, p.stat().st_size - 1024))
        tail = fh.read()
    if (fmt == "PNG" and not tail.endswith(_PNG_END)) or (fmt == "JPEG" and b"\xff\xd9" not in tail):
        end = "IEND chunk" if fmt == "PNG" else "end-of-image marker (FFD9)"
        raise SlideError(f"{p}: truncated {fmt} file ({describe_size(p)}): its {end} is missing")

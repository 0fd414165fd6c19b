"""The SPEC latency stamp and the A/V flash square, drawn into and read from luma planes.

Stamp: with c = width // 64, 50 square cells of side c in one row, cell i's top-left at
(c*(i+1), c). Cell 0 white, cell 1 black, cells 2..49 the capture wall-clock time in ms
since the Unix epoch as 48 bits, most significant first, white = 1.

Luma values: the stamp is drawn with the extremes 255/0, not the legal 235/16. A
player's limited->full conversion maps them to 255/0 (clipped), far past the SPEC's
>= 200 / <= 40, and the extra headroom absorbs coding ringing at low bitrates. Any
stage that clamps to the legal range turns them into 235/16, which still converts to
255/0: nothing along the way can make the extremes worse than the legal values.

Scaling: a rung scaled from the captured picture carries the stamp at the scaled
cell pitch, c_src * w / W, which equals floor(w / 64) only for some widths (1280->640
yes, 1280->854 no: cell 49 lands 17 px off). `stamp_survives_scaling` tells which
rungs need the stamp redrawn after scaling; `carry_stamp` does it.
"""

from __future__ import annotations

import functools
from typing import Final

import av
import numpy as np

CELLS: Final = 50
BITS: Final = 48
WHITE: Final = 255
BLACK: Final = 0
NEUTRAL_CHROMA: Final = 128
# Reference-cell checks in the decoder's (limited-range) luma: the SPEC's full-range
# 200/40 correspond to 188/50 limited, which also accepts a full-range picture.
WHITE_MIN: Final = 188
BLACK_MAX: Final = 50

FLASH_NS: Final = 100_000_000  # the flash and the tone burst last 100 ms from each second
FLASH_ON: Final = 235
FLASH_OFF: Final = 16

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def cell_size(width: int) -> int:
    c = width // 64
    if c < 1:
        raise ValueError(f"a stamp needs a picture at least 64 pixels wide, not {width}")
    return c


def stamp_rect(width: int) -> Rect:
    """The luma area the 50 cells cover."""
    c = cell_size(width)
    return c, c, c * (CELLS + 1), 2 * c


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The (height, width) luma plane of a planar YUV frame, as a view (no copy)."""
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), np.uint8).reshape(frame.height, plane.line_size)
    return rows[:, : frame.width]


def draw_stamp(
    y_plane: np.ndarray, wall_ms: int, *, uv: tuple[np.ndarray, np.ndarray] | None = None
) -> None:
    """Write the stamp for `wall_ms` into `y_plane` in place.

    `uv`, when given, are the half-resolution chroma planes: they are set neutral under
    the cells so a colour conversion keeps the cells gray whatever surrounds them.
    """
    if not 0 <= wall_ms < 1 << BITS:
        raise ValueError(f"wall_ms {wall_ms} does not fit in {BITS} bits")
    c = cell_size(y_plane.shape[1])
    bits = np.unpackbits(np.frombuffer(wall_ms.to_bytes(BITS // 8, "big"), np.uint8))
    levels = np.concatenate(([WHITE, BLACK], np.where(bits, WHITE, BLACK))).astype(np.uint8)
    # One row of the strip, repeated down the cell height: a single vectorised write.
    y_plane[c : 2 * c, c : c * (CELLS + 1)] = np.repeat(levels, c)
    if uv is not None:
        x0, y0, x1, y1 = c // 2, c // 2, (c * (CELLS + 1) + 1) // 2, (2 * c + 1) // 2
        for plane in uv:
            plane[y0:y1, x0:x1] = NEUTRAL_CHROMA


def _cell_means(y_plane: np.ndarray, c: int) -> np.ndarray:
    """Mean luma of the middle of each cell (the central half, at least one pixel)."""
    k = c // 4
    mid = c + c // 2
    band = y_plane[mid - k : mid + k + 1].astype(np.float32).mean(axis=0)
    centers = c * np.arange(1, CELLS + 1) + c // 2
    # All cells in one indexing operation: a ladder reads a stamp per frame (carry_stamp),
    # and 50 separate means cost four times as much.
    return band[centers[:, None] + np.arange(-k, k + 1)].mean(axis=1)


def read_stamp(y_plane: np.ndarray) -> int | None:
    """The stamped wall-clock ms, or None when the reference cells are not white/black
    enough or a data cell is neither."""
    height, width = y_plane.shape
    c = width // 64
    if c < 1 or height < 2 * c:
        return None
    means = _cell_means(y_plane, c)
    white, black = float(means[0]), float(means[1])
    if white < WHITE_MIN or black > BLACK_MAX:
        return None
    threshold = (white + black) / 2
    # Every data cell must be clearly one or the other: a picture that merely has something
    # bright and something dark where cells 0 and 1 would be is not a stamp.
    margin = (white - black) / 4
    data = means[2:]
    if ((data > black + margin) & (data < white - margin)).any():
        return None
    return int.from_bytes(np.packbits(data > threshold).tobytes(), "big")


@functools.cache  # asked for every frame of every rung, about a handful of sizes
def stamp_survives_scaling(src: tuple[int, int], dst: tuple[int, int]) -> bool:
    """Whether a reader at size `dst` finds every cell of a stamp drawn at `src` and scaled.

    The reader's sampling window plus one pixel of filter spread, mapped back to the
    source picture, must fall inside the same source cell, horizontally and vertically.
    """
    c_src, c_dst = cell_size(src[0]), dst[0] // 64
    if c_dst < 1:
        return False
    k = c_dst // 4

    def inside(dst_lo: int, dst_hi: int, cell: int, scale: float) -> bool:
        lo = (dst_lo + 0.5) * scale - 0.5
        hi = (dst_hi + 0.5) * scale - 0.5
        return c_src * cell <= lo and hi < c_src * (cell + 1)

    sx, sy = src[0] / dst[0], src[1] / dst[1]
    for i in range(CELLS):
        x = c_dst * (i + 1) + c_dst // 2
        if not inside(x - k - 1, x + k + 1, i + 1, sx):
            return False
    y = c_dst + c_dst // 2
    return inside(y - k - 1, y + k + 1, 1, sy)


def carry_stamp(src_luma: np.ndarray, dst_luma: np.ndarray) -> bool:
    """Redraw the stamp of `src_luma` on its scaled copy `dst_luma` when scaling broke it.

    Returns True when the destination now carries a readable stamp. For a ladder rung:
    call it on each scaled frame; it costs nothing when the scale keeps the cells aligned.
    """
    src_size = (src_luma.shape[1], src_luma.shape[0])
    dst_size = (dst_luma.shape[1], dst_luma.shape[0])
    if stamp_survives_scaling(src_size, dst_size):
        return True
    ms = read_stamp(src_luma)
    if ms is None or dst_size[0] < 64:
        return False
    draw_stamp(dst_luma, ms)
    return True


def flash_due(wall_ns: int) -> bool:
    """Whether the flash (and the tone burst) is on at this wall-clock time."""
    return wall_ns % 1_000_000_000 < FLASH_NS


def flash_rect(width: int, height: int) -> Rect:
    """The flash square: bottom right, a quarter of the height, one stamp cell from the edges.

    Defined relative to the picture so a scaled rung finds it at its own size.
    """
    c = cell_size(width)
    side = (height // 4) & ~1
    x1, y1 = (width - c) & ~1, (height - c) & ~1
    return x1 - side, y1 - side, x1, y1


def read_flash(y_plane: np.ndarray) -> bool:
    """Whether the flash square is lit: the mean of its central half, against mid-gray."""
    x0, y0, x1, y1 = flash_rect(y_plane.shape[1], y_plane.shape[0])
    qx, qy = (x1 - x0) // 4, (y1 - y0) // 4
    inner = y_plane[y0 + qy : y1 - qy, x0 + qx : x1 - qx]
    return float(inner.mean()) > (FLASH_ON + FLASH_OFF) / 2

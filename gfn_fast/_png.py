"""A minimal PNG writer (8-bit greyscale or RGB) so the demos need no plotting library."""

import struct
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    """pixels: uint8 [H, W] (grey) or [H, W, 3] (RGB)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    colour = 2 if pixels.ndim == 3 else 0
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
                           + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def heatmap(values: np.ndarray, scale: int = 16, vmax: float | None = None) -> np.ndarray:
    """A 2-D array as an RGB image (dark blue -> yellow), each cell `scale` pixels wide."""
    values = np.asarray(values, dtype=np.float64)
    top = vmax if vmax is not None else (values.max() if values.size else 1.0)
    level = np.clip(values / top if top > 0 else values * 0, 0.0, 1.0)
    rgb = np.stack([255 * level, 40 + 200 * level ** 0.5, 120 * (1 - level)], axis=-1)
    return np.kron(rgb.astype(np.uint8), np.ones((scale, scale, 1), dtype=np.uint8))


def side_by_side(images: list[np.ndarray], gap: int = 8) -> np.ndarray:
    height = max(image.shape[0] for image in images)
    padded = []
    for image in images:
        canvas = np.full((height, image.shape[1], 3), 255, dtype=np.uint8)
        canvas[: image.shape[0]] = image if image.ndim == 3 else image[..., None]
        padded.append(canvas)
        padded.append(np.full((height, gap, 3), 255, dtype=np.uint8))
    return np.concatenate(padded[:-1], axis=1)

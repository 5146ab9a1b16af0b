"""Per-image outcomes: which images of a split a trial classified correctly, one bit per image.

Every trial of a study is evaluated on the same validation and test images in the same order (the split is fixed
by `split_seed`, study/trial/splits.py), so two trials' outcomes compare image by image (study/analysis/uncertainty.py:
the paired McNemar test). A trial reports its outcomes with every epoch (it cannot know which epoch the scheduler
will make its last) as text: the bits packed eight to a byte (NumPy's `packbits`, first image in the lowest bit),
then base64, so that Ray's JSON and CSV result files carry them; 50,000 images take 6,250 bytes packed, 8,336 as
text. The results directory keeps the packed bytes of each trial's final epoch in outcomes.parquet
(study/analysis/results.py).
"""

from __future__ import annotations

import base64

import numpy as np

BIT_ORDER = "little"  # image i is bit i % 8 of byte i // 8


def pack(correct: np.ndarray) -> bytes:
    """The outcomes as bytes: bit i set when image i was classified correctly."""
    return np.packbits(np.asarray(correct, dtype=bool), bitorder=BIT_ORDER).tobytes()


def unpack(packed: bytes, images: int) -> np.ndarray:
    """The boolean outcome of each of `images` images from `pack`'s bytes."""
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=images, bitorder=BIT_ORDER)
    return bits.astype(bool)


def encode(correct: np.ndarray) -> str:
    """`pack`'s bytes as ASCII text, for a trial's report."""
    return base64.b64encode(pack(correct)).decode("ascii")


def decode(text: str) -> bytes:
    """The packed bytes of `encode`'s text."""
    return base64.b64decode(text.encode("ascii"), validate=True)

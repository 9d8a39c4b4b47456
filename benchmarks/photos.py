"""Photo-sized JPEGs for the benchmarks, made from the photographs scikit-image ships (no download).

``make_photos(folder, n)`` writes ``n`` distinct 500×375 JPEGs (random crops,
resized, half of them mirrored) in a process pool; ``write_manifest`` lists
them as a two-class train split in the manifest format the stages read.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SOURCES = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field")
_photos: list = []


def _sources() -> list:
    if not _photos:
        from skimage import data

        for name in SOURCES:
            try:
                _photos.append(np.asarray(getattr(data, name)()))
            except Exception:  # some scikit-image images need a download; use the bundled ones
                continue
    return _photos


def _write(task: tuple[Path, int, int, tuple[int, int]]) -> Path:
    from PIL import Image

    folder, i, seed, size = task
    rng = np.random.default_rng((seed, i))
    sources = _sources()
    photo = sources[i % len(sources)]
    h, w = photo.shape[:2]
    ch = int(min(h, w * size[1] / size[0]) * rng.uniform(0.6, 1.0))
    cw = int(ch * size[0] / size[1])
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(photo[top : top + ch, left : left + cw]).resize(size, Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    path = folder / f"photo_{i:05d}.jpg"
    crop.save(path, quality=90)
    return path


def make_photos(folder: Path, n: int, *, seed: int = 0, size: tuple[int, int] = (500, 375)) -> list[Path]:
    """Write ``n`` distinct ``size`` JPEGs into ``folder`` (the same files for the same ``seed``); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [(folder, i, seed, size) for i in range(n)]
    # spawn: the caller may have imported a multithreaded framework (JAX), which fork would copy mid-flight
    with ProcessPoolExecutor(
        max_workers=min(os.cpu_count() or 1, 16), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        return list(pool.map(_write, tasks, chunksize=32))


def write_manifest(paths: list[Path], manifest: Path, size: tuple[int, int] = (500, 375)) -> None:
    """A manifest of ``paths`` (two classes, all in train) as the stages read it."""
    from pipeline.manifest import Record
    from pipeline.manifest import write_manifest as write

    write(
        [
            Record(
                id=path.name,
                path=str(path),
                label=i % 2,
                class_name=f"c{i % 2}",
                split="train",
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                width=size[0],
                height=size[1],
            )
            for i, path in enumerate(paths)
        ],
        manifest,
    )

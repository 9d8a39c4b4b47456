"""Finding the images of a dataset folder and proving each one decodes.

A source is a folder in one of two layouts:

- ``<root>/<class>/<image>``: split later, stratified by class (:mod:`pipeline.dataset.splits`);
- ``<root>/{train,val,test}/<class>/<image>``: the given split is kept.

:func:`scan_source` lists the image files (hidden files and OS clutter skipped,
other files listed as ignored); :func:`inspect_all` decodes and hashes every one
in threads, so that a broken file stops the pipeline before any backbone runs.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from pipeline.config import SPLITS
from pipeline.dataset.duplicates import perceptual_hash
from pipeline.images import BadImageError, decode_image, is_image_name, is_junk_name


@dataclass(frozen=True)
class Candidate:
    """An image file found in the source, before it is inspected."""

    id: str
    path: str
    class_name: str
    split: Optional[str]   # None until split, unless the source is pre-split


@dataclass(frozen=True)
class SourceScan:
    """What :func:`scan_source` found under a dataset folder."""

    layout: str                  # 'presplit' or 'classes'
    candidates: list[Candidate]  # image files, sorted by id
    ignored: list[str]           # other files (not images, not OS junk), relative to the root
    class_folders: list[str]     # every class folder name, with or without images, sorted


def scan_source(root: Path, *, path_prefix: Optional[str] = None) -> SourceScan:
    """Find the images under a source folder.

    Hidden files and folders and OS clutter (:func:`pipeline.images.is_junk_name`)
    are skipped silently; other files without an image extension are listed in
    ``ignored``.

    Parameters
    ----------
    root : Path
        The dataset folder.
    path_prefix : str, optional
        How ``root`` is written in paths stored in the manifest (defaults to ``str(root)``).

    Returns
    -------
    SourceScan

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder.
    ValueError
        If no class folders or no images are found, or a pre-split tree lacks train/ or test/.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.source {str(root)!r} is not a folder "
                                "(expected <root>/<class>/<images> or <root>/{train,val,test}/<class>/<images>)")
    prefix = path_prefix if path_prefix is not None else str(root)
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_junk_name(p))
    presplit = [s for s in SPLITS if s in subdirs]
    if presplit:
        for needed in ("train", "test"):
            if needed not in presplit:
                raise ValueError(f"{root} has {presplit} folders but no {needed}/: a pre-split source "
                                 "needs train/ and test/ (val/ is optional)")
        stray = [d for d in subdirs if d not in SPLITS]
        if stray:
            raise ValueError(f"{root} mixes split folders {presplit} with other folders {stray}; "
                             "use either <root>/{train,val,test}/<class>/ or <root>/<class>/")
        layout, tops = "presplit", [(s, root / s) for s in presplit]
    else:
        layout, tops = "classes", [(None, root)]
    candidates: list[Candidate] = []
    ignored: list[str] = []
    class_folders: set[str] = set()
    for split, top in tops:
        for class_dir in sorted(p for p in top.iterdir() if p.is_dir() and not is_junk_name(p)):
            class_folders.add(class_dir.name)
            for path in sorted(class_dir.rglob("*")):
                if not path.is_file() or any(is_junk_name(Path(part)) for part in path.relative_to(root).parts):
                    continue
                rel = path.relative_to(root).as_posix()
                if not is_image_name(path):
                    ignored.append(rel)
                    continue
                candidates.append(Candidate(id=rel, path=f"{prefix.rstrip('/')}/{rel}",
                                            class_name=class_dir.name, split=split))
    # Files lying beside the class folders (or beside the split folders) are not images of a class.
    for top in ([root] if layout == "classes" else [root, *(t for _, t in tops)]):
        loose = sorted(p for p in top.iterdir() if p.is_file() and not is_junk_name(p))
        ignored.extend(p.relative_to(root).as_posix() for p in loose)
    if not candidates:
        raise ValueError(f"no images found under {root} (extensions: .jpg .jpeg .png .bmp .gif .webp, any case; "
                         "expected <root>/<class>/<images> or <root>/{train,val,test}/<class>/<images>)")
    return SourceScan(layout=layout, candidates=sorted(candidates, key=lambda c: c.id), ignored=sorted(ignored),
                      class_folders=sorted(class_folders))


def inspect_all(candidates: Sequence[Candidate], *, with_phash: bool = False, workers: int = 4,
                progress: bool = True) -> tuple[list[tuple[Candidate, ImageInfo]], list[str]]:
    """Decode and hash every candidate in threads (PIL releases the GIL while decoding).

    Parameters
    ----------
    candidates : sequence of Candidate
    with_phash : bool
        Also compute each image's perceptual hash (for near-duplicate search).
    workers : int
        Decoding threads.
    progress : bool

    Returns
    -------
    good : list of (Candidate, ImageInfo)
    bad : list of str
        One message per file that could not be decoded, naming it.
    """
    def one(candidate: Candidate):
        try:
            return candidate, inspect_image(candidate.path, with_phash=with_phash), None
        except (BadImageError, OSError) as error:
            return candidate, None, str(error)

    good, bad = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(one, candidates)
        for candidate, info, error in tqdm(results, total=len(candidates), desc="inspect images",
                                           unit="img", disable=not progress):
            if error is None:
                good.append((candidate, info))
            else:
                bad.append(error)
    return good, bad


@dataclass(frozen=True)
class ImageInfo:
    """What prepare records about one decodable image."""

    width: int
    height: int
    sha256: str
    phash: Optional[int] = None   # 64-bit perceptual hash, when asked for


def inspect_image(path: Path | str, *, with_phash: bool = False) -> ImageInfo:
    """Hash a file's bytes and prove it decodes; width and height are as displayed (upright).

    Parameters
    ----------
    path : path-like
    with_phash : bool
        Also compute the perceptual hash of the decoded pixels
        (:func:`pipeline.dataset.duplicates.perceptual_hash`), while they are in memory.

    Raises
    ------
    BadImageError
        As :func:`decode_image`.
    """
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    pixels = decode_image(path)
    return ImageInfo(width=int(pixels.shape[1]), height=int(pixels.shape[0]), sha256=digest,
                     phash=perceptual_hash(pixels) if with_phash else None)

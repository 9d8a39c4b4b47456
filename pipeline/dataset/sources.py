"""Finding the images of a dataset folder and proving each one decodes.

A source is a folder in one of two layouts, or a CSV file (:mod:`pipeline.dataset.layouts` says which
layouts are accepted, which are refused as ambiguous, and the policy for a split a source lacks):

- ``<root>/<class>/<image>``: split later, stratified by class (:mod:`pipeline.dataset.splits`);
- ``<root>/{train,val,test}/<class>/<image>``: the given split is kept;
- ``path,label[,split]`` rows of a CSV file (:mod:`pipeline.dataset.label_table`).

:func:`scan_source` lists the image files (hidden files and OS clutter skipped,
other files listed as ignored); :func:`inspect_all` decodes and hashes every one
in threads, so that a broken file stops the pipeline before any backbone runs
(a file unchanged since prepare's last run is not read again:
:mod:`pipeline.dataset.stat_cache`).

Names and links, the policy: every file must be named in UTF-8 (the manifest,
the reports and the model card are UTF-8 text) and must resolve to a file inside
``data.source`` (DVC hashes that folder to know when the dataset changed: a
link out of it would make the dataset depend on a file DVC does not track, and
a dangling link breaks DVC's hashing). A symbolic link whose target is inside
the folder is followed; a link to a folder is not descended into (its files are
found where they are). Anything else — a name that is not valid UTF-8 (shown as
escaped bytes), a dangling link, a link loop, a link leading out of the folder —
stops prepare with every such path named, whatever ``data.bad_images`` says:
the fix is in the folder (rename, copy in or remove).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli.progress import progress_bar
from pipeline.dataset.duplicates import perceptual_hash
from pipeline.dataset.layouts import ACCEPTED, split_folders
from pipeline.dataset.stat_cache import Facts, StatCache
from pipeline.images import BadImageError, decode_image, is_image_name, is_junk_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """An image file found in the source, before it is inspected."""

    id: str
    path: str
    class_name: str
    split: str | None  # None until split, unless the source is pre-split


@dataclass(frozen=True)
class SourceScan:
    """What :func:`scan_source` found under a dataset folder."""

    layout: str  # 'presplit', 'classes' or 'table' (a CSV; split given when candidates have one)
    candidates: list[Candidate]  # image files, sorted by id
    ignored: list[str]  # other files (not images, not OS junk), relative to the root
    class_folders: list[str]  # every class folder name, with or without images, sorted


def scan_source(root: Path, *, path_prefix: str | None = None) -> SourceScan:
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
        If no class folders or no images are found, or the layout is ambiguous (:mod:`pipeline.dataset.layouts`);
        or naming
        every path whose name is not UTF-8 or that is a dangling link, a link loop or a link out of ``root``.
    """
    root = Path(root)
    prefix = path_prefix if path_prefix is not None else str(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.source {str(root)!r} is not a folder or a CSV file ({ACCEPTED})")
    tops = split_folders(root)
    layout = "presplit" if tops else "classes"
    tops = tops or [(None, root)]
    candidates: list[Candidate] = []
    ignored: list[str] = []
    class_folders: set[str] = set()
    problems: list[str] = []
    inside = root.resolve()
    for split, top in tops:
        for class_dir in sorted(p for p in top.iterdir() if p.is_dir() and not is_junk_name(p)):
            if unusable(class_dir, root, inside, problems):
                continue
            class_folders.add(class_dir.name)
            for path in sorted(class_dir.rglob("*")):
                junk = any(is_junk_name(Path(part)) for part in path.relative_to(root).parts)
                if unusable(path, root, inside, problems, junk=junk) or junk or not path.is_file():
                    continue
                rel = path.relative_to(root).as_posix()
                if not is_image_name(path):
                    ignored.append(rel)
                    continue
                candidates.append(
                    Candidate(id=rel, path=f"{prefix.rstrip('/')}/{rel}", class_name=class_dir.name, split=split)
                )
    # Files lying beside the class folders (or beside the split folders) are not images of a class.
    for top in [root] if layout == "classes" else [root, *(t for _, t in tops)]:
        for path in sorted(p for p in top.iterdir() if not p.is_dir()):  # folders were looked at above
            junk = is_junk_name(path)
            if not unusable(path, root, inside, problems, junk=junk) and not junk and path.is_file():
                ignored.append(path.relative_to(root).as_posix())
    if problems:
        raise ValueError(
            f"{len(problems)} path(s) under {shown(root)} cannot be used as they are (names must be "
            "UTF-8; links must lead to a file inside the dataset folder):\n  " + "\n  ".join(problems)
        )
    if not candidates:
        raise ValueError(
            f"no images found under {root} (extensions: .jpg .jpeg .png .bmp .gif .webp, any case). {ACCEPTED}"
        )
    return SourceScan(
        layout=layout,
        candidates=sorted(candidates, key=lambda c: c.id),
        ignored=sorted(ignored),
        class_folders=sorted(class_folders),
    )


def shown(path: Path) -> str:
    """A path as text: as it is when it is valid UTF-8, else its bytes escaped (``b'caf\\xe9.jpg'``)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of the name, kept by Python as surrogates
        return repr(os.fsencode(text))
    return text


def unusable(path: Path, root: Path, inside: Path, problems: list[str], *, junk: bool = False) -> bool:
    """Whether ``path`` breaks the names-and-links policy (module docstring); if so, say why in ``problems``.

    Hidden files and OS clutter (``junk``) are only checked for dangling links, which DVC cannot hash.
    """
    rel = path.relative_to(root)
    if not junk and shown(rel) != str(rel):
        problems.append(f"{shown(rel)}: the name is not valid UTF-8; rename it")
        return True
    if path.is_symlink():
        target = shown(Path(os.readlink(path)))
        try:
            resolved = path.resolve(strict=True)
        except FileNotFoundError:
            problems.append(
                f"{shown(rel)}: a dangling symbolic link (to {target}, which does not exist); "
                "remove it or restore its target"
            )
            return True
        except (RuntimeError, OSError):  # a loop (RuntimeError before Python 3.13)
            problems.append(f"{shown(rel)}: a symbolic link loop (to {target}); remove it")
            return True
    elif junk:
        return False
    else:
        resolved = path.resolve()
    if not junk and not resolved.is_relative_to(inside):
        problems.append(
            f"{shown(rel)}: leads out of the dataset folder (to {shown(resolved)}); copy the file "
            "in, or point data.source at a folder that holds it"
        )
        return True
    return False


def inspect_all(
    candidates: Sequence[Candidate],
    *,
    with_phash: bool = False,
    max_pixels: int | None = None,
    workers: int = 4,
    progress: bool = True,
    known: StatCache | None = None,
) -> tuple[list[tuple[Candidate, ImageInfo]], list[str]]:
    """Decode and hash every candidate in threads (PIL releases the GIL while decoding).

    Parameters
    ----------
    candidates : sequence of Candidate
    with_phash : bool
        Also compute each image's perceptual hash (for near-duplicate search).
    max_pixels : int, optional
        ``data.max_image_pixels``: larger images are bad images, refused from their header.
    workers : int
        Decoding threads.
    progress : bool
    known : StatCache, optional
        What earlier runs found in these files (:mod:`pipeline.dataset.stat_cache`): a file whose stat
        is unchanged is not read again; a changed one is hashed, and decoded unless its bytes are the
        ones recorded. Every good file read is noted in it (the caller saves it). ``None``: read every file.

    Returns
    -------
    good : list of (Candidate, ImageInfo)
    bad : list of str
        One message per file that could not be decoded, naming it.
    """

    def one(candidate: Candidate):
        try:
            if known is None:
                return candidate, inspect_image(candidate.path, with_phash=with_phash, max_pixels=max_pixels), None
            return (candidate, *_inspect_known(candidate.path, known, with_phash=with_phash, max_pixels=max_pixels))
        except (BadImageError, OSError) as error:
            return candidate, None, str(error)

    good, bad, unchanged = [], [], 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(one, candidates)
        for candidate, info, seen in progress_bar(
            results, total=len(candidates), desc="inspect images", unit="img", enabled=progress
        ):
            if info is None:
                bad.append(seen)
                continue
            good.append((candidate, info))
            if seen is not None:
                known.record(*seen)
            elif known is not None:
                known.keep(candidate.path)
                unchanged += 1
    if known is not None:
        log.info(
            "inspected %d image(s): %d unchanged since prepare's last run (not read again), %d read",
            len(candidates),
            unchanged,
            len(candidates) - unchanged,
        )
    return good, bad


def _inspect_known(path: str, known: StatCache, *, with_phash: bool, max_pixels: int | None):
    """:func:`inspect_image` that skips what ``known`` says about an unchanged file.

    Returns the ImageInfo and, for a file that was read, what to note in ``known`` (None when it was not read).
    """

    def enough(facts: Facts | None) -> bool:
        return (
            facts is not None
            and (facts.phash is not None or not with_phash)
            and (max_pixels is None or facts.width * facts.height <= max_pixels)
        )  # else decode: it says why

    read_at = time.time_ns()  # before the stat: a write after it has a later ctime
    stat = os.stat(path)
    facts = known.lookup(path, stat)
    seen = None
    if not enough(facts):
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        facts = known.by_content(digest)
        if not enough(facts):  # bytes read before (a touch, a copy, a move) need no decoding
            pixels = decode_image(path, sha256=digest, max_pixels=max_pixels)
            facts = Facts(
                sha256=digest,
                width=int(pixels.shape[1]),
                height=int(pixels.shape[0]),
                phash=perceptual_hash(pixels) if with_phash else None,
            )
        seen = (path, stat, read_at, facts)
    info = ImageInfo(
        width=facts.width, height=facts.height, sha256=facts.sha256, phash=facts.phash if with_phash else None
    )
    return info, seen


@dataclass(frozen=True)
class ImageInfo:
    """What prepare records about one decodable image."""

    width: int
    height: int
    sha256: str
    phash: int | None = None  # 64-bit perceptual hash, when asked for


def inspect_image(path: Path | str, *, with_phash: bool = False, max_pixels: int | None = None) -> ImageInfo:
    """Hash a file's bytes and prove it decodes; width and height are as displayed (upright).

    Parameters
    ----------
    path : path-like
    with_phash : bool
        Also compute the perceptual hash of the decoded pixels
        (:func:`pipeline.dataset.duplicates.perceptual_hash`), while they are in memory.
    max_pixels : int, optional
        As :func:`decode_image`.

    Raises
    ------
    BadImageError
        As :func:`decode_image`.
    """
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    pixels = decode_image(path, max_pixels=max_pixels)
    return ImageInfo(
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        sha256=digest,
        phash=perceptual_hash(pixels) if with_phash else None,
    )

"""Take the plots-page screenshots of the manual (docs/images/plots_page_*.png) from a finished run.

Usage (after ``dvc repro``, from the repository root)::

    python docs/tools/screenshots.py [--project .] [--out docs/images]

The project's plots and reports are copied into a temporary DVC repository
(the way tests/test_plots_page.py makes one) and, for each screenshot, ``dvc
plots show`` fills the offline page there with that screenshot's plots only —
so nothing in the project is touched — and headless Chromium renders it 1400 px
wide. Each is trimmed to its content and saved as a 256-colour PNG, to keep it
small.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from PIL import Image

log = logging.getLogger("screenshots")

WIDTH = 1400
HEIGHT = 3000
MARGIN = 16
# The plots of each screenshot: the template of a dvc.yaml plot, or the path of an image plot.
SHOTS = {
    "plots_page_top": ("leaderboard", "by_backbone", "confusion"),
    "plots_page_search": ("search", "hyperparameters", "learning_curve"),
    "plots_page_map": ("feature_map", "reports/diagnose/errors.jpg"),
}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def scratch_repository(project: Path, work: Path) -> list:
    """A DVC repository under ``work`` holding ``project``'s plot data and page; ``project``'s plots."""
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=work, check=True)
    shutil.copytree(project / ".dvc/plots", work / ".dvc/plots")
    shutil.copy(project / ".dvc/config", work / ".dvc/config")
    shutil.copytree(project / "plots", work / "plots")
    (work / "reports").mkdir()
    shutil.copy(project / "reports/plots_page.html", work / "reports/plots_page.html")
    shutil.copytree(project / "reports/diagnose", work / "reports/diagnose")
    return yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8"))["plots"]


def render_page(work: Path, plots: list, wanted: tuple[str, ...]) -> Path:
    """``dvc plots show`` of the plots named in ``wanted`` (templates or image paths); the page's path."""

    def name(plot) -> str:
        return plot if isinstance(plot, str) else next(iter(plot.values())).get("template", "")

    chosen = sorted((p for p in plots if name(p) in wanted), key=lambda p: wanted.index(name(p)))
    missing = set(wanted) - {name(p) for p in chosen}
    if missing:
        raise ValueError(f"dvc.yaml has no plot {sorted(missing)}; its plots: {[name(p) for p in plots]}")
    (work / "dvc.yaml").write_text(yaml.safe_dump({"plots": chosen}, sort_keys=False), encoding="utf-8")
    shutil.rmtree(work / "dvc_plots", ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", "dvc_plots"], cwd=work, check=True, capture_output=True
    )
    return work / "dvc_plots/index.html"


def trimmed(image: Image.Image) -> Image.Image:
    """``image`` cut below its last non-white row (and a margin), full width."""
    grey = image.convert("L").point(lambda v: 255 if v < 250 else 0)
    box = grey.getbbox()
    bottom = min(image.height, (box[3] if box else image.height) + MARGIN)
    return image.crop((0, 0, image.width, bottom))


def screenshot(page: Path, out: Path, work: Path) -> Path:
    """One tall screenshot of ``page`` in headless Chromium."""
    chromium = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if chromium is None:
        raise FileNotFoundError(f"no browser found (looked for {', '.join(CHROMIUM_NAMES)}): apt-get install chromium")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={work / 'profile'}",
            "--virtual-time-budget=15000",
            "--hide-scrollbars",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a repository after `dvc repro`")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        plots = scratch_repository(args.project.resolve(), work)
        for name, wanted in SHOTS.items():
            shot = screenshot(render_page(work, plots, wanted), work / f"{name}.png", work)
            band = trimmed(Image.open(shot).convert("RGB"))
            path = args.out / f"{name}.png"
            band.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
            log.info("%s: %d×%d, %d KB", path, band.width, band.height, path.stat().st_size // 1024)


if __name__ == "__main__":
    main()

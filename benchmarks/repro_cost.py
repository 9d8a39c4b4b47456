"""What `dvc repro` costs after changing one head parameter, against the cold run of the whole pipeline.

Copies the project (code, params.yaml, dvc.yaml, .dvc config and plot templates;
no data, features, heads, reports, lock file or DVC cache) into a temporary
folder, makes it a fresh git + DVC repository and times, with wall clocks:

1. ``dvc repro`` from nothing (the cold run: synthesize, prepare, extract, heads, evaluate …);
2. ``dvc repro`` after a scikit-learn head parameter changes (a logistic-regression C);
3. ``dvc repro`` after a Keras head parameter changes (a dense-head dropout).

Each row lists the stages that ran; none may be an extract stage. Converted
EfficientNet-Lite0 weights cached under ``~/.cache/shoulders`` are reused by the
cold run, as on any machine that has run the pipeline once.

Usage: ``python benchmarks/repro_cost.py [--keep DIR]`` from the project root.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {
    ".git",
    ".venv",
    "features",
    "heads",
    "plots",
    "reports",
    "dvc_plots",
    "finetune",
    "dvc.lock",
    "metrics.json",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    "shoulders.egg-info",
    "build",
}
CHANGES = [
    (
        "a logistic-regression C (heads.logreg.C: 10 → 100)",
        "logreg: {C: [0.01, 0.1, 1.0, 10.0]",
        "logreg: {C: [0.01, 0.1, 1.0, 100.0]",
    ),
    ("a dense-head dropout (heads.dense.dropout: 0.5 → 0.3)", "dropout: [0.0, 0.5]", "dropout: [0.0, 0.3]"),
]


def copy_project(dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(ROOT)
        # Outputs are skipped at the top level only (pipeline/heads is code, heads/ an output).
        skipped = {n for n in names if n in SKIP and (rel == Path(".") or n == "__pycache__")}
        if rel == Path(".dvc"):
            skipped |= {"cache", "tmp"}
        if rel == Path("data"):
            skipped |= {n for n in names if n != ".gitignore"}
        return skipped

    shutil.copytree(ROOT, dest, ignore=ignore)


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def repro_env() -> dict:
    """The environment the benchmarks run DVC and git in: this venv first, quiet TensorFlow, a git identity."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }


def timed_repro(cwd: Path, env: dict) -> tuple[float, list[str]]:
    started = time.perf_counter()
    out = run(["dvc", "repro"], cwd, env)
    return time.perf_counter() - started, re.findall(r"Running stage '([^']+)'", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the copy here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    env = repro_env()
    with tempfile.TemporaryDirectory(prefix="shoulders-repro-") as tmp:
        root = args.keep or Path(tmp) / "project"
        copy_project(root)
        run(["git", "init", "-q"], root, env)
        run(["git", "add", "-A"], root, env)
        run(["git", "commit", "-qm", "copy"], root, env)
        rows = [("cold run", *timed_repro(root, env)), ("again, nothing changed", *timed_repro(root, env))]
        for label, old, new in CHANGES:
            params = root / "params.yaml"
            text = params.read_text()
            if old not in text:
                raise SystemExit(f"params.yaml no longer contains {old!r}; update benchmarks/repro_cost.py")
            params.write_text(text.replace(old, new))
            rows.append((f"after changing {label}", *timed_repro(root, env)))
        cold = rows[0][1]
        print("| run | wall s | % of cold | stages run |")
        print("|---|---:|---:|---|")
        for label, seconds, stages in rows:
            print(f"| {label} | {seconds:.1f} | {100 * seconds / cold:.0f}% | {', '.join(stages) or 'none'} |")
        extracts = [s for _, _, stages in rows[1:] for s in stages if s.startswith("extract")]
        print(f"\nextract stages rerun after a head change: {extracts or 'none'}")


if __name__ == "__main__":
    main()

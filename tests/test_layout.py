"""The layout is the architecture: DVC deps cover the code each stage runs, stages never import stages, no cycles.

Each stage of ``dvc.yaml`` runs ``python -m <module>``; the code it runs is that
module and every module of the package it imports, followed transitively
through static imports (those inside functions included). Every such module
must be covered by the stage's ``deps`` (the file itself or a folder above it),
except the shared plumbing named in ``dvc.yaml``'s header comment: the params
parser ``pipeline/config/`` (DVC tracks each stage's params keys itself; a dep
on the parser would rerun every extraction when a key is added) and the stage
runner ``pipeline/cli/stage_runner.py``, whose own imports are not followed, and the
package markers ``pipeline/__init__.py`` and ``pipeline/stages/__init__.py``.
One stage lists the parser all the same: ``params_check``, whose job is to run
it before any other stage (its output never changes, so that costs nothing).

The checker is tested on a small synthetic package too, so that a check that
cannot fail would be noticed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PLUMBING = ("config/", "cli/")  # relative to the package folder; not followed, need no dep
MARKERS = ("__init__.py", "stages/__init__.py")
GATE, PARSER = "params_check", "pipeline/config"  # the stage that checks params first, and the parser it runs
STAGE_MODULE = re.compile(r"python3? -m ([\w.]+)")


def module_file(root: Path, dotted: str) -> Path | None:
    path = root.joinpath(*dotted.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def dotted_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_files(root: Path, package: str, path: Path) -> set[Path]:
    """Files of ``package`` that importing ``path`` runs: its imports and their parent packages' __init__."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = dotted_name(root, path)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets.add(base)
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    files = set()
    for target in targets:
        if target.split(".")[0] != package:
            continue
        parts = target.split(".")
        for depth in range(1, len(parts) + 1):
            found = module_file(root, ".".join(parts[:depth]))
            if found is not None:
                files.add(found)
    files.discard(path)
    return files


def import_graph(root: Path, package: str) -> dict[Path, set[Path]]:
    return {path: imported_files(root, package, path) for path in sorted((root / package).rglob("*.py"))}


def is_plumbing(root: Path, package: str, path: Path) -> bool:
    rel = path.relative_to(root / package).as_posix()
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in PLUMBING)


def code_run_by(root: Path, package: str, graph: dict[Path, set[Path]], start: Path) -> set[Path]:
    """``start`` and everything it imports, transitively; plumbing is included but not followed."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path != start and is_plumbing(root, package, path):
            continue
        todo.extend(graph.get(path, ()))
    return seen


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root_node in graph:
        if root_node in index:
            continue
        work = [(root_node, iter(sorted(graph[root_node])))]
        index[root_node] = low[root_node] = counter[0]
        counter[0] += 1
        stack.append(root_node)
        on_stack.add(root_node)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def stages_of(root: Path) -> dict[str, dict]:
    """Each stage's module (from its ``cmd``) and its deps, ``foreach`` stages included."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    out = {}
    for name, stage in spec.items():
        body = stage.get("do", stage)
        cmd = body.get("cmd", "")
        match = STAGE_MODULE.search(" ".join(cmd) if isinstance(cmd, list) else cmd)
        if match:
            out[name] = {"module": match.group(1), "deps": [str(d) for d in body.get("deps", [])]}
    return out


def layout_problems(root: Path, graph: dict[Path, set[Path]] | None = None) -> list[str]:
    """Every layout problem of the project at ``root`` (empty when the layout is sound).

    ``graph`` is its import graph when already known (it depends on the code only, not on dvc.yaml).
    """
    stages = stages_of(root)
    package = {s["module"].split(".")[0] for s in stages.values()}.pop()
    graph = import_graph(root, package) if graph is None else graph
    problems = []
    stage_files = {}
    for name, stage in stages.items():
        start = module_file(root, stage["module"])
        if start is None:
            problems.append(f"stage {name}: no module {stage['module']}")
            continue
        stage_files[start] = name
        for path in sorted(code_run_by(root, package, graph, start)):
            rel = path.relative_to(root).as_posix()
            if is_plumbing(root, package, path) or path.relative_to(root / package).as_posix() in MARKERS:
                continue
            if not any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in stage["deps"]):
                problems.append(f"stage {name}: runs {rel} but does not depend on it")
    for start, name in stage_files.items():
        for imported in graph[start]:
            if imported in stage_files:
                problems.append(
                    f"stage {name} imports stage {stage_files[imported]} ({imported.relative_to(root).as_posix()})"
                )
    for component in cycles(graph):
        problems.append("import cycle: " + " <-> ".join(p.relative_to(root).as_posix() for p in component))
    return problems


# --------------------------------------------------------------------------- the project


def test_the_project_layout_has_no_problems():
    assert layout_problems(REPO) == []


def test_the_params_gate_alone_depends_on_the_params_parser():
    listing = {name for name, stage in stages_of(REPO).items() if PARSER in (d.rstrip("/") for d in stage["deps"])}
    assert listing == {GATE}


@pytest.mark.parametrize("stage", sorted(stages_of(REPO)))
def test_every_stage_is_a_thin_module_under_stages_named_as_the_stage(stage):
    assert stages_of(REPO)[stage]["module"] == f"pipeline.stages.{stage}"


def test_removing_any_code_dep_is_caught(tmp_path):
    """Each pipeline/ dep of each stage is needed: dropping it gives a problem naming that stage."""
    import shutil

    shutil.copytree(REPO / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    original = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    spec = yaml.safe_load(original)
    graph = import_graph(tmp_path, "pipeline")
    dropped = 0
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        # The gate's dep on the parser is plumbing, listed on purpose: dropping it is not a layout problem.
        for dep in [
            d
            for d in body["deps"]
            if str(d).startswith("pipeline/") and not (name == GATE and str(d).rstrip("/") == PARSER)
        ]:
            trimmed = yaml.safe_load(original)
            trimmed_body = trimmed["stages"][name].get("do", trimmed["stages"][name])
            trimmed_body["deps"].remove(dep)
            (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(trimmed), encoding="utf-8")
            problems = layout_problems(tmp_path, graph)
            assert any(p.startswith(f"stage {name}: runs {dep.rstrip('/')}") for p in problems), (name, dep, problems)
            dropped += 1
    assert dropped > 30


# --------------------------------------------------------------------------- the checker itself


def _mini(tmp_path: Path, files: dict[str, str], deps: dict[str, list[str]]) -> Path:
    for rel, text in {"pkg/__init__.py": "", "pkg/stages/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    stages = {
        name: {"cmd": f"python -m pkg.stages.{name}", "deps": d, "outs": [f"{name}.out"]} for name, d in deps.items()
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}), encoding="utf-8")
    return tmp_path


def test_checker_follows_imports_inside_functions_and_from_imports(tmp_path):
    root = _mini(
        tmp_path,
        {
            "pkg/stages/a.py": "def main():\n    from pkg.engine import work\n",
            "pkg/engine/__init__.py": "",
            "pkg/engine/work.py": "from . import helper\n",
            "pkg/engine/helper.py": "import pkg.leaf\n",
            "pkg/leaf.py": "",
        },
        {"a": ["pkg/stages/a.py", "pkg/engine"]},
    )
    assert layout_problems(root) == ["stage a: runs pkg/leaf.py but does not depend on it"]


def test_checker_finds_a_stage_importing_a_stage_and_a_cycle(tmp_path):
    root = _mini(
        tmp_path,
        {
            "pkg/stages/a.py": "from pkg.stages import b\n",
            "pkg/stages/b.py": "import pkg.x\n",
            "pkg/x.py": "import pkg.y\n",
            "pkg/y.py": "def f():\n    import pkg.x\n",
        },
        {"a": ["pkg/stages", "pkg/x.py", "pkg/y.py"], "b": ["pkg/stages/b.py", "pkg/x.py", "pkg/y.py"]},
    )
    problems = layout_problems(root)
    assert "stage a imports stage b (pkg/stages/b.py)" in problems
    assert "import cycle: pkg/x.py <-> pkg/y.py" in problems
    assert len(problems) == 2

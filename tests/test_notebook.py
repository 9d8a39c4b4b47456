"""The example notebook (examples/explore_features.ipynb), executed cell by cell against a small run's stores.

The notebook reads the run named by ``$SHOULDERS_PROJECT`` (else the default
run of the repository); here that is a run made in ``tmp_path`` by the stages'
own ``main()`` — prepare, extract, heads and evaluate on 36 tiny images through
a random-weights MobileNetV2 cut — so the notebook is run end to end in
seconds, on stores, a manifest and a leaderboard that the pipeline wrote.
"""

from __future__ import annotations

import json

import nbclient
import nbformat
import pytest
from conftest import REPO, run_to_evaluate, tiny_params, write_image_folder, write_params

NOTEBOOK = REPO / "examples" / "explore_features.ipynb"
# Appended to the notebook's copy: what it computed, for the test to read back.
REPORT_CELL = """import json
print("REPORT " + json.dumps({"feature_set": FEATURE_SET, "pooling": POOLING, "chosen_variant": choice["variant"],
                              "chosen_val": float(chosen_val), "custom_val": float(custom_val),
                              "train": len(train.y), "val": len(val.y), "neighbours": neighbours.tolist(),
                              "stores": list(stores["feature set"])}))"""


@pytest.fixture
def small_run(in_tmp):
    """A finished run of one tiny feature set: the files the notebook reads (features, manifest, heads, reports)."""
    write_image_folder(in_tmp / "images", classes=3, per_class=12)
    # cv 0: the chosen head is selected on val, so the notebook's refit on train must score what evaluate reported.
    write_params(
        in_tmp / "params.yaml",
        tiny_params(
            "images", extract={"runtime": "tensorflow"}, heads={"kinds": ["logreg", "svm_linear"], "ensemble": 0}
        ),
    )
    return run_to_evaluate(in_tmp)


def test_the_notebook_explores_a_runs_stores_and_reproduces_its_choice(small_run, monkeypatch):
    monkeypatch.setenv("SHOULDERS_PROJECT", str(small_run))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
    # Run from examples/, as Jupyter runs a notebook from its own folder; a failing cell raises here, naming it.
    nbclient.NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    report = json.loads(printed.split("REPORT ", 1)[1].splitlines()[0])
    evaluation = json.loads((small_run / "reports/evaluation.json").read_text())
    chosen = evaluation["feature_sets"]["mv2"]
    assert report["stores"] == ["mv2"] and report["feature_set"] == "mv2"  # the small run's, not the default's
    per_split = json.loads((small_run / "reports/prepare.json").read_text())["per_split"]
    assert (report["train"], report["val"]) == (per_split["train"], per_split["val"])  # every image of each split
    assert report["chosen_variant"] == chosen["variant"] == evaluation["best"]["variant"]
    # Rebuilt from its scores row and refitted on train, the leaderboard's head scores on val what evaluate said.
    assert report["chosen_val"] == pytest.approx(chosen["val_accuracy"], abs=1e-9)
    assert 0.0 <= report["custom_val"] <= 1.0
    assert all(len(row) == 5 and len(set(row)) == 5 for row in report["neighbours"])  # 5 distinct train images
    # Two pictures were drawn: the t-SNE map and the nearest neighbours (the photographs as JPEG).
    pictures = [o for o in outputs if o.output_type == "display_data"]
    assert [sorted(k for k in o.data if k.startswith("image/")) for o in pictures] == [["image/png"], ["image/jpeg"]]
    assert "shrinkage LDA (yours)" in printed + "".join(str(o.get("data", {})) for o in outputs)

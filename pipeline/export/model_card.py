"""The model card: what an exported model is for, what it was trained on and how well it works.

Written next to the model as ``card.json`` (read by :func:`pipeline.export.predict_command.load_model`
for the class names) and ``card.md`` for people. Someone who finds the files
should learn from it the task and classes, the training data (manifest hash,
counts per class, leakage removed), the backbone with its weights' source and
sha256, the cut, pooling, head and hyperparameters, validation and test metrics
with confidence intervals, the library versions, the check against the
pipeline, and the intended use and limits. Not the runners-up: they change
with every other variant's score, and the card with them would make the
export stage rerun for a model that did not change (the run's
``reports/leaderboard.md`` ranks them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from pipeline.provenance import library_versions

# The libraries an exported model was made with, listed on its card.
CARD_LIBRARIES = ("shoulders", "keras", "tensorflow-cpu", "tensorflow", "scikit-learn", "numpy", "zarr", "pillow")


def build_card(
    *,
    target: dict,
    classes: Sequence[str],
    records: Sequence[Any],
    prepare_report: dict,
    form: str,
    calibration: str | None,
    check: dict,
    model: Any,
    manifest_sha256: str | None = None,
    max_image_pixels: int | None = None,
) -> dict:
    """Everything the card says, as a JSON-ready mapping.

    ``target`` is what the evaluate stage chose for export (``reports/export_target.json``).
    """
    key, variant, row = target["feature_set"], target["variant"], target["row"]
    # A combination's or the ensemble's provenance joins its members'; graph_card describes them one by one.
    provenance = (
        target["provenance"]
        if target.get("form", "single") == "single"
        else (target.get("members") or [{"provenance": target["provenance"]["members"][0]}])[0]["provenance"]
    )
    counts = Counter((r.class_name, r.split) for r in records)
    selected = target.get("test") or {}
    manifest_digest = manifest_sha256
    duplicates = prepare_report.get("duplicates", {})
    finetune = target.get("finetune")
    return {
        "name": f"shoulders {key} / {variant}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": f"image classification into {len(classes)} classes",
        "classes": list(classes),
        "input": "RGB images as uint8 arrays (height, width, 3) of any size; the model resizes them "
        f"({provenance.get('resize', 'bilinear')}) to {provenance['input_size']}×{provenance['input_size']}. "
        f"Decode files with pipeline.images.decode_image(path, target={provenance['input_size']}) "
        "(EXIF orientation applied, first frame of animations, JPEGs of at least twice that side decoded "
        "in the DCT domain, as in extraction).",
        "max_image_pixels": max_image_pixels,  # data.max_image_pixels: predict refuses larger images by default
        "output": "class probabilities, one column per class in the order of `classes`",
        "form": form,
        "training_data": {
            "source": prepare_report.get("source"),
            "manifest_sha256": manifest_digest,
            "images_per_class": {c: {s: counts[(c, s)] for s in ("train", "val", "test")} for c in classes},
            "duplicates_removed": {
                "cross_split": duplicates.get("removed_cross_split", 0),
                "within_split": duplicates.get("removed_within_split", 0),
            },
            "bad_images_skipped": len(prepare_report.get("bad_images_skipped", [])),
        },
        "backbone": {
            "family": provenance["backbone"],
            "weights": provenance["weights"],
            "weights_sha256": provenance.get("weights_sha256"),
            "cut": provenance["cut"],
            "cut_layer_index": provenance.get("cut_index"),
            "layers": provenance.get("n_layers"),
            "input_size": provenance["input_size"],
            "preprocessing": provenance.get("preprocessing"),
            "resize": provenance.get("resize"),
            "features_dtype": provenance.get("dtype"),
            **{
                name: provenance[name]
                for name in ("preset", "architecture", "blocks", "tokens")
                if provenance.get(name) is not None
            },
        },
        "head": {
            "variant": variant,
            "kind": row["kind"],
            "pooling": row["pooling"],
            "hyperparameters": row.get("params", {}),
            "standardize": row.get("standardize"),
            "pca": row.get("pca"),
            "probability_calibration": calibration,
            "chosen": target["chosen"],
            "head_sha256": target["head_sha256"],
        },
        "metrics": {
            "validation": {"accuracy": row.get("val_accuracy"), "macro_f1": row.get("val_macro_f1")},
            "test": {
                k: selected.get(k)
                for k in ("test_accuracy", "test_accuracy_ci95", "test_macro_f1", "test_recall", "test_images")
            }
            if selected
            else "not scored: only the variant chosen on validation in each feature set is",
        },
        "fine_tuning": None
        if not finetune
        else {
            "note": "the fine-tune stage's model (finetune/model.weights.h5) is not this export",
            **{k: finetune.get(k) for k in ("variant", "val_accuracy", "test_accuracy", "test_accuracy_ci95", "kept")},
        },
        "check_against_pipeline": check,
        "parameters": int(model.count_params()),
        "versions": library_versions(CARD_LIBRARIES),
        "intended_use": [
            f"Sorting images into the classes {', '.join(classes)} when they look like the training images "
            f"({prepare_report.get('source')}).",
            "Not for images of other kinds or other classes: every image gets one of these classes, and the "
            "probabilities of an out-of-domain image mean little.",
            "The test accuracy holds for images drawn like the test split; its interval shows how much it could "
            "move on another sample of that size.",
        ],
    }


def graph_card(target: dict, plan: Any, backbones: Sequence[Any]) -> dict:
    """The card's entries for a graph of several feature sets (a combination, the ensemble).

    ``members`` lists each feature set with its variant (an ensemble member's own head; a combination's
    members share its head), backbone, weights and cut; ``shared_backbones`` each backbone built once in
    the graph and the cuts it gives; ``backbone`` and ``input`` replace the single backbone's entries.
    """
    parts = target.get("members") or [None] * len(plan.branches)
    # A vote's members each read their feature set's branch (several may read one); a combination's are its branches.
    read = [plan.branches[head.branches[0]] for head in plan.heads] if target.get("members") else plan.branches
    members = []
    for branch, part in zip(read, parts):
        provenance = branch.provenance
        members.append(
            {
                "feature_set": branch.key,
                "variant": part["variant"] if part else target["variant"],
                "head": part["row"]["kind"] if part else target["row"]["kind"],
                "head_sha256": part["head_sha256"] if part else target["head_sha256"],
                "backbone": provenance["backbone"],
                "weights": provenance["weights"],
                "weights_sha256": provenance.get("weights_sha256"),
                "cut": provenance["cut"],
                "cut_layer_index": provenance.get("cut_index"),
                "input_size": provenance["input_size"],
                "pooling": branch.pooling,
                "features_dtype": provenance.get("dtype"),
                "preprocessing": provenance.get("preprocessing"),
                "resize": provenance.get("resize"),
            }
        )
    sizes = sorted({m["input_size"] for m in members})
    joined = {field: "+".join(str(m[field]) for m in members) for field in ("backbone", "weights", "cut")}
    how = (
        "mean of the members' probabilities (soft vote)"
        if target.get("members")
        else "one head on the members' pooled features concatenated in this order"
    )
    return {
        "members": members,
        "combined_by": how,
        "shared_backbones": [backbone.describe(plan.branches) for backbone in backbones],
        "input": "RGB images as uint8 arrays (height, width, 3) of any size; the model resizes them for each backbone "
        f"(to {', '.join(f'{s}×{s}' for s in sizes)}). Decode files with "
        f"pipeline.images.decode_image(path, target={sizes[-1]}) (EXIF orientation applied, first frame of "
        "animations, JPEGs of at least twice that side decoded in the DCT domain).",
        "backbone": {
            "family": joined["backbone"],
            "weights": joined["weights"],
            "weights_sha256": None,
            "cut": joined["cut"],
            "cut_layer_index": None,
            "layers": None,
            "input_size": sizes[-1],
            "input_sizes": sizes,
            "preprocessing": "; ".join(sorted({m["preprocessing"] for m in members})),
            "resize": "; ".join(sorted({str(m["resize"]) for m in members})),
            "features_dtype": "+".join(str(m["features_dtype"]) for m in members),
            "families": sorted({m["backbone"] for m in members}),
        },
    }


def card_markdown(card: dict) -> str:
    """The card for humans."""
    test = card["metrics"]["test"]
    backbone, head, data = card["backbone"], card["head"], card["training_data"]
    own = "each head’s own" if card.get("members") else "the head’s own"
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"Created {card['created']} by shoulders. {card['task'].capitalize()}.",
        "",
        f"**Classes**: {', '.join(card['classes'])}",
        "",
        "## How to use",
        "",
        "```",
        "from pipeline.export.predict_command import load_model",
        "model = load_model('models')",
        "probabilities = model.predict_proba([rgb_uint8_image])",
        "```",
        "",
        f"or `shoulders predict models <images or folders> --top-k 3`. Input: {card['input']} "
        f"Output: {card['output']}. Form: {card['form']}.",
        "",
        "## Metrics",
        "",
    ]
    if isinstance(test, dict):
        low, high = test["test_accuracy_ci95"]
        lines += [
            f"- test accuracy **{test['test_accuracy']:.4f}** (bootstrap 95% CI {low:.4f}–{high:.4f}) on "
            f"{test['test_images']} images; macro-F1 {test['test_macro_f1']:.4f}",
            "- recall per class: " + ", ".join(f"{c} {v:.3f}" for c, v in test["test_recall"].items()),
        ]
    else:
        lines.append(f"- test: {test}")
    val = card["metrics"]["validation"]
    lines += [
        f"- validation accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f} ({head['chosen']})",
        "",
        "## Model",
        "",
        *(
            _members_markdown(card)
            or [
                f"- backbone **{backbone['family']}**, weights `{backbone['weights']}` "
                f"(sha256 `{backbone['weights_sha256'] or 'n/a: resolved by Keras'}`), cut at `{backbone['cut']}` "
                f"(layer {backbone['cut_layer_index']} of {backbone['layers']}), input {backbone['input_size']}px, "
                f"preprocessing: {backbone['preprocessing']}; features stored as {backbone['features_dtype']}"
            ]
        ),
        f"- head `{head['variant']}`: {head['kind']} on {head['pooling']} pooling, "
        f"hyperparameters {head['hyperparameters']}, standardised: {head['standardize']}, PCA: {head['pca']}",
        f"- probabilities: {head['probability_calibration'] or own}; {card['parameters']:,} "
        "parameters in the Keras graph",
        "",
        "## Training data",
        "",
        f"Source `{data['source']}`, manifest sha256 `{data['manifest_sha256']}`. Duplicates removed: "
        f"{data['duplicates_removed']['cross_split']} across splits, {data['duplicates_removed']['within_split']} "
        f"within; undecodable images skipped: {data['bad_images_skipped']}.",
        "",
        "| class | train | val | test |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {c} | {n['train']} | {n['val']} | {n['test']} |" for c, n in data["images_per_class"].items()]
    ood = card.get("out_of_domain")
    if ood:
        test_share = "n/a" if ood["flagged_test"] is None else f"{100 * ood['flagged_test']:.1f}%"
        lines += [
            "",
            "## Out of domain",
            "",
            f"`shoulders predict` flags an image as out of domain when the {ood['method']} (k = {ood['k']}, "
            f"{ood['training_images']} training images, `{ood['file']}`) exceeds **{ood['threshold']:.4f}**, "
            f"the {ood['percentile']:g}th percentile of the validation images' distances: "
            f"{100 * ood['flagged_validation']:.1f}% of validation and {test_share} of test images are flagged. "
            "A flagged image's class is not to be trusted, whatever its probability."
            + (f" The features are {ood['features']}." if ood.get("features") else ""),
        ]
    check = card["check_against_pipeline"]
    lines += [
        "",
        "## Checked against the pipeline",
        "",
        f"On the {check['images']} test images the exported model predicted the same class as the "
        f"{'pipeline' if card.get('members') else 'head'} on cached features for {check['same_class']}; "
        "the largest probability difference was "
        f"{check['max_abs_probability_difference']:.2g} (tolerance {check['tolerance']}). Accuracy: exported "
        f"{check['accuracy_exported']:.4f}, cached head {check['accuracy_cached_head']:.4f}.",
    ]
    if card.get("fine_tuning"):
        tuned = card["fine_tuning"]
        lines += [
            "",
            "## Fine-tuning",
            "",
            f"The fine-tune stage reached validation accuracy {tuned['val_accuracy']:.4f} "
            f"and test accuracy {tuned['test_accuracy']:.4f} ({tuned['variant']}, kept the {tuned['kept']}); "
            f"{tuned['note']}.",
        ]
    lines += ["", "## Intended use and limits", ""] + [f"- {item}" for item in card["intended_use"]]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in card["versions"].items()), ""]
    return "\n".join(lines)


def _members_markdown(card: dict) -> list[str]:
    """The lines on the members of a combination or an ensemble, and the backbones they share (none for one)."""
    if not card.get("members"):
        return []
    lines = [f"- {len(card['members'])} members, {card['combined_by']}:"]
    lines += [
        f"  - `{m['feature_set']}`: {m['head']} `{m['variant']}`, {m['backbone']} (`{m['weights']}`) cut at "
        f"`{m['cut']}`, input {m['input_size']}px, {m['pooling']} pooling"
        for m in card["members"]
    ]
    for shared in card["shared_backbones"]:
        built = ("one truncated backbone shared by " if shared["shared"] else "built for ") + ", ".join(
            shared["feature_sets"]
        )
        lines.append(
            f"- backbone {shared['backbone']} (`{shared['weights']}`, {shared['input_size']}px) built once: "
            f"{built}, outputs at {', '.join(shared['cuts'])}"
        )
    return lines

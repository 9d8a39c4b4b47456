"""How long the heads stage's fitting should take on this machine, said before it starts.

The work is the variants to fit times the images each is fitted on (train,
and val too under cross-validation); its rate, seconds per variant × image, is
the last heads run's on this machine with the same workers
(:mod:`pipeline.estimates`). A rough guide: kinds differ in cost (an RBF SVM
costs more than a logistic regression), so a grid of other kinds than last
time takes more or less.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.config import HeadsParams
from pipeline.estimates import estimate_line, record
from pipeline.heads.plan import HeadsPlan
from pipeline.manifest import Record

JOB = "heads"


def heads_key(heads: HeadsParams) -> dict:
    """What the rate depends on besides the machine: how many workers fit, and where."""
    return {"n_jobs": heads.n_jobs, "backend": heads.backend}


def fitting_work(plans: Sequence[HeadsPlan], records: Sequence[Record]) -> tuple[int, int]:
    """``(variants to fit, variant × image units)`` of the plans."""
    train = sum(r.split == "train" for r in records)
    val = sum(r.split == "val" for r in records)
    variants = units = 0
    for plan in plans:
        count = len(plan.variants) if plan.out_of_core else sum(len(job.variants) for job in plan.jobs)
        variants += count
        units += count * (train + (val if plan.heads.cv else 0))
    return variants, units


def heads_estimate(heads: HeadsParams, *, variants: int, units: int) -> str | None:
    """The line logged before fitting, or None when nothing is to be fitted (every variant reused)."""
    if not variants:
        return None
    work = f"heads: {variants} variants to fit ({units} variant × image fits)"
    return estimate_line(JOB, heads_key(heads), units=units, work=work, unit="variant × image")


def record_heads(heads: HeadsParams, *, units: int, seconds: float) -> None:
    """Keep this run's seconds per variant × image for the next estimate."""
    record(JOB, heads_key(heads), units=units, seconds=seconds)

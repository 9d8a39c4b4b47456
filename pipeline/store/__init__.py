"""The Zarr feature store: one per feature set, written chunk by chunk, read pooled, verified.

Modules: :mod:`~pipeline.store.layout` (paths, array layout, chunking),
:mod:`~pipeline.store.writer` (create or resume, write, finalise; views stores),
:mod:`~pipeline.store.reader` (open, read pooled, list — the API for ad-hoc
analysis), :mod:`~pipeline.store.pooling` (the one definition of pooling),
:mod:`~pipeline.store.contents` (what a store holds, from its attributes and index),
:mod:`~pipeline.store.integrity` (reading chunks back), :mod:`~pipeline.store.repair` (the
damage an extraction recomputes), :mod:`~pipeline.store.verify` (``shoulders verify``)
and :mod:`~pipeline.store.filesystem` (local paths and fsspec URLs).
"""

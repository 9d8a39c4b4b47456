"""The extraction engine: a backbone cut run once over every image, into a feature store.

:mod:`~pipeline.extraction.plan` decides everything before the first image is
read (runtime, dtype, chunking, provenance) and builds the truncated backbone
once; :mod:`~pipeline.extraction.runtimes` compiles its inference step;
:mod:`~pipeline.extraction.inputs` decodes and batches the images;
:mod:`~pipeline.extraction.runner` streams them through the step into a store
writer; :mod:`~pipeline.extraction.feature_sets` runs one feature set (clean
features, or augmented views made by :mod:`~pipeline.extraction.augmentation`)
in this process, :mod:`~pipeline.extraction.distributed` on a Dask cluster;
:mod:`~pipeline.extraction.timing` times a backbone for the cost report.
"""

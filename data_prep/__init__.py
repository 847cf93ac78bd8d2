"""Converters from the datasets as users download them to the built format of `data_prep.built`.

    python -m data_prep.build --dataset=<name> --manual_dir=<download> --data_dir=<data_dir>

One module per dataset in `data_prep.datasets` (the registry) declares everything about it; the
shared parts are `dataset` (what a module declares), `layout` (helpers of the layout readers),
`builders` (the TFDS builder), `build` (the atomic, streaming build) and `built` (the format on
disk). `synthetic` writes a MARS-layout download for the demo and the tests.

Layering: this package never imports `reid_jax`; `reid_jax` reads datasets, protocols and the
built format from here.
"""

"""Datasets: data.yaml and its splits (specs), the annotation formats (formats/), reading and checking records
(records), torch loading (loader), augmentation (augment), Ray Data (ray_dataset), and the `otxlite data` commands
(check, convert). Imports from otxlite.core only.

The package's public names (`otxlite.data.split_specs`, `otxlite.data.to_ray_dataset`, ...) resolve on first use.
"""


def __getattr__(name):
    """The package's public names, imported on first use."""
    import importlib

    for module in ('specs', 'records', 'loader', 'ray_dataset'):
        module = importlib.import_module(f"otxlite.data.{module}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'otxlite.data' has no attribute {name!r}")

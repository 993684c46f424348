"""Models and their recipes: templates (template.yaml, validated), building torchvision models (build) on their
backbones (backbones, with the offline ImageNet weights), anchors, tiling, saliency maps, INT8 quantization with NNCF
(quantization) and choosing a template for the data (autoconfig). Imports from otxlite.core and otxlite.data.

Templates name their builder as 'otxlite.models:<function>' (e.g. otxlite.models:fasterrcnn_efficientnet_lite_fpn):
the builders of otxlite.models.build resolve here on first use.
"""


def __getattr__(name):
    """The model builders that templates name ('otxlite.models:<function>'), imported on first use."""
    import importlib

    for module in ('build',):
        module = importlib.import_module(f"otxlite.models.{module}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'otxlite.models' has no attribute {name!r}")

"""Templates chosen from the data, as OTX's `Engine(data_root=...)` does: the task from the annotations (instance
shapes, i.e. polygons or masks, mean instance segmentation), and the model of that task.

The rule: instance segmentation takes SEGMENTATION_TEMPLATE, detection DETECTION_TEMPLATE: both fine-tune ImageNet
weights that install with a package, so they start pretrained offline, and read features from stride 8. The reason
given names the smallest class's median object at the template's input; under anchors.SMALL_OBJECT px, train's
tiling (auto) cuts the images into tiles.
"""

import logging
from dataclasses import dataclass, replace

import torch

from otxlite.core.errors import DataError
from otxlite.data.records import load_split
from otxlite.data.specs import require_splits
from otxlite.models.anchors import SMALL_OBJECT, boxes_at_input
from otxlite.models.build import InputSize, build_model
from otxlite.models.templates import find_templates

log = logging.getLogger("otxlite")
DETECTION_TEMPLATE = "fasterrcnn_efficientnet_lite0_fpn"
SEGMENTATION_TEMPLATE = "maskrcnn_efficientnet_lite0_fpn"


@dataclass(frozen=True)
class Fit:
    """How one template suits the data: the smallest class's median object side at its input, in px."""

    template: dict
    input_size: InputSize
    smallest_class: str
    smallest_side: float
    reason: str

    @property
    def small_objects(self):
        return self.smallest_side < SMALL_OBJECT


def data_task(samples):
    """instance_segmentation when the annotations carry instance shapes, else detection."""
    has_shapes = any(shape is not None for sample in samples for shape in sample.shapes)
    return "instance_segmentation" if has_shapes else "detection"


def median_sides(samples, input_size):
    """{class: median side (sqrt of area) of its objects at input_size}, classes in order of first appearance."""
    names = list(dict.fromkeys(name for sample in samples for name in sample.classes))
    boxes, labels, _ = boxes_at_input(samples, input_size, {name: i for i, name in enumerate(names)})
    sides = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    return {name: float(sides[labels == i].median()) for i, name in enumerate(names) if (labels == i).any()}


def template_fit(template, samples):
    """The Fit of template to samples (the model is built with random weights to read its input size)."""
    with torch.random.fork_rng():
        input_size = InputSize.of(build_model(template, 1))
    sides = median_sides(samples, input_size)
    name = min(sides, key=sides.get)
    reason = (f"{name}' median object is {sides[name]:.0f} px at {template['id']}'s input ({input_size}), "
              f"{'under' if sides[name] < SMALL_OBJECT else 'at least'} {SMALL_OBJECT} px")
    return Fit(template, input_size, name, sides[name], reason)


def train_samples(specs):
    require_splits(specs, "train")
    samples = load_split(specs["train"]).samples
    if not any(sample.boxes for sample in samples):
        raise DataError(f"{specs['train'].ann_files}: the train split has no objects, so there is nothing to choose "
                        f"a template from (or to train on). Check its annotations with `otxlite data check`.")
    return samples


def choose_template(specs, extra_dirs=()):
    """(template, reason) for the data's train split, by the rule in this module's docstring."""
    return chosen_for(train_samples(specs), extra_dirs)


def chosen_for(samples, extra_dirs):
    task = data_task(samples)
    templates = {t["id"]: t for t in find_templates(task, extra_dirs)}
    if task == "instance_segmentation":
        return templates[SEGMENTATION_TEMPLATE], "the annotations have instance shapes (polygons or masks), so " \
            f"the task is instance segmentation, and {SEGMENTATION_TEMPLATE} fine-tunes ImageNet weights offline"
    fit = template_fit(templates[DETECTION_TEMPLATE], samples)
    then = "tiling (auto) will cut tiles" if fit.small_objects else "the whole image is read"
    return fit.template, f"boxes only, so detection, and {DETECTION_TEMPLATE} fine-tunes ImageNet weights " \
        f"offline; {fit.reason}, so {then}"


def rank_templates(specs, extra_dirs=()):
    """(task, [Fit, ...]): the data task's templates, best first: the one choose_template picks, then those whose
    input keeps every class's median object at SMALL_OBJECT px or more, fastest (fewest GFLOPs) first, then
    the rest, largest objects first."""
    samples = train_samples(specs)
    chosen, why = chosen_for(samples, extra_dirs)
    fits = [template_fit(t, samples) for t in find_templates(chosen["task"], extra_dirs)]
    first = [replace(f, reason=f"auto choice: {why}") for f in fits if f.template["id"] == chosen["id"]]
    others = sorted((f for f in fits if f.template["id"] != chosen["id"]),
                    key=lambda f: (f.small_objects, -f.smallest_side if f.small_objects else 0,
                                   f.template.get("stats", {}).get("gflops") or float("inf")))
    return chosen["task"], first + others

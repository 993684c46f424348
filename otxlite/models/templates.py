"""Model templates: discovery, loading and `params` overrides."""

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from otxlite.core.errors import TemplateError
from otxlite.core.files import read_yaml
from otxlite.core.tasks import TASKS
from otxlite.data.augment import Pipeline

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the otxlite package
# Installed wheels carry the templates inside the package; a source checkout has them beside it.
BUILTIN_TEMPLATE_DIRS = (PACKAGE_DIR / "templates", PACKAGE_DIR.parent / "templates")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def batch_size_or_auto(value):
    if value == "auto":
        return value
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("input should be a valid integer (or auto), got a number with a fractional part")
    if isinstance(value, float):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("input should be a valid integer, or auto")
    if value < 1:
        raise ValueError("input should be greater than or equal to 1")
    return value


class LearningParameters(Strict):
    batch_size: Annotated[int | str, pydantic.BeforeValidator(batch_size_or_auto)] = Field(
        description="images per batch; auto: chosen by train (on a GPU the largest that fits, on a CPU the fastest)")
    learning_rate: float = Field(ge=0, description="0 freezes the weights")
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    num_iters: int = Field(ge=1, description="epochs")
    warmup_iters: int = Field(ge=0)
    lr_scheduler: Literal["multistep", "cosine"]
    lr_steps: list[int] = Field(description="epochs at which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = Field(gt=0, le=1)
    enable_early_stopping: bool
    early_stop_start: int = Field(ge=0)
    early_stop_patience: int = Field(ge=1, description="epochs without a better smoothed val figure before stopping")
    early_stop_min_share: float = Field(0.5, ge=0, le=1, description="share of num_iters trained before early "
                                                                      "stopping may stop the run")
    best_epoch_window: int = Field(3, ge=1, description="the best epoch is the one whose val mAP@0.5, averaged with "
                                                        "the epochs before it (this many in all), is highest")
    close_mosaic_share: float = Field(0.1, ge=0, le=1, description="share of the last epochs trained without "
                                                                   "Mosaic and the heavy geometric transforms")
    adaptive_repeat: bool = Field(False, description="pass over a small training set several times an epoch, as OTX "
                                                     "does (80 images at batch 16: 3 times)")
    num_workers: int = Field(ge=0)


class Postprocessing(Strict):
    confidence_threshold: float = Field(ge=0, le=1)
    result_based_confidence_threshold: bool


class Anchors(Strict):
    fit: bool = Field(True, description="re-cluster anchors on the training boxes when recall is low")
    min_recall: float = Field(0.95, ge=0, le=1,
                              description="a class's anchor recall below which anchors are re-clustered")


class Distributed(Strict):
    sync_bn: bool = Field(False, description="SyncBatchNorm across the GPUs of a multi-process run")
    scale_lr: bool = Field(True, description="multiply learning_rate by the number of processes, whose effective "
                                             "batch is batch_size times as many (the linear scaling rule)")


class Qat(Strict):
    epochs: int = Field(5, ge=1, description="most epochs of quantization-aware training (optimize stops as soon as "
                                              "the val mAP@0.5 drop is within --max-accuracy-drop)")
    lr_factor: float = Field(0.1, gt=0, description="QAT learning rate as a fraction of learning_parameters.learning_rate")


class Ema(Strict):
    enable: bool = Field(False, description="validate, save and export an exponential moving average of the "
                                            "weights (on in SSDlite's template, where benchmarks/recipes.py "
                                            "measured it with adaptive_repeat)")
    decay: float = Field(0.9998, ge=0, lt=1, description="the average's decay once warmed up")
    power: float = Field(0.75, gt=0, description="warm-up: the decay after t updates is min(decay, 1 - (1 + t) ** "
                                                 "-power), so the average spans more of the run as it goes on")


class Tiling(Strict):
    enable: bool | Literal["auto"] = Field("auto", description="train and predict on overlapping tiles; auto: when "
                                                               "the training set's small objects call for it (train "
                                                               "logs the decision and its reason)")
    tile_size: int | None = Field(None, ge=16, description="tile side in image pixels; unset: the median object "
                                                           "covers object_tile_ratio of a tile, at least the model's "
                                                           "input side")
    overlap: float = Field(0.2, ge=0, lt=1, description="share of a tile that its neighbour overlaps")
    max_tiles: int = Field(64, ge=1, description="most tiles per image; tiles grow on larger images")
    object_tile_ratio: float = Field(0.03, gt=0, le=1, description="the median object's area as a share of a tile's, "
                                                                  "which sets an unset tile_size")
    min_visibility: float = Field(0.5, ge=0, le=1, description="a box cut by a training tile's edge is dropped when "
                                                               "less of its area than this remains in the tile")
    sampling_ratio: float = Field(1.0, gt=0, le=1, description="share of the training tiles with objects used")
    empty_tile_ratio: float = Field(0.1, ge=0, le=1, description="share of the training tiles without objects used, "
                                                                 "relative to sampling_ratio")
    merge_iou: float = Field(0.5, gt=0, le=1, description="IoU above which the NMS that merges the tiles' and the "
                                                          "whole image's detections keeps only the best of a class")


class HyperParameters(Strict):
    learning_parameters: LearningParameters
    postprocessing: Postprocessing
    augmentation: dict[str, dict[str, Any] | bool] = Field(
        default_factory=lambda: {"RandomHorizontalFlip": {"p": 0.5}},
        description="training transforms in order: torchvision.transforms.v2 names (or Mosaic) with their "
                    "arguments; true for the defaults, false to leave one out")
    anchors: Anchors = Field(default_factory=Anchors)
    ema: Ema = Field(default_factory=Ema)
    tiling: Tiling = Field(default_factory=Tiling)
    distributed: Distributed = Field(default_factory=Distributed)
    qat: Qat = Field(default_factory=Qat)


class Dimension(Strict):
    """One hyper-parameter's search range for `otxlite tune`: low..high (integers when both are) or choices."""
    low: int | float | None = None
    high: int | float | None = None
    log: bool = Field(False, description="sample on a log scale (low > 0)")
    step: int | float | None = Field(None, description="sample multiples of step above low")
    choices: list[Any] | None = None

    @pydantic.model_validator(mode="after")
    def one_kind(self):
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give low and high, or choices")
        if self.choices is not None and not self.choices:
            raise ValueError("choices needs at least one value")
        if self.choices is None and not self.low <= self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.step is not None and not self.step > 0:
            raise ValueError(f"step {self.step}: give a step above 0")
        if self.log and (self.step is not None or self.low <= 0):
            raise ValueError("log needs low > 0 and no step")
        return self

    @staticmethod
    def given(value):
        """Whether a params value is a search range ({low: .., high: ..} or {choices: [..]}), not a value."""
        return isinstance(value, dict) and bool({"low", "high", "choices"} & set(value))

    def ends(self):
        """The values a search may try at its edges: every choice, or low, high and (with a step) low + step."""
        if self.choices is not None:
            return self.choices
        return [self.low, self.high] + ([self.low + self.step] if self.step and self.low + self.step <= self.high else [])


class ModelSpec(Strict):
    architecture: str
    weights: str | None = None
    weights_backbone: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    anchors: dict[str, list] | None = Field(None, description="anchor settings fitted by train (see anchors.py)")


class Template(Strict):
    id: str
    name: str
    task: Literal[tuple(TASKS)]
    model: ModelSpec
    stats: dict[str, float | None] = Field(default_factory=dict)
    hyper_parameters: HyperParameters
    hpo: dict[str, Dimension] = Field(default_factory=dict, description="`otxlite tune`'s search space: `params` "
                                                                        "names, each with its range or choices")
    from_scratch: dict[str, Any] = Field(default_factory=dict, description="`params` that replace the fine-tuning "
                                                                           "recipe when training from random weights")
    path: str | None = None


def validated(template, source, overrides=None):
    """template checked against the schema, values converted ('1e-3' -> 0.001), as a plain dict.

    The first problem is one error naming source, or the `params` flag that caused it.
    """
    try:
        checked = Template.model_validate(template).model_dump(exclude_none=True)
    except pydantic.ValidationError as err:
        problem = err.errors()[0]
        problem["msg"] = problem["msg"].removeprefix("Value error, ")  # a validator's own words
        where = ".".join(str(part) for part in problem["loc"])
        key = where.removeprefix("hyper_parameters.")
        hint = " (a YAML list, e.g. '[16, 22]')" if problem["type"] == "list_type" else ""
        if overrides and key in overrides:
            raise TemplateError(f"params --{key} {overrides[key]}: {problem['msg'].lower()}{hint}.") from None
        shown = "" if problem["type"] == "missing" else f" (got {problem['input']!r})"
        raise TemplateError(f"{source}: {where}: {problem['msg'].lower()}{shown}.") from None
    if "path" in template:
        checked["path"] = template["path"]
    Pipeline(checked["hyper_parameters"]["augmentation"])  # an unknown transform or argument is an error now
    lr_steps = checked["hyper_parameters"]["learning_parameters"]["lr_steps"]
    if any(step < 1 for step in lr_steps):
        raise TemplateError(f"{source}: lr_steps {lr_steps}: epochs count from 1.")
    return checked


def template_dirs(extra_dirs=()):
    """The folders searched for templates: the built-in one first, then the user's."""
    builtin = [d for d in BUILTIN_TEMPLATE_DIRS if d.is_dir()][:1]
    return builtin + [Path(d) for d in extra_dirs]


def load_template(path):
    """Read one template.yaml, checked against the template schema."""
    template = read_yaml(path)
    if not isinstance(template, dict):
        raise TemplateError(f"{path}: a template must be a YAML mapping with keys {', '.join(Template.model_fields)}.")
    template["path"] = str(Path(path).resolve())
    checked = validated(template, path)
    recipe(checked, from_scratch=True)  # a bad from_scratch value is an error now, not in a later run
    return checked


def find_templates(task=None, extra_dirs=()):
    """All templates under the template folders, optionally of one task."""
    if task is not None and task not in TASKS:
        raise TemplateError(f"Unknown task '{task}'. Known tasks: {', '.join(TASKS)}.")
    templates = []
    for folder in template_dirs(extra_dirs):
        if not folder.is_dir():
            raise TemplateError(f"Template folder {folder} does not exist.")
        templates += [load_template(p) for p in sorted(folder.rglob("template.yaml"))]
    return [t for t in templates if task is None or t["task"] == task]


def resolve_template(name, extra_dirs=()):
    """A template given by its path (file or folder) or by its id."""
    path = Path(name)
    if path.is_dir():
        path = path / "template.yaml"
    if path.is_file():
        return load_template(path)
    templates = find_templates(extra_dirs=extra_dirs)
    for template in templates:
        if template["id"] == name:
            return template
    ids = [t["id"] for t in templates]
    close = difflib.get_close_matches(name, ids, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else " Run `otxlite find` to list them."
    raise TemplateError(f"No template file or id '{name}'.{hint}")


def apply_overrides(template, overrides):
    """A copy of template with dotted overrides applied.

    overrides maps keys such as 'learning_parameters.batch_size' (under hyper_parameters) or
    'model.kwargs.min_size' to strings, which are parsed as YAML values ('4' -> 4, 'false' -> False).
    Entries and arguments under augmentation and model.kwargs may be new; other keys must exist (with their
    defaults filled in first, so a template saved before a section existed takes it too).
    """
    template = validated(template, template.get("path", template["id"]))
    settable = flatten(Template.model_validate(template).model_dump()["hyper_parameters"])  # unset ones too
    for key, text in overrides.items():
        *parents, leaf = key.split(".")
        node = template if parents and parents[0] == "model" else template["hyper_parameters"]
        open_ended = parents[:1] == ["augmentation"] or parents == ["model", "kwargs"]
        for part in parents:
            if open_ended and isinstance(node, dict) and not isinstance(node.get(part), dict):
                node[part] = {}  # a new augmentation entry, or one that was `true`/`false`, gets arguments
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or (leaf not in node and not open_ended and key not in settable):
            known = sorted(settable) + ["model.kwargs.<argument>"]
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else f" Known: {', '.join(known)}."
            raise TemplateError(f"Unknown hyper-parameter '{key}'.{hint}")
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError:
            node[leaf] = text
        if Dimension.given(node[leaf]):
            raise TemplateError(f"params --{key} {text}: a search range is for `otxlite tune`; give one value.")
    return validated(template, template.get("path", template["id"]), overrides)


def recipe(template, from_scratch):
    """The recipe a run trains with: the template's own (made for its pretrained weights) or, from random weights,
    that with its from_scratch params applied. The run's template holds the recipe it ran, without from_scratch,
    so a resumed run or a later stage never applies it twice."""
    changes = template.get("from_scratch") or {}
    template = {key: value for key, value in template.items() if key != "from_scratch"}
    if not from_scratch or not changes:
        return template
    try:
        return apply_overrides(template, parse_overrides(flatten(changes)))
    except TemplateError as err:
        raise TemplateError(f"{template.get('path', template['id'])}: from_scratch: {err}") from None


def read_params_file(path):
    """A params file (YAML: `learning_parameters.batch_size: 16`, dotted or nested, as `otxlite tune` writes
    best_params.yaml) as overrides, the same as those given after the CLI's `params`."""
    content = read_yaml(path)
    if not isinstance(content, dict):
        raise TemplateError(f"{path}: a params file maps hyper-parameter names to values, e.g. "
                            f"'learning_parameters.batch_size: 16'.")
    return parse_overrides(flatten(content, leaf=Dimension.given))


def flatten(tree, prefix="", leaf=lambda value: False):
    """{'a': {'b': 1}} -> {'a.b': 1}; a dict that leaf(dict) accepts (such as a search range) stays a value."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not leaf(value):
            flat.update(flatten(value, f"{prefix}{key}.", leaf))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_params(args):
    """['--learning_parameters.batch_size', '4', ...] (the words after `params`) -> {key: text}."""
    overrides, args = {}, list(args)
    while args:
        word = args.pop(0)
        if not word.startswith("--"):
            raise TemplateError(f"Expected '--name value' after params, got '{word}'.")
        key, sep, value = word[2:].partition("=")
        if not sep:
            if not args:
                raise TemplateError(f"params {word} needs a value.")
            value = args.pop(0)
        overrides[key] = value
    return overrides


def parse_overrides(params):
    """The API's params ({'learning_parameters.num_iters': 5, ...}, or None) as apply_overrides takes them: strings
    are kept (read as YAML, as after the CLI's `params`), other values written as JSON, which YAML reads back."""
    if params is None:
        return {}
    if not isinstance(params, dict) or not all(isinstance(key, str) for key in params):
        raise TemplateError(f"params must map dotted names to values, e.g. {{'learning_parameters.num_iters': 5}}; "
                            f"got {params!r}.")
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in params.items()}

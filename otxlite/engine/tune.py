"""`otxlite tune`: hyper-parameter search over a template's `hpo` space, each trial an `otxlite train` run.

The embedded engine is an Optuna study kept in OUTPUT/study.db (TPE sampling, a median or ASHA rule stopping poor
trials on their per-epoch val figure); `--engine ray` runs the trials on Ray Tune. Both write, after every trial,
trials.csv, best_params.yaml (for `otxlite train --params-file`), history.png / importance.png, and the best
trial's weights.pth with its label_schema.json.
"""

import csv
import io
import logging
import time
import warnings
from pathlib import Path

import yaml

from otxlite.core.errors import ArgumentError, OtxliteError, setup_logging
from otxlite.core.files import LABEL_SCHEMA, log_file, make_folder, write_atomic
from otxlite.core.tasks import task_of
from otxlite.data.specs import hold_out_val, require_splits
from otxlite.engine.loop import smoothed_val
from otxlite.engine.train import train
from otxlite.models.templates import Dimension, apply_overrides

log = logging.getLogger("otxlite")
STUDY = "study.db"
PRUNERS = ("median", "asha", "none")


def tune(template, specs, output, overrides=None, trials=20, time_budget=None, pruner="median", ray=None,
         resume=False, seed=0, pretrained=True, device="auto", val_split=None):
    """Search template's hpo space with trials of `train` on specs; returns the best trial's weights.pth in output.

    overrides: `params` values; one naming a searched parameter fixes it (a mapping such as {low: .., high: ..}
    narrows its range instead). trials: how many trials the study holds when done (finished ones count on resume);
    time_budget: minutes from this start after which no trial starts. pruner: median, asha or none. ray: an OnRay to
    run the trials on Ray Tune (on the cluster at its address), or None for the embedded Optuna study.
    """
    output = Path(output).absolute()
    if pruner not in PRUNERS:
        raise ArgumentError(f"pruner '{pruner}': choose {', '.join(PRUNERS)}.")
    with log_file(output / "logs" / "tune.log"):
        if val_split is not None:
            specs = hold_out_val(specs, val_split, seed, output)
        require_splits(specs, "train", "val")
        specs = {name: spec.absolute() for name, spec in specs.items()}
        space, fixed = search_space(template, overrides or {})
        resolved = apply_overrides(template, fixed)
        log.info("Tuning %s: %d trials%s, %s engine, searching %s.", template["id"], trials,
                 f" or {time_budget:g} min" if time_budget else "", "local" if ray is None else "ray",
                 ", ".join(f"{key} {shown(dimension)}" for key, dimension in space.items()))
        search = Search(resolved, specs, output, space, fixed, trials, time_budget and time_budget * 60, pruner, resume,
                        seed, pretrained, device)
        best = run_optuna(search) if ray is None else run_ray_tune(search, ray.address)
        log.info("Best trial %s: val %smAP@0.5 %.4f (mean of %d epochs) with %s. Wrote %s and %s.", best["trial"],
                 task_of(template).unit, best["value"], search.window, described(best["params"]), output / "weights.pth",
                 output / "best_params.yaml")
    return output / "weights.pth"


class Search:
    """What both engines need: the template with the fixed overrides, the data, the space and the budget."""

    def __init__(self, template, specs, output, space, fixed, trials, time_budget, pruner, resume, seed,
                 pretrained, device):
        self.template, self.specs, self.output, self.space, self.fixed = template, specs, output, space, fixed
        self.trials, self.time_budget, self.pruner, self.resume, self.seed = trials, time_budget, pruner, resume, seed
        self.pretrained, self.device = pretrained, device
        params = template["hyper_parameters"]["learning_parameters"]
        self.epochs = params["num_iters"]
        self.window = min(params["best_epoch_window"], params["num_iters"])
        self.key = f"val_{task_of(template).headline}"

    def check_study(self, path, resumable):
        """One error when the study at path and --resume disagree; else the output folder, made."""
        if path.exists() and not self.resume:
            raise ArgumentError(f"{self.output} holds a study ({path}). Continue it with --resume, or tune into "
                                f"another --output.")
        if self.resume and not resumable:
            raise ArgumentError(f"--resume: no study to continue in {self.output} ({path} is missing or incomplete).")
        make_folder(self.output)

    def run_trial(self, folder, values, report):
        """Train one trial into folder; report(epoch, figure) gets the best-epoch rule's figure each epoch (and may
        raise to stop the trial). Returns the trial's value: its best such figure."""
        history, figures = [], []

        def each_epoch(row, _):
            history.append(row)
            figure = smoothed_val(history, self.key, self.window)
            if figure is not None:
                figures.append(figure)
                report(row["epoch"], figure)

        train(self.template, self.specs, folder, as_overrides(values), self.pretrained,
              device=self.device, seed=self.seed, report=each_epoch)
        return max(figures)

    def write_results(self, rows, best):
        """trials.csv from rows (dicts: trial, state, value, epochs, seconds, then the parameters), and, when a
        trial finished, best_params.yaml and the best trial's weights.pth and label_schema.json."""
        columns = ["trial", "state", "value", "epochs", "seconds", *self.space]
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.output / "trials.csv", lambda f: f.write(text.getvalue().encode()))
        if best is None:
            return
        chosen = {**{key: yaml.safe_load(value) for key, value in self.fixed.items()}, **best["params"]}
        write_atomic(self.output / "best_params.yaml", lambda f: f.write(yaml.safe_dump(chosen, sort_keys=False).encode()))
        for name in ("weights.pth", LABEL_SCHEMA):
            write_atomic(self.output / name, lambda f, name=name: f.write((best["folder"] / name).read_bytes()))


def search_space(template, overrides):
    """(space, fixed): the template's hpo section (or one derived from its values when it has none) as
    {params name: dimension}, and the overrides that are not ranges. An override naming a searched parameter
    takes it out of the search; one whose value is a range ({low: .., high: ..} or {choices: [..]}) replaces
    or adds that parameter's range. The whole space is checked here, before any trial: every choice and both
    ends of every range must be a value the template takes."""
    space = {key: (f"hpo.{key}", dimension) for key, dimension in (template.get("hpo") or {}).items()}
    if not template.get("hpo"):
        space = {key: (f"hpo.{key}", dimension) for key, dimension in derived_space(template).items()}
        log.info("%s has no hpo section: searching the ranges derived from its values.", template["id"])
    fixed = {}
    for key, text in overrides.items():
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if Dimension.given(value):
            try:
                space[key] = (f"params --{key} {text}", Dimension.model_validate(value).model_dump(exclude_none=True))
            except ValueError as err:
                raise ArgumentError(f"params --{key} {text}: "
                                    f"{err.errors()[0]['msg'].removeprefix('Value error, ').lower()}.") from None
        else:
            fixed[key] = text
            space.pop(key, None)
    if not space:
        raise ArgumentError("Nothing to search: params fixes every parameter of the hpo section.")
    base = apply_overrides(template, fixed)  # a bad fixed value is an error now too
    for key, (source, dimension) in space.items():  # an unknown name or a bad value is an error now, not in a trial
        for value in Dimension.model_validate(dimension).ends():
            try:
                apply_overrides(base, as_overrides({key: value}))
            except OtxliteError as err:
                if "Unknown hyper-parameter" in str(err):
                    raise
                reason = str(err).split(": ", 1)[-1]
                raise ArgumentError(f"{source}: the value {value!r} cannot be tried: {reason}") from None
    return {key: dimension for key, (_, dimension) in space.items()}, fixed


def derived_space(template):
    """A search space around a template's own values: learning rate /4..x4 and weight decay /10..x10 (log
    scale), batch size halved, kept or doubled, warm-up 0..300 iterations, each transform's probability 0..1."""
    params = template["hyper_parameters"]["learning_parameters"]
    rate, decay, batch = params["learning_rate"], params["weight_decay"], params["batch_size"]
    space = {"learning_parameters.learning_rate": {"low": rounded(rate / 4), "high": rounded(rate * 4), "log": True}}
    if decay > 0:
        space["learning_parameters.weight_decay"] = {"low": rounded(decay / 10), "high": rounded(decay * 10),
                                                     "log": True}
    space["learning_parameters.batch_size"] = {"choices": sorted({max(batch // 2, 1), batch, batch * 2})}
    space["learning_parameters.warmup_iters"] = {"low": 0, "high": 300, "step": 50}
    for name, arguments in template["hyper_parameters"]["augmentation"].items():
        if isinstance(arguments, dict) and "p" in arguments:
            space[f"augmentation.{name}.p"] = {"low": 0.0, "high": 1.0}
    return space


def rounded(value):
    return float(f"{value:.2g}")


def shown(dimension):
    if "choices" in dimension:
        return "in " + ", ".join(map(str, dimension["choices"]))
    scale = " (log)" if dimension.get("log") else f" step {dimension['step']}" if dimension.get("step") else ""
    return f"{dimension['low']:g}..{dimension['high']:g}{scale}"


def described(values):
    return ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in values.items())


def as_overrides(values):
    """Sampled values as `params` overrides (YAML text)."""
    return {key: yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            for key, value in values.items()}


def is_integer_range(dimension):
    return all(isinstance(dimension.get(key, 1), int) for key in ("low", "high", "step"))


def run_optuna(search):
    """The embedded engine: an Optuna study in output/study.db, one trial at a time in this process."""
    try:
        import optuna
        from optuna.trial import TrialState
    except ImportError:
        raise OtxliteError("otxlite tune needs Optuna: pip install 'otxlite[tune]' (or 'optuna').") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = search.output / STUDY
    search.check_study(path, path.exists())
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    study = optuna.create_study(study_name="otxlite", storage=storage, direction="maximize", load_if_exists=True,
                                pruner=optuna_pruner(search))
    if search.resume:
        if study.user_attrs.get("template") != search.template["id"]:
            raise ArgumentError(f"--resume: the study in {search.output} tunes {study.user_attrs.get('template')}, "
                                f"not {search.template['id']}. Resume it with that template.")
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # cut short by the kill
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params)
            log.info("Trial %d was running when the study stopped: it runs again from the start.", trial.number)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
        log.info("Resuming the study in %s: %d of %d trials done.", path, done, search.trials)
    else:
        study.set_user_attr("template", search.template["id"])
        study.enqueue_trial(template_values(search.template, search.space))  # the first trial: the template's own

    def objective(trial):
        values = {key: suggest(trial, key, dimension) for key, dimension in search.space.items()}
        log.info("Trial %d: %s", trial.number, described(values))

        def report(epoch, figure):
            trial.report(figure, epoch)
            if trial.should_prune():
                log.info("Trial %d stopped after epoch %d (%s rule): val %.4f.", trial.number, epoch, search.pruner,
                         figure)
                raise optuna.TrialPruned()

        return search.run_trial(search.output / "trials" / f"{trial.number:03d}", values, report)

    def write_results(study, _):
        ended = (TrialState.COMPLETE, TrialState.PRUNED)  # a failed one's end is when resume found it
        rows = [{"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                 "epochs": max(t.intermediate_values, default=0), "seconds": round(t.duration.total_seconds()) if t.state in ended else None,
                 **t.params} for t in study.trials if t.state != TrialState.RUNNING]
        finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
        best = study.best_trial if finished else None
        search.write_results(rows, best and {"trial": best.number, "value": best.value, "params": best.params,
                                            "folder": search.output / "trials" / f"{best.number:03d}"})
        save_plots(study, search.output, f"val {task_of(search.template).unit}mAP@0.5 (mean of {search.window} epochs)")

    started = time.monotonic()
    while sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) < search.trials:
        left = search.time_budget and search.time_budget - (time.monotonic() - started)
        if left is not None and left <= 0:
            log.info("Time budget spent: no more trials start.")
            break
        # seeded by the trial's number: the search repeats, resumed or not (TPE reads the rest from the study)
        study.sampler = optuna.samplers.TPESampler(seed=search.seed + len(study.trials),
                                                   n_startup_trials=min(10, max(2, search.trials // 3)))
        study.optimize(objective, n_trials=1, callbacks=[write_results])
    if not any(t.state == TrialState.COMPLETE for t in study.trials):
        raise OtxliteError(f"No trial finished in {search.output}: nothing to choose from. Give more trials or time.")
    best = study.best_trial
    return {"trial": best.number, "value": best.value, "params": best.params}


def optuna_pruner(search):
    import optuna

    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=search.window)
    if search.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.window)
    return optuna.pruners.NopPruner()


def suggest(trial, key, dimension):
    if "choices" in dimension:
        return trial.suggest_categorical(key, dimension["choices"])
    if is_integer_range(dimension):
        return trial.suggest_int(key, dimension["low"], dimension["high"], step=dimension.get("step", 1),
                                 log=dimension.get("log", False))
    return trial.suggest_float(key, dimension["low"], dimension["high"], step=dimension.get("step"),
                               log=dimension.get("log", False))


def template_values(template, space):
    """The template's own value of each searched parameter, clipped into its range (the first trial's)."""
    flat = {}
    for key in space:
        node = template if key.startswith("model.") else template["hyper_parameters"]
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        flat[key] = node
    values = {}
    for key, dimension in space.items():
        value = flat[key]
        if "choices" in dimension:
            values[key] = value if value in dimension["choices"] else dimension["choices"][0]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = min(max(value, dimension["low"]), dimension["high"])
    return values


def save_plots(study, folder, figure_name):
    """history.png (figure_name against trial, Optuna's) and, from two finished trials on, importance.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = [("history.png", plot_optimization_history)]
    if len(finished) >= 2 and len({tuple(sorted(t.params.items())) for t in finished}) >= 2:
        plots.append(("importance.png", plot_param_importances))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib plots are marked experimental
        for name, plot in plots:
            try:
                figure = plot(study, target_name=figure_name).figure
            except (RuntimeError, ValueError, ZeroDivisionError) as err:  # importances need varied finished trials
                log.info("No %s yet: %s", name, err)
                continue
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            plt.close(figure)
            write_atomic(folder / name, lambda f: f.write(buffer.getvalue()))


def run_ray_tune(search, ray_address):
    """--engine ray: the trials as Ray Tune trials on the cluster at ray_address (a local one when None), sampled
    by Optuna's TPE through Ray's OptunaSearch and stopped by Ray's ASHA or median rule; Ray keeps the study in
    output/ray_tune, which --resume restores (finished trials are kept, unfinished ones run again)."""
    try:
        import ray
        from ray import tune as ray_tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise OtxliteError("--engine ray needs Ray Tune and Optuna: pip install 'otxlite[tune-ray]'.") from None
    from otxlite.core.ray_cluster import init_ray

    path = search.output / "ray_tune"
    search.check_study(path, ray_tune.Tuner.can_restore(str(path)))
    init_ray(ray_address, runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    try:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0 and search.device != "cpu"
        cpus = search.template["hyper_parameters"]["learning_parameters"]["num_workers"] + 1
        trainable = ray_tune.with_resources(ray_trial(search), {"cpu": cpus, "gpu": int(use_gpu)})
        if search.resume:
            log.info("Resuming the Ray Tune study in %s.", path)
            tuner = ray_tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        else:
            goal = {"metric": "value", "mode": "max"}  # given to each part: Ray refuses it twice
            scheduler = {"median": lambda: MedianStoppingRule(time_attr="epoch", grace_period=search.window,
                                                              min_samples_required=2, **goal),
                         "asha": lambda: ASHAScheduler(time_attr="epoch", max_t=search.epochs,
                                                       grace_period=search.window, **goal),
                         "none": FIFOScheduler}[search.pruner]()
            searcher = OptunaSearch(space=Sampled(search.space), seed=search.seed, **goal,
                                    points_to_evaluate=[template_values(search.template, search.space)])
            tuner = ray_tune.Tuner(trainable, tune_config=ray_tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=search.trials,
                time_budget_s=search.time_budget), run_config=ray_tune.RunConfig(name="ray_tune",
                                                                                 storage_path=str(search.output)))
        results = tuner.fit()
    finally:
        ray.shutdown()
    rows, best = [], None
    for result in results:
        history = result.metrics_dataframe
        trial = (result.metrics or {}).get("trial_id") or Path(result.path).name
        value = float(history["value"].max()) if history is not None and "value" in history else None
        state = "error" if result.error else "complete" if (result.metrics or {}).get("finished") else "pruned"
        rows.append({"trial": trial, "state": state, "value": value,
                     "epochs": int(history["epoch"].max()) if value is not None else 0,
                     "seconds": round((result.metrics or {}).get("time_total_s", 0)), **result.config})
        if state == "complete" and (best is None or value > best["value"]):
            best = {"trial": trial, "value": value, "params": result.config, "folder": search.output / "trials" / trial}
    search.write_results(rows, best)
    if best is None:
        errors = [str(result.error).strip().splitlines()[-1] for result in results if result.error]
        raise OtxliteError(f"No trial finished in {search.output}: nothing to choose from. " +
                           (f"A trial failed: {errors[0]}" if errors else "Give more trials or time."))
    return best


class Sampled:
    """The space as Optuna's define-by-run function, which Ray Tune's searcher can pickle when it saves itself."""

    def __init__(self, space):
        self.space = space

    def __call__(self, trial):
        for key, dimension in self.space.items():
            suggest(trial, key, dimension)


def ray_trial(search):
    """The function Ray Tune runs for a trial: train with the trial's config, reporting each epoch's figure."""
    def run(config):
        from ray import tune as ray_tune

        setup_logging()
        logging.getLogger("otxlite").propagate = False  # Ray's root handler would repeat each line
        trial, epochs = ray_tune.get_context().get_trial_id(), []

        def report(epoch, figure):
            epochs.append(epoch)
            ray_tune.report({"value": figure, "epoch": epoch})

        value = search.run_trial(search.output / "trials" / trial, config, report)
        ray_tune.report({"value": value, "epoch": epochs[-1], "finished": True, "trial_id": trial})
    return run



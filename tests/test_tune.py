"""otxlite tune (Optuna and Ray Tune), best_params.yaml through --params-file, and --batch-size auto."""

import csv
import math
import subprocess
import sys
import time

import pytest
import torch
import yaml

from otxlite.core.errors import OtxliteError
from otxlite.core.files import load_checkpoint
from otxlite.data.specs import read_data_yaml
from otxlite.engine.batch_size import fastest, gpu_memory_share, largest_fitting
from otxlite.engine.tune import Search, search_space, tune
from otxlite.models.templates import resolve_template

TEMPLATE = "fasterrcnn_mobilenet_v3_large_320_fpn"
LR = "learning_parameters.learning_rate"


def rows(folder):
    with open(folder / "trials.csv") as file:
        return list(csv.DictReader(file))


def fake_trials(monkeypatch, epochs=4):
    """Trials that train nothing: each epoch's figure grows towards a value that peaks at lr 0.01."""
    def run_trial(search, folder, values, report):
        folder.mkdir(parents=True)
        for name in ("weights.pth", "label_schema.json"):
            (folder / name).write_text(f"{folder.name} {name}")
        value = 1 / (1 + abs(math.log(values[LR] / 0.01)))
        for epoch in range(1, epochs + 1):
            report(epoch, value * epoch / epochs)
        return value
    monkeypatch.setattr(Search, "run_trial", run_trial)


def test_the_search_repeats_with_its_seed_whether_resumed_or_not(tmp_path, tiny_voc, monkeypatch):
    fake_trials(monkeypatch)
    template, specs = resolve_template(TEMPLATE), read_data_yaml(tiny_voc)
    searched = lambda folder: [{k: v for k, v in row.items() if k != "seconds"} for row in rows(folder)]
    tune(template, specs, tmp_path / "whole", trials=5, seed=7, pruner="none")
    tune(template, specs, tmp_path / "resumed", trials=2, seed=7, pruner="none")
    tune(template, specs, tmp_path / "resumed", trials=5, seed=7, pruner="none", resume=True)
    tune(template, specs, tmp_path / "other", trials=5, seed=8, pruner="none")
    assert searched(tmp_path / "whole") == searched(tmp_path / "resumed")
    assert searched(tmp_path / "whole")[1:] != searched(tmp_path / "other")[1:]
    whole = rows(tmp_path / "whole")
    first = whole[0]  # the template's own values come first
    assert float(first[LR]) == 0.01 and first["learning_parameters.batch_size"] == "8"
    best = max(whole, key=lambda row: float(row["value"]))
    chosen = yaml.safe_load((tmp_path / "whole" / "best_params.yaml").read_text())
    assert chosen[LR] == pytest.approx(float(best[LR]))
    assert (tmp_path / "whole" / "weights.pth").read_text() == f"{int(best['trial']):03d} weights.pth"
    assert (tmp_path / "whole" / "history.png").is_file() and (tmp_path / "whole" / "importance.png").is_file()
    with pytest.raises(OtxliteError, match="holds a study.*--resume"):
        tune(template, specs, tmp_path / "whole", trials=6, seed=7)


def test_the_median_rule_stops_trials_that_fall_behind(tmp_path, tiny_voc, monkeypatch):
    fake_trials(monkeypatch, epochs=6)
    params = {LR: "{low: 0.0001, high: 1.0, log: true}"}  # wide, so that some trials are poor
    tune(resolve_template(TEMPLATE), read_data_yaml(tiny_voc), tmp_path, params, trials=8, seed=1)
    states = [(row["state"], int(row["epochs"])) for row in rows(tmp_path)]
    assert ("pruned", 6) not in states and any(state == "pruned" for state, _ in states), states
    best = max((row for row in rows(tmp_path) if row["state"] == "complete"), key=lambda row: float(row["value"]))
    assert yaml.safe_load((tmp_path / "best_params.yaml").read_text())[LR] == pytest.approx(float(best[LR]))


def test_params_fix_or_narrow_the_search_space_and_bad_names_are_errors():
    template = resolve_template(TEMPLATE)
    space, fixed = search_space(template, {"learning_parameters.batch_size": "4",
                                           LR: "{low: 0.001, high: 0.002, log: true}",
                                           "learning_parameters.num_iters": "3"})
    assert "learning_parameters.batch_size" not in space and space[LR] == {"low": 0.001, "high": 0.002, "log": True}
    assert fixed == {"learning_parameters.batch_size": "4", "learning_parameters.num_iters": "3"}
    with pytest.raises(OtxliteError, match="low 0.1 is above high 0.01"):
        search_space(template, {LR: "{low: 0.1, high: 0.01}"})
    with pytest.raises(OtxliteError, match="Unknown hyper-parameter 'learning_parameters.learning_rat'"):
        search_space(template, {"learning_parameters.learning_rat": "{low: 0.1, high: 1}"})
    template["hpo"] = {}  # a template without a search space gets one around its own values
    assert search_space(template, {})[0][LR] == {"low": 0.0025, "high": 0.04, "log": True}


BAD_SPACES = {  # a range given after params -> what the one error says (the key and the bad value)
    "{choices: [2, 4, abc]}": "params --learning_parameters.batch_size {choices: [2, 4, abc]}: the value 'abc' "
                              "cannot be tried: input should be a valid integer, or auto",
    "{low: 2, high: 8, step: 0}": "params --learning_parameters.batch_size {low: 2, high: 8, step: 0}: step 0: give "
                                  "a step above 0",
    "{low: 1.5, high: 8}": "the value 1.5 cannot be tried: input should be a valid integer (or auto), got a number "
                           "with a fractional part",
    "{low: 0, high: 8, log: true}": "{low: 0, high: 8, log: true}: log needs low > 0 and no step",
    "{low: 8, high: 2}": "{low: 8, high: 2}: low 8 is above high 2",
    "{choices: []}": "{choices: []}: choices needs at least one value",
}


@pytest.mark.parametrize("space", BAD_SPACES)
def test_the_whole_search_space_is_checked_before_any_trial_from_params_and_from_a_params_file(
        space, tmp_path, tiny_voc, otxlite):
    for source in ("params", "file"):
        output = tmp_path / source
        if source == "params":
            status, _, err = otxlite("tune", TEMPLATE, "--data", tiny_voc, "--output", output, "--no-pretrained",
                                     "params", "--learning_parameters.batch_size", space)
        else:
            params_file = tmp_path / "ranges.yaml"
            params_file.write_text(yaml.safe_dump({"learning_parameters": {"batch_size": yaml.safe_load(space)}}))
            status, _, err = otxlite("tune", TEMPLATE, "--data", tiny_voc, "--output", output, "--no-pretrained",
                                     "--params-file", params_file)
        message = BAD_SPACES[space] if source == "params" else BAD_SPACES[space].split("}: ")[-1]
        assert status == 2 and message in err and "unexpectedly" not in err, (source, err)
        assert len(err.strip().splitlines()) == 1, err
        assert not (output / "trials").exists()  # no trial ran


def test_a_range_in_a_params_file_narrows_the_search_as_after_params_and_train_refuses_it(tmp_path, tiny_voc,
                                                                                         otxlite):
    from otxlite.models.templates import read_params_file

    params_file = tmp_path / "ranges.yaml"
    params_file.write_text("learning_parameters:\n  learning_rate: {low: 0.001, high: 0.002, log: true}\n"
                           "  batch_size: {choices: [2, 4]}\n  num_iters: 3\n")
    space, fixed = search_space(resolve_template(TEMPLATE), read_params_file(params_file))
    assert space[LR] == {"low": 0.001, "high": 0.002, "log": True}
    assert space["learning_parameters.batch_size"] == {"choices": [2, 4], "log": False}
    assert fixed == {"learning_parameters.num_iters": "3"}
    status, _, err = otxlite("train", TEMPLATE, "--data", tiny_voc, "--output", tmp_path / "run", "--no-pretrained",
                             "--params-file", params_file)
    assert status == 2 and "a search range is for `otxlite tune`; give one value" in err and LR in err


def test_train_flags_are_checked_in_the_command_s_own_process_under_the_flag_typed(tmp_path, tiny_voc, otxlite):
    status, _, err = otxlite("train", TEMPLATE, "--data", tiny_voc, "--output", tmp_path / "a", "--batch-size", "abc")
    assert status == 2 and "Invalid value for '--batch-size': 'abc': give a whole number of 1 or more, or auto" in err
    for engine in (["--devices", "2"], ["--engine", "ray", "--workers", "2"]):
        started = time.monotonic()
        status, _, err = otxlite("train", TEMPLATE, "--data", tiny_voc, "--output", tmp_path / "b", "--no-pretrained",
                                 "--batch-size", "auto", *engine)
        assert status == 2 and f"--batch-size auto chooses the batch of one process; with {' '.join(engine[-2:])} " \
                               f"give a number" in err, err
        assert time.monotonic() - started < 30 and not (tmp_path / "b").exists()  # no worker started
    status, _, err = otxlite("train", TEMPLATE, "--data", tiny_voc, "--output", tmp_path / "c", "--no-pretrained",
                             "--devices", "2", "params", "--learning_parameters.momentum", "2")
    assert status == 2 and "params --learning_parameters.momentum 2: input should be less than 1" in err
    assert len(err.strip().splitlines()) == 1


def test_tune_trains_trials_that_train_repeats_from_best_params_and_resumes_after_a_kill(
        tmp_path, tiny_voc, small_template, otxlite):
    template, study = small_template(TEMPLATE), tmp_path / "study"
    args = ["tune", template, "--data", tiny_voc, "--output", study, "--trials", "2", "--no-pretrained", "--seed", "1",
            "params", "--learning_parameters.num_iters", "1",
            "--learning_parameters.batch_size", "{choices: [1, 2]}"]
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "otxlite", *map(str, args)], stderr=log)
        deadline = time.monotonic() + 600
        while not (study / "trials" / "001").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        process.kill()
        process.wait()
    first = study / "trials" / "000" / "weights.pth"
    assert first.is_file(), (tmp_path / "killed.log").read_text()
    finished_at = first.stat().st_mtime_ns
    status, _, err = otxlite(*args[:-5], "--resume", *args[-5:])
    assert status == 0, err
    assert "Trial 1 was running when the study stopped" in err and "1 of 2 trials done" in err
    trials = rows(study)
    assert [row["state"] for row in trials] == ["complete", "fail", "complete"]
    assert {k: v for k, v in trials[2].items() if k in ("learning_parameters.learning_rate", "learning_parameters.batch_size")} \
        == {k: v for k, v in trials[1].items() if k in ("learning_parameters.learning_rate", "learning_parameters.batch_size")}
    assert first.stat().st_mtime_ns == finished_at  # a finished trial is not run again
    assert all((study / name).is_file() for name in ("weights.pth", "label_schema.json", "history.png"))
    chosen = yaml.safe_load((study / "best_params.yaml").read_text())
    assert chosen["learning_parameters.num_iters"] == 1 and chosen["learning_parameters.batch_size"] in (1, 2)

    status, _, err = otxlite("train", template, "--data", tiny_voc, "--output", tmp_path / "again", "--no-pretrained",
                             "--params-file", study / "best_params.yaml", "params", "--learning_parameters.warmup_iters",
                             "7")
    assert status == 0, err
    learning = load_checkpoint(tmp_path / "again" / "weights.pth")["template"]["hyper_parameters"]["learning_parameters"]
    assert learning["learning_rate"] == pytest.approx(chosen[LR]) and learning["batch_size"] == \
        chosen["learning_parameters.batch_size"]
    assert learning["warmup_iters"] == 7  # params after the word params win over the file's


def test_ray_engine_runs_the_trials_on_ray_tune_and_resume_reruns_none(tmp_path, tiny_voc, small_template,
                                                                       otxlite_subprocess, ray_stopped_after):
    pytest.importorskip("ray.tune")
    study = tmp_path / "study"
    args = ["tune", small_template(TEMPLATE), "--data", tiny_voc, "--output", study, "--trials", "2", "--engine", "ray",
            "--no-pretrained", "params", "--learning_parameters.num_iters", "1"]
    status, _, err = otxlite_subprocess(*args, timeout=900)
    assert status == 0, err[-3000:]
    trials = rows(study)
    assert len(trials) == 2 and all(row["state"] == "complete" for row in trials), trials
    weights = {path: path.stat().st_mtime_ns for path in study.glob("trials/*/weights.pth")}
    assert len(weights) == 2 and (study / "weights.pth").is_file() and (study / "best_params.yaml").is_file()
    status, _, err = otxlite_subprocess(*args[:6], "--resume", *args[6:], timeout=900)
    assert status == 0, err[-3000:]
    assert {path: path.stat().st_mtime_ns for path in study.glob("trials/*/weights.pth")} == weights


def test_gpu_batch_size_is_the_largest_that_fits_backing_off_on_out_of_memory(monkeypatch):
    """The GPU path with a simulated device: 90 MB a batch image, 1 GB of memory, out of memory above 8 images."""
    peak = {}

    def step(images, targets):
        if len(images) > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        peak["bytes"] = 90e6 * len(images)

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: peak.clear())
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: peak["bytes"])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("Props", (), {"total_memory": 1e9}))
    share = lambda size: gpu_memory_share(step, ([None] * size, None), "cuda")
    assert share(16) == float("inf")
    assert largest_fitting(share, 64)[0] == 8  # 8 images: 72 % of memory; 16: out of memory
    chosen, reason = largest_fitting(lambda size: 0.1 * size, 64)  # the margin: 8 would use 80 %
    assert chosen == 4 and "80%" in reason
    with pytest.raises(OtxliteError, match="a batch of 2 images does not fit"):
        largest_fitting(lambda size: float("inf"), 64)


def test_cpu_batch_size_is_the_fastest_and_the_smallest_of_equals():
    speeds = {2: 18.0, 4: 30.0, 8: 30.5, 16: 20.0, 32: 40.0}
    assert fastest(speeds.get, 64)[0] == 4  # 8 is within 5 %; the scan stops at 16, slower than the best


def test_train_with_batch_size_auto_measures_this_cpu_and_scales_the_learning_rate(tmp_path, voc_copy,
                                                                                   small_template, otxlite):
    template = small_template(TEMPLATE)  # batch 2 at lr 0.01
    status, _, err = otxlite("train", template, "--data", voc_copy, "--output", tmp_path / "run", "--no-pretrained",
                             "--batch-size", "auto", "params", "--learning_parameters.num_iters", "1")
    assert status == 0, err
    assert "Batch size (auto): " in err and "images/s by batch size: 2: " in err
    learning = load_checkpoint(tmp_path / "run" / "weights.pth")["template"]["hyper_parameters"]["learning_parameters"]
    assert isinstance(learning["batch_size"], int) and learning["batch_size"] in (2, 4)
    assert learning["learning_rate"] == pytest.approx(0.01 * learning["batch_size"] / 2)

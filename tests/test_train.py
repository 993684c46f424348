import csv
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error

import pytest
import torch
import torchvision
from click.testing import CliRunner

import otxlite.engine.train
from otxlite.cli import cli
from otxlite.core.errors import OtxliteError
from otxlite.core.files import UMASK, load_checkpoint, read_json, save_checkpoint
from otxlite.data.specs import split_specs
from otxlite.engine.loop import lr_schedule, moving_average, reestimate_batchnorm
from otxlite.engine.train import train
from otxlite.models.build import build_model, class_head_paths, model_from_checkpoint
from otxlite.models.templates import find_templates, resolve_template

TEMPLATE_IDS = sorted(t["id"] for t in find_templates("detection"))
TWO_ITERATIONS = {"learning_parameters.num_iters": "2", "learning_parameters.batch_size": "2"}


def metrics_rows(run):
    with open(run / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_every_template_trains_and_its_weights_load_back(template_id, tiny_voc, small_template, tmp_path):
    template = resolve_template(str(small_template(template_id)))
    weights = train(template, split_specs(tiny_voc), tmp_path / "run", TWO_ITERATIONS, pretrained=False)

    checkpoint = torch.load(weights, weights_only=True)
    assert checkpoint["labels"] == read_json(tmp_path / "run" / "label_schema.json")
    assert checkpoint["template"]["id"] == template_id
    model = model_from_checkpoint(checkpoint, weights)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, checkpoint["model"][name]), name
    with torch.inference_mode():
        (output,) = model([torch.rand(3, 120, 150)])
    assert set(output) == {"boxes", "scores", "labels"}
    assert (tmp_path / "run" / "logs" / "loss.png").stat().st_size > 1000
    assert len(metrics_rows(tmp_path / "run")) == 2


def test_cli_train_writes_the_run_folder(tiny_voc, small_template, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", str(small_template("fasterrcnn_mobilenet_v3_large_320_fpn")),
                                      "--data", str(tiny_voc), "--output", str(run), "--no-pretrained",
                                      "params", "--learning_parameters.num_iters", "2"])
    assert result.exit_code == 0, result.output
    for name in ("weights.pth", "label_schema.json", "checkpoints/last.pth", "logs/train.log", "logs/metrics.csv",
                 "logs/loss.png"):
        assert (run / name).is_file(), name
    for name in ("weights.pth", "label_schema.json", "logs/metrics.csv"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~UMASK, name
    rows = metrics_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"loss", "loss_classifier", "lr", "val_map_50", "val_map_50_95", "seconds", "images_per_s"} <= set(rows[0])
    assert "epoch 2/2" in (run / "logs" / "train.log").read_text()
    schema = read_json(run / "label_schema.json")
    assert schema["task"] == "detection"
    assert [(label["id"], label["color"][0]) for label in schema["labels"]] == [(1, "#"), (2, "#"), (3, "#")]


def test_same_seed_repeats_a_cpu_run(tiny_voc, small_template, tmp_path, one_compute_thread):
    template = resolve_template(str(small_template("ssdlite320_mobilenet_v3_large")))
    overrides = {"learning_parameters.num_iters": "2"}
    first = torch.load(train(template, split_specs(tiny_voc), tmp_path / "a", overrides, pretrained=False, seed=5),
                       weights_only=True)
    second = torch.load(train(template, split_specs(tiny_voc), tmp_path / "b", overrides, pretrained=False, seed=5),
                        weights_only=True)
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_voc, small_template, tmp_path):
    template = small_template("fasterrcnn_mobilenet_v3_large_320_fpn")
    command = [sys.executable, "-m", "otxlite", "train", str(template), "--data", str(tiny_voc), "--no-pretrained",
               "params", "--learning_parameters.num_iters", "3", "--learning_parameters.enable_early_stopping", "false",
               "--ema.enable", "true"]
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # bit-exact CPU backward, as one_compute_thread
    straight = tmp_path / "straight"
    subprocess.run(command[:7] + ["--output", str(straight)] + command[7:], check=True, capture_output=True,
                   env=one_thread)

    killed = tmp_path / "killed"
    process = subprocess.Popen(command[:7] + ["--output", str(killed)] + command[7:],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=one_thread)
    deadline = time.time() + 300
    while not (killed / "logs" / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before_kill = len(metrics_rows(killed))
    assert finished_before_kill < 3
    load_checkpoint(killed / "weights.pth")  # the kill left a valid file behind

    resumed = subprocess.run([sys.executable, "-m", "otxlite", "train", "--resume", "--output", str(killed),
                              "--data", str(tiny_voc)], capture_output=True, text=True, env=one_thread)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from epoch {finished_before_kill}" in resumed.stderr
    rows, expected = metrics_rows(killed), metrics_rows(straight)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for row, reference in zip(rows, expected):
        assert (row["loss"], row["lr"], row["val_map_50"]) == (reference["loss"], reference["lr"],
                                                               reference["val_map_50"])
    final = load_checkpoint(killed / "checkpoints" / "last.pth")
    reference = load_checkpoint(straight / "checkpoints" / "last.pth")
    assert final["ema"]["n_averaged"] == reference["ema"]["n_averaged"] > 0  # the weight average resumed too
    for part in ("model", "ema"):
        for name, tensor in final[part].items():
            assert torch.equal(tensor, reference[part][name]), name

    extend = subprocess.run([sys.executable, "-m", "otxlite", "train", "--resume", "--output", str(killed),
                             "--data", str(tiny_voc), "params", "--learning_parameters.num_iters", "4"],
                            capture_output=True, text=True)
    assert extend.returncode == 0, extend.stderr
    assert [r["epoch"] for r in metrics_rows(killed)] == ["1", "2", "3", "4"]

    again = subprocess.run([sys.executable, "-m", "otxlite", "train", "--resume", "--output", str(killed),
                            "--data", str(tiny_voc)], capture_output=True, text=True)
    assert again.returncode == 2 and "already finished after 4 epochs" in again.stderr


def test_load_weights_keeps_everything_for_the_same_classes_and_grows_a_model_by_new_classes(
        tiny_voc, small_template, tmp_path, caplog, otxlite):
    template = resolve_template(str(small_template("fasterrcnn_mobilenet_v3_large_320_fpn")))
    frozen = {**TWO_ITERATIONS, "learning_parameters.learning_rate": "0"}
    first = train(template, split_specs(tiny_voc), tmp_path / "first", TWO_ITERATIONS, pretrained=False)
    trained = torch.load(first, weights_only=True)["model"]
    same = torch.load(train(template, split_specs(tiny_voc), tmp_path / "same", frozen, load_weights=first),
                      weights_only=True)["model"]
    for name, tensor in trained.items():
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):  # BN statistics still update
            assert torch.equal(tensor, same[name]), name

    # an older model of other classes, in another order: RBC, WBC and one the data lacks
    old = tmp_path / "old" / "weights.pth"
    checkpoint = torch.load(first, weights_only=True)
    old_labels = [{"id": 1, "name": "RBC", "color": "#123456"}, {"id": 2, "name": "WBC", "color": "#abcdef"},
                  {"id": 3, "name": "Eosinophil", "color": "#00ff00"}]
    checkpoint["labels"] = {"task": "detection", "labels": old_labels}
    torch.manual_seed(1)
    checkpoint["model"] = build_model(checkpoint["template"], 3).state_dict()
    save_checkpoint(old, checkpoint)
    with caplog.at_level(logging.INFO, logger="otxlite"):
        grown_run = train(template, split_specs(tiny_voc), tmp_path / "grown", frozen, load_weights=old)
    grown = torch.load(grown_run, weights_only=True)["model"]
    schema = read_json(tmp_path / "grown" / "label_schema.json")
    assert schema["labels"][:3] == old_labels  # ids, names and colours kept
    assert [label["name"] for label in schema["labels"]] == ["RBC", "WBC", "Eosinophil", "Platelets"]
    assert schema["labels"][3]["id"] == 4 and schema["labels"][3]["color"] not in {"#123456", "#abcdef", "#00ff00"}
    assert schema["grown_from"] == {"model": str(old), "classes": ["RBC", "WBC", "Eosinophil"], "added": ["Platelets"]}
    assert "Eosinophil, which" in caplog.text and "kept, with its id" in caplog.text
    head = class_head_paths(build_model(template, 4))[0]
    scores, boxes = grown[f"{head}.cls_score.weight"], grown[f"{head}.bbox_pred.weight"]
    assert scores.shape[0] == boxes.shape[0] // 4 == 5  # background + 4 classes
    assert torch.equal(scores[:4], checkpoint["model"][f"{head}.cls_score.weight"])  # the old rows, unchanged at lr 0
    assert torch.equal(boxes[:16], checkpoint["model"][f"{head}.bbox_pred.weight"])
    assert not torch.equal(scores[4], scores[3])
    assert load_checkpoint(grown_run)["labels"] == schema  # the model and its schema agree

    # a data.yaml naming its classes in an order that gives an old id to another class
    renumbered = tmp_path / "renumbered.yaml"
    renumbered.write_text(tiny_voc.read_text().replace("data:", "names: [WBC, RBC, Platelets]\ndata:", 1)
                          .replace("train/", f"{tiny_voc.parent}/train/").replace("val/", f"{tiny_voc.parent}/val/"))
    status, _, err = otxlite("train", template["path"], "--data", renumbered, "--load-weights", old, "--output",
                             tmp_path / "refused", "--no-pretrained")
    assert status == 2 and "Traceback" not in err
    assert "data.yaml's names lists 'WBC' as class 1, but class 1 of the model it grows is 'RBC'" in err


def test_batchnorm_statistics_become_the_average_over_the_first_training_images():
    class Normalizer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm2d(3, momentum=0.01)

        def forward(self, images, targets):
            self.norm(torch.stack(images))
            return {}

    generator = torch.Generator().manual_seed(0)
    batches = [[torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8, generator=generator) for _ in range(2)]
               for _ in range(3)]
    loader = [(images, [{"boxes": torch.zeros(0, 4)}] * 2) for images in batches]
    model = Normalizer()
    reestimate_batchnorm(model, loader, torch.device("cpu"), max_images=4)

    used = [torch.stack(images).float() / 255 for images in batches[:2]]  # the third batch is past max_images
    assert torch.allclose(model.norm.running_mean, torch.cat(used).mean(dim=(0, 2, 3)))
    batch_variances = [b.transpose(0, 1).reshape(3, -1).var(dim=1) for b in used]  # unbiased, per batch
    assert torch.allclose(model.norm.running_var, sum(batch_variances) / 2)
    assert model.norm.momentum == 0.01


def test_pretrained_weights_offline_give_one_clear_error(monkeypatch, tiny_voc, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(OtxliteError, match="--no-pretrained") as error:
        train(resolve_template("ssdlite320_mobilenet_v3_large"), split_specs(tiny_voc), tmp_path / "run")
    assert "ssdlite320_mobilenet_v3_large_coco" in str(error.value)


def test_pretrained_weights_come_from_the_torch_home_cache_offline(monkeypatch, tiny_voc, small_template, tmp_path):
    template = resolve_template(str(small_template("ssdlite320_mobilenet_v3_large")))
    weights = torchvision.models.get_weight(template["model"]["weights"])
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.manual_seed(123)
    coco_model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    torch.save(coco_model.state_dict(), cached)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))

    trained = torch.load(train(template, split_specs(tiny_voc), tmp_path / "run",
                               {**TWO_ITERATIONS, "learning_parameters.learning_rate": "0"}), weights_only=True)
    name = "backbone.features.0.0.0.weight"
    assert torch.equal(trained["model"][name], coco_model.state_dict()[name])
    head = "head.classification_head.module_list.0.1.weight"
    assert trained["model"][head].shape[0] != coco_model.state_dict()[head].shape[0]  # re-initialised for 3 classes


def test_not_a_checkpoint_and_wrong_template_weights_are_clear_errors(tiny_voc, small_template, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello")
    with pytest.raises(OtxliteError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(junk)
    torch.save({"a": 1}, tmp_path / "dict.pth")
    with pytest.raises(OtxliteError, match="not an otxlite checkpoint"):
        load_checkpoint(tmp_path / "dict.pth")

    ssd = resolve_template(str(small_template("ssdlite320_mobilenet_v3_large")))
    weights = train(ssd, split_specs(tiny_voc), tmp_path / "ssd", TWO_ITERATIONS, pretrained=False)
    other = resolve_template(str(small_template("fasterrcnn_mobilenet_v3_large_320_fpn")))
    with pytest.raises(OtxliteError, match="weights do not fit this model"):
        train(other, split_specs(tiny_voc), tmp_path / "other", TWO_ITERATIONS, load_weights=weights)


def test_unwritable_output_folder_is_a_clear_error(tmp_path, tiny_voc):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OtxliteError, match="Choose another --output folder"):
        train(resolve_template("ssd300_vgg16"), split_specs(tiny_voc), blocker / "run", pretrained=False)


def test_train_without_val_split_says_how_to_add_one(tmp_path, tiny_voc):
    specs = split_specs(tiny_voc)
    del specs["val"]
    with pytest.raises(OtxliteError, match="No val split given"):
        train(resolve_template("ssd300_vgg16"), specs, tmp_path / "run", pretrained=False)


def test_lr_schedule_warms_up_within_the_first_epoch_then_steps():
    params = {"warmup_iters": 100, "num_iters": 10, "lr_steps": [4, 8], "lr_gamma": 0.1, "lr_scheduler": "multistep"}
    factor = lr_schedule(params, iters_per_epoch=10)
    assert factor(0) == pytest.approx(0.001)
    assert factor(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert [factor(i) for i in (10, 39, 40, 79, 80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cosine = lr_schedule({**params, "lr_scheduler": "cosine"}, iters_per_epoch=10)
    assert [cosine(i) for i in (10, 50, 100)] == pytest.approx([0.5 * (1 + 0.9510565), 0.5, 0.0])


def test_mobilenet_fpn_stages_are_chosen_by_returned_layers():
    """otxlite's builder with torchvision's stages is torchvision's model; stage 3 adds a stride-16 level (the
    default levels are both at stride 32), with anchors on every level; a stage out of range is a clear error."""
    from otxlite.models.build import fasterrcnn_mobilenet_v3_large_fpn

    ours = fasterrcnn_mobilenet_v3_large_fpn(4).state_dict()
    theirs = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(num_classes=4, weights_backbone=None)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.state_dict().items()}

    template = resolve_template("fasterrcnn_mobilenet_v3_large_fpn")
    for stages, strides in (([4, 5], [32, 32, 64]), ([3, 4, 5], [16, 32, 32, 64])):
        template["model"].update(architecture="otxlite.models.build:fasterrcnn_mobilenet_v3_large_fpn",
                                 kwargs={"min_size": 320, "max_size": 320, "returned_layers": stages})
        model = build_model(template, 3).eval()
        features = model.backbone(torch.zeros(1, 3, 320, 320))
        assert [320 // f.shape[-1] for f in features.values()] == strides
        assert len(model.rpn.anchor_generator.sizes) == len(strides)
        with torch.inference_mode():
            assert set(model([torch.rand(3, 200, 300)])[0]) == {"boxes", "scores", "labels"}
    template["model"]["kwargs"]["returned_layers"] = [3, 9]
    with pytest.raises(OtxliteError, match="returned_layers"):
        build_model(template, 3)


def test_the_weight_average_warms_up_its_decay_and_follows_the_weights():
    layer = torch.nn.Linear(1, 1, bias=False)
    ema = moving_average(layer, {"enable": True, "decay": 0.6, "power": 1.0})
    expected = None
    for step, value in enumerate([1.0, 5.0, 9.0, 2.0]):
        layer.weight.data.fill_(value)
        ema.update_parameters(layer)
        # the first update copies; after t updates the decay is min(0.6, 1 - 1 / (1 + t))
        expected = value if expected is None else min(0.6, 1 - 1 / (1 + step)) * expected + \
            (1 - min(0.6, 1 - 1 / (1 + step))) * value
        assert ema.module.weight.item() == pytest.approx(expected)
    assert expected == pytest.approx(0.6 * (0.6 * (0.5 * 1 + 0.5 * 5) + 0.4 * 9) + 0.4 * 2)
    assert moving_average(layer, {"enable": False, "decay": 0.6, "power": 1.0}) is None


def test_a_lucky_epoch_is_not_kept_and_weights_are_the_average(tiny_voc, small_template, tmp_path, monkeypatch):
    """val mAP@0.5 per epoch 0.1, 0.6 (lucky), 0.1, 0.35, 0.4, 0.38: the best mean of three ends at epoch 6."""
    figures = iter([0.1, 0.6, 0.1, 0.35, 0.4, 0.38])
    coco_map = otxlite.engine.train.coco_map
    monkeypatch.setattr(otxlite.engine.train, "coco_map", lambda *args: {**coco_map(*args), "map_50": next(figures)})
    template = resolve_template(str(small_template("ssdlite320_mobilenet_v3_large")))
    weights = train(template, split_specs(tiny_voc), tmp_path / "run", {"learning_parameters.num_iters": "6",
                    "ema.enable": "true"}, pretrained=False)
    kept, last = load_checkpoint(weights), load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    assert kept["epoch"] == 6
    assert last["best_metric"] == {"value": pytest.approx((0.35 + 0.4 + 0.38) / 3), "epoch": 6}
    # weights.pth holds the weight average (with BatchNorm statistics re-estimated for it), not the last weights
    averaged = {name.removeprefix("module."): tensor for name, tensor in last["ema"].items() if name != "n_averaged"}
    assert kept["model"].keys() == averaged.keys() == last["model"].keys()
    assert all(torch.equal(kept["model"][name], averaged[name]) for name in averaged)
    assert not all(torch.equal(kept["model"][name], last["model"][name]) for name in averaged
                   if last["model"][name].is_floating_point())

    figures = iter([0.1, 0.6, 0.1])
    weights = train(template, split_specs(tiny_voc), tmp_path / "one", {"learning_parameters.num_iters": "3",
                    "learning_parameters.best_epoch_window": "1", "ema.enable": "false"}, pretrained=False)
    assert load_checkpoint(weights)["epoch"] == 2  # read from single epochs, the lucky one wins
    assert load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pth")["ema"] is None


def test_early_stopping_waits_for_its_share_of_the_schedule(tiny_voc, small_template, tmp_path, monkeypatch, caplog):
    figures = iter([0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    coco_map = otxlite.engine.train.coco_map
    monkeypatch.setattr(otxlite.engine.train, "coco_map", lambda *args: {**coco_map(*args), "map_50": next(figures)})
    template = resolve_template(str(small_template("ssdlite320_mobilenet_v3_large")))
    with caplog.at_level(logging.INFO, logger="otxlite"):
        train(template, split_specs(tiny_voc), tmp_path / "run", {
            "learning_parameters.num_iters": "10", "learning_parameters.early_stop_start": "1",
            "learning_parameters.early_stop_patience": "2", "learning_parameters.early_stop_min_share": "0.8",
            "ema.enable": "false"}, pretrained=False)
    # best at epoch 3 (the mean of 1-3), patience 2 is over at epoch 5, but stopping waits for epoch 8 (0.8 of 10)
    assert [r["epoch"] for r in metrics_rows(tmp_path / "run")] == [str(e) for e in range(1, 9)]
    assert "Early stopping: no better val mAP@0.5 (mean of 3 epochs) for 2 epochs since epoch 3." in caplog.text
    assert "val split: 36 objects (under 100)" in caplog.text

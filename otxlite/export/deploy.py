"""`otxlite deploy`: a zip with the OpenVINO model, a runner that needs only openvino, numpy and pillow, and the
service of `otxlite serve` for it (serve.py, which adds only the server packages)."""

import importlib.metadata
import logging
import zipfile
from pathlib import Path

from otxlite import __version__
from otxlite.core.errors import OtxliteError
from otxlite.core.files import LABEL_SCHEMA, output_file, read_json, write_atomic
from otxlite.core.labels import LabelSchema
from otxlite.inference.backends import load_predictor

log = logging.getLogger("otxlite")
RUNNER = Path(__file__).with_name("deploy_runner.py")
SERVE = Path(__file__).resolve().parents[1] / "serve"
SERVICE, PAGE = SERVE / "app.py", SERVE / "serve_page.html"
SERVER_PACKAGES = ("fastapi", "uvicorn", "prometheus_client", "python-multipart")
README = """# {name}: an otxlite detector

{labels} detector ({template}, {precision}, confidence threshold {threshold:g}), packaged by otxlite {version}.

    python -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/python run.py IMAGE_OR_FOLDER [--threshold T] [--json detections.json]

`run.py` prints one line per image; `--json` writes COCO results (image_id, file_name, category_id,
category_name, bbox as x, y, w, h in pixels, score, and for instance segmentation `segmentation` as
COCO RLE). In Python: `from run import Detector, paste_mask; boxes, scores, labels, masks =
Detector()(rgb_array)`; masks is None for detection, else each box's 28x28 mask probabilities, and
`paste_mask(masks[i], boxes[i], height, width)` gives detection i's mask in the image. The model takes
one RGB image as [1, 3, H, W] float32 in 0..1 at any size; resizing, normalisation and NMS are inside
it. Files: model/openvino.xml + .bin, model/label_schema.json (label ids and names), model/config.json.

To serve it over HTTP as `otxlite serve` does (POST /predict, a page at /, /health, /ready, /model,
/metrics, KServe v2; `--help` lists the options), with serve.py and serve_page.html:

    .venv/bin/pip install -r requirements-serve.txt
    .venv/bin/python serve.py [--host 127.0.0.1] [--port 8000]

Beyond loopback, require a key: `OTXLITE_API_KEY=... .venv/bin/python serve.py --host 0.0.0.0`; clients then
send `Authorization: Bearer <key>`.
"""


def pinned(name):
    """name==the installed version; the bare name where otxlite runs without it (no `serve` extra)."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def deploy(model_path, output):
    """Package an exported or optimized openvino.xml (with its .bin, label_schema.json, config.json) as a zip."""
    model_path, output = Path(model_path), output_file(output)
    if model_path.suffix != ".xml":
        raise OtxliteError(f"{model_path}: deploy packages an OpenVINO IR. Run `otxlite export` (and `otxlite "
                           f"optimize` for INT8) and pass its openvino.xml.")
    predictor = load_predictor(model_path, "cpu")  # checks the IR, its metadata and label schema
    folder = model_path.parent
    members = {"model/openvino.xml": model_path, "model/openvino.bin": model_path.with_suffix(".bin"),
               f"model/{LABEL_SCHEMA}": folder / LABEL_SCHEMA, "model/config.json": folder / "config.json"}
    missing = [str(p) for p in members.values() if not p.is_file()]
    if missing:
        raise OtxliteError(f"{', '.join(missing)}: missing beside {model_path.name}; deploy the folder that "
                           f"`otxlite export` or `optimize` wrote.")
    config = read_json(folder / "config.json")
    readme = README.format(name=output.stem, labels=", ".join(LabelSchema.of(predictor.schema).names),
                           template=predictor.template["id"], precision=config.get("precision", "FP32"),
                           threshold=predictor.confidence_threshold, version=__version__)
    requirements = "".join(f"{pinned(name)}\n" for name in ("openvino", "numpy", "pillow"))
    serve_requirements = "-r requirements.txt\n" + "".join(f"{pinned(name)}\n" for name in SERVER_PACKAGES)

    def write(file):
        with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as package:
            for name, path in members.items():
                package.write(path, name)
            package.write(RUNNER, "run.py")
            package.write(SERVICE, "serve.py")
            package.write(PAGE, PAGE.name)
            package.writestr("requirements.txt", requirements)
            package.writestr("requirements-serve.txt", serve_requirements)
            package.writestr("README.md", readme)

    write_atomic(output, write)
    log.info("Wrote %s (%.1f MB): model/, run.py, serve.py, requirements, README.md", output, output.stat().st_size / 1e6)
    return output

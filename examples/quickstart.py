"""The quick start through the Python API: train -> evaluate -> export -> optimize -> predict on the bundled BCCD.

Run from the repository root: `.venv/bin/python examples/quickstart.py` (about 27 minutes on 2 CPU cores). It trains
the template otxlite picks for the data, from the ImageNet weights that installed with it, with the template's recipe.
OTXLITE_EXAMPLE_DATA and OTXLITE_EXAMPLE_EPOCHS make it smaller (the tests run it on samples/bccd-mini, 1 epoch).
"""

import os
from pathlib import Path

import otxlite

data = os.environ.get("OTXLITE_EXAMPLE_DATA", "samples/bccd/data.yaml")
epochs = os.environ.get("OTXLITE_EXAMPLE_EPOCHS")  # unset: the template's own
work_dir = Path(os.environ.get("OTXLITE_EXAMPLE_OUTPUT", "runs/example"))

engine = otxlite.Engine(data=data, work_dir=work_dir)
run = engine.train(params={"learning_parameters.num_iters": int(epochs)} if epochs else None)
print(f"best epoch {run.figures['epoch']}, val mAP@0.5 {run.figures['val_map_50']:.3f}: {run.model}")

evaluation = engine.evaluate()
print(f"test mAP@0.5 {evaluation.map_50:.3f}, F1 {evaluation.f1:.3f} at {evaluation.confidence_threshold:g}")
for name, figures in evaluation.per_class.items():
    print(f"  {name}: AP@0.5 {figures['ap'] or 0:.3f} over {figures['gts']} objects")

engine.export()
int8 = engine.optimize()
print(f"INT8 test mAP@0.5 {int8.figures['comparison']['int8']['map_50']:.3f}: {int8.model}")

model = otxlite.load(int8.model)
image = Path(data).parent / "JPEGImages" / "BloodImage_00007.jpg"
detections = model.predict(image)
print(f"{len(detections)} detections on {image.name}: {sorted(set(detections.names))}")
detections.plot().save(work_dir / "BloodImage_00007.png")
print(detections.to_coco()[:1])

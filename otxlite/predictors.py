"""One predictor interface over every model file: RGB images in, detections in image pixels out."""

from pathlib import Path

import numpy as np
import torch

from otxlite import OtxliteError
from otxlite.files import load_checkpoint, read_label_schema


class TorchPredictor:
    """A torchvision detector (from weights.pth, or one being trained)."""

    def __init__(self, model, schema, confidence_threshold, template, device):
        self.model, self.schema, self.template, self.device = model.eval().to(device), schema, template, device
        self.confidence_threshold = confidence_threshold

    @torch.inference_mode()
    def __call__(self, images):
        """images: HxWx3 uint8 RGB arrays -> [{'boxes' [N, 4] xyxy, 'scores' [N], 'labels' [N] (schema ids)}]."""
        tensors = [torch.as_tensor(image).permute(2, 0, 1).to(self.device).float().div_(255) for image in images]
        outputs = self.model(tensors)
        return [{k: output[k].float().cpu().numpy() for k in ("boxes", "scores", "labels")} for output in outputs]


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OtxliteError("--device cuda: no CUDA GPU is visible to PyTorch. Use --device cpu or auto.")
    return torch.device(name)


def load_predictor(path, device="cpu"):
    """The predictor for a model file, by its suffix; label_schema.json must sit beside it."""
    from otxlite.models import model_from_checkpoint

    path = Path(path)
    if path.suffix == ".pth":
        checkpoint = load_checkpoint(path)
        schema = read_label_schema(path, expected=checkpoint["labels"])
        model = model_from_checkpoint(checkpoint, path)
        return TorchPredictor(model, schema, checkpoint["confidence_threshold"], checkpoint["template"], device)
    raise OtxliteError(f"{path}: unknown model file type '{path.suffix}'. Pass a weights.pth.")


def predict(predictor, loader):
    """Run predictor over a loader of (uint8 CHW images, targets) batches; one dict per image."""
    predictions = []
    for images, _ in loader:
        predictions += predictor([np.asarray(image.permute(1, 2, 0)) for image in images])
    return predictions

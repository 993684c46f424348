"""Training augmentation: a template's recipe as a torchvision.transforms.v2 pipeline over tv_tensors.

A sample is (tv_tensors.Image, target) where target holds "boxes" (tv_tensors.BoundingBoxes), "labels" and
any other per-box entries (a tv_tensors.Mask of instance masks travels the same way): v2 transforms move them
together, and SanitizeBoundingBoxes drops the boxes (with their labels and masks) that a transform left
empty. Mosaic, which needs other images, is the one transform of otxlite's own.
"""

import difflib

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from otxlite.core.errors import OtxliteError


class Mosaic:
    """Four training images in one square, as in Ultralytics: each image at the model's input scale, placed
    around a random centre. Which images join, and where the centre falls, come from torch's random state, so
    the dataset's per-sample seed makes a mosaic repeat exactly.

    size: the square's side (default: the model's input size); fill: the grey where no image falls.
    """

    images = 4

    def __init__(self, p=1.0, size=None, fill=114, center_range=(0.25, 0.75)):
        if not 0 <= p <= 1 or (size is not None and size < 8) or not 0 <= center_range[0] <= center_range[1] <= 1:
            raise ValueError("needs 0 <= p <= 1, size >= 8 and 0 <= center_range[0] <= center_range[1] <= 1")
        self.p, self.size, self.fill, self.center_range = p, size, fill, center_range

    def __call__(self, image, target, context):
        if torch.rand(()) >= self.p:
            return image, target
        side = self.size or context.input_side
        others = torch.randint(context.count, (self.images - 1,)).tolist()
        low, high = self.center_range
        center_x, center_y = (int(side * (low + (high - low) * float(torch.rand(())))) for _ in range(2))
        canvas = torch.full((image.shape[0], side, side), self.fill, dtype=image.dtype)
        parts = []
        for corner, (tile, tile_target) in enumerate([(image, target)] + [context.load(i) for i in others]):
            height, width = tile.shape[-2:]
            scale = context.scale(height, width)
            height, width = max(1, round(height * scale)), max(1, round(width * scale))
            left = center_x - width if corner in (0, 2) else center_x
            top = center_y - height if corner in (0, 1) else center_y
            placed = [F.crop(F.resize(x, [height, width], antialias=False), -top, -left, side, side)
                      if isinstance(x, tv_tensors.TVTensor)
                      else x for x in (tile, *tile_target.values())]
            x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + width, side), min(top + height, side)
            canvas[:, y0:y1, x0:x1] = placed[0][:, y0:y1, x0:x1]
            parts.append(dict(zip(tile_target, placed[1:])))
        merged = {key: joined([part[key] for part in parts]) for key in target}
        return tv_tensors.Image(canvas), merged


def joined(values):
    """Per-box entries of several images as one: tv_tensors keep their type and canvas."""
    if not isinstance(values[0], torch.Tensor):
        return values[0]
    return tv_tensors.wrap(torch.cat(values), like=values[0]) if isinstance(values[0], tv_tensors.TVTensor) \
        else torch.cat(values)


TRANSFORMS = {name: getattr(v2, name) for name in (
    "RandomPhotometricDistort", "ColorJitter", "RandomZoomOut", "RandomIoUCrop", "ScaleJitter",
    "RandomShortestSize", "RandomResizedCrop", "RandomCrop", "Resize", "RandomHorizontalFlip",
    "RandomVerticalFlip", "RandomGrayscale", "GaussianBlur")} | {"Mosaic": Mosaic}
HEAVY = ("Mosaic", "RandomIoUCrop", "RandomZoomOut", "ScaleJitter", "RandomResizedCrop")  # off in the last epochs
SEQUENCE_ARGS = ("side_range", "target_size", "scale_range", "brightness", "contrast", "saturation", "hue",
                 "sampler_options", "center_range", "kernel_size", "sigma", "scale", "ratio", "min_size", "size")


def without_heavy(augmentation):
    """augmentation less Mosaic and the heavy geometric transforms (HEAVY), as Ultralytics' close_mosaic trains the
    last epochs on images like those the model will see; None when it uses none of them."""
    light = {name: args for name, args in augmentation.items() if name not in HEAVY or args is False}
    return light if len(light) < len(augmentation) else None


def build_transform(name, args):
    """One augmentation entry (name, its arguments) as a transform, or one error naming the entry."""
    if name not in TRANSFORMS:
        close = difflib.get_close_matches(name, TRANSFORMS, n=3)
        raise OtxliteError(f"augmentation: unknown transform '{name}'."
                           + (f" Did you mean {', '.join(close)}?" if close else f" Known: {', '.join(TRANSFORMS)}."))
    args = {} if args is True else dict(args)
    args = {k: tuple(v) if k in SEQUENCE_ARGS and isinstance(v, list) else v for k, v in args.items()}
    if "fill" in args and name != "Mosaic":  # the fill is for images; masks are padded with 0 (no object)
        args["fill"] = {tv_tensors.Image: args["fill"], "others": 0}
    try:
        return TRANSFORMS[name](**args)
    except (TypeError, ValueError) as err:
        where = "otxlite.data.augment.Mosaic" if name == "Mosaic" else f"torchvision.transforms.v2.{name}"
        raise OtxliteError(f"augmentation.{name} {args}: {str(err).rstrip('.')}. See {where} for its "
                           f"arguments.") from None


class Pipeline:
    """A template's augmentation entries in order, between two resizes to the model's input scale, then boxes
    clamped to the image and empty ones dropped.

    Resizing first lets every transform work on as few pixels as the model will see; resizing last (to the size
    the model's own transform would give) keeps that work in the DataLoader workers. Both interpolate as the
    model does (bilinear, no antialiasing), so training images look like the ones evaluated. An entry set to
    false is left out. Called as pipeline(image, target, context): context.load(index) gives another
    (image, target) of the split for multi-image transforms, context.count their number, context.scale(height,
    width) the model's (isotropic) resize factor, context.resized(height, width) its input size and
    context.input_side its square input side.
    """

    def __init__(self, augmentation):
        self.steps = [build_transform(name, args) for name, args in augmentation.items() if args is not False]
        self.finish = v2.Compose([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()])

    def __call__(self, image, target, context):
        image, target = to_model_scale(image, target, context, isotropic=True)
        for step in self.steps:
            if hasattr(step, "images"):
                image, target = step(image, target, context)
            else:
                image, target = step(image, target)
        return self.finish(*to_model_scale(image, target, context, isotropic=False))

    def __bool__(self):
        return bool(self.steps)


def to_model_scale(image, target, context, isotropic):
    """(image, target) resized as the model would: by its isotropic scale, or to its exact input size."""
    height, width = image.shape[-2:]
    if isotropic:
        scale = context.scale(height, width)
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
    else:
        size = list(context.resized(height, width))
    if size == [height, width]:
        return image, target
    image, target = F.resize(image, size, antialias=False), {k: F.resize(v, size, antialias=False)
                                                            if isinstance(v, tv_tensors.TVTensor) else v
                                                            for k, v in target.items()}
    return image, target

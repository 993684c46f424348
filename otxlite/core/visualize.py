"""Pictures of detections and of training batches: boxes (and instance masks, filled and outlined) with label names
(and scores) in the label schema's colours."""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2.functional import resize
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from otxlite.core.files import write_atomic
from otxlite.core.labels import LabelSchema
from otxlite.core.thresholds import kept

GROUND_TRUTH_COLOR = "#ff00ff"
PREDICTION_COLOR = "#00d000"


def draw_detections(image, detections, schema, threshold, color=None, captions=True):
    """A copy of image (PIL RGB) with the detections scoring above threshold drawn on it.

    Each box takes its label's colour unless color is given; captions show the label name and score
    (or only the name for ground truth, which has no scores).
    """
    image = with_masks(image, detections, schema, threshold, color) if "rles" in detections else image.copy()
    draw = ImageDraw.Draw(image)
    side = min(image.size)
    width, font = max(2, round(side / 240)), ImageFont.load_default(size=max(11, round(side / 40)))
    labels = {label["id"]: label for label in schema["labels"]}
    scores = detections.get("scores")
    shown = range(len(detections["boxes"])) if scores is None else kept(scores, threshold)
    for index in shown:
        box, label_id = detections["boxes"][index], detections["labels"][index]
        score = None if scores is None else float(scores[index])
        label = labels[int(label_id)]
        outline = color or label["color"]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=outline, width=width)
        if captions:
            text = label["name"] if score is None else f"{label['name']} {score:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            y = y1 - (bottom - top) - 2 * width if y1 - (bottom - top) - 2 * width >= 0 else y1
            draw.rectangle([x1, y, x1 + right - left + 2 * width, y + bottom - top + 2 * width], fill=outline)
            draw.text((x1 + width - left, y + width - top), text, fill=text_color(outline), font=font)
    return image


def with_masks(image, detections, schema, threshold, color=None):
    """A copy of image with the instance masks (COCO RLEs) of detections scoring above threshold filled
    (alpha 0.45) and outlined in their label's colour (or color)."""
    from pycocotools import mask as coco_mask

    scores = detections.get("scores")
    shown = range(len(detections["rles"])) if scores is None else kept(scores, threshold)
    if not len(shown):
        return image.copy()
    colors = LabelSchema.of(schema).colors
    palette = [color or colors[int(detections["labels"][i])] for i in shown]
    masks = torch.from_numpy(coco_mask.decode([detections["rles"][i] for i in shown])).permute(2, 0, 1).bool()
    eroded = -torch.nn.functional.max_pool2d(-masks[None].float(), 3, stride=1, padding=1)[0] > 0
    picture = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    picture = draw_segmentation_masks(picture, masks, alpha=0.45, colors=palette)
    picture = draw_segmentation_masks(picture, masks & ~eroded, alpha=1.0, colors=palette)
    return Image.fromarray(picture.permute(1, 2, 0).numpy())


def text_color(background):
    """Black or white, whichever reads better on the background colour (#rrggbb)."""
    red, green, blue = (int(background[i:i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "white"


def gallery(images, predictions, ground_truths, schema, threshold, columns=3, tile_width=480):
    """A grid of images: ground truth boxes in magenta, predictions above threshold in green."""
    tiles = []
    for image, prediction, truth in zip(images, predictions, ground_truths):
        tile = draw_detections(image, truth, schema, threshold, GROUND_TRUTH_COLOR, captions=False)
        tile = draw_detections(tile, prediction, schema, threshold, PREDICTION_COLOR)
        tiles.append(tile.resize((tile_width, round(tile.height * tile_width / tile.width))))
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    heights = [max(t.height for t in row) for row in rows]
    caption = 28
    sheet = Image.new("RGB", (tile_width * min(columns, len(tiles)), caption + sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 6), f"green: predictions scoring above {threshold:g}    magenta: ground truth",
              fill="black", font=ImageFont.load_default(size=16))
    top = caption
    for row, height in zip(rows, heights):
        for column, tile in enumerate(row):
            sheet.paste(tile, (column * tile_width, top))
        top += height
    return sheet


def draw_batch(loader, schema, path, max_images=16):
    """train_batch.jpg: the loader's first training batch as the model sees it: augmented, resized to the
    model's input (when the dataset knows it), boxes drawn, each image padded to the batch's largest.
    """
    dataset, keys = loader.dataset, loader.batch_sampler.batches()[0][:max_images]
    input_size = dataset.context.input if dataset.context else None
    items = [dataset[key] for key in keys]
    colors = LabelSchema.of(schema).colors
    names = LabelSchema.of(schema).name_of
    tiles = []
    for image, target in items:
        scale_y, scale_x = input_size.factors(*image.shape[-2:]) if input_size else (1.0, 1.0)
        size = [max(1, round(image.shape[-2] * scale_y)), max(1, round(image.shape[-1] * scale_x))]
        labels = target["labels"].tolist()
        if not labels:
            tiles.append(resize(image, size))
            continue
        tiles.append(draw_bounding_boxes(resize(image, size), target["boxes"] * torch.tensor([scale_x, scale_y] * 2),
                                         [names[i] for i in labels], [colors[i] for i in labels], width=2))
    height, width = max(t.shape[-2] for t in tiles), max(t.shape[-1] for t in tiles)
    padded = [torch.nn.functional.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=255) for t in tiles]
    sheet = make_grid(padded, nrow=min(4, len(padded)), padding=4, pad_value=255)
    picture = Image.fromarray(sheet.permute(1, 2, 0).numpy())
    write_atomic(path, lambda f: picture.save(f, format="JPEG", quality=90))

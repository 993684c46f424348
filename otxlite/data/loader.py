"""Torch loading: the dataset of decoded, augmented training samples (cached at the model's scale), batches
grouped by aspect ratio, and the DataLoader that train, QAT and evaluation share."""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors

from otxlite.core.labels import LabelSchema
from otxlite.data.augment import to_model_scale
from otxlite.data.formats import DataError
from otxlite.data.formats.base import decode_image
from otxlite.data.formats.shapes import instance_masks

CACHE_BYTES = 512 * 2 ** 20  # decoded training images (at the model's scale) each DataLoader worker keeps


class DetectionDataset(torch.utils.data.Dataset):
    """Images as uint8 CHW tensors with torchvision detection targets, augmented by pipeline when given.

    Items travel as tv_tensors (Image, BoundingBoxes) through the pipeline and leave it as plain tensors.
    Training items are asked for as (index, epoch) by GroupedBatchSampler; their randomness is seeded from
    (seed, epoch, index) alone, so it does not depend on which DataLoader worker decodes them, on the number
    of workers, or on whether the run was resumed. Ignored (crowd, difficult) regions are not training targets.
    """

    def __init__(self, samples, schema, pipeline=None, input_size=None, seed=0, masks=False):
        self.samples, self.masks = samples, masks
        self.label_ids = LabelSchema.of(schema).id_of
        self.pipeline, self.seed = pipeline, seed
        self.context = PipelineContext(self.scaled, len(samples), input_size) if pipeline else None
        self.cache, self.cached_bytes = {}, 0

    def scaled(self, index):
        """Sample index at the model's input scale (the first step of every pipeline), kept in memory up to
        CACHE_BYTES per worker: multi-image transforms read three more images per item."""
        if index in self.cache:
            return self.cache[index]
        item = to_model_scale(*self.load(index), self.context, isotropic=True)
        size = item[0].numel() + (item[1]["masks"].numel() if self.masks else 0)
        if self.cached_bytes + size <= CACHE_BYTES:
            self.cache[index] = item
            self.cached_bytes += size
        return item

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        """Sample index as (tv_tensors.Image, {"boxes": tv_tensors.BoundingBoxes, "labels": tensor}), with
        "masks" (tv_tensors.Mask, one uint8 mask per box) when the dataset has masks; a tile's pixels only."""
        sample = self.samples[index]
        try:
            image = torch.from_numpy(decode_image(sample.image).copy()).permute(2, 0, 1)
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"{sample.image}: cannot decode image ({err}). Replace or remove it.") from None
        trained = [i for i, ignored in enumerate(sample.ignored) if not ignored]
        x0, y0, x1, y1 = sample.window or (0, 0, image.shape[2], image.shape[1])
        boxes = torch.tensor([sample.boxes[i] for i in trained], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.label_ids[sample.classes[i]] for i in trained], dtype=torch.int64)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(y1 - y0, x1 - x0)),
                  "labels": labels}
        if self.masks:
            shapes = [sample.shapes[i] for i in trained]
            masks = torch.from_numpy(instance_masks(shapes, *image.shape[:0:-1]))
            target["masks"] = tv_tensors.Mask(masks[:, y0:y1, x0:x1])
        return tv_tensors.Image(image[:, y0:y1, x0:x1]), target

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, target = self.scaled(index) if self.pipeline else self.load(index)
        if self.pipeline:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                image, target = self.pipeline(image, target, self.context)
        return image.as_subclass(torch.Tensor), {**{k: v.as_subclass(torch.Tensor) for k, v in target.items()},
                                                 "image_id": index}


@dataclass
class PipelineContext:
    """What multi-image transforms ask of the dataset: other items, their count, and the model's input scale."""

    load: object
    count: int
    input: object = None  # models.InputSize of the model trained, or None (no rescaling)

    def scale(self, height, width):
        return min(self.input.factors(height, width)) if self.input else 1.0

    def resized(self, height, width):
        return self.input.resized(height, width) if self.input else (height, width)

    @property
    def input_side(self):
        return self.input.side if self.input else 640


def sample_seed(seed, epoch, index):
    """One 63-bit seed per (seed, epoch, image index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def make_loader(samples, schema, params, device, train=False, seed=0, pipeline=None, input_size=None, masks=False,
                rank=0, world_size=1, repeats=1):
    """Batches of (uint8 images, targets); training batches are shuffled, augmented by pipeline and grouped by
    shape, and in a process group dealt out to the ranks (see GroupedBatchSampler); an epoch passes over the
    training images `repeats` times. input_size (models.InputSize) is the model's resizing, at whose scale
    multi-image transforms work. masks: targets hold instance masks (training an instance-segmentation model).

    The loader's own generator keeps it from drawing on the global random state, so that state (which
    the model's sampling uses) is the same whether a run started fresh or resumed.
    """
    dataset = DetectionDataset(samples, schema, pipeline if train else None, input_size, seed, masks and train)
    common = {"num_workers": params["num_workers"], "collate_fn": collate, "pin_memory": device.type == "cuda",
              "persistent_workers": params["num_workers"] > 0, "generator": torch.Generator().manual_seed(seed)}
    if train:
        sampler = GroupedBatchSampler(samples, params["batch_size"], seed, rank, world_size, repeats)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)
    return torch.utils.data.DataLoader(dataset, batch_size=params["batch_size"], shuffle=False, **common)


def adaptive_repeats(images, batch_size):
    """Passes over a training set of `images` per epoch, as OTX's adaptive repeat sets them: floor(max(5 - 0.7 *
    sqrt(iterations per epoch - 1), 1)). A small set gets more steps per epoch (80 images at batch 16: 3 passes,
    205: 2, 700 or more: 1), so a schedule of epochs trains it long enough."""
    iterations = math.ceil(images / batch_size)
    return math.floor(max(5 - 0.7 * math.sqrt(iterations - 1), 1))


def collate(batch):
    return tuple(zip(*batch))


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches whose images are all wide or all tall, so padding wastes little.

    An epoch is `repeats` passes over the images, pass p of epoch e numbered e * repeats + p. The order depends
    only on (seed, pass), so a resumed run sees the same batches. Each batch lists (image index, pass) pairs,
    which carry the pass (the epoch, with one pass an epoch) to the dataset in whichever worker decodes it, so an
    image repeated in an epoch is augmented anew.
    In a process group of world_size (DDP), the batches are those of one process with batch_size * world_size,
    each dealt out in equal parts, part `rank` to this process: every rank gets the same number of batches.
    A batch too short to give each rank as many images (and two where batch_size allows) is topped up by
    repeating its own images, as DistributedSampler pads.
    """

    def __init__(self, samples, batch_size, seed, rank=0, world_size=1, repeats=1):
        self.wide = np.array([s.width >= s.height for s in samples])
        self.batch_size, self.seed, self.epoch, self.repeats = batch_size, seed, 0, repeats
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        yield from self.batches()

    def __len__(self):
        return len(self.batches())

    def batches(self):
        return [batch for done in range(self.repeats) for batch in self.pass_batches(self.epoch * self.repeats + done)]

    def pass_batches(self, number):
        generator = torch.Generator().manual_seed(self.seed * 1000 + number)
        order = torch.randperm(len(self.wide), generator=generator).numpy()
        size, batches = self.batch_size * self.world_size, []
        for wide in (True, False):
            group = order[self.wide[order] == wide].tolist()
            chunks = [group[i:i + size] for i in range(0, len(group), size)]
            if len(chunks) > 1 and len(chunks[-1]) == 1 < size:  # BatchNorm cannot train on one image
                chunks[-2] = chunks[-2] + chunks[-1]
                del chunks[-1]
            batches += chunks
        lone = [b for b in batches if len(b) == 1 < size] if len(batches) > 1 else []
        for batch in lone:  # a group of one image joins another group's batch
            if len(batch) == 1:  # (unless an earlier lone image joined it)
                batches = [b for b in batches if b is not batch]
                batches[0] += batch
        return [[(index, number) for index in self.part(batches[i])]
                for i in torch.randperm(len(batches), generator=generator).tolist()]

    def part(self, batch):
        """This rank's part of a batch of the whole process group."""
        if self.world_size == 1:
            return batch
        each = max(math.ceil(len(batch) / self.world_size), min(2, self.batch_size))
        return [batch[i % len(batch)] for i in range(each * self.world_size)][self.rank::self.world_size]

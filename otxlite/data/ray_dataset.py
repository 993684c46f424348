"""A data.yaml's split as a Ray Dataset, for users' own pipelines on Ray Data."""

from otxlite.core.errors import OtxliteError
from otxlite.core.labels import LabelSchema
from otxlite.data.loader import DetectionDataset
from otxlite.data.records import load_splits
from otxlite.data.specs import require_splits, split_specs


def to_ray_dataset(data, split="train", masks=False):
    """A split of a data.yaml (any supported format) as a Ray Dataset, for pipelines of your own on Ray Data.

    Rows: image (HxWx3 uint8 RGB, EXIF-oriented), boxes ([N, 4] float32 x1, y1, x2, y2 pixels), labels ([N] int64
    label-schema ids: 1.. in the order train gives the classes), names ([N] class names), file_name, and with
    masks=True masks ([N, H, W] uint8 instance masks; the annotations must give shapes). The split is checked and
    cleaned as training does (warnings counted); crowd and difficult regions are left out. Ray tasks decode the
    images as the dataset is consumed. Needs `pip install 'otxlite[ray]'`.
    """
    try:
        import ray.data
    except ModuleNotFoundError:
        raise OtxliteError("to_ray_dataset needs Ray Data: pip install 'otxlite[ray]'.") from None
    specs = split_specs(data)
    require_splits(specs, split)
    splits, schema = load_splits(specs, task="instance_segmentation" if masks else None)
    dataset = DetectionDataset(splits[split].samples, schema, masks=masks)
    names = LabelSchema.of(schema).name_of

    def row(item):
        image, target = dataset.load(item["index"])
        labels = target["labels"].numpy()
        return {"image": image.permute(1, 2, 0).numpy(), "boxes": target["boxes"].numpy(), "labels": labels,
                "names": [names[int(label)] for label in labels],
                "file_name": str(dataset.samples[item["index"]].image),
                **({"masks": target["masks"].numpy()} if masks else {})}

    return ray.data.from_items([{"index": i} for i in range(len(dataset))]).map(row)

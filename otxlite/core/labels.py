"""The label schema: a model's classes (ids from 1, 0 is the background), their colours and its task, as
label_schema.json holds them. Made, read, written and checked here only."""

import colorsys
from pathlib import Path

from otxlite.core.errors import ModelFileError
from otxlite.core.files import LABEL_SCHEMA, read_json, write_json


class LabelSchema(dict):
    """label_schema.json's content, {"task": ..., "labels": [{"id", "name", "color"}, ...]}, with its parts at hand.

    It stays a dict so that label_schema.json, checkpoints and exported metadata hold it as they always did.
    """

    @classmethod
    def of_classes(cls, class_names, task="detection"):
        """The schema for classes in order: ids from 1, a distinct colour each."""
        return cls(task=task, labels=[{"id": i + 1, "name": name, "color": label_color(i)}
                                      for i, name in enumerate(class_names)])

    @classmethod
    def of(cls, schema):
        """schema (a dict from a file or a checkpoint) as a LabelSchema."""
        return schema if isinstance(schema, cls) else cls(schema)

    @property
    def task(self):
        return self.get("task", "detection")

    @property
    def names(self):
        """The class names in id order."""
        return [label["name"] for label in self["labels"]]

    @property
    def name_of(self):
        """{id: class name}."""
        return {label["id"]: label["name"] for label in self["labels"]}

    @property
    def id_of(self):
        """{class name: id}."""
        return {label["name"]: label["id"] for label in self["labels"]}

    @property
    def colors(self):
        """{id: "#rrggbb"}."""
        return {label["id"]: label["color"] for label in self["labels"]}

    def write(self, folder):
        """label_schema.json in folder."""
        write_json(Path(folder) / LABEL_SCHEMA, dict(self))

    @classmethod
    def read(cls, model_path, expected=None):
        """The label_schema.json beside a model file; when expected is given, its classes must be the same."""
        path = Path(model_path).parent / LABEL_SCHEMA
        if not path.is_file():
            raise ModelFileError(f"{path}: missing. Every model file needs the {LABEL_SCHEMA} its stage wrote beside "
                                 f"it.")
        schema = read_json(path)
        if not isinstance(schema, dict) or not isinstance(schema.get("labels"), list):
            raise ModelFileError(f"{path}: not a label schema (expected {{'task': ..., 'labels': [...]}}).")
        schema = cls(schema)
        if expected is not None and schema.names != label_names(expected):
            raise ModelFileError(f"{path}: labels {schema.names} do not match the model's {label_names(expected)}. "
                                 f"Put back the {LABEL_SCHEMA} written with {Path(model_path).name}.")
        return schema


def label_names(schema):
    """The class names of a schema (a LabelSchema or the dict a file or checkpoint holds)."""
    return LabelSchema.of(schema).names


def label_color(index):
    red, green, blue = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"

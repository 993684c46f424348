"""The label schema: a model's classes (ids from 1, 0 is the background), their colours and its task, as
label_schema.json holds them. Made, read, written and checked here only."""

import colorsys
from pathlib import Path

from otxlite.core.errors import DataError, ModelFileError
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

    def check_ids(self, declared, declared_by):
        """declared: class names whose order gives their ids (position i is id i + 1), as declared_by (a COCO file's
        categories, data.yaml's names) lists them. An id of this schema that names another class there is an error
        naming both."""
        for index, name in enumerate(declared):
            old = self.name_of.get(index + 1)
            if old is not None and old != name:
                raise DataError(f"{declared_by} lists '{name}' as class {index + 1}, but class {index + 1} of the "
                                f"model it grows is '{old}'. Keep the model's classes first, in its order "
                                f"({self.listing()}), with new classes after them; or rename the class.")

    def grown(self, class_names, source):
        """(schema, added): this schema with the classes of class_names it lacks appended, with the ids after its last
        and colours of their own; its classes keep their ids, names and colours, and `grown_from` records the merge
        (source: the model grown, its classes, the classes added)."""
        added = [name for name in class_names if name not in self.id_of]
        last = max((label["id"] for label in self["labels"]), default=0)
        labels = [dict(label) for label in self["labels"]] + [
            {"id": last + 1 + i, "name": name, "color": label_color(last + i)} for i, name in enumerate(added)]
        grown_from = {"model": str(source), "classes": self.names, "added": added}
        return LabelSchema(self, labels=labels, grown_from=grown_from), added

    def listing(self):
        """'1 WBC, 2 RBC': the ids and names, for messages."""
        return ", ".join(f"{label['id']} {label['name']}" for label in self["labels"])

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

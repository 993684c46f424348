"""Model templates: discovery, loading and `params` overrides."""

import copy
import difflib
from pathlib import Path

import yaml

from otxlite import OtxliteError
from otxlite.files import read_yaml

TASKS = ("detection",)
PACKAGE_DIR = Path(__file__).resolve().parent
# Installed wheels carry the templates inside the package; a source checkout has them beside it.
BUILTIN_TEMPLATE_DIRS = (PACKAGE_DIR / "templates", PACKAGE_DIR.parent / "templates")
REQUIRED_KEYS = ("id", "name", "task", "model", "hyper_parameters")


def template_dirs(extra_dirs=()):
    """The folders searched for templates: the built-in one first, then the user's."""
    builtin = [d for d in BUILTIN_TEMPLATE_DIRS if d.is_dir()][:1]
    return builtin + [Path(d) for d in extra_dirs]


def load_template(path):
    """Read one template.yaml and check it has the fields every stage relies on."""
    template = read_yaml(path)
    if not isinstance(template, dict):
        raise OtxliteError(f"{path}: a template must be a YAML mapping with keys {', '.join(REQUIRED_KEYS)}.")
    missing = [key for key in REQUIRED_KEYS if key not in template]
    if missing:
        raise OtxliteError(f"{path}: template is missing {', '.join(missing)}.")
    template["path"] = str(Path(path).resolve())
    return template


def find_templates(task=None, extra_dirs=()):
    """All templates under the template folders, optionally of one task."""
    if task is not None and task not in TASKS:
        raise OtxliteError(f"Unknown task '{task}'. Known tasks: {', '.join(TASKS)}.")
    templates = []
    for folder in template_dirs(extra_dirs):
        if not folder.is_dir():
            raise OtxliteError(f"Template folder {folder} does not exist.")
        templates += [load_template(p) for p in sorted(folder.rglob("template.yaml"))]
    return [t for t in templates if task is None or t["task"] == task]


def resolve_template(name, extra_dirs=()):
    """A template given by its path (file or folder) or by its id."""
    path = Path(name)
    if path.is_dir():
        path = path / "template.yaml"
    if path.is_file():
        return load_template(path)
    templates = find_templates(extra_dirs=extra_dirs)
    for template in templates:
        if template["id"] == name:
            return template
    ids = [t["id"] for t in templates]
    close = difflib.get_close_matches(name, ids, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else " Run `otxlite find` to list them."
    raise OtxliteError(f"No template file or id '{name}'.{hint}")


def apply_overrides(template, overrides):
    """A copy of template with dotted hyper-parameter overrides applied.

    overrides maps keys such as 'learning_parameters.batch_size' to strings,
    which are parsed as YAML values ('4' -> 4, 'false' -> False).
    """
    template = copy.deepcopy(template)
    for key, text in overrides.items():
        *parents, leaf = key.split(".")
        node = template["hyper_parameters"]
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            known = sorted(flatten(template["hyper_parameters"]))
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else f" Known: {', '.join(known)}."
            raise OtxliteError(f"Unknown hyper-parameter '{key}'.{hint}")
        node[leaf] = yaml.safe_load(text)
    return template


def flatten(tree, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_params(args):
    """['--learning_parameters.batch_size', '4', ...] (the words after `params`) -> {key: text}."""
    overrides, args = {}, list(args)
    while args:
        word = args.pop(0)
        if not word.startswith("--"):
            raise OtxliteError(f"Expected '--name value' after params, got '{word}'.")
        key, sep, value = word[2:].partition("=")
        if not sep:
            if not args:
                raise OtxliteError(f"params {word} needs a value.")
            value = args.pop(0)
        overrides[key] = value
    return overrides

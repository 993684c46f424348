"""Reading and atomically writing the files that pass between stages."""

import collections
import contextlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path

import torch
import yaml

from otxlite.core.errors import ModelFileError, OtxliteError

CHECKPOINT_FORMAT = 1
LABEL_SCHEMA = "label_schema.json"
UMASK = os.umask(0o022)  # read the process umask (there is no other way) and put it back
os.umask(UMASK)


def read_yaml(path):
    """Parse a YAML file, turning syntax errors into one message that names the file."""
    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise OtxliteError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}. Fix the syntax.") from None


def read_json(path):
    """Parse a JSON file, turning syntax errors into one message that names the file."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise OtxliteError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}.") from None


def read_text(path):
    """A UTF-8 text file (a byte-order mark is accepted); anything else is one error naming the file."""
    if Path(path).exists() and not Path(path).is_dir() and not is_regular(path):
        raise OtxliteError(f"{path}: not a regular file (a FIFO, socket or device); give a text file.")
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise OtxliteError(f"{path}: file not found.") from None
    except UnicodeDecodeError as err:
        raise OtxliteError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}). "
                           f"Save the file as UTF-8.") from None
    except OSError as err:
        raise OtxliteError(f"{path}: cannot read the file ({err.strerror or err}).") from None


def is_regular(path):
    """A regular file, or a link to one: what can be read without blocking (not a FIFO, socket or device)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def write_atomic(path, write):
    """Call write(file_object) on a temporary file beside path, then rename it over path.

    A run killed half-way leaves the previous file intact, never a truncated one.
    """
    path = output_file(path)
    make_folder(path.parent)
    try:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OtxliteError(f"Cannot write to {path.parent}: {err.strerror}. Choose another --output folder.") from None
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes files private; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_file(path):
    """path as a Path, or one error when it names an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise OtxliteError(f"{path} is a folder; give the path of a file to write inside it, e.g. {path}/"
                           f"{path.name or 'output'}{path.suffix or '.out'}.")
    return path


def make_folder(folder):
    if Path(folder).is_file():
        raise OtxliteError(f"{folder} is a file; give a folder for the output.")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OtxliteError(f"Cannot create {folder}: {err.strerror}. Choose another --output folder.") from None


def write_json(path, data):
    write_atomic(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def save_checkpoint(path, checkpoint):
    """Write checkpoint atomically, its tensors as copies that own their memory.

    torch.save refuses two storages at one address with different dtypes; after NNCF and OpenVINO
    ran in the same process it sometimes saw that for a live model's state_dict (a test run after
    `optimize` failed at random). Copies made just for the save cannot share an address.
    """
    write_atomic(path, lambda f: torch.save(owned_copy(checkpoint), f))


def owned_copy(value):
    """value with every tensor in its dicts, lists and tuples replaced by a clone."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        kind = type(value) if type(value) in (dict, collections.OrderedDict) else dict  # LabelSchema: a dict
        copy = kind((k, owned_copy(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):  # a state_dict's module versions
            copy._metadata = value._metadata
        return copy
    if isinstance(value, (list, tuple)):
        return type(value)(owned_copy(v) for v in value)
    return value


def read_torch_file(path):
    """torch.load(path, weights_only=True), with one clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign file can make the unpickler raise almost any type
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelFileError(f"{path}: not a readable PyTorch checkpoint ({first_line}).") from None


def is_checkpoint(content):
    """Whether content (a torch file's) is an otxlite checkpoint, not a plain state_dict or another object."""
    return isinstance(content, dict) and "format_version" in content


def load_checkpoint(path):
    """An otxlite checkpoint (weights.pth or checkpoints/last.pth)."""
    checkpoint = read_torch_file(path)
    if not is_checkpoint(checkpoint):
        raise ModelFileError(
            f"{path}: not an otxlite checkpoint (no format_version). Pass a weights.pth written by `otxlite train`."
        )
    return checkpoint


def load_weights(path):
    """A weights.pth: a model checkpoint with its confidence threshold, not a checkpoints/last.pth."""
    checkpoint = load_checkpoint(path)
    if "confidence_threshold" not in checkpoint:
        raise ModelFileError(f"{path}: a checkpoint for `otxlite train --resume`, not a model. Pass the run's "
                           f"weights.pth (the best epoch, with its tuned confidence threshold).")
    return checkpoint


@contextlib.contextmanager
def log_file(path):
    """Copy otxlite's log messages into path (appending) while the block runs."""
    make_folder(Path(path).parent)
    try:
        handler = logging.FileHandler(path)
    except OSError as err:
        raise OtxliteError(f"Cannot write the log {path}: {err.strerror}. Choose another --output folder.") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("otxlite")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def refuse_overwriting(outputs, inputs):
    """One error (ArgumentError), before any work, when an output path is, contains or lies inside an input.

    outputs: {flag: path} the command will write (a file or a folder); inputs: {what: path, or a list of paths} it
    reads (files and folders). A new folder, or one beside the inputs, is fine.
    """
    from otxlite.core.errors import ArgumentError

    read_paths = [(what, source) for what, sources in inputs.items()
                  for source in (sources if isinstance(sources, list) else [sources])]
    for flag, output in outputs.items():
        if output is None:
            continue
        written = Path(output).absolute().resolve()
        for what, source in read_paths:
            read = Path(source).absolute().resolve()
            relation = ("is" if written == read else "contains" if read.is_relative_to(written)
                        else "lies inside" if written.is_relative_to(read) else None)
            if relation:
                raise ArgumentError(f"{flag} {output} {relation} {what} {source}: otxlite never writes over its "
                                    f"inputs. Choose another {flag}.")

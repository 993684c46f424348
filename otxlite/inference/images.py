"""Images to predict on: the files a path, folder, glob or .txt list names, decoded as training decodes them
(EXIF orientation, 16-bit and grey PNGs), read ahead on threads."""

import glob
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from otxlite.core.errors import OtxliteError
from otxlite.data.formats.base import IMAGE_SUFFIXES, DataError, decode_reporting_truncation, images_in

log = logging.getLogger("otxlite")


def warn_skipped(file, reason):
    log.warning("%s: unreadable image (%s); skipped.", file, reason)


def image_files(path):
    """(files, root): one image file, a folder's images (recursively), the images a glob pattern matches, or those
    a .txt file lists one a line (relative to the list's folder); sorted, except a list's, which keeps its order.
    File names in the output are relative to root."""
    text = str(path)
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        listed = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        files = list(dict.fromkeys(path.parent / line for line in listed if line and not line.startswith("#")))
        if not files:
            raise OtxliteError(f"{path}: lists no images. Give one image path a line.")
        if not any(file.exists() for file in files):
            raise OtxliteError(f"{path}: none of the {len(files)} files it lists exists (e.g. {files[0]}). Paths "
                               f"are relative to the list's folder, {path.parent}.")
        return files, path.parent
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise OtxliteError(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)}), a folder, a glob "
                               f"pattern or a .txt list of images.")
        return [path], path.parent
    if path.is_dir():
        files = images_in(path)
        if not files:
            raise OtxliteError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder.")
        return files, path
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES
                       and Path(p).is_file())
        if not files:
            raise OtxliteError(f"{text}: the pattern matches no images ({', '.join(IMAGE_SUFFIXES)}).")
        fixed = [part for part in Path(text).parts[:-1]]
        while fixed and glob.has_magic(fixed[-1]):
            fixed.pop()
        return files, Path(*fixed) if fixed else Path(".")
    raise OtxliteError(f"{path}: not found.")


def file_name(path, root):
    """path as the output names it: relative to root when under it, else as given."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def decode(path):
    """An HxWx3 uint8 RGB array as viewers show the image, or the error text for a file that cannot be decoded
    (a truncated file is decoded with its missing end grey, and a warning names it)."""
    try:
        image, truncated = decode_reporting_truncation(path)
    except DataError as err:
        return str(err).removeprefix(f"{path}: ")
    except (OSError, SyntaxError, ValueError) as err:
        return str(err)
    if truncated:
        log.warning("%s: the file ends early (%s); decoded with its missing part grey.", path, truncated)
    return image


def detect_images(predictor, files, batch_size, workers=2, warn=True):
    """(index, file, RGB array, detections) per file, batch by batch.

    Threads decode the next batch while the model runs on this one (PIL releases the GIL while decoding).
    An unreadable file is skipped with a warning naming it (counted at the end), or with warn=False given as
    (index, file, None, the reason).
    """
    batches = [range(start, min(start + batch_size, len(files))) for start in range(0, len(files), batch_size)]
    skipped = 0
    with ThreadPoolExecutor(workers) as pool:
        upcoming = [pool.submit(decode, files[i]) for i in batches[0]] if batches else []
        for number, batch in enumerate(batches):
            decoded = [future.result() for future in upcoming]
            if number + 1 < len(batches):
                upcoming = [pool.submit(decode, files[i]) for i in batches[number + 1]]
            readable = [(index, image) for index, image in zip(batch, decoded) if not isinstance(image, str)]
            for index, error in zip(batch, decoded):
                if isinstance(error, str):
                    if warn:
                        warn_skipped(files[index], error)
                        skipped += 1
                    else:
                        yield index, files[index], None, error
            found = predictor([image for _, image in readable]) if readable else []
            for (index, image), detections in zip(readable, found):
                yield index, files[index], image, detections
    if skipped:
        log.warning("Skipped %d unreadable image(s) of %d.", skipped, len(files))

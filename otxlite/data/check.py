"""`otxlite data check`: what each split holds, and every problem that would stop or change training."""

import difflib
from collections import Counter

from otxlite.core.errors import OtxliteError
from otxlite.data.records import Problem, check_split, declared_classes
from otxlite.data.specs import SPLITS, in_split_order

SHOWN_SIZES = 3


def check_data(specs):
    """(report text, ok): per split its images, boxes, classes, image sizes and problems; ok when training would run."""
    lines, errors, warnings, known, learned = [], 0, 0, None, None
    if "train" not in specs:
        lines.append("ERROR no train split: add one to data.yaml (or --train-ann-files) before training.")
        errors += 1
    for name in in_split_order(specs):
        spec = specs[name]
        if name not in SPLITS:
            close = difflib.get_close_matches(name, SPLITS, n=1)
            lines.append(f"warning unknown split: '{name}' is not a split otxlite reads ({', '.join(SPLITS)})"
                         f"{'; did you mean ' + close[0] + '?' if close else ''} It is checked below, but no command "
                         f"uses it.")
            warnings += 1
        try:
            split, problems = check_split(spec, None if name == "train" else known, decode=True, masks=None)
        except OtxliteError as err:  # the annotation files themselves cannot be read
            lines += [f"{name}: {spec.ann_files}", f"  ERROR {err}"]
            errors += 1
            continue
        if name == "train":
            learned = split.class_order
            known = declared_classes(spec, split) or learned  # as training reads them (load_splits)
            if split.samples and not learned:
                problems.append(Problem("no boxes", str(spec.ann_files), f"{spec.ann_files}: the training split "
                                        f"has no boxes, so there is nothing to learn.", True))
        elif learned is not None and set(split.class_order) - set(learned):
            unlearned = ", ".join(c for c in split.class_order if c not in learned)
            problems.append(Problem("not in train", str(spec.ann_files), f"{spec.ann_files}: classes that train "
                                    f"does not hold: {unlearned}. Kept as train declares them; the model cannot "
                                    f"learn them.", False))
        lines += split_summary(name, spec, split)
        for problem in problems:
            lines.append(f"  {'ERROR' if problem.fatal else 'warning'} {problem.kind}: {problem.message}")
        errors += sum(p.fatal for p in problems)
        warnings += sum(not p.fatal for p in problems)
    if errors:
        lines.append(f"{errors} error(s): training would fail. Fix them (see ERROR lines); {warnings} warning(s).")
    else:
        lines.append(f"OK: training would run. {warnings} warning(s): training goes on as each one says.")
    return "\n".join(lines), errors == 0


def split_summary(name, spec, split):
    samples = [s for s in split.samples if s.width]  # images that could be read
    per_class = Counter(c for s in samples for c in s.classes)
    sizes = Counter((s.width, s.height) for s in samples).most_common()
    shown = ", ".join(f"{w}x{h} ({count})" for (w, h), count in sizes[:SHOWN_SIZES])
    more = f" and {len(sizes) - SHOWN_SIZES} other sizes" if len(sizes) > SHOWN_SIZES else ""
    background = sum(not s.boxes for s in samples)
    ignored = sum(sum(s.ignored) for s in samples)
    shaped = sum(shape is not None for s in samples for shape in s.shapes)
    return [f"{name}: {spec.ann_files}",
            f"  {len(split.samples)} images ({background} without boxes), {sum(per_class.values())} boxes, "
            f"{ignored} of them crowd or difficult regions (not trained on, ignored when scoring)",
            *([f"  {shaped} boxes with masks (instance segmentation needs one on every box that is not a crowd "
               f"region)"] if shaped else []),
            *([f"  info: {len(split.unlabelled)} image(s) without an annotation file of their own, read as background "
               f"(no objects)"] if split.unlabelled else []),
            "  boxes per class: " + (", ".join(f"{c} {per_class[c]}" for c in split.class_order) or "none"),
            f"  image sizes: {shown or 'none readable'}{more}"]

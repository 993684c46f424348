"""Text tables and PNG plots that stages show the user."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from otxlite.core.files import write_atomic  # noqa: E402


def format_table(header, rows, footer=()):
    """An OTX-style boxed text table; footer rows (like mAP) come after a rule."""
    rows, footer = [[str(v) for v in r] for r in rows], [[str(v) for v in r] for r in footer]
    widths = [max(len(r[i]) for r in [list(header), *rows, *footer]) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(row):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |"

    parts = [rule, line(header), rule, *map(line, rows), rule]
    if footer:
        parts += [*map(line, footer), rule]
    return "\n".join(parts)


def save_figure(fig, path):
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def plot_history(history, path):
    """Training loss terms and validation mAP per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (loss_axis, map_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name in [k for k in history[-1] if k.startswith("loss")]:
        loss_axis.plot(epochs, [row[name] for row in history], marker=".", label=name)
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="Loss")
    loss_axis.legend(fontsize="small")
    for name, label in (("val_map_50", "mAP@0.5"), ("val_map_50_95", "mAP@[.5:.95]")):
        map_axis.plot(epochs, [row[name] for row in history], marker=".", label=label)
    map_axis.set(xlabel="epoch", ylabel="validation", title="Validation mAP", ylim=(0, 1))
    map_axis.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


def plot_f1(thresholds, f1, chosen, path):
    """Micro F1 against confidence threshold, the chosen threshold marked."""
    fig, axis = plt.subplots(figsize=(6, 4))
    axis.plot(thresholds, f1, marker=".")
    axis.axvline(chosen, color="tab:red", linestyle="--", label=f"threshold {chosen:g}")
    axis.set(xlabel="confidence threshold", ylabel="F1 (IoU 0.5)", title="F1 against confidence", ylim=(0, 1))
    axis.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_precision_recall(curves, path):
    """One precision-recall curve per class: curves maps name -> (recall, precision, ap, color)."""
    fig, axis = plt.subplots(figsize=(6, 5))
    for name, (recall, precision, ap, color) in curves.items():
        axis.plot(recall, precision, color=color, label=f"{name} (AP {ap:.3f})")
    axis.set(xlabel="recall", ylabel="precision", title="Precision-recall at IoU 0.5", xlim=(0, 1), ylim=(0, 1.02))
    axis.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)

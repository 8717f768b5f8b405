"""PNG figures next to the numbers (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss (left) and error % (right) per epoch for train and every evaluated split, as the paper's Fig. 6."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for split, style in (("train", "-"), ("val", "-."), ("test", "--")):
        if f"{split}_loss" in history[-1]:
            ax_loss.plot(epochs, [h.get(f"{split}_loss") for h in history], style, label=split)
            ax_err.plot(epochs, [100 * (1 - h[f"{split}_top1"]) for h in history], style, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="top-1 error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_detection_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """A detection run per epoch: the summed training loss (left), validation mAP and mAP@0.5 (right)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "-", label="train")
    for key, style in (("val_map", "-"), ("val_map_50", "--")):
        if key in history[-1]:
            ax_map.plot(epochs, [100 * h[key] for h in history], style, label=key.replace("val_", "val "))
    ax_loss.set(xlabel="epoch", ylabel="summed detector loss", title="loss")
    ax_map.set(xlabel="epoch", ylabel="mAP (%)", title="validation mAP (COCO protocol)")
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def _as_hwc(image: Any) -> Any:
    """uint8 (C, H, W) tensor -> (H, W, 3) or (H, W) array for imshow."""
    array = image.detach().cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def plot_cam_overlays(image: Any, maps: dict[str, Any], title: str, path: str | Path) -> Path:
    """The image, then each heat map (H, W) in [0, 1] drawn over it (jet, half transparent), titled by method."""
    plt = _pyplot()
    panels = 1 + len(maps)
    fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels, 3.0), constrained_layout=True, squeeze=False)
    shown = _as_hwc(image)
    grey = dict(cmap="gray") if shown.ndim == 2 else {}
    axes[0, 0].imshow(shown, interpolation="bilinear", **grey)
    axes[0, 0].set_title("image", fontsize=9)
    for ax, (method, heat) in zip(axes[0, 1:], maps.items(), strict=True):
        ax.imshow(shown, interpolation="bilinear", **grey)
        ax.imshow(heat.detach().cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title({"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}.get(method, method), fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_confusion(confusion: Any, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row) with the counts written in the cells."""
    plt = _pyplot()
    counts = confusion.detach().cpu().double()
    rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    size = min(max(4.0, 0.5 * len(classes) + 2), 14.0)
    fig, ax = plt.subplots(figsize=(size + 1, size), constrained_layout=True)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    if len(classes) <= 50:  # beyond that, names would overlap: the report's table names the classes
        ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, classes, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class", title=title or "confusion matrix (row-normalised)")
    if len(classes) <= 20:
        for i in ticks:
            for j in ticks:
                colour = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    return _save(fig, path)


def plot_reliability(curves: dict[str, Any], path: str | Path) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin for each `metrics.Reliability` (label ->
    bins), with the diagonal of perfect calibration and each curve's ECE in the legend; bin counts below."""
    plt = _pyplot()
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    first = next(iter(curves.values()))
    centres = ((first.edges[1:] + first.edges[:-1]) / 2).numpy()
    width = float(first.edges[1] - first.edges[0])
    for offset, (label, rel) in enumerate(curves.items()):
        filled = rel.counts > 0
        ax.plot(
            rel.confidence[filled].numpy(),
            rel.accuracy[filled].numpy(),
            "o-",
            label=f"{label} (ECE {100 * rel.ece:.2f}%)",
        )
        shift = (offset - (len(curves) - 1) / 2) * width / len(curves)
        ax_n.bar(centres + shift, rel.counts.numpy(), width=width / len(curves), label=label)
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax_n.set(xlabel="confidence (top-class probability)", ylabel="images")
    ax_n.set_yscale("log")
    return _save(fig, path)


def plot_image_grid(images: Any, captions: Sequence[str], path: str | Path, columns: int = 8) -> Path:
    """uint8 images (N, C, H, W) in a grid, each with a short caption (e.g. "cat 98% (true dog)")."""
    plt = _pyplot()
    n = max(len(captions), 1)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), constrained_layout=True, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        shown = _as_hwc(image)
        ax.imshow(shown, interpolation="bilinear", **(dict(cmap="gray") if shown.ndim == 2 else {}))
        ax.set_title(caption, fontsize=7)
    return _save(fig, path)


def plot_gradient_flow(snapshots: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One column per training step; rows: the gradient norm of every weight layer from input to output, the
    same relative to the layer's weight norm (the size of an SGD step; with BatchNorm a layer's scale is arbitrary,
    this ratio is not), and the standard deviation of every unit's output. One line per model, plain dashed.

    Each snapshot: {"model", "plain", "step", "grad_norms", "weight_norms", "act_std"}."""
    plt = _pyplot()
    steps = sorted({s["step"] for s in snapshots})
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(s["model"] for s in snapshots))}
    fig, axes = plt.subplots(
        3, len(steps), figsize=(4.2 * len(steps), 9.5), constrained_layout=True, squeeze=False, sharey="row"
    )
    for col, step in enumerate(steps):
        for s in (s for s in snapshots if s["step"] == step):
            style = dict(color=colours[s["model"]], linestyle="--" if s["plain"] else "-", linewidth=1.2)
            layers = range(1, len(s["grad_norms"]) + 1)
            pairs = zip(s["grad_norms"], s["weight_norms"], strict=True)
            relative = [g / w if w > 0 else float("nan") for g, w in pairs]
            axes[0, col].plot(layers, s["grad_norms"], label=s["model"], **style)
            axes[1, col].plot(layers, relative, label=s["model"], **style)
            axes[2, col].plot(range(1, len(s["act_std"]) + 1), s["act_std"], label=s["model"], **style)
        when = "at initialisation" if step == 0 else f"after {step} steps"
        for row, what in enumerate(("gradient norms", "relative gradient norms", "activations")):
            axes[row, col].set(title=f"{what} {when}", yscale="log")
        axes[1, col].set(xlabel="weight layer (input → output)")
        axes[2, col].set(xlabel="unit (stem, blocks; input → output)")
    for row, label in enumerate(("‖∂loss/∂W‖₂", "‖∂loss/∂W‖₂ / ‖W‖₂", "std of the unit's output")):
        axes[row, 0].set_ylabel(label)
    for ax in axes.flat:
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    return _save(fig, path)


def plot_degradation(curves: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """The paper's Figure 6: plain networks (left) and residual networks (right), training error dashed and
    test error solid, per epoch, one colour per depth.

    Each curve: {"model", "plain", "depth", "epochs", "train_error", "test_error"} (errors in %)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True, sharey=True)
    depths = sorted({c["depth"] for c in curves})
    for ax, plain in zip(axes, (True, False), strict=True):
        for c in sorted((c for c in curves if c["plain"] == plain), key=lambda c: c["depth"]):
            colour = f"C{depths.index(c['depth'])}"
            ax.plot(c["epochs"], c["train_error"], "--", color=colour, linewidth=1.2, label=f"{c['model']} train")
            ax.plot(c["epochs"], c["test_error"], "-", color=colour, linewidth=1.8, label=f"{c['model']} test")
        ax.set(xlabel="epoch", title="plain networks" if plain else "residual networks")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_similarity_histogram(nearest: dict[str, Any], threshold: float, path: str | Path) -> Path:
    """Histograms of each image's highest cosine similarity to another image, one per comparison (train, test,
    test vs train), log-scaled counts, with the duplicate threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6), constrained_layout=True)
    labels = {"train": "within train", "test": "within held-out", "test_train": "held-out vs train"}
    for name, values in nearest.items():
        ax.hist(values, bins=100, range=(-0.2, 1.0), histtype="step", label=labels.get(name, name), linewidth=1.4)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("highest cosine similarity (centred, flip-invariant embedding)")
    ax.set_ylabel("images")
    ax.legend(loc="upper left")
    return _save(fig, path)

"""Write dataset images to PNG files (examples for `resnetkit predict`)."""

from __future__ import annotations

from pathlib import Path

from resnetkit.data.datasets import ImageTensorDataset


def write_example_images(ds: ImageTensorDataset, folder: str | Path, per_class: int = 1) -> Path:
    """The first `per_class` images of each class as NNN-CLASS.png files in `folder`."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for c, name in enumerate(ds.classes):
        for i in (ds.labels == c).nonzero().flatten()[:per_class].tolist():
            array = ds.images[i].permute(1, 2, 0).numpy()
            Image.fromarray(array).save(folder / f"{written:03d}-{name}.png")
            written += 1
    return folder

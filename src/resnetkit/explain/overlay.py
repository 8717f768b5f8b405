"""A Grad-CAM heat map blended over its image as one RGB picture (what the service's /v1/explain answers), drawn
as `resnetkit explain`'s figures draw it: jet colours, half transparent, both upscaled bilinearly."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def overlay_image(image: torch.Tensor, heat: torch.Tensor, *, min_side: int = 256, alpha: float = 0.5) -> Image.Image:
    """uint8 image (3, H, W) and heat map (H, W) in [0, 1] -> an RGB PIL image at least `min_side` pixels a side."""
    from matplotlib import colormaps

    h, w = image.shape[-2:]
    scale = max(1, -(-min_side // min(h, w)))
    size = (w * scale, h * scale)
    base = Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).resize(size, Image.Resampling.BILINEAR)
    grey = Image.fromarray((heat.detach().clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
    coloured = colormaps["jet"](np.asarray(grey.resize(size, Image.Resampling.BILINEAR)) / 255.0)[..., :3]
    blended = (1 - alpha) * np.asarray(base, dtype=np.float32) + alpha * 255.0 * coloured
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


def png_bytes(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()

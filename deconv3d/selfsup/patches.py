"""Training batches for the self-supervised network: random fields of the image around a compared
data region, their blind-spot masks and xy rotations/flips (Papkov, Palo & Parts 2023).

The fields of one batch are drawn independently and may overlap. Within a field the masked pass
never sees a masked voxel's value, but in training mode batch normalisation pools its statistics
over the batch, so a voxel masked in one field and visible in an overlapping one reaches its own
prediction through them, slightly (a review measured a gradient of 2e-3 of the largest with a
batch of 4, and exactly 0 with a batch of 1 or in evaluation mode). Noise2Same-style networks
with batch normalisation share this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from deconv3d._fft_shapes import pad_spatial
from deconv3d.selfsup.config import TrainConfig
from deconv3d.selfsup.forward_model import FieldGeometry
from deconv3d.selfsup.masking import apply_mask, stratified_mask


@dataclass
class _Batch:
    """One training batch: fields, the data region, the mask and the augmentation."""

    fields: torch.Tensor  # (B, 1, *field) standardised image
    masked: torch.Tensor  # the same with masked voxels replaced by noise
    mask: torch.Tensor  # (B, 1, *field) bool
    data: torch.Tensor  # (B, 1, *data) the compared region of `fields`
    rotations: list[int]
    flips: list[bool]
    target: Optional[torch.Tensor] = None  # (B, 1, *data) the warm-start target on the compared region
    target_field: Optional[torch.Tensor] = None  # (B, 1, *field) the same target on the whole field

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample flip of x then rot90 in the (y, x) plane."""
        if not any(self.rotations) and not any(self.flips):
            return x
        out = [torch.rot90(xi.flip(-1) if fl else xi, k, (-2, -1)) for xi, k, fl in zip(x, self.rotations, self.flips)]
        return torch.stack(out)

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`augment`: the output back in the data's frame."""
        if not any(self.rotations) and not any(self.flips):
            return y
        out = []
        for yi, k, fl in zip(y, self.rotations, self.flips):
            yi = torch.rot90(yi, -k, (-2, -1))
            out.append(yi.flip(-1) if fl else yi)
        return torch.stack(out)


class _PatchSampler:
    """Draws batches of fields from the reflect-padded, standardised image.

    Patch positions and augmentations come from a CPU generator seeded with ``seed``;
    masks and mask noise from a generator on the device seeded with ``seed + 1``.
    """

    def __init__(self, image: np.ndarray, geometry: FieldGeometry, config: TrainConfig, device: torch.device):
        self.geometry, self.config, self.device = geometry, config, device
        self.shape = image.shape
        self.padded = self._pad(image)
        # The image voxel each padded position copies, per axis (the padding is separable): a
        # masked voxel's mirror copies elsewhere in a field are masked too (_mask_copies).
        self.sources = [pad_spatial(torch.arange(n, dtype=torch.float64, device=device), [b], [a], "reflect").long()
                        for n, b, a in zip(self.shape, geometry.before, geometry.after)]
        self.target: Optional[torch.Tensor] = None
        self.positions = torch.Generator().manual_seed(int(config.seed))
        self.noise = torch.Generator(device=device).manual_seed(int(config.seed) + 1)
        fs = geometry.field_shape
        self.rotation_choices = 4 if fs[-1] == fs[-2] else 2  # non-square planes: 0 or 180 degrees

    def _pad(self, image: np.ndarray, margin: tuple[Sequence[int], Sequence[int]] | None = None) -> torch.Tensor:
        """Reflect-pad ``image`` to the fields' frame; it may already extend ``margin`` (before, after) beyond the image."""
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        g = self.geometry
        before, after = margin if margin is not None else ((0,) * len(self.shape),) * 2
        if tuple(tensor.shape) != tuple(b + n + a for b, n, a in zip(before, self.shape, after)):
            raise ValueError(f"target shape {tuple(tensor.shape)} is not the image {self.shape} plus {before}, {after}")
        return pad_spatial(tensor, [p - m for p, m in zip(g.before, before)], [p - m for p, m in zip(g.after, after)],
                           "reflect")

    def set_target(self, target: Optional[np.ndarray], margin: tuple[Sequence[int], Sequence[int]] | None = None
                   ) -> None:
        """A standardised target cut at the same positions as the fields (warm start, residual base).

        ``target`` has the image's shape, or extends ``margin = (before, after)`` voxels beyond
        it per axis (Bertero RL's extended estimate): the fields' halo then holds the estimated
        object outside the image instead of a mirror image of the inside.
        """
        self.target = None if target is None else self._pad(target, margin)

    def _mask_copies(self, mask: torch.Tensor, starts) -> torch.Tensor:
        """``mask`` widened to every field position that copies a masked voxel.

        Near the image border the reflect padding puts a voxel into a field more than once;
        masking one copy and leaving its mirror image in view would let the masked pass see the
        value it must predict (on a stack a little thicker than the PSF, most masked voxels).
        The widened mask only replaces the input; the loss still counts ``mask``.
        """
        out = mask.clone()
        g = self.geometry
        for b, start in enumerate(starts):
            if all(s >= p and s + f <= p + n for s, f, p, n in zip(start, g.field_shape, g.before, self.shape)):
                continue  # the field lies inside the image: every voxel appears once
            ids, size = torch.zeros((), dtype=torch.long, device=mask.device), 1
            for axis, (s, f) in enumerate(zip(start, self.geometry.field_shape)):
                view = [1] * len(self.shape)
                view[axis] = f
                source = self.sources[axis][s:s + f]
                low, extent = int(source.min()), int(source.max() - source.min()) + 1
                ids, size = ids * extent + (source - low).view(view), size * extent  # the source voxel, in its box
            ids = ids.expand(self.geometry.field_shape)
            hit = torch.zeros(size, dtype=torch.bool, device=mask.device)  # (a table: torch.isin took 10 ms a step)
            hit[ids[mask[b, 0]]] = True
            out[b, 0] |= hit[ids]
        return out

    def sample(self, batch: int) -> _Batch:
        g, cfg = self.geometry, self.config
        highs = [n - d + 1 for n, d in zip(self.shape, g.data_shape)]
        starts = torch.stack([torch.randint(0, h, (batch,), generator=self.positions) for h in highs], 1).tolist()
        boxes = [tuple(slice(s, s + f) for s, f in zip(st, g.field_shape)) for st in starts]
        fields = torch.stack([self.padded[box] for box in boxes]).unsqueeze(1)
        mask = stratified_mask(g.field_shape, cfg.mask_percent, self.noise, self.device, batch=batch)
        masked = apply_mask(fields, self._mask_copies(mask, starts), cfg.mask_noise_std, self.noise)
        rotations, flips = [0] * batch, [False] * batch
        if cfg.augment:
            step = 4 // self.rotation_choices
            rotations = (torch.randint(0, self.rotation_choices, (batch,), generator=self.positions) * step).tolist()
            flips = torch.randint(0, 2, (batch,), generator=self.positions).bool().tolist()
        data = fields[(Ellipsis,) + g.region]
        target_field = target = None
        if self.target is not None:
            target_field = torch.stack([self.target[box] for box in boxes]).unsqueeze(1)
            target = target_field[(Ellipsis,) + g.region]
        return _Batch(fields, masked, mask, data, rotations, flips, target, target_field)

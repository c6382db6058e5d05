"""What the blocks of :func:`~deconv3d.pipeline.chunked.run_blocks` report of their cores: a run's
:class:`BlockFigures` gathers, on the caller's side, what each block's task measures as its
:class:`FigureRequest` asks (the request alone travels with a cluster's tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FigureRequest", "BlockFigures"]


@dataclass(frozen=True)
class FigureRequest:
    """What each block measures of its core (sent with a cluster's tasks): its top values where ``top``, its
    voxels at or above ``level`` where one is given, and, where ``faces`` is ``(level, reach)``, its voxels at
    or above that level within ``reach`` of the volume's faces."""

    top: bool = False
    level: float | None = None
    faces: tuple | None = None

    def measure(self, core, at: tuple | None = None) -> tuple:
        """What a block reports of its ``core`` (its values as read, before the float32 the method gets):
        ``(top, count, near)``, the :func:`~deconv3d._saturation.top_two` of its values where ``top`` (else
        None), its voxels at or above ``level`` where one is given (else None), and, where ``faces`` is given,
        those of them near the volume's faces (:func:`~deconv3d._saturation.face_reach`), the core lying at
        ``at``: ``(start, volume shape)`` (else None). Each a plane at a time
        (:func:`~deconv3d._saturation.top_two_by_planes`, :func:`~deconv3d._saturation.count_at_or_above`,
        :func:`~deconv3d._saturation.count_near_faces`, which counts both at a level of both): their masks
        add little to a block's memory."""
        from deconv3d._saturation import count_at_or_above, count_near_faces, top_two_by_planes

        core = np.asarray(core)
        count = near = None
        if self.faces is not None:
            flagged, near = count_near_faces(core, self.faces[0], self.faces[1], *at)
            count = flagged if self.level == self.faces[0] else None
        if self.level is not None and count is None:
            count = count_at_or_above(core, self.level)
        return top_two_by_planes(core) if self.top else None, count, near


@dataclass
class BlockFigures:
    """What a run's blocks report of their cores, gathered on the caller's side: each block's
    :func:`~deconv3d._saturation.top_two` in ``tops``, its voxels at or above ``level`` in ``counts`` and,
    ``faces`` being ``(level, reach)``, those of them within ``reach`` of the volume's faces (not its own:
    :func:`~deconv3d._saturation.count_near_faces`) in ``nears``; each where its list is given (None:
    not gathered), for the caller to merge or sum over the volume."""

    tops: list | None = None
    counts: list | None = None
    nears: list | None = None
    level: float | None = None
    faces: tuple | None = None

    def request(self) -> FigureRequest | None:
        """What the blocks are to measure (:class:`FigureRequest`), or None where nothing is asked."""
        level = self.level if self.counts is not None else None
        faces = self.faces if self.nears is not None else None
        if self.tops is None and level is None and faces is None:
            return None
        return FigureRequest(self.tops is not None, level, faces)

    def gathers(self) -> bool:
        """Whether any of the lists is given (what is measured may still be nothing: :meth:`request`)."""
        return self.tops is not None or self.counts is not None or self.nears is not None

    def measure(self, core, at: tuple) -> tuple | None:
        """What :meth:`request` asks of ``core``, lying at ``at`` (:meth:`FigureRequest.measure`), measured here;
        None where nothing is asked."""
        request = self.request()
        return None if request is None else request.measure(core, at)

    def add(self, found) -> None:
        """Add a block's figures (:meth:`FigureRequest.measure`'s; None: it reported none) to the lists given."""
        if found is None:
            return
        for figures, figure in zip((self.tops, self.counts, self.nears), found):
            if figures is not None and figure is not None:
                figures.append(figure)

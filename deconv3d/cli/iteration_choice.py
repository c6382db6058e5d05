"""``--iterations auto``: RL's count chosen by held-out prediction (:func:`deconv3d.classical.choose_iterations`),
printed and recorded; for an in-memory run, and per channel on a crop for a chunked run and a batch."""

from __future__ import annotations

from deconv3d._auto_cap import AUTO_MAX_ITERATIONS

from .printing import progress


def _choose_iterations(image, psf, params: dict, voxel, device, clipped=None, where: str = "",
                       note: str = "") -> dict:
    """``--iterations auto``: the held-out-prediction count, for plain RL (acceleration off), with the voxels
    ``--saturation`` flags (``clipped``; None: every voxel fitted as measured and predicted). A chunked run
    chooses one per channel, on a crop: ``where`` names the channel (``channel 1 (RFP)``) and ``note`` says
    where the crop lies (``, on a centred 32 x 256 x 256 crop``), in the line printed and the record."""
    from deconv3d.classical import choose_iterations

    # The cap named, not the bar's total: the search stops by patience long before it, mostly, and a time left
    # counted to 400 overstated the wait several-fold (as train's RL reference search does, cli/selfsup.py).
    bar, callback = progress(None, f"choosing iterations (at most {AUTO_MAX_ITERATIONS})")
    with bar:
        choice = choose_iterations(image, psf, AUTO_MAX_ITERATIONS, boundary=params["boundary"],
                                   tv_weight=params["tv_weight"], voxel_size=voxel, device=device, callback=callback,
                                   clipped=clipped)
    # (a level above the image's maximum flags no voxel, and none is said fitted as clipped)
    clipped_note = "" if clipped is None or not clipped.any() else ", the saturated voxels fitted as clipped"
    chose = f"chose {choice.iterations} iterations" + (f" for {where}" if where else "")
    at_cap = choice.stopped == "max_iterations" and choice.iterations == AUTO_MAX_ITERATIONS
    if at_cap:
        print(f"{chose}, the most --iterations auto tries{clipped_note}{note}: the held-out error "
              "was still falling, but it is nearly flat there and on noisy data may keep falling past the best "
              "restoration: compare a few --iterations N before going further")
    else:
        print(f"{chose} (held-out prediction error lowest there, {len(choice.risk)} tried{clipped_note}{note})")
    capped = f", stopped at the cap of {AUTO_MAX_ITERATIONS} with the error still falling" if at_cap else ""
    return {"iterations": choice.iterations, "accelerate": False,
            "iterations_chosen_by": f"held-out prediction ({choice.holdout:.0%} of voxels{clipped_note}{note}{capped})"}

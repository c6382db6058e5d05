"""Preloaded by the local worker processes that ``--scheduler processes`` starts
(:func:`deconv3d.pipeline.cluster.scheduler_client`): they leave Ctrl-C to the run.

A terminal's Ctrl-C reaches the whole process group, so each worker got it too and printed
a KeyboardInterrupt traceback and its nanny's complaints (67 lines with 2 workers) before the
run's own line. The run, which keeps its handler, stops the workers as it closes the cluster.
"""

import signal


def dask_setup(worker) -> None:  # noqa: ARG001 - distributed's preload hook
    signal.signal(signal.SIGINT, signal.SIG_IGN)

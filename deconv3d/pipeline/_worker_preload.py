"""Preloaded by the local worker processes that ``--scheduler processes`` starts
(:func:`deconv3d.pipeline.cluster.scheduler_client`): they leave Ctrl-C to the run.

A terminal's Ctrl-C reaches the whole process group, so each worker got it too and printed
a KeyboardInterrupt traceback and its nanny's complaints (67 lines with 2 workers) before the
run's own line. The run, which keeps its handler, stops the workers as it closes the cluster.
A worker logs nothing once it closes: closed while it ran a block (the run stopped by Ctrl-C or
SIGTERM), it logged WARNINGs (the block's task "ended with CancelledError", a "dangling stream")
around the run's own line; closed as the run ends, it has nothing to say.
"""

import functools
import logging
import signal


def dask_setup(worker) -> None:  # distributed's preload hook
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (a Ctrl-C that waited, blocked, since the worker began is dropped)
    if hasattr(signal, "pthread_sigmask"):  # born with SIGINT blocked (cluster._out_of_ctrl_c_reach): ignored now,
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # the mask is given back as it usually is
    close = worker.close

    @functools.wraps(close)
    async def closing_quietly(*args, **kwargs):
        logging.disable(logging.CRITICAL)  # (this process ends with its worker)
        return await close(*args, **kwargs)

    worker.close = closing_quietly

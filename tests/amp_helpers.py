"""A stand-in for ``deconv3d._torch_common.autocast`` whose n-th mixed-precision pass is not finite."""

import contextlib

import torch


def autocast_failing_at(n: int, real, calls: list):
    """``real`` autocast, except that during its ``n``-th reduced-precision use every module's
    output is infinite (what a float16 overflow gives); each such use appends to ``calls``.
    A float32 context (dtype None) is left alone."""

    @contextlib.contextmanager
    def autocast(dtype, device):
        if dtype is None:
            yield
            return
        calls.append(1)
        handle = None
        if len(calls) == n:
            handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, out: out + float("inf"))
        try:
            with real(dtype, device):
                yield
        finally:
            if handle is not None:
                handle.remove()

    return autocast

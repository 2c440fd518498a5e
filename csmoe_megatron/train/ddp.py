"""megatron DDP around the model chunks, and the hooks its overlap options need (as
Megatron-LM's training loop sets them).

* parallel.overlap_grad_reduce: gradient buckets are reduced while backward still runs; the
  pipeline schedules start each chunk's reduction (grad_sync_func) and finalize_model_grads
  waits for it.
* parallel.overlap_param_gather (distributed optimizer): after optimizer.step() the updated
  shards are all-gathered lazily, in forward pre-hooks of the next step, so the parameters are
  stale until then. Evaluation and checkpoints therefore run inside `params_gathered`, which
  gathers them now and turns the pre-hooks back on afterwards.
"""

from __future__ import annotations

import contextlib

from megatron.core.distributed import DistributedDataParallel, finalize_model_grads

from ..config.megatron import ddp_config


def wrap(cfg, tconfig, chunks) -> list[DistributedDataParallel]:
    """DDP per chunk, and the schedule hooks of the config's overlap options."""
    chunks = [DistributedDataParallel(config=tconfig, ddp_config=ddp_config(cfg), module=chunk,
                                      disable_bucketing=(i > 0))
              for i, chunk in enumerate(chunks)]

    def per_chunk(fns):
        return fns if len(fns) > 1 else fns[0]

    tconfig.no_sync_func = per_chunk([c.no_sync for c in chunks])
    if cfg.parallel.overlap_grad_reduce:
        tconfig.grad_sync_func = per_chunk([c.start_grad_sync for c in chunks])
    tconfig.finalize_model_grads_func = finalize_model_grads
    return chunks


@contextlib.contextmanager
def params_gathered(chunks):
    """Every parameter up to date for the duration (evaluation, checkpoint save)."""
    hooked = [c for c in chunks if getattr(c, "use_forward_hook", False)]
    for chunk in hooked:
        chunk.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        for chunk in hooked:
            chunk.enable_forward_pre_hook()

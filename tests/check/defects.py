"""Defects put back on purpose, one per function: `csmoe-check cuda --setup
tests.check.defects:NAME` runs it in every emulated rank before training, and the check must
fail naming the problem. The first four are the ones the check found on main (issue 9)."""

from __future__ import annotations

import torch


def loss_tracker_on_cpu():
    """moe/layer.py created its loss-tracker zeros on the router weight's device: the CPU at
    build time, before the model is moved."""
    from megatron.core.transformer.moe.moe_utils import save_to_aux_losses_tracker

    from csmoe_megatron.moe import layer

    def register(self):
        zero = torch.zeros((), device=self.router.weight.device)
        layers = self._tracker_layers()
        for name in layer.LOSS_NAMES:
            save_to_aux_losses_tracker(name, zero, self.layer_number, layers,
                                       reduce_group=self.moe_pg_collection.tp_cp)
        if self.router.get_aux_loss_coeff("aux_loss") != 0:
            save_to_aux_losses_tracker("load_balancing_loss", zero, self.layer_number, layers,
                                       reduce_group=self.router.tp_cp_group)

    layer.CompeteSMoELayer._register_loss_trackers = register


def metrics_reduce_a_cpu_tensor():
    """moe/metrics.py all-reduced a CPU int64 tensor (the table's dimensions) every step."""
    import torch.distributed as dist

    from csmoe_megatron.train import moe_logging

    pop = moe_logging.MoEMetricsLogger.pop

    def pop_with_dims(self, step):
        dims = torch.tensor([len(self.moe_layers), self.num_experts], dtype=torch.int64)
        dist.all_reduce(dims, op=dist.ReduceOp.MAX)
        return pop(self, step)

    moe_logging.MoEMetricsLogger.pop = pop_with_dims


def model_left_on_cpu():
    """Nothing moved the model to the GPU: modules megatron does not create there stay."""
    from csmoe_megatron.model import build

    build.torch.nn.Module.cuda = lambda self, device=None: self


def megatron_fix_only_on_cpu():
    """megatron's te_general_gemm fix was installed only by the CPU compatibility layer."""
    from csmoe_megatron.compat import megatron_fixes

    megatron_fixes.install = lambda: None


def cpu_all_reduce_in_moe_forward():
    """A CPU tensor enters an all-reduce from inside an MoE layer's forward."""
    import torch.distributed as dist

    from csmoe_megatron.moe.layer import CompeteSMoELayer

    forward = CompeteSMoELayer.forward

    def forward_with_cpu_reduce(self, hidden_states, *args, **kwargs):
        dist.all_reduce(torch.ones(1))
        return forward(self, hidden_states, *args, **kwargs)

    CompeteSMoELayer.forward = forward_with_cpu_reduce


def cpu_tensor_added_to_linear_output():
    """A CPU tensor is added to a linear layer's output."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear

    forward = ColumnParallelLinear.forward

    def forward_plus_cpu(self, *args, **kwargs):
        out, bias = forward(self, *args, **kwargs)
        return out + torch.zeros(out.shape[-1], dtype=out.dtype), bias

    ColumnParallelLinear.forward = forward_plus_cpu

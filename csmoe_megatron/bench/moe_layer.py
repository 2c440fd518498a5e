"""Benchmark of one CompeteSMoE layer (`csmoe-bench moe-layer`).

(a) router-step time of CompeteSMoELayer vs megatron-core's own MoELayer, same config and
    weights (forward + backward, min of --iters after --warmup; all timed steps run
    round-robin, one of each kind per round, so load changes on a shared machine hit each alike);
(b) competition-step vs router-step time, against the E/K expert-compute cost model;
(c) all-to-all volume per token in the forward (hidden-size rows through megatron's
    all_to_all, dispatch + combine, counted by wrapping the all_to_all of the dispatcher and of
    winners_combine; with EP=1 megatron skips the collective, the count is what would cross
    ranks at EP=E) vs the theoretical minimum (spec §6), in elements and in bytes;
(d) activation memory of each step: bytes of the unique tensors saved for backward
    (torch.autograd.graph.saved_tensors_hooks), which is what a step holds at its peak
    between forward and backward; exact and device-independent, unlike RSS on CPU.
(e) model FLOPs of one forward + backward (`flops_router_step`, `flops_competition_step`:
    router GEMM + SwiGLU experts, K a token on router steps, all E on competition steps, which
    run every expert with gradient), as TFLOP/s per rank of the measured step times
    (`router_tflops`, `competition_tflops`) and as MFU against the GPU's dense bf16 peak
    (`router_mfu`, `competition_mfu`; null without a known peak, e.g. on CPU).
(f) winners-only competition (the default, `gradient: winners`): all-to-all rows a token forward
    plus backward (`competition_a2a_rows_per_token_fwd_bwd`, `router_a2a_rows_per_token_fwd_bwd`;
    the backward counts the gradients of megatron's all_to_all outputs and the explicit
    all_to_all calls of winners_only_alltoall's backward) against its bound EP + E/H + 3K
    (`competition_a2a_bound_fwd_bwd`), step time against (M+3K)/(3K) (`cost_model_competition`,
    M = E or --candidates M), and `competition_saved_bytes_over_router`.
Competition steps are measured with both combines: "winners" (the default: affinities, then
only the K winners' outputs come back) and "full" (all E outputs come back).
--dtype bf16 builds the layers in bf16 (inputs too; the router stays fp32); JSON "dtype".
With CUDA the layers and tensors live on GPU LOCAL_RANK over NCCL and every timer waits for the
GPU (torch.cuda.synchronize); without it, CPU and gloo through the compat layer.
Single process (EP=1) by default, on a free local port; under torchrun it uses
parallel.expert = world size.
Prints a table, then one JSON object as the last line (--json: the JSON line only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _parse(argv):
    p = argparse.ArgumentParser(prog="csmoe-bench moe-layer", description=__doc__.split("\n")[0])
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--ffn", type=int, default=256)
    p.add_argument("--tokens", type=int, default=512, help="tokens per rank (seq x batch)")
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dispatcher", default="alltoall", choices=["alltoall", "allgather"])
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES),
                   help="parameters and activations (bf16: megatron's bf16=True)")
    p.add_argument("--candidates", type=int, default=0,
                   help="competesmoe.candidates M for the competition step (0: all E)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    return p.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_parallel(expert: int):
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from .. import compat

    compat.install()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:  # not torchrun: a fixed port would clash between runs
            os.environ["MASTER_PORT"] = str(_free_port())
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(expert_model_parallel_size=expert)
    torch.manual_seed(0)
    model_parallel_cuda_manual_seed(0, force_reset_rng=True)


def _config(args, expert: int):
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=1, hidden_size=args.hidden, num_attention_heads=4, ffn_hidden_size=args.ffn,
        moe_ffn_hidden_size=args.ffn, num_moe_experts=args.experts, moe_router_topk=args.top_k,
        expert_model_parallel_size=expert, add_bias_linear=False, gated_linear_unit=True,
        activation_func=F.silu, moe_router_load_balancing_type="aux_loss",
        moe_aux_loss_coeff=0.01, moe_token_dispatcher_type=args.dispatcher,
        moe_router_dtype="fp32", moe_permute_fusion=False, bias_activation_fusion=False,
        gradient_accumulation_fusion=False, bf16=args.dtype == "bf16",
        params_dtype=DTYPES[args.dtype], use_cpu_initialization=not torch.cuda.is_available())


def _layers(config, device):
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
    from megatron.core.transformer.spec_utils import build_module

    from ..moe.layer import CompeteSMoELayer

    spec = get_moe_module_spec(use_te=False, num_experts=config.num_moe_experts)
    native = build_module(spec, config=config)
    native.set_layer_number(1)
    spec.module = CompeteSMoELayer
    ours = build_module(spec, config=config)
    ours.set_layer_number(1)
    ours.load_state_dict(native.state_dict(), strict=False)
    return native.to(device).train(), ours.to(device).train()


class _A2ACounter:
    """Counts elements and bytes through all_to_all, wrapping the name each module imported:
    `elements`/`bytes` in the forward, `backward_elements` in the backward (the gradient of
    each autograd all_to_all output, and explicit calls while `backward` is set)."""

    def __init__(self):
        from megatron.core.transformer.moe import token_dispatcher

        from ..moe import winners_combine, winners_only_alltoall

        self.modules = (token_dispatcher, winners_combine, winners_only_alltoall)
        self.elements, self.bytes, self.backward_elements, self.backward = 0, 0, 0, False
        self.original = token_dispatcher.all_to_all

    def _count_grad(self, grad):
        self.backward_elements += grad.numel()

    def __enter__(self):
        def counting(group, tensor, *rest):
            if self.backward:
                self.backward_elements += tensor.numel()
                return self.original(group, tensor, *rest)
            self.elements += tensor.numel()
            self.bytes += tensor.numel() * tensor.element_size()
            out = self.original(group, tensor, *rest)
            if out.requires_grad:  # its backward sends the output's gradient back
                out.register_hook(self._count_grad)
            return out

        for module in self.modules:
            module.all_to_all = counting
        return self

    def __exit__(self, *exc):
        for module in self.modules:
            module.all_to_all = self.original


def _step(layer, x, upstream, counter=None):
    hidden = x.clone().requires_grad_(True)
    out, _ = layer(hidden)
    if counter is not None:
        counter.backward = True
    out.backward(upstream)


def _saved_bytes(layer, x, upstream) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = x.clone().requires_grad_(True)
        out, _ = layer(hidden)
    out.backward(upstream)
    return sum(seen.values())


def _sync() -> None:
    """GPU kernels run asynchronously: wait for them, or a timer measures only their launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_interleaved(cases: dict, x, upstream, args) -> dict:
    """{name: min step time} of several (layer, setup) cases, measured round-robin (one step of
    each per round), so a change of load on a shared machine hits every case alike and their
    ratios stay meaningful. setup() puts the layer in the case's mode before each step."""
    for layer, setup in cases.values():
        setup()
        for _ in range(args.warmup):
            _step(layer, x, upstream)
    times = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(args.iters):
        # Rotate the order each round: no case always follows the same (heavy) one.
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            layer, setup = cases[name]
            setup()
            _sync()
            start = time.perf_counter()
            _step(layer, x, upstream)
            _sync()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def step_flops(E: int, H: int, F: int, T: int, experts_per_token: int) -> int:
    """Model FLOPs of one forward + backward over T tokens: the router GEMM (H x E) and
    `experts_per_token` SwiGLU experts (3 matrices of H x F), 2 FLOPs a multiply-add; the
    backward (input and weight gradients) costs twice the forward."""
    forward = 2 * T * (H * E + experts_per_token * 3 * H * F)
    return 3 * forward


def _add_flops(result: dict, args) -> None:
    """FLOPs of both kinds of step, TFLOP/s per rank at the measured times, MFU if a peak is
    known. A competition step runs all E experts on every token, with gradient."""
    from ..train.flops import peak_tflops

    E, K, H, F, T = args.experts, args.top_k, args.hidden, args.ffn, args.tokens
    peak = peak_tflops()  # dense bf16 peak of this GPU; None on CPU or an unknown GPU
    result["peak_tflops"] = peak
    for kind, experts_per_token in (("router", K), ("competition", E)):
        flops = step_flops(E, H, F, T, experts_per_token)
        tflops = flops / result[f"{kind}_step_s"] / 1e12
        result[f"flops_{kind}_step"] = flops
        result[f"{kind}_tflops"] = tflops
        result[f"{kind}_mfu"] = tflops / peak if peak else None


def measure(args) -> dict:
    import torch.distributed as dist

    from ..moe import context, metrics

    world = int(os.environ.get("WORLD_SIZE", "1"))
    _init_parallel(world)
    config = _config(args, world)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cuda: LOCAL_RANK's, set above
    native, ours = _layers(config, device)
    gen = torch.Generator().manual_seed(dist.get_rank())
    dtype = DTYPES[args.dtype]
    x = torch.randn(args.tokens, 1, args.hidden, generator=gen).to(device, dtype)
    upstream = torch.randn(args.tokens, 1, args.hidden, generator=gen).to(device, dtype)
    E, K, H, T = args.experts, args.top_k, args.hidden, args.tokens
    result = {"experts": E, "top_k": K, "hidden": H, "ffn": args.ffn, "tokens_per_rank": T,
              "ep": world, "dispatcher": args.dispatcher, "dtype": args.dtype, "device": "cpu"
              if not torch.cuda.is_available() else torch.cuda.get_device_name()}

    def mode(compete, combine="winners", candidates=0, with_metrics=True):
        def setup():
            context.force_competition(compete)
            metrics.enabled = with_metrics
            ours.competesmoe = dataclasses.replace(ours.competesmoe, combine=combine,
                                                   candidates=candidates)
        return setup

    # "competition_*": the default winners combine; "competition_full_*": the full one, which
    # takes no candidates (it brings back every expert's output).
    try:
        result.update(_time_interleaved({
            "native_router_step_s": (native, mode(False)),
            "router_step_s": (ours, mode(False)),
            "router_step_no_metrics_s": (ours, mode(False, with_metrics=False)),
            "competition_step_s": (ours, mode(True, "winners", args.candidates)),
            "competition_full_step_s": (ours, mode(True, "full")),
        }, x, upstream, args))
    finally:
        context.force_competition(None)
        metrics.enabled = True
    mode(False)()
    with _A2ACounter() as count:
        _step(ours, x, upstream, count)
    result["router_a2a_rows_per_token"] = count.elements / H / T
    result["router_a2a_rows_per_token_fwd_bwd"] = (count.elements
                                                   + count.backward_elements) / H / T
    result["router_saved_bytes"] = _saved_bytes(ours, x, upstream)
    result["native_saved_bytes"] = _saved_bytes(native, x, upstream)
    try:
        for combine, prefix, candidates in (("winners", "competition", args.candidates),
                                            ("full", "competition_full", 0)):
            mode(True, combine, candidates)()
            with _A2ACounter() as count:
                _step(ours, x, upstream, count)
            result[f"{prefix}_a2a_rows_per_token"] = count.elements / H / T
            result[f"{prefix}_a2a_rows_per_token_fwd_bwd"] = (
                count.elements + count.backward_elements) / H / T
            # Bytes in units of one row (H values of the activation dtype): the keep mask is
            # one byte a (token, expert).
            row_bytes = H * x.element_size()
            result[f"{prefix}_a2a_row_bytes_per_token"] = count.bytes / row_bytes / T
            result[f"{prefix}_saved_bytes"] = _saved_bytes(ours, x, upstream)
    finally:
        context.force_competition(None)
    metrics.reset()
    result["router_overhead_vs_native"] = result["router_step_s"] / result["native_router_step_s"]
    result["competition_over_router"] = result["competition_step_s"] / result["router_step_s"]
    result["competition_full_over_router"] = (result["competition_full_step_s"]
                                              / result["router_step_s"])
    result["cost_model_E_over_K"] = E / K
    # Winners-only competition (spec §6): E (or M candidates) expert forwards without a graph,
    # then the K winners' forward and backward: (M + 3K) / (3K) of a router step.
    M = args.candidates or E
    result["candidates"] = M
    result["cost_model_competition"] = (M + 3 * K) / (3 * K)
    result["competition_saved_bytes_over_router"] = (result["competition_saved_bytes"]
                                                     / result["router_saved_bytes"])
    # Forward + backward rows a token: one copy to each EP rank, E affinities back, the K
    # winners' outputs back, their gradients out, the input gradients of the used copies.
    result["competition_a2a_bound_fwd_bwd"] = world + E / H + 3 * K
    _add_flops(result, args)
    # Minimum rows of H per token (dispatch + combine), spec §6: router K + K; competition:
    # every expert must see the token (E rows, or one per EP rank if replicated on arrival),
    # back only E scalars (E/H rows) and the K winners' outputs.
    result["router_a2a_min_rows_per_token"] = 2 * K
    result["competition_a2a_min_rows_per_token"] = E + E / H + K
    result["memory_method"] = "bytes of unique storages saved for backward (saved_tensors_hooks)"
    result["a2a_fwd_bwd_method"] = ("*_fwd_bwd: forward elements plus the gradients the "
                                    "backward sends through all_to_all, / hidden / tokens")
    result["a2a_method"] = ("forward elements (tokens, probs, affinities, keep mask) through "
                            "megatron's all_to_all / hidden / tokens (row_bytes: bytes / bytes "
                            "of one hidden row / tokens); the backward mirrors it; counted even "
                            "when EP=1 skips the collective")
    return result


def _table(r: dict) -> str:
    rows = [
        ("router step, megatron MoELayer", f"{r['native_router_step_s'] * 1e3:.1f} ms"),
        ("router step, CompeteSMoELayer", f"{r['router_step_s'] * 1e3:.1f} ms "
         f"(x{r['router_overhead_vs_native']:.2f}; no metrics "
         f"{r['router_step_no_metrics_s'] * 1e3:.1f} ms)"),
        ("competition step, winners / full", f"{r['competition_step_s'] * 1e3:.1f} / "
         f"{r['competition_full_step_s'] * 1e3:.1f} ms (x{r['competition_over_router']:.2f} / "
         f"x{r['competition_full_over_router']:.2f} of router; E/K = "
         f"{r['cost_model_E_over_K']:.1f})"),
        ("a2a rows/token router (min)", f"{r['router_a2a_rows_per_token']:.2f} "
         f"({r['router_a2a_min_rows_per_token']:.2f}); fwd+bwd "
         f"{r['router_a2a_rows_per_token_fwd_bwd']:.2f}"),
        ("a2a rows/token fwd+bwd competition (bound)",
         f"{r['competition_a2a_rows_per_token_fwd_bwd']:.2f} "
         f"({r['competition_a2a_bound_fwd_bwd']:.2f}); cost model (M+3K)/3K "
         f"{r['cost_model_competition']:.2f} at M={r['candidates']}; saved bytes over router "
         f"x{r['competition_saved_bytes_over_router']:.2f}"),
        ("a2a rows/token competition winners/full (min)",
         f"{r['competition_a2a_rows_per_token']:.2f} / "
         f"{r['competition_full_a2a_rows_per_token']:.2f} "
         f"({r['competition_a2a_min_rows_per_token']:.2f}); in row bytes "
         f"{r['competition_a2a_row_bytes_per_token']:.2f} / "
         f"{r['competition_full_a2a_row_bytes_per_token']:.2f}"),
        ("saved activations native/router/competition winners/full",
         f"{r['native_saved_bytes'] / 2**20:.2f} / {r['router_saved_bytes'] / 2**20:.2f} / "
         f"{r['competition_saved_bytes'] / 2**20:.2f} / "
         f"{r['competition_full_saved_bytes'] / 2**20:.2f} MiB"),
        ("model GFLOP a step router / competition",
         f"{r['flops_router_step'] / 1e9:.3f} / {r['flops_competition_step'] / 1e9:.3f}; "
         f"{r['router_tflops']:.3f} / {r['competition_tflops']:.3f} TFLOP/s a rank; MFU "
         + ("n/a (no known GPU peak)" if r["router_mfu"] is None else
            f"{r['router_mfu']:.1%} / {r['competition_mfu']:.1%}")),
    ]
    width = max(len(name) for name, _ in rows)
    head = (f"MoE layer bench: E={r['experts']} K={r['top_k']} H={r['hidden']} F={r['ffn']} "
            f"T={r['tokens_per_rank']}/rank EP={r['ep']} {r['dispatcher']} {r['dtype']} "
            f"on {r['device']}")
    return "\n".join([head] + [f"  {name.ljust(width)}  {value}" for name, value in rows])


def main(argv=None) -> int:
    args = _parse(argv)
    result = measure(args)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        if not args.json:
            print(_table(result))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

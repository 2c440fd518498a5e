"""Whole-model smoke: a GPTModel whose MoE layers are CompeteSMoE layers trains a few steps
under pipeline parallelism (megatron's 1F1B schedule, 2 micro-batches), with router steps and
competition steps on both stages; loss stays finite and the aux losses are logged."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.dist_utils import run_distributed  # noqa: E402

VOCAB, SEQ_LEN, MICRO, STEPS = 128, 16, 2, 3


def _train_worker(rank, world_size, overrides):
    import math

    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.moe.moe_utils import (
        clear_aux_losses_tracker,
        get_moe_layer_wise_logging_tracker,
        reduce_aux_losses_tracker_across_ranks,
    )

    from csmoe_megatron.config import load_config
    from csmoe_megatron.config.megatron import transformer_config
    from megatron.core.models.gpt import GPTModel

    from csmoe_megatron.model.spec import decoder_block_spec
    from csmoe_megatron.moe import context, metrics
    from csmoe_megatron.moe.layer import CompeteSMoELayer

    cfg = load_config(None, overrides + [
        "model.moe.router=competesmoe", f"model.seq_length={SEQ_LEN}",
        f"model.vocab_size={VOCAB}", "model.untie_embeddings=true",
        "model.moe.competesmoe.rate=1.0", "model.moe.competesmoe.warmup_fraction=0.34",
        "model.moe.competesmoe.max_compete_per_step=1"])
    tconfig = transformer_config(cfg, use_cpu=True)
    # GPTModel built directly from our spec (model.build adds the lead's layout-invariant
    # init, which is not what this test is about).
    model = GPTModel(config=tconfig, transformer_layer_spec=decoder_block_spec(cfg, tconfig),
                     vocab_size=VOCAB, max_sequence_length=SEQ_LEN,
                     pre_process=parallel_state.is_pipeline_first_stage(),
                     post_process=parallel_state.is_pipeline_last_stage(),
                     share_embeddings_and_output_weights=False)
    moe_layers = [m for m in model.modules() if isinstance(m, CompeteSMoELayer)]
    assert moe_layers and all(m.competesmoe.rate == 1.0 for m in moe_layers)
    context.configure_run(seed=cfg.train.seed, total_steps=STEPS,
                          num_moe_layers=cfg.model.num_layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)  # same data on every rank
    pp_last = parallel_state.is_pipeline_last_stage()

    def forward_step(data_iterator, model):
        tokens = next(data_iterator)
        positions = torch.arange(SEQ_LEN)[None].expand(MICRO, -1)
        losses = model(tokens, positions, None, labels=tokens)

        def loss_func(output):
            loss = output.float().mean()
            return loss, {"lm loss": loss.detach()}
        return losses, loss_func

    history, competed = [], []
    for step in range(STEPS):
        context.set_step(step)
        optimizer.zero_grad()
        data = iter([torch.randint(0, VOCAB, (MICRO, SEQ_LEN), generator=gen)
                     for _ in range(2)])
        out = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=data, model=[model],
            num_microbatches=2, seq_length=SEQ_LEN, micro_batch_size=MICRO,
            forward_only=False)
        for p in model.parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all()
        optimizer.step()
        if pp_last:
            history.append(sum(float(o["lm loss"]) for o in out) / len(out))
        step_metrics = metrics.pop_step_metrics()
        competed.append(step_metrics.get("moe/competition_rate"))
        reduce_aux_losses_tracker_across_ranks()
        tracker = get_moe_layer_wise_logging_tracker()
        distill = float(tracker["competesmoe_distillation_loss"]["values"].sum())
        assert (distill > 0) == (step > 0), (step, distill)
        clear_aux_losses_tracker()
    # Step 0 is warm-up; afterwards each step one of the two MoE layers competes (A_max = 1).
    assert competed == [0.0, 0.5, 0.5], competed
    if pp_last:
        assert all(math.isfinite(v) for v in history), history
    dist.barrier()


def test_gpt_model_trains_under_pipeline_parallel():
    run_distributed(_train_worker, 2, parallel=dict(pipeline=2),
                    overrides=["parallel.pipeline=2", "model.num_layers=2"])


def test_gpt_model_trains_under_pipeline_and_expert_parallel():
    run_distributed(_train_worker, 4, parallel=dict(pipeline=2, expert=2),
                    overrides=["parallel.pipeline=2", "parallel.expert=2", "model.num_layers=2"])

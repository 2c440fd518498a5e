"""Export to transformers' Mixtral and import back, exactly, from a checkpoint saved on TP=2
with sequence parallelism (a tiny CompeteSMoE model trained two steps, GQA, untied embeddings),
and the refusals. EP=2 and PP=2 checkpoints of the README's main-job model are exported and
imported the same way in tests/inference/test_main_job_tools.py (one training run each)."""

from __future__ import annotations

import pytest
import torch

from tests.train.trainer_runs import TINY, run_trainer

pytest.importorskip("transformers")

MODEL = ["model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4",
         "model.num_query_groups=2", "model.moe.num_experts=4", "model.moe.top_k=2",
         "model.moe.ffn_hidden_size=48", "model.seq_length=32", "model.moe.router=competesmoe",
         "train.steps=2", "train.global_batch_size=4", "checkpoint.save_at_end=true"]
LAYOUTS = {"tp2": ["parallel.tensor=2", "parallel.sequence_parallel=true",
                   "model.untie_embeddings=true"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """layout -> run directory with a checkpoint saved on that layout."""
    out = {}
    for name, layout in LAYOUTS.items():
        run_dir = tmp_path_factory.mktemp(name)
        overrides = [o for o in TINY if not o.startswith(("checkpoint.save_at_end", "train.steps",
                                                          "model.moe.router"))]
        run_trainer(2, run_dir, overrides + MODEL + layout)
        out[name] = run_dir
    return out


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    from csmoe_megatron.export.hf_export import export_hf

    return {name: export_hf(run_dir, tmp_path_factory.mktemp(f"hf_{name}") / "model",
                            say=lambda _: None) for name, run_dir in runs.items()}


def _our_logits(run_dir, tokens):
    from csmoe_megatron.inference.load import load_checkpoint_model, single_process

    with single_process(), torch.no_grad():
        model = load_checkpoint_model(run_dir).model
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        return model(tokens, positions, None)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_transformers_logits_on_the_export_equal_ours(layout, runs, exports):
    from transformers import MixtralForCausalLM

    tokens = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(7))
    ours = _our_logits(runs[layout], tokens)
    hf = MixtralForCausalLM.from_pretrained(exports[layout], dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings is False
    with torch.no_grad():
        theirs = hf(tokens).logits
    assert theirs.shape == ours.shape == (2, 32, 128)
    assert (theirs - ours).abs().max().item() < 1e-4


def _model_tensors(checkpoint) -> dict:
    from csmoe_megatron.inference.load import load_checkpoint_model, single_process

    with single_process():
        state = load_checkpoint_model(checkpoint).model.state_dict()
    return {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_import_of_the_export_is_the_checkpoint_bit_for_bit(layout, runs, exports, tmp_path):
    from csmoe_megatron.export.hf_import import import_hf

    imported = import_hf(exports[layout], runs[layout] / "config.yaml", tmp_path / "ckpt",
                         say=lambda _: None)
    original, back = _model_tensors(runs[layout]), _model_tensors(imported)
    assert original.keys() == back.keys() and len(original) > 20
    different = [k for k in original if not torch.equal(original[k], back[k])]
    assert different == []


def test_import_refuses_a_config_that_describes_another_model(runs, exports, tmp_path):
    from csmoe_megatron.config import ConfigError, load_config, save_config
    from csmoe_megatron.export.hf_import import import_hf

    cfg = load_config(runs["tp2"] / "config.yaml")
    cfg.model.num_layers, cfg.model.moe.num_experts = 3, 8
    save_config(cfg, tmp_path / "other.yaml")
    with pytest.raises(ConfigError, match="num_hidden_layers=2 .*num_local_experts=4"):
        import_hf(exports["tp2"], tmp_path / "other.yaml", tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "ckpt.partial").exists()


def test_export_refuses_what_mixtral_cannot_express_in_one_message():
    from csmoe_megatron.config import ConfigError, load_config
    from csmoe_megatron.config.megatron import transformer_config
    from csmoe_megatron.export.mixtral_map import check_exportable

    cfg = load_config(None, ["model.position_embedding_type=learned_absolute",
                             "model.activation=gelu", "model.moe.layer_freq=2",
                             "model.moe.capacity_factor=1.0"])
    with pytest.raises(ConfigError) as refused:
        check_exportable(cfg, transformer_config(cfg, use_cpu=True))
    for feature in ("learned_absolute", "gelu experts", "dense layers", "token dropping"):
        assert feature in str(refused.value)

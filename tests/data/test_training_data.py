"""The data pipeline as training sees it: blends, DP micro-batches, and a real corpus run."""

from pathlib import Path

import pytest

from csmoe_megatron.config import load_config
from csmoe_megatron.data import MicroBatchIterator, build_datasets, parse_blend
from tests.train.trainer_runs import losses, read_metrics, run_trainer
from csmoe_tokenizer import encode_corpus, load_tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO.parent / "shared/data/tinyshakespeare.txt"


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    """Two encoded corpora whose tokens do not overlap: 'a' documents and 'z' documents."""
    root = tmp_path_factory.mktemp("blend")
    (root / "a.txt").write_text("\n\n".join("a a a a a a a a" for _ in range(400)))
    (root / "z.txt").write_text("\n\n".join("z z z z z z z z" for _ in range(400)))
    train_tokenizer([root / "a.txt", root / "z.txt"], root / "tok", vocab_size=8, byte_fallback=False)
    for name in ("a", "z"):
        encode_corpus([root / f"{name}.txt"], root / "tok", root / name, progress=False)
    return root


def test_parse_blend():
    assert parse_blend(["x", "y"]) == (["x", "y"], None)
    assert parse_blend([0.3, "x", 0.7, "y"]) == (["x", "y"], [0.3, 0.7])
    with pytest.raises(ValueError, match="weight, prefix"):
        parse_blend([0.3, "x", "y"])


@pytest.fixture
def one_rank(tmp_path):
    """megatron's dataset builder synchronises ranks: give it a one-rank gloo group."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_blend_honours_weights(two_corpora, tmp_path, one_rank):
    root = two_corpora
    tok = load_tokenizer(root / "tok")
    a_id, z_id = tok.encode("a")[-1], tok.encode("z")[-1]
    cfg = load_config(REPO / "configs/cpu_tiny.yaml",
                      ["model.seq_length=16", "data.source=indexed", f"data.tokenizer={root / 'tok'}",
                       "data.split=100,0,0"])
    prefixes = [0.8, str(root / "a"), 0.2, str(root / "z")]
    train, _, _ = build_datasets(cfg, tok, (1000, 0, 0), tmp_path / "cache", prefixes)
    kinds = []
    for i in range(1000):
        tokens = train[i]["tokens"].tolist()
        kinds.append("a" if tokens.count(a_id) > tokens.count(z_id) else "z")
    share_a = kinds.count("a") / len(kinds)
    assert abs(share_a - 0.8) < 0.03, share_a
    # Deterministic for a seed: a second build gives the same order.
    again, _, _ = build_datasets(cfg, tok, (1000, 0, 0), tmp_path / "cache2", prefixes)
    assert all(again[i]["tokens"].equal(train[i]["tokens"]) for i in range(0, 1000, 97))


def test_data_parallel_ranks_read_disjoint_slices_and_resume():
    dataset = [{"tokens": _t(i), "labels": _t(i), "loss_mask": _t(i), "position_ids": _t(i)}
               for i in range(40)]
    ranks = [MicroBatchIterator(dataset, 2, r, 2) for r in range(2)]
    seen = [next(it)["tokens"][:, 0].tolist() for it in ranks for _ in range(1)]
    assert seen == [[0, 1], [2, 3]]
    resumed = MicroBatchIterator(dataset, 2, 1, 2, consumed_samples=ranks[1].consumed_samples)
    assert next(resumed)["tokens"][:, 0].tolist() == next(ranks[1])["tokens"][:, 0].tolist()


def _t(i):
    import torch

    return torch.full((4,), i)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} not present (CI/dev data)")
def test_training_on_tinyshakespeare_lowers_validation_loss(tmp_path):
    train_tokenizer([SHAKESPEARE], tmp_path / "tok", vocab_size=512, input_sentence_size=20000)
    encode_corpus([SHAKESPEARE], tmp_path / "tok", tmp_path / "shakespeare", progress=False)
    run_dir = tmp_path / "run"
    run_trainer(1, run_dir, [
        "data.source=indexed", f"data.tokenizer={tmp_path / 'tok'}",
        f"data.prefixes=[{tmp_path / 'shakespeare'}]", "parallel.expert=1",
        "model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128",
        "model.moe.num_experts=4", "model.moe.ffn_hidden_size=64", "model.seq_length=64",
        "train.steps=60", "train.eval_interval=20", "train.eval_iters=2", "train.lr_warmup_steps=5",
        "logging.interval=20", "logging.tensorboard=false"],
        timeout=400)
    val = [m["val_loss"] for m in read_metrics(run_dir) if "val_loss" in m]
    assert len(val) == 3 and val[-1] < val[0] - 0.1 and val[2] < val[1], val
    # The tokenizer travels with the run and with each checkpoint.
    assert (run_dir / "tokenizer" / "tokenizer.model").is_file()
    assert (run_dir / "checkpoints" / "iter_0000060" / "tokenizer" / "tokenizer.model").is_file()
    assert losses(run_dir)[-1] < losses(run_dir)[0]


def test_resuming_with_another_tokenizer_is_refused(tmp_path):
    from csmoe_megatron.config import ConfigError
    from csmoe_megatron.train.data_setup import check_tokenizer_matches_checkpoint

    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join(f"line {i} of some text here" for i in range(200)))
    train_tokenizer([docs], tmp_path / "tok_a", vocab_size=40, byte_fallback=False)
    train_tokenizer([docs], tmp_path / "tok_b", vocab_size=50, byte_fallback=False)
    ckpt = tmp_path / "iter_0000001"
    import shutil

    shutil.copytree(tmp_path / "tok_a", ckpt / "tokenizer")
    check_tokenizer_matches_checkpoint(load_tokenizer(tmp_path / "tok_a"), ckpt)
    with pytest.raises(ConfigError, match="different tokenizer"):
        check_tokenizer_matches_checkpoint(load_tokenizer(tmp_path / "tok_b"), ckpt)

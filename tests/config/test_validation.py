"""Validation before anything is touched: numeric ranges name the key, a warm-up longer than a
short run is shortened, and the run's inputs (tokenizer, data prefixes, directories) are
checked without writing anything."""

from pathlib import Path

import pytest

from csmoe_megatron.config import ConfigError, load_config, validate
from csmoe_megatron.config.inputs import check_inputs
from csmoe_megatron.config.validate import shorten_warmup, smallest_world

REPO = Path(__file__).resolve().parents[2]
CPU_TINY = REPO / "configs/cpu_tiny.yaml"


@pytest.mark.parametrize("override,message", [
    ("train.lr=-1", r"train.lr must be > 0 \(the peak learning rate\), got -1.0"),
    ("train.lr=.nan", "train.lr must be > 0"),
    ("train.adam_beta1=1.0", r"train.adam_beta1 must be in \[0, 1\)"),
    ("train.adam_beta2=-0.1", r"train.adam_beta2 must be in \[0, 1\)"),
    ("train.adam_eps=0", "train.adam_eps must be > 0"),
    ("train.min_lr=-1e-5", "train.min_lr must be >= 0"),
    ("train.weight_decay=-0.1", "train.weight_decay must be >= 0"),
    ("model.moe.competesmoe.rate=1.5", r"model.moe.competesmoe.rate must be in \[0, 1\]"),
    ("model.moe.competesmoe.warmup_fraction=1", "warmup_fraction must be in"),
    ("model.hidden_dropout=1", r"model.hidden_dropout must be in \[0, 1\)"),
    ("model.moe.capacity_factor=0", "model.moe.capacity_factor must be > 0"),
    ("checkpoint.keep_last=-1", "checkpoint.keep_last must be >= 0"),
    ("train.eval_iters=0", "train.eval_iters must be >= 1"),
    ("data.split=969,x,1", "data.split must be up to three non-negative weights"),
    ("data.split=0,0,0", "data.split must be"),
])
def test_values_out_of_range_name_the_key(override, message):
    cfg = load_config(CPU_TINY, [override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg, world_size=2)


def test_a_short_run_shortens_the_warmup_and_says_so():
    cfg = load_config(CPU_TINY, ["train.steps=10"])
    with pytest.raises(ConfigError, match="lower train.lr_warmup_steps"):
        validate(cfg, world_size=2)  # the library call still refuses, naming the fix
    note = shorten_warmup(cfg)
    assert cfg.train.lr_warmup_steps == 1
    assert "train.lr_warmup_steps=30" in note and "10-step run" in note and "\n" not in note
    validate(cfg, world_size=2)
    assert shorten_warmup(cfg) is None  # already shorter than the run: untouched
    full = load_config(CPU_TINY)
    assert shorten_warmup(full) is None and full.train.lr_warmup_steps == 30


def test_smallest_world_fits_both_layouts():
    assert smallest_world(load_config(CPU_TINY)) == 2
    cfg = load_config(CPU_TINY, ["parallel.tensor=2", "parallel.expert=4",
                                 "parallel.expert_tensor=1", "parallel.sequence_parallel=true"])
    assert smallest_world(cfg) == 4


@pytest.fixture(scope="module")
def indexed_data(tmp_path_factory):
    """A tokenizer (vocabulary 8) and one encoded corpus."""
    from csmoe_tokenizer import encode_corpus, train_tokenizer

    root = tmp_path_factory.mktemp("inputs")
    (root / "a.txt").write_text("\n\n".join("a b a b a b" for _ in range(50)))
    train_tokenizer([root / "a.txt"], root / "tok", vocab_size=8, byte_fallback=False)
    encode_corpus([root / "a.txt"], root / "tok", root / "corpus", progress=False)
    return root


def _indexed(root, tmp_path, *extra):
    return load_config(CPU_TINY, ["data.source=indexed", f"data.tokenizer={root / 'tok'}",
                                  f"data.prefixes=[{root / 'corpus'}]",
                                  f"run.dir={tmp_path / 'run'}", *extra])


def test_good_inputs_pass_and_nothing_is_written(indexed_data, tmp_path):
    check_inputs(_indexed(indexed_data, tmp_path))
    check_inputs(_indexed(indexed_data, tmp_path, f"data.prefixes=[0.5, {indexed_data / 'corpus'}]"))
    assert not (tmp_path / "run").exists()


def test_bad_inputs_are_refused_naming_key_and_file(indexed_data, tmp_path):
    with pytest.raises(ConfigError, match=r"data.tokenizer=/nonexistent/tok: .*does not exist"):
        check_inputs(_indexed(indexed_data, tmp_path, "data.tokenizer=/nonexistent/tok"))
    with pytest.raises(ConfigError, match=r"data.prefixes: .*/nonexistent/x.*\.bin.*missing"):
        check_inputs(_indexed(indexed_data, tmp_path, "data.prefixes=[/nonexistent/x]"))
    with pytest.raises(ConfigError, match=r"model.vocab_size \(4\) is smaller than the "
                                          r"tokenizer's vocabulary \(8\)"):
        check_inputs(_indexed(indexed_data, tmp_path, "model.vocab_size=4"))
    with pytest.raises(ConfigError, match="blend weights must be >= 0"):
        check_inputs(_indexed(indexed_data, tmp_path,
                              f"data.prefixes=[-1, {indexed_data / 'corpus'}]"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match="run.dir=.*afile exists and is not a directory"):
        check_inputs(_indexed(indexed_data, tmp_path, f"run.dir={tmp_path / 'afile'}"))


def test_a_truncated_bin_file_is_refused(indexed_data, tmp_path):
    import shutil

    for suffix in (".bin", ".idx"):
        shutil.copy(indexed_data / f"corpus{suffix}", tmp_path / f"copy{suffix}")
    data = (tmp_path / "copy.bin").read_bytes()
    (tmp_path / "copy.bin").write_bytes(data[:-2])
    with pytest.raises(ConfigError, match=r"data.prefixes: .*copy.bin is .* bytes but"):
        check_inputs(_indexed(indexed_data, tmp_path, f"data.prefixes=[{tmp_path / 'copy'}]"))


def test_resuming_with_another_tokenizer_is_refused_before_writing(indexed_data, tmp_path):
    import json

    saved = tmp_path / "run" / "checkpoints" / "iter_0000004" / "tokenizer"
    saved.mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("iter_0000004")
    ours = json.loads((indexed_data / "tok" / "tokenizer.json").read_text())
    (saved / "tokenizer.json").write_text(json.dumps(ours))
    check_inputs(_indexed(indexed_data, tmp_path))  # the same tokenizer: resumes
    (saved / "tokenizer.json").write_text(json.dumps({**ours, "model_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="iter_0000004 was trained with a different tokenizer"):
        check_inputs(_indexed(indexed_data, tmp_path))
    check_inputs(_indexed(indexed_data, tmp_path, "checkpoint.resume=false"))


@pytest.mark.parametrize("overrides,message", [
    (["model.moe.score_function=sigmoid"], "options of model.moe.router=topk"),
    (["model.moe.router=topk", "model.moe.expert_bias=true"],
     "expert_bias needs model.moe.score_function=sigmoid"),
    (["model.moe.competesmoe.diversity_average=mean"], "choose one of 'matrix', 'pairs'"),
    (["model.moe.competesmoe.balance_count=k"], "choose one of 'top1', 'all'"),
    (["data.source=mock", "model.vocab_size=128", "data.valid_prefixes=[x]"],
     "need a tokenizer"),
])
def test_router_options_and_conventions_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(CPU_TINY, overrides), world_size=2)


def test_heldout_prefixes_are_checked_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(CPU_TINY, [f"run.dir={run_dir}", f"data.valid_prefixes=[{tmp_path}/none]"])
    with pytest.raises(ConfigError, match="data.valid_prefixes: .*none"):
        check_inputs(cfg)
    cfg = load_config(CPU_TINY, [f"run.dir={run_dir}", "data.test_prefixes=[[1, 2]]"])
    with pytest.raises(ConfigError, match="data.test_prefixes must be a list of indexed"):
        check_inputs(cfg)
    assert not run_dir.exists()

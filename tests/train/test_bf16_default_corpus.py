"""10 trainer steps on the built-in corpus (data.source=default) in fp32 and in bf16: both train,
and the bf16 losses follow the fp32 ones within a bf16 tolerance.

The corpus is prepared once into a module-private cache (CSMOE_CACHE_DIR), as a fresh machine
would on its first run, and shared by the two runs.
"""

import math

import pytest

from tests.train.trainer_runs import TINY, losses, read_metrics, run_trainer

STEPS = 10
# The built-in corpus brings its own tokenizer (4096 pieces): no vocab_size override.
DEFAULT_CORPUS_RUN = [o for o in TINY if not o.startswith(("data.source", "model.vocab_size",
                                                           "train.steps", "model.moe.router"))] + [
    "data.source=default", f"train.steps={STEPS}", "model.moe.router=competesmoe",
    "model.moe.competesmoe.rate=0.5", "model.moe.competesmoe.warmup_fraction=0.0",
]

# bf16 keeps 8 significant bits (one rounding: 2^-9 = 2e-3 relative). Measured on this run
# (CPU, torch 2.13, `pytest tests/train/test_bf16_default_corpus.py`): step 1, where both runs
# hold the same weights, differs by 1.9e-4 (2.3e-5 of the loss ~8.3: the loss is a mean over
# 1024 tokens, so per-token rounding averages out); over the 10 steps the runs' weights drift
# apart and the largest difference is 4.7e-3 (step 8). The bounds are about 10x and 4x those.
# Either bound is still a small fraction of what 10 steps learn (~0.9), so a bf16 run that
# trains differently, not just less precisely, fails.
BF16_FIRST_STEP_ATOL = 2e-3
BF16_LOSS_ATOL = 0.02


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("corpus_cache")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSMOE_CACHE_DIR", str(cache))
        for precision in ("fp32", "bf16"):
            run_dir = tmp_path_factory.mktemp(f"default_corpus_{precision}")
            proc = run_trainer(1, run_dir, DEFAULT_CORPUS_RUN + [f"train.precision={precision}"])
            out[precision] = (run_dir, proc.stdout)
    return out


def test_default_corpus_trains(runs):
    run_dir, stdout = runs["fp32"]
    assert "preparing the default corpus" in stdout  # the first run built the cache
    assert "preparing the default corpus" not in runs["bf16"][1]  # the second one reused it
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()  # travels with the run
    got = losses(run_dir)
    assert len(got) == STEPS and all(math.isfinite(v) for v in got)
    assert abs(got[0] - math.log(4096)) < 0.5  # starts near uniform over the corpus vocabulary
    assert got[-1] < got[0] - 0.5, got  # and learns


def test_bf16_follows_fp32(runs):
    fp32, bf16 = losses(runs["fp32"][0]), losses(runs["bf16"][0])
    assert len(bf16) == STEPS
    diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
    assert diffs[0] <= BF16_FIRST_STEP_ATOL, diffs
    assert max(diffs) <= BF16_LOSS_ATOL, diffs
    assert fp32 != bf16  # the bf16 run really ran in bf16
    # The same competition steps in both (the schedule does not depend on the numerics).
    rates = [[m.get("moe/competition_rate") for m in read_metrics(runs[p][0])]
             for p in ("fp32", "bf16")]
    assert rates[0] == rates[1] and any(r and r > 0 for r in rates[0])

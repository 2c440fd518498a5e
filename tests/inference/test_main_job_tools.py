"""Export, import, eval and generate on the output of the README's main job
(configs/cpu_tiny.yaml: 4 layers, 8 experts, EP=2, default corpus and its tokenizer), shortened
to two steps; then a PP=2 run that starts from the imported checkpoint (checkpoint.init_from),
whose checkpoint is exported and imported again: the exactness tests on EP=2 and PP=2
checkpoints (TP=2: tests/export/test_mixtral_exactness.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.train.trainer_runs import REPO, run_trainer

pytest.importorskip("transformers")

SHORT = ["train.steps=2", "train.eval_interval=0", "logging.routing_images_interval=0",
         "logging.tensorboard=false"]
SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
          "  def f(x):\n\treturn x + 12345  # ünïcödé 日本 🙂\n tail \n")


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cpu_tiny")
    run_trainer(2, run_dir, SHORT)
    return run_dir


@pytest.fixture(scope="module")
def exported(main_job, tmp_path_factory):
    from csmoe_megatron.export.cli import export_main

    out = tmp_path_factory.mktemp("hf") / "model"
    assert export_main(["hf", "--checkpoint", str(main_job), "--output", str(out)]) == 0
    return out


def _tokenizer(run_dir: Path):
    from csmoe_tokenizer.model import load_tokenizer

    return load_tokenizer(run_dir / "tokenizer")


def test_export_loads_in_transformers_with_its_tokenizer_and_the_same_logits(main_job, exported):
    from transformers import AutoTokenizer, MixtralForCausalLM

    from csmoe_megatron.inference.load import load_checkpoint_model, single_process

    ours = _tokenizer(main_job)
    ids = ours.encode(SAMPLE)
    theirs = AutoTokenizer.from_pretrained(exported)
    assert theirs(SAMPLE)["input_ids"] == ids
    assert theirs.decode(ids) == SAMPLE
    tokens = torch.tensor([ids[:64]])
    hf = MixtralForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    with single_process(), torch.no_grad():
        model = load_checkpoint_model(main_job).model
        logits = model(tokens, torch.arange(tokens.shape[1]).unsqueeze(0), None)
        assert (hf(tokens).logits - logits).abs().max().item() < 1e-4


@pytest.fixture(scope="module")
def imported(exported, tmp_path_factory):
    from csmoe_megatron.export.cli import import_main

    out = tmp_path_factory.mktemp("imported") / "ckpt"
    assert import_main(["hf", "--model", str(exported), "--config",
                        str(REPO / "configs/cpu_tiny.yaml"), "--output", str(out)]) == 0
    return out


def test_import_gives_back_the_main_job_checkpoint_bit_for_bit(main_job, imported):
    from csmoe_megatron.inference.load import load_checkpoint_model, single_process

    with single_process():
        a = load_checkpoint_model(main_job).model.state_dict()
        b = load_checkpoint_model(imported).model.state_dict()
    tensors = [k for k, v in a.items() if isinstance(v, torch.Tensor)]
    assert len(tensors) > 50 and all(torch.equal(a[k], b[k]) for k in tensors)
    assert _tokenizer(imported).metadata["model_sha256"] == \
        _tokenizer(main_job).metadata["model_sha256"]


@pytest.fixture(scope="module")
def pp2_from_import(imported, tmp_path_factory):
    """One step of lr 1e-30 (below every weight's last bit) without weight decay, on PP=2 EP=1:
    its checkpoint holds the imported weights, saved on another layout."""
    run_dir = tmp_path_factory.mktemp("pp2")
    run_trainer(2, run_dir, ["train.steps=1", "train.lr=1e-30", "train.min_lr=1e-30",
                             "train.weight_decay=0", "parallel.expert=1", "parallel.pipeline=2",
                             "train.global_batch_size=4", "train.eval_interval=0",
                             "logging.routing_images_interval=0", "logging.tensorboard=false",
                             f"checkpoint.init_from={imported}"])
    return run_dir


def _tensors(checkpoint) -> dict:
    from csmoe_megatron.inference.load import load_checkpoint_model, single_process

    with single_process():
        state = load_checkpoint_model(checkpoint).model.state_dict()
    return {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


def test_a_run_starts_from_the_imported_weights_on_another_layout(imported, pp2_from_import):
    a, b = _tensors(imported), _tensors(pp2_from_import)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_pp2_checkpoint_exports_and_imports_exactly(pp2_from_import, tmp_path):
    from transformers import MixtralForCausalLM

    from csmoe_megatron.export.hf_export import export_hf
    from csmoe_megatron.export.hf_import import import_hf
    from csmoe_megatron.inference.load import load_checkpoint_model, single_process

    out = export_hf(pp2_from_import, tmp_path / "hf", say=lambda _: None)
    tokens = torch.randint(0, 4000, (2, 40), generator=torch.Generator().manual_seed(3))
    hf = MixtralForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with single_process(), torch.no_grad():
        model = load_checkpoint_model(pp2_from_import).model
        ours = model(tokens, torch.arange(40).unsqueeze(0).expand(2, -1), None)
        assert (hf(tokens).logits - ours).abs().max().item() < 1e-4
    back = import_hf(out, pp2_from_import / "config.yaml", tmp_path / "ckpt", say=lambda _: None)
    a, b = _tensors(pp2_from_import), _tensors(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eval_reports_the_loss_transformers_computes_on_the_same_windows(main_job, exported,
                                                                        tmp_path, capsys):
    from transformers import MixtralForCausalLM

    from csmoe_megatron.inference.eval import main

    text = (Path(REPO).parent / "shared/data/tinyshakespeare.txt").read_text()[:1500] + SAMPLE
    (tmp_path / "t.txt").write_text(text)
    assert main(["--checkpoint", str(main_job), "--text", str(tmp_path / "t.txt")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ids = _tokenizer(main_job).encode(text)
    hf = MixtralForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    total, seq = 0.0, 128  # cpu_tiny's seq_length: windows overlapping by one token
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq):
            window = torch.tensor([ids[start:start + seq + 1]])
            logits = hf(window[:, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum")
    assert result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(float(total) / (len(ids) - 1), abs=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["bits_per_byte"] == pytest.approx(
        result["loss"] * result["tokens"] / math.log(2) / result["bytes"])
    assert 0 < result["bytes"] < len(text.encode())
    loads = result["expert_load"]
    assert len(loads) == 4 and all(len(x) == 8 and sum(x) == pytest.approx(1.0)
                                   for x in loads.values())


def test_generate_greedy_is_our_model_argmax_and_sampling_follows_the_seed(main_job, capsys):
    from csmoe_megatron.inference.generate import generate_ids, hf_model_of, main
    from csmoe_megatron.inference.load import load_checkpoint_model, single_process

    prompt = "First Citizen:"
    assert main(["--checkpoint", str(main_job), "--prompt", prompt, "--max-new-tokens", "6",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ids = list(result["prompt_ids"])
    with single_process(), torch.no_grad():  # no cache: the whole prefix every step
        model = load_checkpoint_model(main_job).model
        for _ in range(len(result["new_ids"])):
            tokens = torch.tensor([ids])
            logits = model(tokens, torch.arange(len(ids)).unsqueeze(0), None)
            ids.append(int(logits[0, -1].argmax()))
    assert result["new_ids"] == ids[len(result["prompt_ids"]):] and result["new_ids"]
    assert result["text"].startswith(prompt)
    hf, loaded = hf_model_of(main_job)
    eos = _tokenizer(main_job).eos_id
    sample = [generate_ids(hf, result["prompt_ids"], 6, eos, top_p=0.9, seed=s) for s in (1, 1)]
    assert sample[0] == sample[1]
    nucleus_of_one = generate_ids(hf, result["prompt_ids"], 6, eos, top_p=1e-9, seed=5)
    assert nucleus_of_one == result["new_ids"]

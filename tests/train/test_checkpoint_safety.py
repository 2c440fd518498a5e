"""A damaged or crafted checkpoint is refused as data and resume falls back to the newest one
that verifies (issue 11 item 2, issue 14 items 1 and 4). One tiny run is trained per module;
every test damages a copy of its checkpoints."""

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csmoe_megatron.train import checkpoint_manifest as manifest
from csmoe_megatron.train.checkpoint import latest_checkpoint
from csmoe_megatron.train.checkpoint_files import (CheckpointError, check_byte_items,
                                                   parse_legacy_progress)

from tests.dist_utils import run_distributed
from tests.train.trainer_runs import REPO, TINY, read_metrics, run_trainer

SIX_STEPS = [o for o in TINY if not o.startswith("train.steps")] + [
    "train.steps=6", "checkpoint.save_interval=2"]
NEWEST, OLDER = "iter_0000004", "iter_0000002"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run stopped after step 4 with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("run")
    run_trainer(1, run, SIX_STEPS + ["train.exit_after_steps=4"])
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


class _CreatesFile:
    """A pickle payload: unpickling it creates `path` (what an attacker's code would do)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def _resume_choice(root: Path) -> tuple[Path, list[str]]:
    said: list[str] = []
    return latest_checkpoint(root, said.append), said


def test_a_save_writes_plain_data_and_a_manifest_last(trained):
    ckpt = trained / "checkpoints" / NEWEST
    names = {p.name for p in ckpt.iterdir()}
    assert {"manifest.json", "progress.json", "rng_rank00000.pt", ".metadata", "common.pt"} <= names
    assert "progress.pt" not in names and not [n for n in names if n.startswith("manifest.part")]
    listed = json.loads((ckpt / "manifest.json").read_text())["files"]
    on_disk = {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {"manifest.json"}
    progress = json.loads((ckpt / "progress.json").read_text())["progress"]
    assert (progress["step"], progress["consumed_samples"]) == (4, 32)
    assert torch.load(ckpt / "rng_rank00000.pt", weights_only=True)["cpu"].dtype == torch.uint8
    assert _resume_choice(trained / "checkpoints") == (trained / "checkpoints" / NEWEST, [])


@pytest.mark.parametrize("name", ["__0_0.distcp", ".metadata", "progress.json", "common.pt",
                                  "rng_rank00000.pt", "manifest.json"])
def test_a_truncated_file_falls_back_to_the_previous_checkpoint(run_copy, name):
    root = run_copy / "checkpoints"
    damaged = root / NEWEST / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    chosen, said = _resume_choice(root)
    assert chosen == root / OLDER
    assert len(said) == 1 and f"resuming from {OLDER}" in said[0]
    assert f"{NEWEST}: " in said[0] and name in said[0]


def test_a_flipped_byte_is_caught_by_the_checksum(run_copy):
    root = run_copy / "checkpoints"
    shard = root / NEWEST / "__0_1.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x40
    shard.write_bytes(bytes(data))
    chosen, said = _resume_choice(root)
    assert chosen == root / OLDER and "__0_1.distcp does not match its checksum" in said[0]


def test_no_checkpoint_that_verifies_is_one_clear_error(run_copy):
    root = run_copy / "checkpoints"
    for ckpt in (NEWEST, OLDER):
        (root / ckpt / "common.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{NEWEST}: common.pt is 0 bytes.*{OLDER}: "
                                              f"common.pt is 0 bytes.*start from scratch"):
        _resume_choice(root)


def test_a_non_utf8_latest_falls_back(run_copy):
    root = run_copy / "checkpoints"
    (root / "latest").write_bytes(b"\xff\xfeiter\x00")
    chosen, said = _resume_choice(root)
    assert chosen == root / NEWEST and "latest is unreadable" in said[0]


def test_latest_naming_an_older_checkpoint_is_honoured_and_a_damaged_one_is_not(run_copy):
    root = run_copy / "checkpoints"
    (root / "latest").write_text(OLDER + "\n")
    assert _resume_choice(root) == (root / OLDER, [])
    shutil.copytree(root / NEWEST, root / "iter_0000006.partial")  # a save that crashed
    (root / "latest").write_text("iter_0000006\n")  # e.g. edited by hand
    with pytest.warns(UserWarning, match="names 'iter_0000006', which is not a complete "
                                         f"checkpoint.*resuming from {NEWEST}|resuming from "
                                         f"{NEWEST}.*names 'iter_0000006'"):
        assert latest_checkpoint(root) == root / NEWEST
    (root / "latest").unlink()
    with pytest.warns(UserWarning, match="latest is missing"):
        assert latest_checkpoint(root) == root / NEWEST


@pytest.mark.parametrize("name", ["progress.json", "rng_rank00000.pt", ".metadata", "common.pt"])
def test_a_pickle_payload_is_refused_even_under_a_rewritten_manifest(run_copy, tmp_path, name):
    """The checksum alone would catch the payload; an attacker rewrites the manifest too, and the
    file is still read as data: refused, never run."""
    root, created = run_copy / "checkpoints", tmp_path / "payload_ran"
    payload = pickle.dumps(_CreatesFile(created))
    if name.endswith(".pt"):  # torch's own zip format around the payload
        torch.save(_CreatesFile(created), root / NEWEST / name)
    else:
        (root / NEWEST / name).write_bytes(payload)
    (root / NEWEST / "manifest.json").unlink()
    manifest.write_manifest(root / NEWEST)
    assert not created.exists()
    chosen, said = _resume_choice(root)
    assert chosen == root / OLDER and name in said[0] and not created.exists()


def test_an_old_format_checkpoint_loads_as_data_and_a_payload_in_it_does_not(run_copy, tmp_path):
    """Checkpoints written before progress.json: progress.pt (a dict of numbers) and no manifest."""
    root, created = run_copy / "checkpoints", tmp_path / "payload_ran"
    for name in (NEWEST, OLDER):
        doc = json.loads((root / name / "progress.json").read_text())
        torch.save({"scheduler": doc["scheduler"], **doc["progress"]}, root / name / "progress.pt")
        (root / name / "progress.json").unlink()
        (root / name / "manifest.json").unlink()
    chosen, said = _resume_choice(root)
    assert chosen == root / NEWEST and "before checkpoints carried a manifest" in said[0]
    _, progress = parse_legacy_progress((chosen / "progress.pt").read_bytes(), chosen)
    assert (progress["step"], progress["consumed_samples"]) == (4, 32)
    torch.save({"scheduler": _CreatesFile(created), "step": 4}, root / NEWEST / "progress.pt")
    chosen, said = _resume_choice(root)
    assert chosen == root / OLDER and "progress.pt was refused" in said[0]
    assert not created.exists()


def test_resume_from_a_crafted_checkpoint_falls_back_and_never_runs_it(run_copy, tmp_path):
    """End to end under the trainer: payloads in the newest checkpoint's progress and RNG files,
    `latest` damaged; the run resumes from the older checkpoint, says so once, trains to the end."""
    root, created = run_copy / "checkpoints", tmp_path / "payload_ran"
    (root / NEWEST / "progress.json").write_bytes(pickle.dumps(_CreatesFile(created)))
    torch.save(_CreatesFile(created), root / NEWEST / "rng_rank00000.pt")
    (root / "latest").write_bytes(b"\xff\xfe")  # and a non-UTF-8 `latest`
    proc = run_trainer(1, run_copy, SIX_STEPS)
    assert not created.exists()
    assert proc.stdout.count(f"resuming from {OLDER}, the newest checkpoint that verifies") == 1
    assert f"resumed from {root / OLDER} at step 2" in proc.stdout
    assert [m["step"] for m in read_metrics(run_copy)][-4:] == [3, 4, 5, 6]
    assert (root / "latest").read_text().strip() == "iter_0000006"


def test_fuzzed_checkpoint_files_are_refused_cleanly(trained, tmp_path):
    """Seeded, bounded fuzz of .metadata, common.pt, progress.json, the RNG file, metadata.json
    and the manifest; in a subprocess with a time limit, so a crash or hang fails the test."""
    ckpt = tmp_path / NEWEST
    shutil.copytree(trained / "checkpoints" / NEWEST, ckpt)
    proc = subprocess.run([sys.executable, "-m", "tests.train.fuzz_checkpoint_worker", str(ckpt),
                           "1234", "10"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(cases) == 6 * 10
    for case in cases:
        # Every change is caught by the manifest, but one that leaves it meaning the same.
        assert case["verify"] is not None or (case["file"] == "manifest.json" and
                                              case["same_meaning"]), case
        if case["file"] != "manifest.json":
            assert case["file"] in case["verify"], case
        if case["parse"] != "accepted":
            assert case["parse"].startswith("refused: ") and case["file"] in case["parse"], case
    refused = {c["file"] for c in cases if c["parse"] != "accepted"}
    assert refused == {c["file"] for c in cases}  # each parser refused something


def _choose_on_each_rank(rank, world_size, root, out):
    said: list[str] = []
    chosen = latest_checkpoint(Path(root), said.append)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"chosen": chosen.name, "said": said}))


def test_two_ranks_agree_when_the_damage_is_in_the_other_ranks_share(run_copy, tmp_path):
    """Rank 1 checks its own files (rng_rank00001.pt here); it finds the damage, both ranks fall
    back together and rank 0 alone says why, naming the file."""
    root = run_copy / "checkpoints"
    for name in (NEWEST, OLDER):  # as a 2-rank run would have written it
        shutil.copy(root / name / "rng_rank00000.pt", root / name / "rng_rank00001.pt")
        manifest.write_manifest(root / name)
    rng1 = root / NEWEST / "rng_rank00001.pt"
    data = bytearray(rng1.read_bytes())
    data[-30] ^= 0x01
    rng1.write_bytes(bytes(data))
    run_distributed(_choose_on_each_rank, world_size=2, root=str(root), out=str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["chosen"] for r in ranks] == [OLDER, OLDER]
    assert ranks[1]["said"] == [] and len(ranks[0]["said"]) == 1
    assert "rng_rank00001.pt does not match its checksum" in ranks[0]["said"][0]


def test_a_payload_in_a_distcp_byte_item_is_refused(tmp_path):
    """Byte items (layers' _extra_state) are unpickled by torch's load planner with
    weights_only=False; we read each with weights_only=True first."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, Metadata,
                                                       MetadataIndex)

    created = tmp_path / "payload_ran"
    blobs = []
    for obj in (None, _CreatesFile(created)):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        blobs.append(buffer.getvalue())
    (tmp_path / "__0_0.distcp").write_bytes(b"".join(blobs))

    def metadata(relative_path, offset, length):
        return Metadata(state_dict_metadata={"x._extra_state": BytesStorageMetadata()},
                        storage_data={MetadataIndex("x._extra_state"):
                                      _StorageInfo(relative_path, offset, length)})

    check_byte_items(tmp_path, metadata("__0_0.distcp", 0, len(blobs[0])), tmp_path / ".metadata")
    with pytest.raises(CheckpointError, match="__0_0.distcp was refused by torch.load"):
        check_byte_items(tmp_path, metadata("__0_0.distcp", len(blobs[0]), len(blobs[1])),
                         tmp_path / ".metadata")
    with pytest.raises(CheckpointError, match="points outside the checkpoint"):
        check_byte_items(tmp_path, metadata("../__0_0.distcp", 0, 1), tmp_path / ".metadata")
    assert not created.exists()

"""RunLogger at a resume: metrics.jsonl and TensorBoard keep each step once (what a run wrote
after the checkpoint it is resumed from is dropped). In-process, no training."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from csmoe_megatron.train.logger import RunLogger


def _run(run_dir, resumed_at: int, steps: range, value: float) -> None:
    log = RunLogger(run_dir, enabled=True, tensorboard=True, total_steps=10)
    log.begin(resumed_at)
    for step in steps:
        log.log_step(step, {"loss": value + step}, console=False)
    log.close()


def test_resume_drops_the_records_past_the_checkpoint(tmp_path):
    _run(tmp_path, 0, range(1, 6), 100.0)  # killed after step 5; its checkpoint is step 3
    with (tmp_path / "metrics.jsonl").open("a") as torn:
        torn.write('{"step": 6, "lo')  # killed mid-line
    _run(tmp_path, 3, range(4, 8), 200.0)

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = {1: 101.0, 2: 102.0, 3: 103.0, 4: 204.0, 5: 205.0, 6: 206.0, 7: 207.0}
    assert {r["step"]: r["loss"] for r in records} == expected
    assert [r["step"] for r in records] == sorted(expected)
    assert not list(tmp_path.glob("*.tmp"))

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Scalars("loss")
    assert [e.step for e in scalars] == sorted(expected)  # each step once
    assert {e.step: e.value for e in scalars} == expected


def test_a_fresh_start_in_an_empty_directory_writes_from_step_one(tmp_path):
    _run(tmp_path, 0, range(1, 3), 0.0)
    assert [json.loads(line)["step"]
            for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]

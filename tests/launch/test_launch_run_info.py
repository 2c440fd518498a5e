"""run_info.json: one record per launch, appended on resume, written atomically."""

from __future__ import annotations

import json

from csmoe_megatron.train import run_info


def test_each_launch_appends_a_record(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    (tmp_path / "config.yaml").write_text("train: {seed: 1}\n")
    run_info.record_launch(tmp_path)
    # The checkpoint resume chose (a fallback may differ from what `latest` names).
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("iter_0000020\n")
    path = run_info.record_launch(tmp_path, tmp_path / "checkpoints" / "iter_0000010")
    launches = json.loads(path.read_text())["launches"]
    assert [entry["resume_checkpoint"] for entry in launches] == [None, "iter_0000010"]
    first = launches[0]
    assert first["env"]["WORLD_SIZE"] == "4" and first["package_version"]
    assert first["libraries"]["torch"] and first["python"]
    assert len(first["config_sha256"]) == 64 and first["argv"]
    assert not list(tmp_path.glob("*.tmp"))


def test_unreadable_file_is_kept_aside(tmp_path):
    (tmp_path / "run_info.json").write_text("{not json")
    run_info.record_launch(tmp_path)
    assert len(json.loads((tmp_path / "run_info.json").read_text())["launches"]) == 1
    assert (tmp_path / "run_info.json.corrupt").read_text() == "{not json"


def test_commit_outside_a_checkout_comes_from_the_image(monkeypatch, tmp_path):
    monkeypatch.setattr(run_info, "_PACKAGE_ROOT", tmp_path)
    monkeypatch.setenv("CSMOE_GIT_COMMIT", "abc123")
    assert run_info.source_revision()["git_commit"] == "abc123"
    monkeypatch.delenv("CSMOE_GIT_COMMIT")
    assert run_info.source_revision()["git_commit"] is None

"""Seeded, bounded fuzz of the files a tokenizer and an encoded dataset are made of (issue 14
item 3): each mutated file is refused with a message naming it, or works as training would use
it; never a crash, a hang or a traceback. Runs in a subprocess with a time limit."""

import json
import os
import subprocess
import sys
from pathlib import Path

from csmoe_tokenizer import encode_corpus

REPO = Path(__file__).resolve().parents[2]
COUNT = 12


def test_fuzzed_tokenizer_and_dataset_files_are_refused_cleanly(small_tokenizer, corpus_dir,
                                                                  tmp_path):
    prefix = str(tmp_path / "ds")
    encode_corpus([corpus_dir / "docs.txt"], small_tokenizer, prefix, progress=False)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.tokenizer.fuzz_tokenizer_worker", str(small_tokenizer),
         prefix, str(tmp_path / "tok"), "4321", str(COUNT)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(cases) == 5 * COUNT
    for case in cases:
        assert not case["outcome"].startswith("crash"), case
        if case["outcome"] != "accepted":
            assert case["file"] in case["outcome"] or (
                case["file"] == ".bin" and "ds.bin" in case["outcome"]), case
        if case["file"] == "tokenizer.model" and not case["resigned"]:
            assert "does not match the sha256" in case["outcome"], case  # every change caught
    for target in ("tokenizer.model", "tokenizer.json", ".idx", ".bin"):
        assert any(c["file"] == target and c["outcome"] != "accepted" for c in cases), target

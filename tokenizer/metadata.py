"""Layout of a tokenizer directory and its metadata file (tokenizer.json).

A tokenizer directory holds `tokenizer.model` (SentencePiece) and `tokenizer.json`; the json is
written last and records the model's sha256, so a torn or mismatched pair is detected on load.
"""

import hashlib
import json
from pathlib import Path

from .errors import TokenizerUserError

MODEL_FILE = "tokenizer.model"
METADATA_FILE = "tokenizer.json"
FORMAT = "csmoe-tokenizer/1"

# Fixed special ids, identical for every tokenizer this package trains. PAD is 0 so that
# zero-filled buffers are padding.
PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metadata_json(metadata: dict) -> bytes:
    return (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode()


def is_tokenizer_dir(directory: Path) -> bool:
    """Whether `directory` looks like an earlier output of `csmoe-tokenizer train`."""
    try:
        return json.loads((directory / METADATA_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_metadata(directory: Path) -> dict:
    """Read and check tokenizer.json; raise TokenizerUserError naming the file and the fix."""
    fix = "Point --tokenizer at a directory written by `csmoe-tokenizer train`, or train one."
    if not directory.is_dir():
        raise TokenizerUserError(f"Tokenizer directory {directory} does not exist. {fix}")
    path = directory / METADATA_FILE
    if not path.is_file():
        raise TokenizerUserError(f"Tokenizer directory {directory} has no {METADATA_FILE}. {fix}")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TokenizerUserError(f"Cannot read {path}: {error}. {fix}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise TokenizerUserError(f"{path} is not csmoe-tokenizer metadata (format {FORMAT}). {fix}")
    return metadata

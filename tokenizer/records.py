"""Turn one raw record into document text, or say precisely why it is bad."""

import json


class BadRecord(Exception):
    """A record that cannot be used; `line` is the 1-based line the problem is on."""

    def __init__(self, kind: str, line: int, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.line = line
        self.reason = reason

    def __reduce__(self):
        # sent back from worker processes; the default pickling would call BadRecord(reason)
        return BadRecord, (self.kind, self.line, self.reason)


SKIP_HINT = "or pass --skip-bad to skip such records and count them"


def record_text(record: bytes, line: int, is_jsonl: bool, json_key: str) -> str:
    """The document text of `record` (which starts on `line`); raises BadRecord."""
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError as error:
        bad_line = line + record.count(b"\n", 0, error.start)
        raise BadRecord(
            "invalid-utf8", bad_line,
            f"invalid UTF-8 ({error.reason} at byte {error.start} of the document). Fix: convert "
            f"the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`), {SKIP_HINT}.",
        ) from None
    if not is_jsonl:
        return text
    try:
        value = json.loads(text)
    except ValueError as error:
        raise BadRecord("not-json", line, f"line is not valid JSON ({error}). Fix: repair the line, {SKIP_HINT}.") from None
    if not isinstance(value, dict) or json_key not in value:
        keys = ", ".join(map(str, value)) if isinstance(value, dict) else f"a JSON {type(value).__name__}"
        raise BadRecord(
            "missing-key", line,
            f"no key {json_key!r} in this JSON line (found: {keys or 'no keys'}). Fix: pass "
            f"--json-key with the right field name, {SKIP_HINT}.",
        )
    text = value[json_key]
    if not isinstance(text, str):
        raise BadRecord(
            "not-string", line,
            f"the value of {json_key!r} is a JSON {type(text).__name__}, not a string. Fix: pass "
            f"--json-key naming a text field, {SKIP_HINT}.",
        )
    return text


def empty_file_problem() -> BadRecord:
    return BadRecord(
        "empty-file", 0,
        "file is empty (no documents). Fix: remove it from the inputs, or pass --skip-bad to skip "
        "empty files and count them.",
    )


def located(source: str, problem: BadRecord) -> str:
    """`file:line: reason`, the form every bad-input error takes."""
    where = f"{source}:{problem.line}" if problem.line else source
    return f"{where}: {problem.reason}"

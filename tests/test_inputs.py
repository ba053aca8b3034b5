"""Bad inputs: each exits non-zero with one clear line naming the file, the line or record, and the field."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from rlaif.inputs import read_prompts


def _jsonl(tmp_path, lines: list[str] | bytes, name="p.jsonl"):
    path = tmp_path / name
    path.write_bytes(lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode())
    return path


GOOD = json.dumps({"prompt": "What is 1+1?"})

BAD_INPUTS = {
    "malformed_json": (lambda t: _jsonl(t, [GOOD, '{"prompt": "x"', GOOD]), r"p.jsonl:2: invalid JSON"),
    "missing_column": (lambda t: _jsonl(t, [GOOD, json.dumps({"text": "hi"})]), r"p.jsonl:2: no 'prompt' field"),
    "empty_file": (lambda t: _jsonl(t, b""), r"p.jsonl: no records"),
    "empty_prompt": (lambda t: _jsonl(t, [GOOD, json.dumps({"prompt": "  "})]), r"p.jsonl:2: field 'prompt' is empty"),
    "non_utf8": (lambda t: _jsonl(t, GOOD.encode() + b"\n" + b'{"prompt": "caf\xe9"}\n'), r"p.jsonl:2: not valid UTF-8"),
    "nul_byte": (lambda t: _jsonl(t, GOOD.encode() + b"\n" + b'{"prompt": "a\x00b"}\n'), r"p.jsonl:2: contains a NUL byte"),
    "unknown_type": (lambda t: _jsonl(t, [GOOD], name="p.txt"), r"p.txt: unknown file type '.txt'"),
    "non_string_prompt": (lambda t: _jsonl(t, [GOOD, json.dumps({"prompt": 42})]),
                          r"p.jsonl:2: field 'prompt' must be a string or a list of chat messages, got int"),
    "bad_message": (lambda t: _jsonl(t, [json.dumps({"messages": [{"role": "robot", "content": "x"}]})]),
                    r"p.jsonl:1: field 'messages\[0\]' must be"),
    "duplicate_ids": (lambda t: _jsonl(t, [json.dumps({"id": "a", "prompt": "x"}), json.dumps({"id": "a", "prompt": "y"})]),
                      r"p.jsonl:2: duplicate id 'a' \(first at .*p.jsonl:1\)"),
    "csv_wrong_header": (lambda t: _write(t / "p.csv", "question,answer\nWhat is 1+1?,2\n"),
                         r"p.csv:1: CSV header has columns \['question', 'answer'\]; expected a 'prompt' column"),
    "not_an_object": (lambda t: _jsonl(t, ['["What is 1+1?"]']), r"p.jsonl:1: expected a JSON object per line, got list"),
    "missing_file": (lambda t: t / "nope.jsonl", r"nope.jsonl: input not found"),
    "csv_unterminated_quote": (lambda t: _write(t / "p.csv", 'prompt,x\nok,1\n"unterminated,1\n'),
                               r"p.csv:3: malformed CSV \(unexpected end of data\)"),
    "messages_as_string": (lambda t: _jsonl(t, [json.dumps({"messages": "What is 1+1?"})]),
                           r"p.jsonl:1: field 'messages' is a string; expected a list of chat messages"),
    "mixed_column_types": (lambda t: _jsonl(t, [json.dumps({"prompt": "a", "k": "1"}), json.dumps({"prompt": "b", "k": 2})]),
                           r"p.jsonl:2: field 'k' is a number, but it is a string at .*p.jsonl:1"),
    "symlink_loop": (lambda t: _loop(t), r"loop-a: a loop of symbolic links"),
    "dangling_symlink": (lambda t: _dangling(t), r"link.jsonl: a symbolic link to '.*gone.jsonl', which does not exist"),
}


def _loop(tmp_path):
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    return tmp_path / "loop-a"


def _dangling(tmp_path):
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "gone.jsonl")
    return tmp_path / "link.jsonl"


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_in_process(tmp_path, case):
    from rlaif.errors import InputError

    make, pattern = BAD_INPUTS[case]
    with pytest.raises(InputError, match=pattern):
        read_prompts(str(make(tmp_path)))


@pytest.mark.parametrize("case", ["malformed_json", "non_utf8", "duplicate_ids", "csv_wrong_header", "empty_file",
                                  "unknown_type", "non_string_prompt", "nul_byte", "csv_unterminated_quote",
                                  "messages_as_string", "mixed_column_types", "symlink_loop"])
def test_bad_input_cli_one_line_no_traceback(tmp_path, case):
    make, pattern = BAD_INPUTS[case]
    path = make(tmp_path)
    result = run_cli("generate", "--input", path, "--model", "toy:policy", "--out", tmp_path / "run", "-q")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "run" / "iter-000" / "generate" / "candidates").exists()


def test_formats_agree(tmp_path):
    rows = [{"id": "a", "prompt": "What is 1+1?", "solution": "2"}, {"id": "b", "prompt": "What is 2+2?", "solution": "4"}]
    _jsonl(tmp_path, [json.dumps(r) for r in rows])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    _write(tmp_path / "p.csv", "id,prompt,solution\na,What is 1+1?,2\nb,What is 2+2?,4\n")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    loaded = [read_prompts(str(tmp_path / n))[0].to_list() for n in ("p.jsonl", "p.parquet", "p.csv", "saved")]
    assert all(x == loaded[0] for x in loaded)
    assert loaded[0][0] == {"id": "a", "messages": [{"role": "user", "content": "What is 1+1?"}], "solution": "2"}


def test_ids_derived_from_content_and_prompt_column(tmp_path):
    path = _jsonl(tmp_path, [json.dumps({"question": "What is 1+1?"}), json.dumps({"question": "What is 1+2?"})])
    ds, fp1 = read_prompts(str(path), prompt_column="question")
    again, fp2 = read_prompts(str(path), prompt_column="question")
    assert ds["id"] == again["id"] and len(set(ds["id"])) == 2 and fp1 == fp2
    assert "question" not in ds.column_names


@pytest.mark.parametrize("model, pattern", [
    ("{tmp}/no-such-model", r"field 'generate.model': .*no-such-model: no such model directory"),
    ("{tmp}", r"field 'generate.model': .*: not a model directory \(no config.json"),
])
def test_model_path_that_is_not_a_model_is_one_clear_line(tmp_path, model, pattern):
    import re

    path = _jsonl(tmp_path, [GOOD])
    result = run_cli("generate", "--input", path, "--model", model.format(tmp=tmp_path), "--out", tmp_path / "run", "-q")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and re.search(pattern, lines[0]), result.stderr

"""Paths that are not files to read, for every reader of a path (graph files, checkpoints, training text): a FIFO
is refused at once instead of waiting for a writer forever, a link to /dev/zero instead of reading until memory
runs out, a folder or an oversized file with the reader's own error in one line (issue 12, item 7). And the
strict JSON all of graphgpt's files are parsed with (ir/untrusted.py): no duplicate keys, NaN, numbers beyond a
float, huge integers or deep nesting (item 9), while brackets and escapes inside strings are only text."""

import os
import threading

import pytest

from graphgpt.ir import SerializationError, load_graph
from graphgpt.ir import serialize, untrusted
from graphgpt.training import checkpoint, corpus
from graphgpt.training.checkpoint import CheckpointError, load_checkpoint
from graphgpt.training.corpus import DataError, read_text
from graphgpt.training.trainer import TrainOptions

# Each reader: (function of a path, its error, the module holding its size limit, the limit's name).
READERS = {
    "graph file": (load_graph, SerializationError, serialize, "MAX_FILE_BYTES"),
    "checkpoint": (load_checkpoint, CheckpointError, checkpoint, "MAX_CHECKPOINT_BYTES"),
    "training text": (read_text, DataError, corpus, "MAX_TEXT_BYTES"),
}


def refusal(read, path, seconds=20):
    """The exception `read(path)` raises, from a thread given `seconds`: a reader stuck on a FIFO fails the test
    instead of hanging it (and is released by opening the FIFO's other end)."""
    outcome = {}

    def attempt():
        try:
            read(path)
        except Exception as error:  # the test checks what it is
            outcome["error"] = error

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # the reader sees end of file and returns
        thread.join(seconds)
        pytest.fail(f"reading {path} did not return within {seconds} s")
    assert "error" in outcome, f"reading {path} succeeded"
    return outcome["error"]


def one_line_refusal(reader, path, message):
    read, error_type, _, _ = READERS[reader]
    error = refusal(read, str(path))
    assert isinstance(error, error_type) and "\n" not in str(error), repr(error)
    assert message in str(error), str(error)


@pytest.mark.parametrize("reader", list(READERS))
def test_a_fifo_is_refused_at_once(tmp_path, reader):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    one_line_refusal(reader, fifo, "not a regular file (a FIFO)")


@pytest.mark.parametrize("reader", list(READERS))
def test_a_link_to_dev_zero_is_refused_unread(tmp_path, reader):
    link = tmp_path / "zeros"
    os.symlink("/dev/zero", link)
    one_line_refusal(reader, link, "not a regular file (a character device)")


@pytest.mark.parametrize("reader", list(READERS))
def test_a_folder_is_refused(tmp_path, reader):
    one_line_refusal(reader, tmp_path, "not a regular file (a directory)")


@pytest.mark.parametrize("reader", list(READERS))
def test_an_oversized_file_is_refused_unread(tmp_path, monkeypatch, reader):
    _, _, module, limit = READERS[reader]
    monkeypatch.setattr(module, limit, 100)
    big = tmp_path / "big"
    big.write_bytes(b" " * 1000)
    one_line_refusal(reader, big, "1000 bytes, more than the 100 allowed")


def test_a_file_growing_after_its_size_was_checked_is_read_no_further(tmp_path, monkeypatch):
    """fstat said 0 bytes (the file grew after it): read_regular_file still reads at most limit + 1 bytes."""
    grown = tmp_path / "grown"
    grown.write_bytes(b"x" * 5000)
    real_fstat = os.fstat

    def fstat_before_growing(descriptor):
        status = real_fstat(descriptor)
        return os.stat_result(status[:6] + (0,) + status[7:])  # index 6 is st_size

    monkeypatch.setattr(untrusted.os, "fstat", fstat_before_growing)
    with pytest.raises(ValueError, match="more than the 100 bytes allowed"):
        untrusted.read_regular_file(grown, 100, ValueError)


def test_training_text_keeps_the_newlines_text_mode_gave(tmp_path):
    """read_text reads bytes now; CRLF and CR still become LF, as open() in text mode made them, so a checkpoint's
    vocabulary trained on such a file still covers it."""
    path = tmp_path / "windows.txt"
    path.write_bytes("one\r\ntwo\rthree\n€".encode("utf-8"))
    assert read_text(str(path)) == "one\ntwo\nthree\n€"


# Strict JSON: each case (text, the reason it is refused).
MALFORMED_JSON = {
    "duplicate key": ('{"a": 1, "b": 2, "a": 3}', "key 'a' appears twice in one object"),
    "duplicate key, nested": ('[{"x": {"y": 1, "y": 1}}]', "key 'y' appears twice"),
    "NaN": ('{"a": NaN}', "JSON constant NaN is not allowed"),
    "-Infinity": ('[-Infinity]', "JSON constant -Infinity is not allowed"),
    "float overflow": ('[1e400]', "the number 1e400 is beyond the range of a float"),
    "negative float overflow": ('[-2.5e308]', "the number -2.5e308 is beyond the range of a float"),
    "5000-digit integer": ("[" + "9" * 5000 + "]", "an integer of 5000 digits, more than the 64 allowed"),
    "65 deep": ("[" * 65 + "]" * 65, "JSON nested too deeply: 65 levels, more than the 64 allowed"),
    "100k deep objects": ('{"a":' * 100_000 + "1" + "}" * 100_000, "JSON nested too deeply: 100000 levels"),
    "deep and unterminated": ("[" * 100_000, "JSON nested too deeply"),
    "not UTF-8": (b'["\xff"]', "not valid JSON: not UTF-8 text (invalid start byte at byte 2)"),
    "truncated": ('{"a": [1, 2', "not valid JSON (truncated or corrupt)"),
}


@pytest.mark.parametrize("case", list(MALFORMED_JSON))
def test_malformed_json_is_refused_with_the_callers_error(case):
    text, reason = MALFORMED_JSON[case]
    with pytest.raises(SerializationError) as refused:
        untrusted.parse_json(text, lambda why: SerializationError(f"somewhere: {why}"))
    assert str(refused.value).startswith(f"somewhere: {reason}")


def nested_lists(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("text,value", [
    ('{"a": "[[[[{{{{" , "b": "\\"[[[["}', {"a": "[[[[{{{{", "b": '"[[[['}),  # brackets in strings are text
    ('["\\\\", [[1]]]', ["\\", [[1]]]),  # an escaped backslash does not escape the quote after it
    ("[" * 64 + "]" * 64, nested_lists(64)),  # exactly the limit
    ('{"big": ' + "9" * 64 + ', "small": -1e-300, "inc": ' + str(2**127 + 1) + "}",
     {"big": int("9" * 64), "small": -1e-300, "inc": 2**127 + 1}),
])
def test_valid_json_at_the_limits_is_read(text, value):
    assert untrusted.parse_json(text, ValueError) == value


def test_checkpoint_options_it_checks_are_fields_of_train_options():
    """What a checkpoint requires of its options record names fields the trainer writes."""
    fields = set(TrainOptions.__dataclass_fields__)
    assert set(checkpoint.OPTIONS_FROM_CONFIG) | set(checkpoint.OPTIONS_FROM_HYPERPARAMETERS) | {"batch", "seed"} \
        <= fields

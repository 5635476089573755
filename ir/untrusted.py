"""Reading files that may be hostile: graph files, checkpoints, training text. The one place where graphgpt opens
a path to read it and parses JSON from it, so every reader gets the same guarantees:

- only a regular file is read (a FIFO, a device such as /dev/zero, a directory is refused), decided from the
  opened descriptor, so the path cannot be swapped between the check and the read;
- at most a stated number of bytes is ever read;
- JSON is strict: bounded nesting depth (checked before the parser runs), no duplicate keys, no NaN or
  Infinity, no number that overflows a float, no integer longer than MAX_INTEGER_DIGITS digits.

Every refusal is raised as the caller's own error type, built by a `refuse(reason)` callable the caller passes,
so a graph file gets a SerializationError and a checkpoint a CheckpointError, each in one line:

    raw = read_regular_file(path, 1 << 20, lambda reason: MyError(f"cannot read {path}: {reason}"))
    data = parse_json(raw, lambda reason: MyError(f"{path}: {reason}"))
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from typing import Any, BinaryIO, Callable, Union

import numpy as np

Refuse = Callable[[str], Exception]  # builds the caller's error from a one-line reason

MAX_JSON_DEPTH = 64  # graphgpt's own files nest 6 deep; deeper is hostile (and would exhaust the parser's stack)
MAX_INTEGER_DIGITS = 64  # a 128-bit generator state has 39 digits; longer integers only cost time to convert

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_STRUCTURAL = b'[]{}"'
_ALL_BUT_STRUCTURAL = bytes(sorted(set(range(256)) - set(_STRUCTURAL)))
_ESCAPE = re.compile(rb"\\.", re.DOTALL)


def _reason(error: OSError) -> str:
    """'no such file or directory': the system's words, lower case, to follow the caller's 'where: '."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def open_regular_file(path: Union[str, os.PathLike], max_bytes: int, refuse: Refuse) -> BinaryIO:
    """The file at `path` opened for binary reading, if it is a regular file of at most `max_bytes` bytes.

    Opened without blocking (opening a FIFO for reading would otherwise wait for a writer forever), then checked
    with fstat on the opened descriptor: what is read is what was checked. The size is only what fstat says
    now; read_regular_file also bounds the bytes it reads, in case the file grows."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        raise refuse(_reason(error)) from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            kind = next((name for is_kind, name in _FILE_KINDS if is_kind(status.st_mode)), "a special file")
            raise refuse(f"not a regular file ({kind})")
        if status.st_size > max_bytes:
            raise refuse(f"{status.st_size} bytes, more than the {max_bytes} allowed")
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(descriptor, True)  # non-blocking was for the open; a regular file reads the same
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular_file(path: Union[str, os.PathLike], max_bytes: int, refuse: Refuse) -> bytes:
    """The whole content of a regular file of at most `max_bytes` bytes; never reads more than max_bytes + 1."""
    with open_regular_file(path, max_bytes, refuse) as file:
        try:
            content = file.read(max_bytes + 1)
        except OSError as error:
            raise refuse(_reason(error)) from None
    if len(content) > max_bytes:  # it grew after the size check
        raise refuse(f"more than the {max_bytes} bytes allowed")
    return content


class _Malformed(Exception):
    """Raised by the JSON parser's hooks; parse_json turns it into the caller's error."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):  # json.loads would silently keep the last of two values
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise _Malformed(f"key {key!r:.60} appears twice in one object")
            seen.add(key)
    return record


def _refuse_constant(name: str) -> None:
    raise _Malformed(f"JSON constant {name} is not allowed")


def _bounded_integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise _Malformed(f"an integer of {digits} digits, more than the {MAX_INTEGER_DIGITS} allowed")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 would silently become infinity
        raise _Malformed(f"the number {text:.40} is beyond the range of a float")
    return value


def json_nesting_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in JSON text, counted without parsing it (so without recursion).

    Escapes are removed first (so an escaped quote does not end a string), then everything but brackets and
    quotes; what lies between quotes is inside a string and does not count. On invalid JSON this may differ
    from a parser's view only after the first invalid character, where the parser stops anyway."""
    structural = _ESCAPE.sub(b"", raw).translate(None, _ALL_BUT_STRUCTURAL)
    brackets = np.frombuffer(b"".join(structural.split(b'"')[0::2]), np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), np.int32(1), np.int32(-1))
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def parse_json(text: Union[str, bytes], refuse: Refuse) -> Any:
    """Strict JSON: UTF-8, nesting bounded before parsing, unique keys, finite numbers, bounded integers."""
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise refuse(f"not valid JSON: not UTF-8 text ({error.reason} at byte {error.start})") from None
    else:
        raw = text.encode("utf-8", "surrogatepass")  # only scanned for brackets and quotes
    depth = json_nesting_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise refuse(f"JSON nested too deeply: {depth} levels, more than the {MAX_JSON_DEPTH} allowed")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant,
                          parse_int=_bounded_integer, parse_float=_finite_float)
    except json.JSONDecodeError as error:
        raise refuse(f"not valid JSON (truncated or corrupt): {error}") from None
    except _Malformed as error:
        raise refuse(str(error)) from None

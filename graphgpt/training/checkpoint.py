"""Checkpoints: model weights, optimizer state and metadata (config, vocabulary, step, sampler state, options) in
one NumPy .npz file (a zip of .npy arrays).

Written atomically (a temporary file in the same folder, flushed and fsynced, then renamed over the old one), so
a run killed at any moment leaves either the previous checkpoint or the new one, never a broken file; what would
be refused on reading (a NaN weight, a NaN in the metadata) is refused on writing too.

Read as a hostile file: only a regular file of bounded size (ir/untrusted.py); the zip is read member by member
without np.load and without pickle; each member's .npy header is parsed and checked (plain numeric dtype, the
shape the validated metadata implies, its size agreeing with the zip directory) before any of its data is read;
the metadata is strict JSON (no duplicate keys, NaN or deep nesting); and every field is validated, the optimizer's
hyperparameters through the optimizer's own constructor. Anything wrong is one CheckpointError line.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import numpy as np

from ..ir.untrusted import open_regular_file, parse_json
from ..optim import SGD, Adam, AdamW, Optimizer
from ..passes.backends import BACKENDS
from .atomic_file import atomic_file

FORMAT_NAME = "graphgpt-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "metadata"
MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_CHECKPOINT_BYTES = 8 * 1024 ** 3
MAX_NPY_HEADER_BYTES = 4096  # np.save writes ~120 bytes for a plain array; numpy itself reads up to 4 GiB
# zipfile builds an object per entry of the central directory (from 46 bytes each) before anything can be checked.
# A GPT at CONFIG_LIMITS has 4,102 parameters: with two optimizer slots, 12,308 arrays, about 1.5 MiB of directory.
MAX_DIRECTORY_BYTES = 8 * 1024 * 1024
CONFIG_LIMITS = {"vocab_size": (1, 1 << 20), "embed_dim": (1, 1 << 14), "num_layers": (1, 256),
                 "num_heads": (1, 1024), "max_seq_len": (1, 1 << 16)}
METADATA_FIELDS = ("format", "version", "config", "vocabulary", "step", "optimizer", "sampler_state", "options",
                   "shards")  # shards (the run's data-parallel split) is optional: older checkpoints lack it
# The optimizers a checkpoint may name; each one's hyperparameters are checked by constructing it.
OPTIMIZER_TYPES = (SGD, Adam, AdamW)
NON_NEGATIVE_SLOTS = ("exp_avg_sq",)  # a running mean of squared gradients: Adam takes its square root
# Training options a resumed run takes from the checkpoint, each restating a config field or a hyperparameter of
# the optimizer, which it must agree with (so the config's limits and the optimizer's constructor have checked it).
OPTIONS_FROM_CONFIG = {"seq_len": "max_seq_len", "embed": "embed_dim", "layers": "num_layers", "heads": "num_heads"}
OPTIONS_FROM_HYPERPARAMETERS = {"lr": "lr", "weight_decay": "weight_decay", "clip": "clip_grad_norm"}
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model holds float32: a larger float64 would load as infinity
PCG64_LIMITS = {"state": 1 << 128, "inc": 1 << 128, "uinteger": 1 << 32}


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, not a graphgpt checkpoint, or holds values that cannot
    be resumed from (NaN, out of range, inconsistent); or a checkpoint that would be such a file, when writing."""


@dataclass
class Checkpoint:
    metadata: dict
    model_state: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]


@dataclass
class _Record:
    """One array of the archive as its .npy header describes it, before its data is read."""
    member: zipfile.ZipInfo
    shape: tuple[int, ...]
    stored_dtype: np.dtype  # as written, maybe of the other byte order
    fortran_order: bool
    data_offset: int  # bytes of magic, version and header before the data

    @property
    def dtype(self) -> np.dtype:
        """The dtype as loaded: in this machine's byte order."""
        return self.stored_dtype.newbyteorder("=")


def save_checkpoint(path: str, model_state: dict, optimizer_state: dict, metadata: dict) -> None:
    """Write atomically: the old file stays intact until the new one is complete on disk. Refuses (writing
    nothing) weights or optimizer state holding NaN or infinity, and metadata JSON cannot hold exactly."""
    for kind, state in (("weight", model_state), ("optimizer state", optimizer_state)):
        for name, value in state.items():
            _check(_finite_float32(np.asarray(value)), path, f"refusing to write {kind} {name}: it holds NaN or "
                                                             f"infinity (did training diverge?)")
    arrays = {f"model/{name}": value for name, value in model_state.items()}
    arrays.update({f"optimizer/{name}": value for name, value in optimizer_state.items()})
    try:
        document = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, **metadata}, allow_nan=False)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: refusing to write metadata holding {error}") from None
    arrays[METADATA_KEY] = np.frombuffer(document.encode("utf-8"), dtype=np.uint8)
    with atomic_file(path, "wb") as file:
        np.savez(file, **arrays)


def _check(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise CheckpointError(f"checkpoint {path}: {message}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not the number 1


def _is_number(value: Any) -> bool:
    """An int or a finite float (strict JSON has no NaN or infinity, but a caller's dict may)."""
    return _is_integer(value) or (isinstance(value, float) and math.isfinite(value))


def _finite_float32(array: np.ndarray) -> bool:
    """Every element finite and within float32's range (NaN compares false)."""
    return bool(np.all(np.abs(array) <= FLOAT32_MAX))


@contextmanager
def _reading(path: str, what: str) -> Iterator[None]:
    """Whatever zipfile, zlib or numpy raise on damaged bytes becomes one CheckpointError line."""
    try:
        yield
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path}: {what}unreadable (truncated, corrupt or not a checkpoint): "
                              f"{type(error).__name__}: {' '.join(str(error).split())}") from None


def _central_directory_bytes(file: BinaryIO) -> int:
    """The size of the zip's central directory as zipfile will read it: from the end-of-central-directory record
    found as zipfile finds it (at the very end, else the last one in the final 64 KiB), or from the zip64 record
    zipfile reads right before the zip64 locator. 0 without an end record (zipfile then refuses the file)."""
    size = file.seek(0, os.SEEK_END)
    start = max(size - 22 - 0xFFFF, 0)  # an end record is 22 bytes and may be followed by a comment of 64 KiB
    file.seek(start)
    tail = file.read()
    at_end = tail[-22:-18] == b"PK\x05\x06" and tail[-2:] == b"\0\0"  # no comment
    end = len(tail) - 22 if at_end else tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) - end < 22:
        return 0
    directory = int.from_bytes(tail[end + 12:end + 16], "little")
    record = start + end  # where the end record is in the file
    if record >= 20 + 56:
        file.seek(record - 20)
        if file.read(4) == b"PK\x06\x07":  # a zip64 locator: the sizes are in the zip64 record before it
            file.seek(record - 20 - 56)
            zip64 = file.read(56)
            if zip64[:4] == b"PK\x06\x06":
                directory = int.from_bytes(zip64[40:48], "little")
    file.seek(0)
    return directory


def _read_exactly(stream: BinaryIO, count: int, what: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise EOFError(f"{what}: expected {count} bytes, found {len(data)}")
    return data


def _read_header(archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str, path: str) -> _Record:
    """The .npy header of one member, parsed with bounded reads and checked against the zip directory."""
    with archive.open(member) as stream:
        prefix = _read_exactly(stream, 8, "magic string")
        _check(prefix[:6] == b"\x93NUMPY", path, f"record {name} is not a .npy array")
        length_size = {(1, 0): 2, (2, 0): 4}.get((prefix[6], prefix[7]))
        _check(length_size is not None, path, f"record {name}: .npy format version {prefix[6]}.{prefix[7]} is not "
                                              f"read (1.0 and 2.0 are)")
        length_bytes = _read_exactly(stream, length_size, "header length")
        length = int.from_bytes(length_bytes, "little")
        _check(length <= MAX_NPY_HEADER_BYTES, path,
               f"record {name}: .npy header of {length} bytes, more than the {MAX_NPY_HEADER_BYTES} allowed")
        header = io.BytesIO(length_bytes + _read_exactly(stream, length, "header"))
    read_header = np.lib.format.read_array_header_1_0 if length_size == 2 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(header)  # ast.literal_eval of a bounded text: nothing executed
    # Plain numbers only: an object dtype would need pickle, a structured one is nothing a checkpoint holds.
    _check(dtype.kind in "biuf" and dtype.fields is None and dtype.subdtype is None, path,
           f"record {name} holds dtype {dtype}; a checkpoint holds only plain numbers")
    _check(all(dimension >= 0 for dimension in shape), path, f"record {name} has a negative dimension {shape}")
    data_offset = 8 + length_size + length
    data_bytes = math.prod(shape) * dtype.itemsize
    _check(data_offset + data_bytes == member.file_size, path,
           f"record {name}: its header says {list(shape)} {dtype} ({data_bytes} bytes of data), the archive holds "
           f"{member.file_size - data_offset}")
    return _Record(member, tuple(shape), dtype, fortran_order, data_offset)


def _read_data(archive: zipfile.ZipFile, record: _Record) -> np.ndarray:
    """The array of a record whose header was checked: exactly as many bytes as its header says, nothing more
    (reading to the end makes zipfile check the member's CRC)."""
    array = np.empty(math.prod(record.shape), record.stored_dtype)
    target = memoryview(array.view(np.uint8))
    with archive.open(record.member) as stream:
        _read_exactly(stream, record.data_offset, "header")
        filled = 0
        while filled < len(target):
            count = stream.readinto(target[filled:])
            if not count:
                raise EOFError(f"array data: expected {len(target)} bytes, found {filled}")
            filled += count
        if stream.read(1):
            raise ValueError("data after the array")
    array = array.reshape(record.shape[::-1]).T if record.fortran_order else array.reshape(record.shape)
    return array.astype(record.dtype, copy=False)


def _records(archive: zipfile.ZipFile, path: str) -> dict[str, _Record]:
    """Every member of the archive by record name ('model/...', 'optimizer/...', 'metadata'), headers checked."""
    members = archive.infolist()
    repeated = sorted(name for name, count in Counter(member.filename for member in members).items() if count > 1)
    _check(not repeated, path, f"the archive holds {repeated[:3]} more than once (which one counts?)")
    for member in members:
        _check(member.filename.endswith(".npy"), path, f"member {member.filename!r:.80} is not a .npy array")
        _check(not member.flag_bits & 0x1, path, f"member {member.filename!r:.80} is encrypted")
        _check(member.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED), path,
               f"member {member.filename!r:.80} uses compression method {member.compress_type}; stored or deflated "
               f"members are read")
    # Sizes from the directory first: a small file must not unpack into gigabytes (a zip bomb). Each header
    # must then agree with its directory entry, so the headers are bounded by this sum too.
    unpacked = sum(member.file_size for member in members)
    _check(unpacked <= MAX_CHECKPOINT_BYTES, path,
           f"unpacks to {unpacked} bytes, more than the {MAX_CHECKPOINT_BYTES} a checkpoint may hold")
    records = {}
    for member in members:
        name = member.filename[:-len(".npy")]
        with _reading(path, f"record {name}: "):
            records[name] = _read_header(archive, member, name, path)
    return records


def _read_metadata(archive: zipfile.ZipFile, record: _Record, path: str) -> dict:
    """The metadata record (bytes of strict JSON in a 1-D uint8 array): a graphgpt checkpoint of this version with
    each field present and of its JSON kind, and no others; what the fields hold is _validate_metadata's."""
    _check(record is not None and record.dtype == np.uint8 and len(record.shape) == 1
           and record.shape[0] <= MAX_METADATA_BYTES, path, "no metadata record")
    with _reading(path, "metadata: "):
        raw = _read_data(archive, record).tobytes()
    metadata = parse_json(raw, lambda reason: CheckpointError(f"checkpoint {path}: metadata: {reason}"))
    _check(isinstance(metadata, dict) and metadata.get("format") == FORMAT_NAME, path, "not a graphgpt checkpoint")
    _check(metadata.get("version") == FORMAT_VERSION, path,
           f"format version {metadata.get('version')!r:.20} is not supported (this graphgpt reads {FORMAT_VERSION})")
    for key, kind in (("config", dict), ("vocabulary", list), ("optimizer", dict), ("step", int),
                      ("sampler_state", dict), ("options", dict)):
        _check(isinstance(metadata.get(key), kind), path, f"metadata field {key!r} missing or not a {kind.__name__}")
    unexpected = sorted(set(metadata) - set(METADATA_FIELDS))
    _check(not unexpected, path, f"unexpected metadata fields {unexpected[:5]}")
    return metadata


def load_checkpoint(path: str) -> Checkpoint:
    """Read and validate a checkpoint written by save_checkpoint; CheckpointError says what is wrong. Every header
    and the metadata are checked before any array's data is read, so nothing is allocated for a size the
    validated config does not imply."""
    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: {reason} (train first, or check --checkpoint / --checkpoint-dir)")

    with open_regular_file(path, MAX_CHECKPOINT_BYTES, refuse) as file:
        directory = _central_directory_bytes(file)
        _check(directory <= MAX_DIRECTORY_BYTES, path, f"its zip directory is {directory} bytes, more than the "
                                                       f"{MAX_DIRECTORY_BYTES} a checkpoint's needs")
        with _reading(path, ""):
            archive = zipfile.ZipFile(file)
        with archive:
            records = _records(archive, path)
            metadata = _read_metadata(archive, records.pop(METADATA_KEY, None), path)
            config, optimizer = _validate_metadata(metadata, path)
            expected = _expected_records(config, optimizer)
            _check_records(records, expected, path)
            arrays = {}
            for name, record in records.items():
                with _reading(path, f"record {name}: "):
                    arrays[name] = _read_data(archive, record)
    model_state = {name[len("model/"):]: value for name, value in arrays.items() if name.startswith("model/")}
    optimizer_state = {name[len("optimizer/"):]: value for name, value in arrays.items()
                       if name.startswith("optimizer/")}
    for name, value in model_state.items():
        _check(_finite_float32(value), path, f"weight {name} holds NaN or infinity (or a value beyond float32)")
    _validate_optimizer_state(optimizer_state, metadata["step"], path)
    return Checkpoint(metadata, model_state, optimizer_state)


def _validate_config(config, path: str) -> None:
    _check(isinstance(config, dict) and set(config) == set(CONFIG_LIMITS), path,
           f"config must have exactly {sorted(CONFIG_LIMITS)}")
    for name, (low, high) in CONFIG_LIMITS.items():
        value = config[name]
        _check(_is_integer(value) and low <= value <= high, path,
               f"config {name} must be an integer in [{low}, {high}], got {value!r:.40}")
    _check(config["embed_dim"] % config["num_heads"] == 0, path, "embed_dim must be divisible by num_heads")


def expected_parameter_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every parameter name of GPT(**config) with its shape, without building the model."""
    vocab, embed, hidden = config["vocab_size"], config["embed_dim"], 4 * config["embed_dim"]
    shapes = {"token_embedding.weight": (vocab, embed), "position_embedding.weight": (config["max_seq_len"], embed)}
    for block in range(config["num_layers"]):
        prefix = f"blocks.{block}"
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{prefix}.attention.{projection}.weight"] = (embed, embed)
            shapes[f"{prefix}.attention.{projection}.bias"] = (embed,)
        for norm in ("ln1", "ln2"):
            shapes[f"{prefix}.{norm}.gamma"] = shapes[f"{prefix}.{norm}.beta"] = (embed,)
        shapes[f"{prefix}.mlp.linear1.weight"], shapes[f"{prefix}.mlp.linear1.bias"] = (embed, hidden), (hidden,)
        shapes[f"{prefix}.mlp.linear2.weight"], shapes[f"{prefix}.mlp.linear2.bias"] = (hidden, embed), (embed,)
    shapes.update({"ln_f.gamma": (embed,), "ln_f.beta": (embed,), "lm_head.weight": (embed, vocab)})
    return shapes


def _validate_metadata(metadata: dict, path: str) -> tuple[dict, Optimizer]:
    """Every metadata field; returns the config and the optimizer the metadata describes (unbound)."""
    config = metadata["config"]
    _validate_config(config, path)
    vocabulary = metadata["vocabulary"]
    _check(len(vocabulary) == config["vocab_size"] and all(isinstance(c, str) and len(c) == 1 for c in vocabulary)
           and len(set(vocabulary)) == len(vocabulary), path,
           f"vocabulary must be {config['vocab_size']} distinct single characters")
    try:  # a lone surrogate (JSON "\ud800") is one character but cannot be printed or come from UTF-8 text
        "".join(vocabulary).encode("utf-8")
    except UnicodeEncodeError as error:
        raise CheckpointError(f"checkpoint {path}: vocabulary holds {error.object[error.start]!r}, which is not a "
                              f"character of UTF-8 text") from None
    _check(_is_integer(metadata["step"]) and metadata["step"] >= 0, path,
           f"step must be non-negative (a whole number), got {metadata['step']!r:.20}")
    optimizer = _validate_optimizer(metadata["optimizer"], path)
    _validate_options(metadata["options"], config, optimizer.hyperparameters, path)
    shards = metadata.get("shards")  # each shard of a step takes at least one example of the batch
    _check(shards is None or (_is_integer(shards) and 1 <= shards <= metadata["options"]["batch"]), path,
           f"shards must be a whole number from 1 to the batch {metadata['options']['batch']}, got {shards!r:.40}")
    _validate_sampler_state(metadata["sampler_state"], path)
    return config, optimizer


def _validate_optimizer(record: dict, path: str) -> Optimizer:
    """The optimizer named by the metadata, built from its hyperparameters: its constructor checks each of them
    (a finite number in range, graphgpt/optim.py), and the record must hold what that optimizer records (no
    hyperparameter missing; an unknown one the constructor refuses)."""
    _check(set(record) == {"type", "hyperparameters"} and isinstance(record["hyperparameters"], dict), path,
           "optimizer metadata needs a type and hyperparameters")
    kinds = {kind.__name__: kind for kind in OPTIMIZER_TYPES}
    _check(isinstance(record["type"], str) and record["type"] in kinds, path,
           f"optimizer type {record['type']!r:.40} is not one of {sorted(kinds)}")
    hyperparameters = record["hyperparameters"]
    try:
        optimizer = kinds[record["type"]](**hyperparameters)
    except (TypeError, ValueError, OverflowError) as error:
        raise CheckpointError(f"checkpoint {path}: optimizer hyperparameters are not valid for {record['type']}: "
                              f"{error}") from None
    _check(optimizer.hyperparameters == hyperparameters, path,
           f"optimizer hyperparameters {hyperparameters!r:.200} are not what {record['type']} records "
           f"({optimizer.hyperparameters})")
    return optimizer


def _validate_options(options: dict, config: dict, hyperparameters: dict, path: str) -> None:
    """The training options of the run (training.options.TrainOptions as a dict, so its fields come and go with it):
    every value a JSON scalar; those a resumed run takes from here present and consistent. The trainer checks the
    ranges of what it resumes with (options.OPTION_RANGES); fields it does not resume with are never read."""
    for name, value in options.items():
        _check(value is None or isinstance(value, (bool, str)) or _is_number(value), path,
               f"option {name!r:.40} must be a number, text, true/false or null, got {value!r:.40}")
    missing = sorted({*OPTIONS_FROM_CONFIG, *OPTIONS_FROM_HYPERPARAMETERS, "batch", "seed"} - set(options))
    _check(not missing, path, f"options miss {missing}")
    for name, key in OPTIONS_FROM_CONFIG.items():
        _check(_is_integer(options[name]) and options[name] == config[key], path,
               f"option {name} is {options[name]!r:.40} but the config's {key} is {config[key]}")
    for name, key in OPTIONS_FROM_HYPERPARAMETERS.items():
        value = options[name]
        _check((_is_number(value) or (value is None and name == "clip")) and value == hyperparameters[key], path,
               f"option {name} is {value!r:.40} but the optimizer's {key} is {hyperparameters[key]}")
    _check(_is_integer(options["batch"]) and options["batch"] >= 1, path,
           f"option batch must be a whole number of at least 1, got {options['batch']!r:.40}")
    _check(_is_integer(options["seed"]) and options["seed"] >= 0, path,  # what np.random.default_rng takes
           f"option seed must be a whole number of at least 0, got {options['seed']!r:.40}")
    _check(options.get("backend") in (None, *BACKENDS), path,  # older checkpoints do not record it
           f"option backend must be one of {', '.join(BACKENDS)}, got {options.get('backend')!r:.40}")


def _validate_sampler_state(state: dict, path: str) -> None:
    """A PCG64 state, exactly as numpy records it: numpy's own setter would take floats, booleans and extra
    keys, and raise OverflowError on integers out of range."""
    _check(set(state) == {"bit_generator", "state", "has_uint32", "uinteger"} and state["bit_generator"] == "PCG64"
           and isinstance(state["state"], dict) and set(state["state"]) == {"state", "inc"}, path,
           "sampler_state is not a valid generator state: expected PCG64's bit_generator, state {state, inc}, "
           "has_uint32 and uinteger")
    for name, value in (("state", state["state"]["state"]), ("inc", state["state"]["inc"]),
                        ("uinteger", state["uinteger"])):
        _check(_is_integer(value) and 0 <= value < PCG64_LIMITS[name], path,
               f"sampler_state is not a valid generator state: {name} must be an integer in "
               f"[0, {PCG64_LIMITS[name]}), got {value!r:.50}")
    _check(state["state"]["inc"] % 2 == 1 and state["has_uint32"] in (0, 1) and _is_integer(state["has_uint32"]),
           path, "sampler_state is not a valid generator state: inc must be odd and has_uint32 0 or 1")
    try:  # the same state must be one a generator takes, or resuming would fail mid-way
        np.random.default_rng().bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        raise CheckpointError(f"checkpoint {path}: sampler_state is not a valid generator state: {error!r:.120}") \
            from None


def _expected_records(config: dict, optimizer: Optimizer) -> dict[str, tuple[int, ...]]:
    """The shape of every array the archive must hold, from the validated config and optimizer."""
    parameters = expected_parameter_shapes(config)
    expected = {f"model/{name}": shape for name, shape in parameters.items()}
    expected["optimizer/step"] = ()
    for slot in optimizer.slots:
        expected.update({f"optimizer/{slot}.{name}": shape for name, shape in parameters.items()})
    return expected


def _check_records(records: dict[str, _Record], expected: dict[str, tuple[int, ...]], path: str) -> None:
    """Names, shapes and dtypes of the archive's arrays against what the metadata implies, before reading data."""
    strays = sorted(name for name in records if not name.startswith(("model/", "optimizer/")))
    _check(not strays, path, f"unexpected records {strays[:5]}")
    model = {name for name in records if name.startswith("model/")}
    wanted = {name for name in expected if name.startswith("model/")}
    _check(model == wanted, path,
           f"model weights do not match the config: missing {sorted(n[6:] for n in wanted - model)[:5]}, "
           f"unexpected {sorted(n[6:] for n in model - wanted)[:5]}")
    foreign = sorted(name.partition("/")[2] for name in set(records) - set(expected))  # all optimizer/ by now
    if foreign:
        raise CheckpointError(f"checkpoint {path}: optimizer state {foreign[0]} does not match a parameter of the "
                              f"model or a slot of the optimizer")
    missing = sorted(set(expected) - set(records))
    _check(not missing, path, f"optimizer state is missing {[name[len('optimizer/'):] for name in missing[:5]]}")
    for name, shape in expected.items():
        record, short = records[name], name.partition("/")[2]
        if name.startswith("model/"):
            _check(record.shape == shape and record.dtype in (np.float32, np.float64), path,
                   f"weight {short} is {record.dtype}{list(record.shape)}, expected float{list(shape)}")
        else:
            _check(record.dtype in (np.float32, np.float64), path, f"optimizer state {short} is not float "
                                                                   f"({record.dtype})")
            _check(record.shape == shape, path,
                   f"optimizer state {short} does not match its parameter's shape: {list(record.shape)}, expected "
                   f"{list(shape)}")


def _validate_optimizer_state(state: dict[str, np.ndarray], step: int, path: str) -> None:
    """Values of the optimizer state: a step count that is the metadata's step, and finite moments (the
    squared-gradient average also non-negative); any NaN here trains the resumed run to NaN."""
    count = float(state["step"])
    _check(math.isfinite(count) and count >= 0 and count == int(count) and int(count) == step, path,
           f"optimizer state step is {count}, expected the metadata's step {step}")
    for name, value in state.items():
        if name == "step":
            continue
        slot = name.partition(".")[0]
        _check(_finite_float32(value), path, f"optimizer state {name} holds NaN or infinity (or a value beyond "
                                             f"float32)")
        _check(slot not in NON_NEGATIVE_SLOTS or bool(np.all(value >= 0)), path,
               f"optimizer state {name} holds negative values; it is an average of squares")

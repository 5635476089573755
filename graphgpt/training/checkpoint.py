"""Checkpoints: model weights, optimizer state and metadata (config, vocabulary, step, sampler state, options) in
one NumPy .npz file.

Written atomically (a temporary file in the same folder, flushed and fsynced, then renamed over the old one), so
a run killed at any moment leaves either the previous checkpoint or the new one, never a broken file. Read with
allow_pickle=False, so nothing in the file is ever executed, and validated in full before anything is used.
"""

from __future__ import annotations

import glob
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

FORMAT_NAME = "graphgpt-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "metadata"
MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_CHECKPOINT_BYTES = 8 * 1024 ** 3
CONFIG_LIMITS = {"vocab_size": (1, 1 << 20), "embed_dim": (1, 1 << 14), "num_layers": (1, 256),
                 "num_heads": (1, 1024), "max_seq_len": (1, 1 << 16)}


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, or not a graphgpt checkpoint."""


@dataclass
class Checkpoint:
    metadata: dict
    model_state: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]


def save_checkpoint(path: str, model_state: dict, optimizer_state: dict, metadata: dict) -> None:
    """Write atomically: the old file stays intact until the new one is complete on disk."""
    arrays = {f"model/{name}": value for name, value in model_state.items()}
    arrays.update({f"optimizer/{name}": value for name, value in optimizer_state.items()})
    document = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, **metadata}).encode("utf-8")
    arrays[METADATA_KEY] = np.frombuffer(document, dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(os.path.basename(path))}.*.tmp")):
        if stale != temporary:  # left by a writer that was killed mid-write: never renamed, never read
            os.remove(stale)
    try:
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    directory = os.open(folder, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _check(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise CheckpointError(f"checkpoint {path}: {message}")


def _validate_config(config, path: str) -> None:
    _check(isinstance(config, dict) and set(config) == set(CONFIG_LIMITS), path,
           f"config must have exactly {sorted(CONFIG_LIMITS)}")
    for name, (low, high) in CONFIG_LIMITS.items():
        value = config[name]
        _check(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high, path,
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


def load_checkpoint(path: str) -> Checkpoint:
    """Read and validate a checkpoint written by save_checkpoint; CheckpointError says what is wrong."""
    _check(os.path.isfile(path), path, "no such file (train first, or check --checkpoint / --checkpoint-dir)")
    try:
        # Sizes first, from the archive's directory: a small file must not unpack into gigabytes (a zip bomb).
        with zipfile.ZipFile(path) as directory:
            unpacked = sum(member.file_size for member in directory.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"checkpoint {path}: unreadable (truncated, corrupt or not a checkpoint): "
                              f"{type(error).__name__}: {error}") from None
    _check(unpacked <= MAX_CHECKPOINT_BYTES, path,
           f"unpacks to {unpacked} bytes, more than the {MAX_CHECKPOINT_BYTES} a checkpoint may hold")
    try:
        with np.load(path, allow_pickle=False) as archive:  # a zip (checked above), so an archive of records
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path}: unreadable (truncated, corrupt or not a checkpoint): "
                              f"{type(error).__name__}: {error}") from None
    raw = arrays.pop(METADATA_KEY, None)
    _check(raw is not None and raw.dtype == np.uint8 and raw.ndim == 1 and raw.size <= MAX_METADATA_BYTES, path,
           "no metadata record")
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path}: metadata is not valid JSON: {error}") from None
    _check(isinstance(metadata, dict) and metadata.get("format") == FORMAT_NAME, path, "not a graphgpt checkpoint")
    _check(metadata.get("version") == FORMAT_VERSION, path,
           f"format version {metadata.get('version')!r:.20} is not supported (this graphgpt reads {FORMAT_VERSION})")
    for key, kind in (("config", dict), ("vocabulary", list), ("optimizer", dict), ("step", int),
                      ("sampler_state", dict), ("options", dict)):
        _check(isinstance(metadata.get(key), kind), path, f"metadata field {key!r} missing or not a {kind.__name__}")
    config = metadata["config"]
    _validate_config(config, path)
    vocabulary = metadata["vocabulary"]
    _check(len(vocabulary) == config["vocab_size"] and all(isinstance(c, str) and len(c) == 1 for c in vocabulary)
           and len(set(vocabulary)) == len(vocabulary), path,
           f"vocabulary must be {config['vocab_size']} distinct single characters")
    _check(metadata["step"] >= 0, path, "step must be non-negative")

    model_state = {name[len("model/"):]: value for name, value in arrays.items() if name.startswith("model/")}
    optimizer_state = {name[len("optimizer/"):]: value for name, value in arrays.items()
                       if name.startswith("optimizer/")}
    strays = sorted(name for name in arrays if not name.startswith(("model/", "optimizer/")))
    _check(not strays, path, f"unexpected records {strays[:5]}")
    expected = expected_parameter_shapes(config)
    _check(set(model_state) == set(expected), path,
           f"model weights do not match the config: missing {sorted(set(expected) - set(model_state))[:5]}, "
           f"unexpected {sorted(set(model_state) - set(expected))[:5]}")
    for name, shape in expected.items():
        value = model_state[name]
        _check(value.shape == shape and value.dtype in (np.float32, np.float64), path,
               f"weight {name} is {value.dtype}{list(value.shape)}, expected float{list(shape)}")
        _check(bool(np.all(np.isfinite(value))), path, f"weight {name} holds NaN or infinity")
    _validate_optimizer(metadata["optimizer"], optimizer_state, expected, path)
    try:  # the sampler state must be one a generator accepts, or resuming would fail mid-way
        np.random.default_rng().bit_generator.state = metadata["sampler_state"]
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path}: sampler_state is not a valid generator state: {error!r:.120}") \
            from None
    return Checkpoint(metadata, model_state, optimizer_state)


def _validate_optimizer(record: dict, state: dict, parameter_shapes: dict, path: str) -> None:
    """Optimizer type and hyperparameters present; state is 'step' (a scalar) and '<slot>.<parameter>' arrays of
    that parameter's shape, each slot covering every parameter."""
    _check(isinstance(record.get("type"), str) and isinstance(record.get("hyperparameters"), dict), path,
           "optimizer metadata needs a type and hyperparameters")
    _check("step" in state and state["step"].shape == (), path, "optimizer state has no scalar step")
    slots: dict[str, set] = {}
    for name, value in state.items():
        _check(value.dtype in (np.float32, np.float64), path, f"optimizer state {name} is not float")
        if name == "step":
            continue
        slot, _, parameter = name.partition(".")
        _check(parameter in parameter_shapes and value.shape == parameter_shapes[parameter], path,
               f"optimizer state {name} does not match a parameter of the model (shape {list(value.shape)})")
        slots.setdefault(slot, set()).add(parameter)
    for slot, covered in slots.items():
        _check(covered == set(parameter_shapes), path, f"optimizer slot {slot!r} does not cover every parameter")

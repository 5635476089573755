"""Hostile checkpoint archives, beyond tests/test_checkpoint.py: each kind of damaged zip member or .npy header
(a header of another shape than its data, a huge or object-dtype header, a member that is not an array, data
after the array, duplicate or misnamed members), bzip2, lzma and encrypted members, and a zip directory larger
than a checkpoint needs are refused with a CheckpointError saying why, in one line, before their data is read
(issue 12, item 8); `graphgpt generate` says so in one line."""

import io
import json
import warnings
import zipfile

import numpy as np
import pytest

from graphgpt.cli import main
from graphgpt.training import checkpoint as checkpoint_module
from graphgpt.training.checkpoint import CheckpointError, load_checkpoint
from test_checkpoint import good_checkpoint  # a valid checkpoint file, its arrays and metadata text


def npy_header(shape, descr="<f4"):
    """A .npy header (magic, version 1.0, header text) claiming `shape`, for writing without its data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def members_of(path):
    with zipfile.ZipFile(path) as archive:
        return [(member.filename, archive.read(member)) for member in archive.infolist()]


def replaced(members, name, content):
    return [(member, content if member == name else data) for member, data in members]


WEIGHT = "model/lm_head.weight.npy"

def renamed(members, old, new):
    return [(new if member == old else member, data) for member, data in members]


# Each case: (members of the good archive -> members to write, expected message). The first block was refused
# before, as 'unreadable' (the long header in three lines); the rest is issue 12, item 8, and its neighbours: a
# member np.load read although not named .npy, or returned as bytes (AttributeError), a header whose size is not
# the directory's (MemoryError for 2**40 elements, or data left unread), a duplicate name (the last one won).
ZIP_EDITS = {
    "header of another shape than its data": (lambda members: replaced(members, WEIGHT, npy_header((8, 8))
                                                                       + bytes(4 * 8 * 7)), "the archive holds"),
    "header of 50000 bytes": (lambda members: replaced(members, WEIGHT, b"\x93NUMPY\x01\x00"
                                                       + (50000).to_bytes(2, "little") + b" " * 50000),
                              ".npy header of 50000 bytes, more than"),
    "object dtype in the header": (lambda members: replaced(members, WEIGHT, npy_header((8, 7), "|O") + bytes(448)),
                                   "holds dtype object; a checkpoint holds only plain numbers"),

    "metadata member without .npy": (lambda members: renamed(members, "metadata.npy", "metadata"),
                                     "member 'metadata' is not a .npy array"),
    "not an array inside": (lambda members: replaced(members, WEIGHT, b"hello, world"),
                            "record model/lm_head.weight is not a .npy array"),
    "header claiming 2**40 elements": (lambda members: replaced(members, WEIGHT, npy_header((1 << 20, 1 << 20))
                                                                + bytes(64)),
                                       r"its header says \[1048576, 1048576\] float32 \(4398046511104 bytes"),
    "data after the array": (lambda members: replaced(members, WEIGHT, dict(members)[WEIGHT] + bytes(4)),
                             "the archive holds"),
    "duplicate member": (lambda members: members + [(WEIGHT, dict(members)[WEIGHT])],
                         r"holds \['model/lm_head.weight.npy'\] more than once"),
}


def write_members(path, members, compression=zipfile.ZIP_STORED):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names written on purpose
        with zipfile.ZipFile(path, "w", compression) as archive:
            for name, data in members:
                archive.writestr(name, data)


def flag_as_encrypted(path):
    """Set the 'encrypted' bit of every member in the zip's central directory (zipfile never writes it)."""
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    offset = int.from_bytes(data[end + 16:end + 20], "little")  # where the central directory starts
    while data[offset:offset + 4] == b"PK\x01\x02":
        data[offset + 8] |= 0x1
        name, extra, comment = (int.from_bytes(data[offset + at:offset + at + 2], "little") for at in (28, 30, 32))
        offset += 46 + name + extra + comment
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", list(ZIP_EDITS))
def test_hostile_archives_are_refused_with_the_reason(tmp_path, case):
    good, _, _ = good_checkpoint(tmp_path)
    edit, message = ZIP_EDITS[case]
    write_members(tmp_path / "bad.npz", edit(members_of(good)))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(tmp_path / "bad.npz"))


def test_members_compressed_other_than_deflate_or_encrypted_are_refused(tmp_path):
    """bzip2 and lzma members decompress without a bound on what one read returns (a bomb); np.load read them."""
    good, _, _ = good_checkpoint(tmp_path)
    write_members(tmp_path / "bzip2.npz", members_of(good), zipfile.ZIP_BZIP2)
    with pytest.raises(CheckpointError, match="uses compression method 12; stored or deflated members are read"):
        load_checkpoint(str(tmp_path / "bzip2.npz"))
    write_members(tmp_path / "encrypted.npz", members_of(good))
    flag_as_encrypted(tmp_path / "encrypted.npz")
    with pytest.raises(CheckpointError, match="member '.*.npy' is encrypted"):
        load_checkpoint(str(tmp_path / "encrypted.npz"))
    write_members(tmp_path / "deflated.npz", members_of(good), zipfile.ZIP_DEFLATED)  # np.savez_compressed's
    assert load_checkpoint(str(tmp_path / "deflated.npz")).metadata["step"] == 1


def test_a_zip_directory_larger_than_a_checkpoint_needs_is_refused_unparsed(tmp_path, monkeypatch):
    """zipfile makes an object per directory entry before anything can be checked: millions of tiny entries would
    exhaust memory, so the directory's size is read from the end record first (limit lowered here)."""
    good, _, _ = good_checkpoint(tmp_path)
    with zipfile.ZipFile(good) as archive:
        size = sum(46 + len(member.filename.encode()) + len(member.extra) for member in archive.infolist())
    assert load_checkpoint(str(good)).metadata["step"] == 1
    monkeypatch.setattr(checkpoint_module, "MAX_DIRECTORY_BYTES", size - 1)
    with pytest.raises(CheckpointError, match=f"its zip directory is {size} bytes, more than the {size - 1}"):
        load_checkpoint(str(good))
    # An archive of over 65,535 members (or 4 GiB) has a zip64 end record, whose size zipfile reads instead of
    # the classic record's: written here for few members, the classic record's size zeroed to tell them apart.
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)
    zip64 = tmp_path / "zip64.npz"
    write_members(zip64, members_of(good))
    data = bytearray(zip64.read_bytes())
    data[-22 + 12:-22 + 16] = bytes(4)
    zip64.write_bytes(bytes(data))
    with zipfile.ZipFile(zip64) as archive:
        assert len(archive.infolist()) == len(members_of(good))  # zipfile reads the zip64 record's size
    with pytest.raises(CheckpointError, match=f"its zip directory is {size} bytes"):
        load_checkpoint(str(zip64))


def test_generate_from_a_hostile_checkpoint_says_why_in_one_line(tmp_path, capsys):
    good, _, _ = good_checkpoint(tmp_path)
    members = members_of(good)  # the metadata as bare JSON, not a .npy array: np.load returned it as bytes
    write_members(tmp_path / "bad.npz", replaced(members, "metadata.npy", json.dumps({"format": "x"}).encode()))
    assert main(["generate", "--checkpoint", str(tmp_path / "bad.npz"), "--prompt", "a"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("graphgpt: error: checkpoint ") and error.count("\n") == 1, error

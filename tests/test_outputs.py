"""caa_lens.outputs: output paths are checked before any work, and a file or directory caa_lens did not
write is never replaced; its own outputs (recognised by the caller's recogniser) are accepted."""

import os
import re
from pathlib import Path

import pytest

from caa_lens.outputs import OutputError, check_output_dir, check_output_file, check_writable_parent


def has_manifest(path: Path) -> bool:
    """A stand-in recogniser: a directory holding caa_lens's manifest."""
    return (path / "manifest.json").is_file()


def starts_with_marker(path: Path) -> bool:
    return path.read_text().startswith("caa_lens")


def raising(path: Path) -> bool:
    raise ValueError("unreadable")


def test_output_dir_new_or_empty_is_accepted_and_returned_as_a_path(tmp_path):
    new = tmp_path / "a" / "b"
    assert check_output_dir(str(new), "results", has_manifest) == new
    assert not new.exists()  # checking creates nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_dir(empty, "results", has_manifest) == empty


def test_a_users_non_empty_directory_is_refused_and_left_alone(tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    message = (
        f"{users} is a non-empty directory that caa_lens did not write (no results manifest); "
        "refusing to write into it (choose a new or empty directory)"
    )
    with pytest.raises(OutputError, match=f"^{re.escape(message)}$"):
        check_output_dir(users, "results", has_manifest)
    with pytest.raises(OutputError, match="did not write"):
        check_output_dir(users, "results", raising)  # a recogniser that fails does not recognise
    assert [p.name for p in users.iterdir()] == ["notes.txt"]


def test_a_caa_lens_directory_is_accepted(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "notes.txt").write_text("mine")
    (ours / "manifest.json").write_text("{}")
    assert check_output_dir(ours, "results", has_manifest) == ours


def test_a_file_where_a_directory_is_expected_is_refused(tmp_path):
    file = tmp_path / "results"
    file.write_text("x")
    message = f"{file} exists and is not a directory; give a directory for the figures"
    with pytest.raises(OutputError, match=f"^{re.escape(message)}$"):
        check_output_dir(file, "figures", has_manifest)
    with pytest.raises(
        OutputError, match=rf"{re.escape(str(file))} is a file, not a directory; choose another output path$"
    ):
        check_output_dir(file / "sub", "figures", has_manifest)
    assert file.read_text() == "x"


def test_output_file_new_is_accepted_and_a_directory_refused(tmp_path):
    assert check_output_file(str(tmp_path / "new" / "v.safetensors"), "steering vector") == (
        tmp_path / "new" / "v.safetensors"
    )
    with pytest.raises(
        OutputError, match=f"^{re.escape(str(tmp_path))} is a directory; give a file path for the table$"
    ):
        check_output_file(tmp_path, "table")


def test_a_foreign_file_is_refused_and_a_caa_lens_one_accepted(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("my notes")
    message = (
        f"{target} exists and is not a sweep table written by caa_lens; refusing to overwrite it "
        "(choose another output path, or move that file away)"
    )
    with pytest.raises(OutputError, match=f"^{re.escape(message)}$"):
        check_output_file(target, "sweep table", starts_with_marker)
    with pytest.raises(OutputError, match="refusing to overwrite"):
        check_output_file(target, "sweep table")  # no recogniser: any existing file is refused
    with pytest.raises(OutputError, match="refusing to overwrite"):
        check_output_file(target, "sweep table", raising)
    assert target.read_text() == "my notes"
    target.write_text("caa_lens table")
    assert check_output_file(target, "sweep table", starts_with_marker) == target


def test_a_symlink_is_never_replaced(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("caa_lens table")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with pytest.raises(OutputError, match=rf"^{re.escape(str(link))} exists and is not a regular file"):
        check_output_file(link, "sweep table", starts_with_marker)
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(OutputError, match="is not a regular file"):
        check_output_file(dangling, "sweep table", starts_with_marker)


def test_writable_parent_refuses_a_file_ancestor(tmp_path):
    (tmp_path / "f").write_text("x")
    check_writable_parent(tmp_path / "a" / "b" / "c")  # the nearest existing ancestor is tmp_path
    with pytest.raises(OutputError, match=rf"{re.escape(str(tmp_path / 'f'))} is a file, not a directory"):
        check_writable_parent(tmp_path / "f" / "g" / "h")


def test_a_read_only_directory_or_file_is_refused(tmp_path, monkeypatch):
    """os.access stands in for the permissions (the tests may run as root, who may write anywhere)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "t.jsonl").write_text("caa_lens table")
    read_only = {locked / "t.jsonl"}
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) not in read_only and real_access(path, mode)
    )
    with pytest.raises(
        OutputError, match=rf"^{re.escape(str(locked / 't.jsonl'))} exists and is not writable"
    ):
        check_output_file(locked / "t.jsonl", "sweep table", starts_with_marker)
    assert check_output_file(locked / "new.jsonl", "sweep table") == locked / "new.jsonl"
    read_only.add(locked)
    with pytest.raises(
        OutputError, match=rf"the directory {re.escape(str(locked))} is not writable; choose another"
    ):
        check_output_file(locked / "new.jsonl", "sweep table")
    with pytest.raises(OutputError, match=rf"the directory {re.escape(str(locked))} is not writable"):
        check_output_dir(locked / "results", "results", has_manifest)

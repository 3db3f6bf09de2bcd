"""`_core.copy_blob`: the verified copy the store and the transports move blob bytes with."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from layercore import _core
from layercore.errors import (
    DigestMismatchError,
    LayerError,
    LayerIOError,
    SourceNotFoundError,
    TruncatedLayerError,
)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pattern(n: int) -> bytes:
    """Bytes that differ position by position, so an off-by-some range shows."""
    return bytes((i * 31 + i // 251) & 0xFF for i in range(n))


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_a_whole_file_is_copied_hashed_and_made_0644(tmp_path: Path, umask_077: None) -> None:
    # Several hash reads long and not a multiple of any buffer size.
    data = os.urandom(9 * 1024 * 1024 + 4321)
    src = tmp_path / "src"
    src.write_bytes(data)
    dest = tmp_path / "dest"
    assert _core.copy_blob(src, dest) == (sha256(data), len(data))
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_str_paths_work_as_well_as_path_objects(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"abc")
    got = _core.copy_blob(str(tmp_path / "src"), str(tmp_path / "dest"))
    assert got == (sha256(b"abc"), 3)


def test_a_tar_member_body_is_copied_by_offset_and_length(tmp_path: Path) -> None:
    bodies = {"a.bin": pattern(5000), "b.json": b'{"k": 1}', "c.bin": os.urandom(70_001)}
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for name, body in bodies.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    for member in members:
        dest = tmp_path / f"out-{member.name}"
        digest, size = _core.copy_blob(
            archive,
            dest,
            offset=member.offset_data,
            length=member.size,
            expected_digest=sha256(bodies[member.name]),
        )
        assert (digest, size) == (sha256(bodies[member.name]), len(bodies[member.name]))
        assert dest.read_bytes() == bodies[member.name]


def test_an_offset_without_a_length_copies_to_the_end(tmp_path: Path) -> None:
    data = pattern(10_000)
    (tmp_path / "src").write_bytes(data)
    got = _core.copy_blob(tmp_path / "src", tmp_path / "dest", offset=7_777)
    assert got == (sha256(data[7_777:]), 10_000 - 7_777)
    assert (tmp_path / "dest").read_bytes() == data[7_777:]


def test_an_unverified_copy_returns_no_digest(tmp_path: Path) -> None:
    data = pattern(3 * 1024 * 1024 + 1)
    (tmp_path / "src").write_bytes(data)
    got = _core.copy_blob(tmp_path / "src", tmp_path / "dest", offset=1, verify=False)
    assert got == (None, len(data) - 1)
    assert (tmp_path / "dest").read_bytes() == data[1:]


def test_the_expected_digest_is_accepted_when_it_matches(tmp_path: Path) -> None:
    data = pattern(12_345)
    (tmp_path / "src").write_bytes(data)
    got = _core.copy_blob(tmp_path / "src", tmp_path / "dest", expected_digest=sha256(data))
    assert got == (sha256(data), len(data))


def test_a_digest_mismatch_names_the_source_and_removes_dest(tmp_path: Path) -> None:
    data = pattern(100_000)
    src = tmp_path / "src"
    src.write_bytes(data)
    dest = tmp_path / "dest"
    wrong = sha256(b"another blob")
    with pytest.raises(DigestMismatchError) as info:
        _core.copy_blob(src, dest, expected_digest=wrong)
    err = info.value
    assert err.path == str(src)
    assert err.what == "digest"
    assert err.expected == wrong
    assert err.actual == sha256(data)
    assert not dest.exists()


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 1001), (999, 2), (1001, None), (5000, 0)], ids=str
)
def test_a_range_past_the_end_is_truncated_and_leaves_nothing(
    tmp_path: Path, offset: int, length: int | None
) -> None:
    src = tmp_path / "src"
    src.write_bytes(pattern(1000))
    dest = tmp_path / "dest"
    with pytest.raises(TruncatedLayerError) as info:
        _core.copy_blob(src, dest, offset=offset, length=length)
    assert info.value.path == str(src)
    assert not dest.exists()


def test_a_range_ending_exactly_at_the_end_is_not_truncated(tmp_path: Path) -> None:
    data = pattern(1000)
    (tmp_path / "src").write_bytes(data)
    got = _core.copy_blob(tmp_path / "src", tmp_path / "dest", offset=990, length=10)
    assert got == (sha256(data[990:]), 10)


def test_an_existing_dest_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"new bytes")
    dest = tmp_path / "dest"
    dest.write_bytes(b"precious")
    with pytest.raises(LayerIOError) as info:
        _core.copy_blob(tmp_path / "src", dest)
    assert info.value.path == str(dest)
    assert "File exists" in str(info.value)
    assert dest.read_bytes() == b"precious"


def test_an_empty_file_gives_an_empty_blob(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"")
    got = _core.copy_blob(tmp_path / "src", tmp_path / "dest")
    assert got == (sha256(b""), 0)
    assert (tmp_path / "dest").read_bytes() == b""


def test_a_missing_source_is_file_not_found_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError) as info:
        _core.copy_blob(tmp_path / "missing", tmp_path / "dest")
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.path == str(tmp_path / "missing")
    assert not (tmp_path / "dest").exists()


def test_a_directory_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="not a regular file"):
        _core.copy_blob(tmp_path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_a_missing_dest_directory_names_dest(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"abc")
    with pytest.raises(LayerError) as info:
        _core.copy_blob(tmp_path / "src", tmp_path / "no" / "dest")
    assert info.value.path == str(tmp_path / "no" / "dest")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"offset": -1},
        {"length": -5},
        {"expected_digest": "sha256:1234"},
        {"expected_digest": "md5:" + "0" * 32},
        {"expected_digest": sha256(b"abc"), "verify": False},
    ],
    ids=["negative-offset", "negative-length", "short-digest", "not-sha256", "unverified"],
)
def test_bad_arguments_are_value_errors_and_create_nothing(
    tmp_path: Path, kwargs: dict[str, object]
) -> None:
    (tmp_path / "src").write_bytes(b"abc")
    with pytest.raises(ValueError):
        _core.copy_blob(tmp_path / "src", tmp_path / "dest", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "dest").exists()


def test_a_copy_across_filesystems_gives_the_same_bytes(tmp_path: Path) -> None:
    # The kernel copy between different filesystems may be refused (EXDEV); read/write takes over.
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the temp directory's")
    data = os.urandom(2 * 1024 * 1024 + 17)
    src = shm / f"layercore-test-{os.getpid()}"
    src.write_bytes(data)
    try:
        got = _core.copy_blob(src, tmp_path / "dest", offset=17)
    finally:
        src.unlink()
    assert got == (sha256(data[17:]), len(data) - 17)
    assert (tmp_path / "dest").read_bytes() == data[17:]


@pytest.mark.parametrize("verify", [True, False])
def test_a_copy_without_fsync_is_still_complete_and_checked(tmp_path: Path, verify: bool) -> None:
    data = pattern(3 << 20)
    src = tmp_path / "src"
    src.write_bytes(data)
    dest = tmp_path / "dest"
    digest, size = _core.copy_blob(src, dest, verify=verify, sync=False)
    assert (digest, size) == ((sha256(data) if verify else None), len(data))
    assert dest.read_bytes() == data
    with pytest.raises(DigestMismatchError):
        _core.copy_blob(src, tmp_path / "bad", expected_digest=sha256(b"x"), sync=False)
    assert not (tmp_path / "bad").exists()

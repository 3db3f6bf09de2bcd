"""``layercore.explain`` and ``layercore explain``: why two images' or two layers' digests
differ. Each test builds a pair that differs in exactly one way and checks the verdict and the
fields named."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

import layercore
from layercore import Image, Layer, Store
from layercore.analysis.explain import Difference, Explanation, explain
from layercore.cli import main

EPOCH = 1_700_000_000
LONG = "deep/" + "n" * 120  # a name that needs a PAX path record or a GNU long name


def make_tree(root: Path) -> Path:
    files = {
        "etc/passwd": b"root:x:0:0::/root:/bin/sh\n",
        "etc/hosts": b"127.0.0.1 localhost\n",
        "bin/tool": bytes(range(256)) * 8,
        "usr/share/doc/readme": b"read me\n" * 10,
        "empty": b"",
    }
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    os.symlink("tool", root / "bin" / "alias")
    os.link(root / "usr/share/doc/readme", root / "usr/share/doc/README")
    for path in (root, *root.rglob("*")):
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def build(src: Path, out: Path, **options: object) -> Layer:
    options.setdefault("source_date_epoch", EPOCH)
    return Layer.from_dir(src, out, **options)  # type: ignore[arg-type]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


def only_fields(x: Explanation) -> set[str]:
    return {name for change in x.changed for name in change.names}


def assert_same_files(x: Explanation) -> None:
    assert x.kind == "layers"
    assert x.only_in_a == x.only_in_b == ()
    assert not x.order_differs


# --- layers: one difference each ---------------------------------------------------------------


def test_identical_layers(src: Path, tmp_path: Path) -> None:
    a = build(src, tmp_path / "a.tgz")
    b = build(src, tmp_path / "b.tgz")
    x = explain(a, b)
    assert x.identical and x.verdict == "identical"
    assert x.to_json()["verdict"] == "identical"
    # blob paths, as strings and as paths, give the same answer
    assert explain(str(tmp_path / "a.tgz"), tmp_path / "b.tgz").verdict == "identical"


def test_only_mtimes(src: Path, tmp_path: Path) -> None:
    a = build(src, tmp_path / "a.tgz", source_date_epoch=EPOCH - 100)
    b = build(src, tmp_path / "b.tgz", source_date_epoch=EPOCH - 200)
    x = explain(a, b)
    assert x.verdict == "only mtimes differ: set SOURCE_DATE_EPOCH"
    assert_same_files(x)
    assert only_fields(x) == {"mtime"}
    # every entry was clamped, so every entry differs
    assert len(x.changed) == sum(1 for _ in a.entries())
    kinds = {
        c.path: kind
        for c in x.changed
        for kind in [next(e.kind for e in a.entries() if e.path == c.path)]
    }
    assert {
        "bin/alias": "symlink",
        "usr/share/doc/readme": "hardlink",
        "etc": "dir",
    }.items() <= kinds.items()
    passwd = next(c for c in x.changed if c.path == "etc/passwd")
    assert passwd.fields[0].a == EPOCH - 100 and passwd.fields[0].b == EPOCH - 200
    assert {d.field for d in x.compression} <= {"size"}  # the compressed bytes, nothing else
    assert x.header == ()


def test_group_write_bits(src: Path, tmp_path: Path) -> None:
    a = build(src, tmp_path / "a.tgz")
    for name in ("etc/passwd", "etc/hosts", "bin/tool"):
        (src / name).chmod(0o664)
    b = build(src, tmp_path / "b.tgz")
    x = explain(a, b)
    assert x.verdict == "group-write bits differ on 3 files: umask"
    assert sorted(c.path for c in x.changed) == ["bin/tool", "etc/hosts", "etc/passwd"]
    assert {(c.fields[0].a, c.fields[0].b) for c in x.changed} == {(0o644, 0o664)}
    assert only_fields(x) == {"mode"}


def test_other_mode_change_is_not_umask(src: Path, tmp_path: Path) -> None:
    a = build(src, tmp_path / "a.tgz")
    (src / "etc/passwd").chmod(0o600)
    b = build(src, tmp_path / "b.tgz")
    assert explain(a, b).verdict == "only modes differ on 1 file"


def test_only_owners(src: Path, tmp_path: Path) -> None:
    a = build(src, tmp_path / "a.tgz")
    b = build(src, tmp_path / "b.tgz", owner=(1000, 1000))
    x = explain(a, b)
    entries = sum(1 for _ in a.entries())
    assert x.verdict == f"only owners differ on {entries} files: set the owner when building"
    assert only_fields(x) == {"uid", "gid"}


def test_content_change_same_size(src: Path, tmp_path: Path) -> None:
    a = build(src, tmp_path / "a.tgz")
    (src / "etc/hosts").write_bytes(b"127.0.0.2 localhost\n")  # same length
    os.utime(src / "etc/hosts", (EPOCH, EPOCH))
    b = build(src, tmp_path / "b.tgz")
    x = explain(a, b)
    assert [c.path for c in x.changed] == ["etc/hosts"]
    (content,) = x.changed[0].fields
    assert content.field == "content"
    assert content.a != content.b and content.a.startswith("sha256:")
    assert x.verdict == "1 changed (content 1)"


def test_content_change_other_size_and_added_file(src: Path, tmp_path: Path) -> None:
    a = build(src, tmp_path / "a.tgz")
    (src / "etc/hosts").write_bytes(b"::1 localhost\n127.0.0.1 localhost\n")
    (src / "etc/new").write_bytes(b"new\n")
    (src / "empty").unlink()
    for path in (src / "etc", src / "etc/hosts", src / "etc/new", src):
        os.utime(path, (EPOCH, EPOCH))
    b = build(src, tmp_path / "b.tgz")
    x = explain(a, b)
    assert x.only_in_a == ("empty",)
    assert x.only_in_b == ("etc/new",)
    assert [(c.path, c.names) for c in x.changed] == [("etc/hosts", ("content", "size"))]
    assert x.verdict == "1 only in a; 1 only in b; 1 changed (content 1, size 1)"


def test_xattrs_and_link_target(tmp_path: Path) -> None:
    def layer(name: str, target: str, xattr: bytes) -> Path:
        out = tmp_path / name
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
            info = tarfile.TarInfo("link")
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, EPOCH
            t.addfile(info)
            info = tarfile.TarInfo("file")
            info.mtime = EPOCH
            info.pax_headers = {"SCHILY.xattr.user.note": xattr.decode()}
            t.addfile(info, io.BytesIO(b""))
        return out

    x = explain(layer("a.tar", "one", b"x"), layer("b.tar", "two", b"y"))
    changes = {c.path: c for c in x.changed}
    link = changes["link"].get("linkname")
    assert link is not None and (link.a, link.b) == ("one", "two")
    xattrs = changes["file"].get("xattrs")
    assert xattrs is not None and xattrs.a == {"user.note": b"x"}
    assert xattrs.b == {"user.note": b"y"}


# --- compression ------------------------------------------------------------------------------


def test_gzip_levels(src: Path, tmp_path: Path) -> None:
    a = build(src, tmp_path / "a.tgz", compression="gzip", level=1)
    b = build(src, tmp_path / "b.tgz", compression="gzip", level=9)
    x = explain(a, b)
    assert x.verdict == "same tar, different gzip settings"
    assert x.diff_ids == (a.diff_id, a.diff_id)
    assert x.changed == () and x.header == ()
    fields = {d.field: d for d in x.compression}
    assert (fields["header.xfl"].a, fields["header.xfl"].b) == (4, 2)
    assert fields["header.level_hint"].a == "fastest (XFL=4)"


def tar_bytes(names: Iterable[str], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name in names:
            body = f"body of {name}\n".encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(body), EPOCH, 0o644
            t.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_gzip_header_name_and_mtime(tmp_path: Path) -> None:
    tar = tar_bytes(["a", "b"])
    a = write(tmp_path / "a.tgz", gzip.compress(tar, compresslevel=6, mtime=0))
    buf = io.BytesIO()
    with gzip.GzipFile("layer.tar", "wb", compresslevel=6, fileobj=buf, mtime=12345) as g:
        g.write(tar)
    b = write(tmp_path / "b.tgz", buf.getvalue())
    x = explain(a, b)
    assert x.verdict == "same tar, different gzip settings"
    fields = {d.field: (d.a, d.b) for d in x.compression}
    assert fields["header.mtime"] == (0, 12345)
    assert fields["header.name"] == (None, "layer.tar")
    assert fields["header.flags"] == ("none", "FNAME")
    assert "members" not in fields  # both one member


def test_gzip_member_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 << 20))  # several 1 MiB members
    a = build(src, tmp_path / "a.tgz")
    with open(a.path, "rb") as f:
        tar = gzip.decompress(f.read())
    b = write(tmp_path / "b.tgz", gzip.compress(tar, compresslevel=1, mtime=0))
    x = explain(a, b)
    assert x.verdict == "same tar, different gzip settings"
    fields = {d.field: (d.a, d.b) for d in x.compression}
    assert fields["members"] == (4, 1)
    assert fields["member_size"] == (1 << 20, len(tar))
    assert fields["header.os"] == (255, 3)  # libdeflate says "unknown", zlib "Unix"
    assert fields["deflate"] == ("not zlib", "zlib level 1")  # libdeflate, then Python's zlib


def test_gzip_level_without_xfl(tmp_path: Path) -> None:
    """Levels 5 and 6 write the same header (XFL=0): compressing the data again tells them."""
    names = [f"d{i % 7}/f{i}" for i in range(300)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i, name in enumerate(names):
            body = " ".join(str(i * j % 97) for j in range(i % 50 * 10)).encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(body), EPOCH
            t.addfile(info, io.BytesIO(body))
    tar = buf.getvalue()
    a = write(tmp_path / "a.tgz", gzip.compress(tar, compresslevel=5, mtime=0))
    b = write(tmp_path / "b.tgz", gzip.compress(tar, compresslevel=6, mtime=0))
    x = explain(a, b)
    assert x.verdict == "same tar, different gzip settings"
    fields = {d.field: (d.a, d.b) for d in x.compression}
    assert fields.keys() == {"size", "deflate"}
    assert fields["deflate"] == ("zlib level 5", "zlib level 6")


def test_zstd_levels_and_gzip_vs_zstd(src: Path, tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    gz = build(src, tmp_path / "a.tgz")
    z3 = build(src, tmp_path / "b.tzst", compression="zstd", level=3)
    z19 = build(src, tmp_path / "c.tzst", compression="zstd", level=19)
    x = explain(gz, z3)
    assert x.verdict == "same tar, different compression (gzip vs zstd)"
    assert x.compression[0] == Difference("type", "gzip", "zstd")
    y = explain(z3, z19)
    assert y.verdict == "same tar, different zstd settings"
    fields = {d.field for d in y.compression}
    assert fields <= {"size", "frame.window_size", "frame.single_segment", "frame.content_size"}
    z = explain(str(z3.path), str(z3.path))
    assert z.verdict == "identical"


def test_zstd_frames_are_walked(src: Path, tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    z = build(src, tmp_path / "a.tzst", compression="zstd")
    with open(z.path, "rb") as f:
        tar = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    half = len(tar) // 2
    two = zstandard.ZstdCompressor(level=3, write_checksum=False, write_content_size=True)
    b = write(tmp_path / "b.tzst", two.compress(tar[:half]) + two.compress(tar[half:]))
    x = explain(z, b)
    assert x.verdict == "same tar, different zstd settings"
    fields = {d.field: (d.a, d.b) for d in x.compression}
    assert fields["frames"] == (1, 2)
    assert fields["frame.checksum"] == (True, False)


# --- tar layout -------------------------------------------------------------------------------


def test_pax_vs_gnu(tmp_path: Path) -> None:
    names = ["a", LONG, "z"]
    a = write(tmp_path / "a.tar", tar_bytes(names, tarfile.PAX_FORMAT))
    b = write(tmp_path / "b.tar", tar_bytes(names, tarfile.GNU_FORMAT))
    x = explain(a, b)
    assert x.verdict == "same files, different tar header layout (PAX vs GNU)"
    assert_same_files(x)
    layouts = {c.path: c.get("header") for c in x.changed}
    assert set(layouts) == set(names)
    long = layouts[LONG]
    assert long is not None and (long.a, long.b) == ("ustar+pax(path)", "gnu+longname")
    short = layouts["a"]
    assert short is not None and (short.a, short.b) == ("ustar", "gnu")
    (fmt,) = x.header
    assert fmt.field == "format"
    assert fmt.a == {"ustar": 2, "ustar+pax": 1}
    assert fmt.b == {"gnu": 2, "gnu+longname": 1}


def test_pax_record_order(tmp_path: Path) -> None:
    def layer(name: str, records: dict[str, str]) -> Path:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            info = tarfile.TarInfo("f")
            info.mtime = EPOCH
            info.pax_headers = records
            t.addfile(info, io.BytesIO(b""))
        return write(tmp_path / name, buf.getvalue())

    a = layer("a.tar", {"SCHILY.xattr.user.a": "1", "comment": "x"})
    b = layer("b.tar", {"comment": "x", "SCHILY.xattr.user.a": "1"})
    x = explain(a, b)
    assert x.verdict == "same files, different tar header layout"
    (change,) = x.changed
    header = change.get("header")
    assert header is not None
    assert (header.a, header.b) == (
        "ustar+pax(SCHILY.xattr.user.a,comment)",
        "ustar+pax(comment,SCHILY.xattr.user.a)",
    )


def test_entry_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a.tar", tar_bytes(["a", "b", "c"]))
    b = write(tmp_path / "b.tar", tar_bytes(["c", "a", "b"]))
    x = explain(a, b)
    assert x.order_differs
    assert x.changed == () and x.only_in_a == x.only_in_b == ()
    assert x.verdict == "same entries in a different order: sort them by name"


def test_end_of_archive_padding(tmp_path: Path) -> None:
    tar = tar_bytes(["a", "b"])
    end = 4 * 512 + 1024  # two entries of one block each, then the two zero blocks
    assert tar[:end].endswith(bytes(1024)) and len(tar) == 10240
    a = write(tmp_path / "a.tar", tar)
    b = write(tmp_path / "b.tar", tar[:end])
    x = explain(a, b)
    assert x.verdict == "same entries, different end-of-archive padding"
    assert x.header == (
        Difference("end_of_archive", "zeros to a multiple of 10240 bytes", "two zero blocks"),
    )


def test_header_encoding(tmp_path: Path) -> None:
    tar = bytearray(tar_bytes(["a"]))
    assert tar[100:108] == b"0000644\0"
    tar[100:108] = b"000644 \0"  # what GNU tar's older ustar writers put there
    tar[148:156] = b"        "
    tar[148:156] = b"%06o\0 " % sum(tar[:512])
    a = write(tmp_path / "a.tar", tar_bytes(["a"]))
    b = write(tmp_path / "b.tar", bytes(tar))
    x = explain(a, b)
    assert x.verdict == "same files, different tar header encoding"
    (change,) = x.changed
    (encoding,) = change.fields
    assert encoding.field == "header_encoding"
    assert encoding.a["mode"] == "0000644\0" and encoding.b["mode"] == "000644 \0"


def test_whiteouts_are_entries(tmp_path: Path) -> None:
    def layer(name: str, names: list[str]) -> Path:
        return write(tmp_path / name, tar_bytes(names))

    a = layer("a.tar", ["d/keep", "d/.wh.gone", ".wh..wh..opq"])
    b = layer("b.tar", ["d/keep"])
    x = explain(a, b)
    assert x.only_in_a == ("d/.wh.gone", ".wh..wh..opq")
    assert x.verdict == "2 only in a"


# --- images -----------------------------------------------------------------------------------


def test_images_with_different_configs(src: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer = store.build_layer(src, source_date_epoch=EPOCH)
    base = Image.scratch(created=EPOCH).append(layer, created=EPOCH)
    a = base.with_config(env={"A": "1"}, labels={"x": "1"}, created=EPOCH)
    b = base.with_config(env={"A": "2"}, labels={"x": "1", "y": "2"}, created=EPOCH + 60)
    x = explain(a, b)
    assert x.kind == "images" and x.layers == ()
    fields = {d.field: (d.a, d.b) for d in x.config}
    assert fields["config.Env.A"] == ("1", "2")
    assert fields["config.Labels.y"] == (None, "2")
    assert "config.Labels.x" not in fields
    assert fields["created"] == ("2023-11-14T22:13:20Z", "2023-11-14T22:14:20Z")
    assert "history[1].created_by" in fields and "history[1].created" in fields
    assert x.verdict == "same layers, different config: env, labels, created, history"
    # only the timestamps
    c = base.with_config(env={"A": "1"}, labels={"x": "1"}, created=EPOCH + 5)
    assert explain(a, c).verdict == (
        "same layers, only the config's timestamps differ: set SOURCE_DATE_EPOCH"
    )


def test_images_with_a_different_layer(src: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    la = store.build_layer(src, source_date_epoch=EPOCH - 100)
    lb = store.build_layer(src, source_date_epoch=EPOCH - 200)
    top = store.build_layer(make_tree(tmp_path / "top"), source_date_epoch=EPOCH)
    a = Image.scratch(created=EPOCH).append(la, created=EPOCH).append(top, created=EPOCH)
    b = Image.scratch(created=EPOCH).append(lb, created=EPOCH).append(top, created=EPOCH)
    store.save(a, "app:a")
    store.save(b, "app:b")
    x = explain("app:a", "app:b", store=store)
    assert x.kind == "images" and x.config == ()
    (change,) = x.layers
    assert (change.index, change.a, change.b) == (0, la.digest, lb.digest)
    assert change.explanation is not None
    assert change.explanation.verdict == "only mtimes differ: set SOURCE_DATE_EPOCH"
    assert x.verdict == "layer 0: only mtimes differ: set SOURCE_DATE_EPOCH"
    # IMAGE@N: one layer of each image
    y = explain("app:a@0", "app:b@-2", store=store)
    assert y.kind == "layers" and y.verdict == change.explanation.verdict
    assert explain("app:a@1", "app:b@1", store=store).verdict == "identical"
    with pytest.raises(ValueError, match="has 2 layers"):
        explain("app:a@2", "app:b@0", store=store)
    with pytest.raises(ValueError, match="an image with a layer"):
        explain("app:a", "app:b@0", store=store)
    # a layer only one image has: listed, not explained
    c = Image.scratch(created=EPOCH).append(la, created=EPOCH)
    z = explain(a, c)
    assert [(ch.index, ch.a, ch.b, ch.explanation) for ch in z.layers] == [
        (1, top.digest, None, None)
    ]
    assert z.verdict.startswith("2 layers vs 1; config: ")
    # the store's index cache serves its layers (and keeps them)
    assert list((store.root / ".layercore" / "index").glob("*.lcidx"))


def test_top_level_names() -> None:
    assert layercore.explain is explain
    assert layercore.Explanation is Explanation


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def lc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., str]:
    monkeypatch.setenv("LAYERCORE_HOME", str(tmp_path / "home"))

    def run(*argv: str) -> str:
        status = main(["--store", str(tmp_path / "store"), *argv])
        out, err = capsys.readouterr()
        assert status == 0, err
        return out

    return run


def test_cli_layers_text_and_json(src: Path, tmp_path: Path, lc: Callable[..., str]) -> None:
    a = build(src, tmp_path / "a.tgz")
    (src / "etc/passwd").chmod(0o664)
    b = build(src, tmp_path / "b.tgz")
    out = lc("explain", str(a.path), str(b.path))
    lines = out.splitlines()
    assert lines[0] == "verdict: group-write bits differ on 1 file: umask"
    assert lines[1] == f"a: {a.digest}" and lines[2] == f"b: {b.digest}"
    assert "  /etc/passwd: mode: 0644 -> 0664" in lines
    data = json.loads(lc("explain", str(a.path), str(b.path), "--json"))
    assert data["verdict"] == "group-write bits differ on 1 file: umask"
    assert data["changed"] == [
        {"path": "etc/passwd", "fields": [{"field": "mode", "a": 0o644, "b": 0o664}]}
    ]
    assert set(data) == {
        "kind", "a", "b", "identical", "verdict", "diff_ids", "only_in_a", "only_in_b",
        "changed", "order_differs", "header", "compression",
    }  # fmt: skip
    assert not (tmp_path / "store").exists()  # two blob files need no store


def test_cli_images(src: Path, tmp_path: Path, lc: Callable[..., str]) -> None:
    store = Store(tmp_path / "store")
    la = store.build_layer(src, source_date_epoch=EPOCH)
    (src / "etc/passwd").chmod(0o664)
    lb = store.build_layer(src, source_date_epoch=EPOCH)
    store.save(Image.scratch(created=EPOCH).append(la, created=EPOCH), "app:1")
    store.save(
        Image.scratch(created=EPOCH).append(lb, created=EPOCH).with_config(env={"A": "1"}),
        "app:2",
    )
    out = lc("explain", "app:1", "app:2")
    assert out.startswith(
        "verdict: layer 0: group-write bits differ on 1 file: umask; config: env, created, "
        "history\n"
    )
    assert f"layer 0: {la.digest[7:19]} -> {lb.digest[7:19]}" in out
    assert "  verdict: group-write bits differ on 1 file: umask" in out
    data = json.loads(lc("explain", "app:1", "app:2", "--json"))
    assert data["kind"] == "images"
    assert data["layers"][0]["explanation"]["changed"][0]["path"] == "etc/passwd"

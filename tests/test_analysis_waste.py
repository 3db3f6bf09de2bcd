"""Waste analysis and squash planning against hand-computed truth.

Each case is a small image written with Python's ``tarfile`` (so whiteouts, opaque markers,
hardlinks and type changes are exactly what the test says), and each figure below was worked
out by hand from the OCI rules. Two independent checks back them: the visible bytes equal the
regular-file bytes of the image flattened by the engine, and the squash savings equal what a
real squash writes fewer.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from layercore import Image, Layer
from layercore.analysis import Analysis
from layercore.cli import main
from layercore.store import Store

T0 = 1_600_000_000


@dataclasses.dataclass(frozen=True)
class E:
    """One tar entry: kind is file, dir, symlink or hardlink (whiteouts are files by name)."""

    kind: str
    path: str
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    mtime: int = T0
    uid: int = 0


def f(path: str, size_or_data: int | bytes, mode: int = 0o644, uid: int = 0) -> E:
    data = b"x" * size_or_data if isinstance(size_or_data, int) else size_or_data
    return E("file", path, data, mode=mode, uid=uid)


def d(path: str, mode: int = 0o755) -> E:
    return E("dir", path, mode=mode)


def hard(path: str, target: str) -> E:
    return E("hardlink", path, target=target)


def sym(path: str, target: str) -> E:
    return E("symlink", path, target=target, mode=0o777)


def wh(path: str) -> E:
    parent, _, base = path.rpartition("/")
    return f(f"{parent}/.wh.{base}" if parent else f".wh.{base}", 0, mode=0o600)


def opq(directory: str) -> E:
    return f(f"{directory}/.wh..wh..opq", 0, mode=0o600)


def write_layer(path: Path, entries: Sequence[E]) -> Layer:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.path)
            ti.mode, ti.mtime, ti.uid = e.mode, e.mtime, e.uid
            ti.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
            }[e.kind]
            ti.linkname = e.target
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    path.write_bytes(raw.getvalue())
    return Layer.open(path)


def image_of(tmp: Path, *layers: Sequence[E]) -> Image:
    tmp.mkdir(parents=True, exist_ok=True)
    image = Image.scratch(created=T0)
    for i, entries in enumerate(layers):
        layer = write_layer(tmp / f"layer{i}.tar", entries)
        image = image.append(layer, created_by=f"step {i}", created=T0)
    return image


def file_bytes(layer: Layer) -> int:
    return sum(e.size for e in layer.entries() if e.kind == "file")


def check_against_engine(image: Image, analysis: Analysis, tmp: Path) -> None:
    """The visible bytes are what the engine's flatten writes; each layer's figures add up."""
    flat = image.flatten(tmp / "flat.tar", compression=None)
    assert analysis.visible_bytes == file_bytes(flat.layers[0])
    assert analysis.layer_bytes == sum(file_bytes(x) for x in image.layers)
    assert analysis.reclaimable_bytes == analysis.layer_bytes - analysis.visible_bytes
    for layer in analysis.layers:
        assert layer.added_bytes == layer.visible_bytes + layer.wasted_bytes
        assert layer.wasted_bytes == sum(layer.hidden.values()) == sum(layer.hidden_by.values())


def hidden(analysis: Analysis) -> list[dict[str, int]]:
    return [{k: v for k, v in x.hidden.items() if v} for x in analysis.layers]


# --- the cases --------------------------------------------------------------------------------


def test_deleted_directory_contents_are_counted(tmp_path: Path) -> None:
    image = image_of(
        tmp_path,
        [d("app"), f("app/a", 100), f("app/b", 200), d("app/sub"), f("app/sub/c", 300)],
        [f("keep", 10), wh("app")],
    )
    a = image.analyze()
    assert (a.layer_bytes, a.visible_bytes, a.reclaimable_bytes) == (610, 10, 600)
    assert a.efficiency == pytest.approx(10 / 610)
    assert hidden(a) == [{"deleted": 600}, {}]
    assert a.layers[0].hidden_by == {1: 600}
    assert (a.layers[0].visible_bytes, a.layers[0].wasted_bytes) == (0, 600)
    # keep; and app, app/a, app/b, app/sub, app/sub/c
    assert (a.layers[1].added, a.layers[1].modified, a.layers[1].deleted) == (1, 0, 5)
    assert a.layers[1].entries == 2
    assert [(p.path, p.bytes, p.layer, p.cause, p.hidden_by) for p in a.top] == [
        ("app/sub/c", 300, 0, "deleted", 1),
        ("app/b", 200, 0, "deleted", 1),
        ("app/a", 100, 0, "deleted", 1),
    ]
    assert a.top[0].history == ((0, "added"), (1, "deleted"))
    check_against_engine(image, a, tmp_path)


def test_modified_files_waste_the_old_copies_never_the_kept_one(tmp_path: Path) -> None:
    image = image_of(
        tmp_path,
        [d("etc"), f("etc/conf", 50), f("bin", 1000)],
        [d("etc"), f("etc/conf", b"y" * 60)],
        [d("etc"), f("etc/conf", b"z" * 60)],
    )
    a = image.analyze()
    assert (a.layer_bytes, a.visible_bytes, a.reclaimable_bytes) == (1170, 1060, 110)
    assert [x.wasted_bytes for x in a.layers] == [50, 60, 0]
    assert [x.visible_bytes for x in a.layers] == [1000, 0, 60]
    assert hidden(a) == [{"overwritten": 50}, {"overwritten": 60}, {}]
    assert [x.hidden_by for x in a.layers] == [{1: 50}, {2: 60}, {}]
    # Same size, other bytes: not an attribute-only copy.
    assert [x.attribute_only_bytes for x in a.layers] == [0, 0, 0]
    # The directory etc is repeated with the same attributes: not a modification.
    assert [(x.added, x.modified) for x in a.layers] == [(3, 0), (0, 1), (0, 1)]
    (top,) = a.top
    assert (top.path, top.bytes, [c.layer for c in top.copies]) == ("etc/conf", 110, [0, 1])
    assert top.history == ((0, "added"), (1, "modified"), (2, "modified"))
    check_against_engine(image, a, tmp_path)


def test_attribute_only_copies(tmp_path: Path) -> None:
    body = bytes(range(256)) * 4
    image = image_of(
        tmp_path,
        [f("bin/tool", body), f("lib/a.so", 300), f("lib/b.so", 7)],
        # chmod -R / chown -R: the same bytes with another mode or owner.
        [f("bin/tool", body, mode=0o755), f("lib/a.so", 300, uid=1000), f("lib/b.so", b"q" * 7)],
    )
    a = image.analyze()
    assert a.layers[1].attribute_only_bytes == 1024 + 300
    assert a.layers[0].attribute_only_bytes == 0
    assert hidden(a) == [{"overwritten": 1331}, {}]
    check_against_engine(image, a, tmp_path)


def test_attribute_only_copies_in_gzip_blobs(tmp_path: Path) -> None:
    """The bodies are compared by reading the compressed blobs, not their index."""
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "app" / "big").write_bytes(bytes(range(256)) * 4000)
    (src / "app" / "small").write_bytes(b"s" * 5)
    first = Layer.from_dir(src, tmp_path / "l0.tar.gz", source_date_epoch=T0)
    (src / "app" / "small").write_bytes(b"t" * 5)
    second = Layer.from_dir(src, tmp_path / "l1.tar.gz", source_date_epoch=T0, chmod=0o700)
    image = Image.scratch(created=T0).append(first).append(second)
    a = image.analyze()
    assert a.layers[1].attribute_only_bytes == 1_024_000
    assert a.reclaimable_bytes == 1_024_005


def test_opaque_directory_hides_lower_contents(tmp_path: Path) -> None:
    image = image_of(
        tmp_path,
        [d("data"), f("data/x", 400), d("data/deep"), f("data/deep/y", 100), f("other", 1)],
        [d("data"), opq("data"), f("data/z", 7)],
    )
    a = image.analyze()
    assert (a.layer_bytes, a.visible_bytes, a.reclaimable_bytes) == (508, 8, 500)
    assert hidden(a) == [{"opaque": 500}, {}]
    assert a.layers[0].hidden_by == {1: 500}
    assert a.layers[1].deleted == 3  # data/x, data/deep, data/deep/y
    assert a.top[0].history == ((0, "added"), (1, "hidden"))
    check_against_engine(image, a, tmp_path)


def test_hardlinks_are_counted_once_and_live_while_a_name_does(tmp_path: Path) -> None:
    image = image_of(
        tmp_path,
        [f("a", 1000), hard("b", "a"), hard("c", "a"), f("other", 30)],
        [wh("a")],  # b and c still show the body
        [wh("b")],  # c still does
        [wh("c")],  # now the body is gone: hidden by layer 3, deleted
    )
    a = image.analyze()
    assert a.layers[0].added_bytes == 1030
    assert (a.layer_bytes, a.visible_bytes, a.reclaimable_bytes) == (1030, 30, 1000)
    assert hidden(a) == [{"deleted": 1000}, {}, {}, {}]
    assert a.layers[0].hidden_by == {3: 1000}
    assert [(p.path, p.bytes, p.hidden_by) for p in a.top] == [("a", 1000, 3)]
    check_against_engine(image, a, tmp_path)
    # Before the last whiteout nothing was wasted.
    partial = image_of(tmp_path / "partial", [f("a", 1000), hard("b", "a")], [wh("a")])
    assert partial.analyze().reclaimable_bytes == 0
    check_against_engine(partial, partial.analyze(), tmp_path / "partial")


def test_file_turned_into_a_directory_and_back(tmp_path: Path) -> None:
    image = image_of(
        tmp_path,
        [f("x", 100), f("y", 3)],
        [d("x"), f("x/inner", 20), f("x/more", 2)],
        [f("x", 5)],
    )
    a = image.analyze()
    assert (a.layer_bytes, a.visible_bytes, a.reclaimable_bytes) == (130, 8, 122)
    assert hidden(a) == [{"overwritten": 100}, {"replaced_by_file": 22}, {}]
    assert [x.hidden_by for x in a.layers] == [{1: 100}, {2: 22}, {}]
    assert a.top[0].path == "x"
    assert a.top[0].history == ((0, "added"), (1, "modified"), (2, "modified"))
    history = {p.path: p.history for p in a.top}
    assert history["x/inner"] == ((1, "added"), (2, "hidden"))
    check_against_engine(image, a, tmp_path)


def test_implied_directory_replaces_a_file(tmp_path: Path) -> None:
    """A layer with ``x/inner`` but no ``x`` entry replaces the file ``x`` as containerd would
    apply it (flatten refuses such a layer as hostile; the analysis still accounts for it)."""
    image = image_of(tmp_path, [f("x", 100)], [f("x/inner", 20)])
    a = image.analyze()
    assert hidden(a) == [{"overwritten": 100}, {}]
    assert a.visible_bytes == 20


def test_whiteouts_hide_lower_layers_only(tmp_path: Path) -> None:
    """A layer re-creating what it whites out (in either archive order) keeps its own copy;
    a symlink replacing a directory hides the directory's contents."""
    image = image_of(
        tmp_path,
        [f("a", 10), d("dir"), f("dir/f", 40)],
        [f("a", 11), wh("a"), sym("dir", "elsewhere")],
    )
    a = image.analyze()
    assert hidden(a) == [{"deleted": 10, "replaced_by_file": 40}, {}]
    assert a.visible_bytes == 11
    check_against_engine(image, a, tmp_path)


def test_json_shape(tmp_path: Path) -> None:
    image = image_of(tmp_path, [f("a", 10)], [wh("a"), f("b", 4)])
    obj = image.analyze().to_json()
    json.dumps(obj)
    assert obj["layer_bytes"] == 14
    assert obj["visible_bytes"] == 4
    assert obj["reclaimable_bytes"] == 10
    first = obj["layers"][0]
    assert first["wasted_bytes"] == 10
    assert first["hidden"] == {"deleted": 10, "overwritten": 0, "opaque": 0, "replaced_by_file": 0}
    assert first["hidden_by"] == {"1": 10}
    assert first["created_by"] == "step 0"
    assert first["base"] is False
    assert obj["top"][0]["history"] == [
        {"layer": 0, "change": "added"},
        {"layer": 1, "change": "deleted"},
    ]


def test_base_layers(tmp_path: Path) -> None:
    base = image_of(tmp_path / "base", [f("os", 100)])
    app = base.append(write_layer(tmp_path / "app.tar", [f("app", 5)]))
    a = app.analyze(base)
    assert [x.base for x in a.layers] == [True, False]
    assert a.base_layers == 1
    other = image_of(tmp_path / "other", [f("os2", 1)])
    with pytest.raises(ValueError, match="not built on"):
        app.analyze(other)
    annotated = app.with_annotations({"org.opencontainers.image.base.digest": base.digest})
    assert annotated.analyze().base_digest == base.digest


# --- squash planning --------------------------------------------------------------------------


def squash_case(tmp: Path) -> Image:
    return image_of(
        tmp,
        [f("base", 1000), f("conf", 10)],
        [f("big", 500), f("tmp/cache", 70)],
        [wh("big"), f("conf", 12)],  # big: hidden inside 1..3; conf: layer 0's, below the range
        [wh("tmp"), f("x", 1)],  # tmp/cache: hidden from above 1..3
    )


@pytest.mark.parametrize(("start", "end", "saved"), [(1, 3, 500), (1, 4, 570), (0, 4, 580)])
def test_squash_savings_match_a_real_squash(
    tmp_path: Path, start: int, end: int, saved: int
) -> None:
    image = squash_case(tmp_path)
    plan = image.squash_savings(start, end)
    assert plan.saved_bytes == saved
    squashed = image.squash(start, end, tmp_path / f"sq{start}{end}.tar", compression=None)
    before = sum(file_bytes(x) for x in image.layers[start:end])
    assert before - file_bytes(squashed.layers[start]) == saved
    assert plan.layer_bytes - plan.saved_bytes == file_bytes(squashed.layers[start])
    if (start, end) == (1, 3):
        assert [(c.path, c.bytes, c.layer, c.hidden_by) for c in plan.paths] == [("big", 500, 1, 2)]
    assert plan.to_json()["saved_bytes"] == saved


def test_squash_savings_range_is_checked(tmp_path: Path) -> None:
    image = squash_case(tmp_path)
    for start, end in ((2, 2), (-1, 2), (0, 5)):
        with pytest.raises(ValueError, match="squash range"):
            image.squash_savings(start, end)


# --- the command line -------------------------------------------------------------------------


def run(store: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["--store", str(store), *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_waste_and_squash_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "store")
    image = squash_case(tmp_path / "layers")
    layers = [store.put_layer(x) for x in image.layers]
    base = Image.scratch(created=T0).append(layers[0], created_by="FROM os")
    store.save(base, "base:1")
    app = base
    for layer in layers[1:]:
        app = app.append(layer, created_by="RUN step")
    store.save(app.with_annotations({"org.opencontainers.image.base.digest": base.digest}), "app:1")

    status, out, err = run(tmp_path / "store", capsys, "waste", "app:1", "--json")
    assert status == 0, err
    obj = json.loads(out)
    assert obj["reclaimable_bytes"] == 580
    assert [x["base"] for x in obj["layers"]] == [True, False, False, False]
    assert obj["layers"][1]["wasted_bytes"] == 570

    status, out, err = run(tmp_path / "store", capsys, "waste", "app:1", "--top", "2")
    assert status == 0, err
    assert "reclaimable" in out and "tmp/cache" in out and "base" in out

    before = store.tags()["app:1"]
    status, out, err = run(tmp_path / "store", capsys, "squash", "app:1", "1", "3", "--dry-run")
    assert status == 0, err
    assert "500 B" in out and "big" in out
    status, out, err = run(
        tmp_path / "store", capsys, "squash", "app:1", "1", "3", "--dry-run", "--json"
    )
    assert json.loads(out)["saved_bytes"] == 500
    assert Store(tmp_path / "store").tags()["app:1"] == before


def test_build_from_an_image_names_its_base(tmp_path: Path) -> None:
    """The builder writes BuildKit's base annotations, so ``analyze`` (through the store)
    marks the base layers; a stage built on another follows it to its FROM image, and
    ``scratch`` gives none."""
    import layercore

    store = Store(tmp_path / "store")
    os_layer = store.put_layer(write_layer(tmp_path / "os.tar", [f("etc/os-release", 20)]))
    base = store.save(Image.scratch(created=T0).append(os_layer, created=T0), "base:1")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app").write_bytes(b"a" * 30)
    (ctx / "Dockerfile").write_text(
        "FROM base:1 AS first\nCOPY app /app\nFROM first\nCOPY app /app2\n"
    )
    result = layercore.build(ctx, store=store, source_date_epoch=T0)
    annotations = result.image.manifest["annotations"]
    assert annotations["org.opencontainers.image.base.digest"] == base.digest
    assert annotations["org.opencontainers.image.base.name"] == "docker.io/library/base:1"
    assert result.image.analyze().base_digest == base.digest
    assert [x.base for x in result.image.analyze(store.load(base.digest)).layers] == [
        True,
        False,
        False,
    ]
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY app /app\n")
    scratch = layercore.build(ctx, store=store, source_date_epoch=T0)
    assert "annotations" not in scratch.image.manifest

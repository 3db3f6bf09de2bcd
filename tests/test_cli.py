"""The `layercore` command line: every command, its JSON output, its errors, and a whole flow."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from layercore import Image, Layer
from layercore.cli import build_parser, main
from layercore.store import Store

EPOCH = 1_700_000_000
VENV_BIN = Path(sys.executable).parent
TOOL = bytes(range(256)) * 40


class CLI:
    """Runs `layercore --store STORE ...` in-process and captures its output."""

    def __init__(self, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.store = store
        self.capsys = capsys

    def run(self, *argv: str) -> tuple[int, str, str]:
        status = main(["--store", str(self.store), *argv])
        out, err = self.capsys.readouterr()
        return status, out, err

    def __call__(self, *argv: str) -> str:
        status, out, err = self.run(*argv)
        assert status == 0, err
        assert err == ""
        return out

    def json(self, *argv: str) -> object:
        return json.loads(self(*argv, "--json"))

    def fail(self, *argv: str, status: int = 1) -> str:
        code, out, err = self.run(*argv)
        assert code == status, (out, err)
        return err


@pytest.fixture
def lc(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CLI:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    monkeypatch.delenv("LAYERCORE_HOME", raising=False)
    return CLI(tmp_path / "store", capsys)


def tree(root: Path, files: dict[str, str | bytes], links: dict[str, str] | None = None) -> Path:
    """A directory holding ``files`` (path -> body) and symbolic ``links`` (path -> target)."""
    root.mkdir(parents=True)
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body.encode() if isinstance(body, str) else body)
    for name, target in (links or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    return root


def base_tree(root: Path) -> Path:
    src = tree(
        root,
        {
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
            "etc/hostname": "base\n",
            "bin/tool": TOOL,
            "var/log/boot.log": "booted\n",
        },
        {"bin/sh": "tool"},
    )
    os.chmod(src / "bin" / "tool", 0o755)
    return src


def app_tree(root: Path) -> Path:
    return tree(root, {"etc/hostname": "app\n", "app/main.sh": "#!/bin/sh\necho hi\n"})


def image_digest(lc: CLI, ref: str) -> str:
    info = lc.json("inspect", ref)
    assert isinstance(info, dict)
    return str(info["digest"])


@pytest.fixture
def app(lc: CLI, tmp_path: Path) -> str:
    """`app:1`: base layer, app layer, then a config change; `base:1` is its first layer."""
    lc("image", "new", "base:1")
    lc("image", "append", "base:1", str(base_tree(tmp_path / "base")), "--created-by", "ADD base /")
    lc("image", "append", "base:1", str(app_tree(tmp_path / "app")), "--tag", "app:1",
       "--created-by", "COPY app /", "--comment", "the app")  # fmt: skip
    lc("image", "config", "app:1", "--env", "PATH=/bin", "--cmd", "/app/main.sh")
    return "app:1"


# --- help, the console script, python -m ----------------------------------------------------


def command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every command and sub-command of the parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from command_paths(sub, (*prefix, name))


ALL_COMMANDS = list(command_paths(build_parser()))


def test_every_command_is_listed() -> None:
    assert sorted(" ".join(c) for c in ALL_COMMANDS) == sorted(
        [
            "layer", "layer create", "image", "image new", "image append", "image config",
            "images", "inspect", "history", "ls", "cat", "which", "diff", "flatten", "squash",
            "build", "export", "import", "pull", "push", "copy", "login", "logout", "tag", "rm",
            "gc", "prune", "du", "verify", "waste", "report", "explain", "run", "start", "ps",
            "commit", "rmi",
        ]
    )  # fmt: skip


def test_only_the_named_command_is_built() -> None:
    """A command line names one command: only its parser is built (the others cost more to
    build than some commands take to run), and it parses as the whole parser does."""
    from layercore.cli import _command_of

    assert _command_of(["--store", "build", "images"]) == "images"
    assert _command_of(["--store=s", "build", "."]) == "build"
    assert _command_of(["--version"]) is None and _command_of([]) is None
    assert _command_of(["--", "rm", "x"]) == "rm"
    whole, one = build_parser(), build_parser("image")
    assert [c for c in command_paths(one)] == [c for c in ALL_COMMANDS if c[0] == "image"]
    argv = ["image", "config", "app:1", "--env", "A=1", "--cmd", "sh"]
    assert vars(one.parse_args(argv)) == vars(whole.parse_args(argv))
    # Each top-level command's parser is built from its own module alone, and is whole.
    for name in {c[0] for c in ALL_COMMANDS}:
        alone = build_parser(name)
        assert [c for c in command_paths(alone)] == [c for c in ALL_COMMANDS if c[0] == name]


def test_a_short_command_imports_only_its_own_module() -> None:
    """`layercore run` pays at start-up for what it imports: not the other commands' modules,
    not the registry client, not rich."""
    code = (
        "import sys; from layercore.cli import build_parser; build_parser('run'); "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('layercore', 'rich')))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loaded = set(done.stdout.split())
    assert "layercore.cli.container" in loaded
    for other in ("layercore.cli.build", "layercore.cli.registry", "layercore.registry", "rich"):
        assert other not in loaded, other


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_help_in_process(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: layercore {' '.join(command)}")
    if command not in (("layer",), ("image",)):
        assert "examples:\n  layercore " in out


def test_console_script_help_on_every_command(tmp_path: Path) -> None:
    script = VENV_BIN / "layercore"
    assert script.exists(), "no console script: `make` installs the wheel into .venv"
    env = dict(os.environ, LAYERCORE_HOME=str(tmp_path / "home"))
    top = subprocess.run([script, "--help"], capture_output=True, text=True, env=env, check=True)
    for command in ("layer", "image", "images", "which", "diff", "export", "du"):
        assert f"    {command}" in top.stdout
    for command in ALL_COMMANDS:
        done = subprocess.run([script, *command, "--help"], capture_output=True, text=True, env=env)
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout.startswith(f"usage: layercore {' '.join(command)}")
    # Help needs no store: nothing was created.
    assert not (tmp_path / "home").exists()


def test_console_script_runs_a_command_and_python_m_works(tmp_path: Path) -> None:
    env = dict(os.environ, LAYERCORE_HOME=str(tmp_path / "home"), SOURCE_DATE_EPOCH=str(EPOCH))
    made = subprocess.run(
        [VENV_BIN / "layercore", "image", "new", "x:1", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    digest = json.loads(made.stdout)["digest"]
    listed = subprocess.run(
        [sys.executable, "-m", "layercore.cli", "images", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    assert [(i["tag"], i["digest"]) for i in json.loads(listed.stdout)] == [("x:1", digest)]
    version = subprocess.run(
        [sys.executable, "-m", "layercore.cli", "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("layercore ")


def test_usage_errors_exit_2(lc: CLI) -> None:
    unknown = lc.fail("frobnicate", status=2)
    assert "invalid choice" in unknown and "'build'" in unknown  # the whole list of commands
    assert "the following arguments are required" in lc.fail("cat", "x:1", status=2)
    assert "--env takes KEY=VALUE, not 'NOVALUE'" in lc.fail(
        "image", "config", "x", "--env", "NOVALUE", status=2
    )
    assert "not a port: 'http'" in lc.fail("image", "config", "x", "--expose", "http", status=2)
    assert "JSON array of strings" in lc.fail(
        "image", "config", "x", "--cmd-json", '"sh"', status=2
    )
    assert "not allowed with argument" in lc.fail(
        "image", "config", "x", "--cmd", "sh", "--cmd-json", "[]", status=2
    )


# --- errors ---------------------------------------------------------------------------------


def test_unknown_image_is_an_error_naming_it(lc: CLI) -> None:
    for argv in (
        ["inspect", "nope:1"],
        ["history", "nope:1"],
        ["ls", "nope:1"],
        ["cat", "nope:1", "/etc/passwd"],
        ["image", "append", "nope:1", "."],
        ["export", "nope:1", "out"],
        ["tag", "nope:1", "other"],
        ["rm", "nope:1"],
    ):
        err = lc.fail(*argv)
        assert err.startswith("layercore: error: "), argv
        assert "nope:1" in err, argv


def test_bad_tag_is_a_usage_error_naming_it(lc: CLI) -> None:
    err = lc.fail("image", "new", "bad tag!", status=2)
    assert err.startswith("layercore: error: ")
    assert "bad tag!" in err
    lc("image", "new", "good:1")
    assert "a//b" in lc.fail("tag", "good:1", "a//b", status=2)
    assert sorted(Store(lc.store).tags()) == ["good:1"]


def test_missing_directory_is_an_error_naming_it(lc: CLI, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    err = lc.fail("layer", "create", str(missing))
    assert err == f"layercore: error: {missing}: no such directory\n"
    afile = tmp_path / "file"
    afile.write_text("x")
    assert f"{afile}: not a directory" in lc.fail("layer", "create", str(afile))
    lc("image", "new", "x:1")
    assert f"{missing}: no such directory or layer blob" in lc.fail(
        "image", "append", "x:1", str(missing)
    )
    assert str(missing) in lc.fail("import", str(missing))


def test_a_file_that_is_not_a_layer_is_an_error(lc: CLI, tmp_path: Path) -> None:
    lc("image", "new", "x:1")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    err = lc.fail("image", "append", "x:1", str(junk))
    assert err.startswith(f"layercore: error: {junk}")


def test_paths_missing_from_the_image(lc: CLI, app: str) -> None:
    assert lc.fail("cat", app, "/etc/shadow") == (
        "layercore: error: /etc/shadow: no such path in image app:1\n"
    )
    assert "no such path in image app:1" in lc.fail("ls", app, "/nowhere")
    assert "no such path in image app:1" in lc.fail("which", app, "/nowhere")
    assert "is a directory" in lc.fail("cat", app, "/etc")


def test_squash_range_and_flatten_of_scratch_are_usage_errors(lc: CLI, app: str) -> None:
    err = lc.fail("squash", app, "1", "5", status=2)
    assert "0 <= START < END <= 2" in err
    assert "not 1..5" in err
    assert "START < END" in lc.fail("squash", app, "1", "1", status=2)
    lc("image", "new", "empty:1")
    assert "has no layers" in lc.fail("flatten", "empty:1", status=2)


def test_image_config_without_a_change_is_a_usage_error(lc: CLI, app: str) -> None:
    assert "nothing to change" in lc.fail("image", "config", app, status=2)


# --- layer create ---------------------------------------------------------------------------


def test_layer_create_into_the_store_and_to_a_file(lc: CLI, tmp_path: Path) -> None:
    src = base_tree(tmp_path / "src")
    desc = lc.json("layer", "create", str(src), "--source-date-epoch", "0")
    assert isinstance(desc, dict)
    assert sorted(desc) == [
        "compression",
        "diff_id",
        "digest",
        "media_type",
        "path",
        "size",
        "uncompressed_size",
    ]
    assert desc["media_type"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    store = Store(lc.store)
    assert Path(desc["path"]) == store.blob_path(desc["digest"])
    assert store.has_blob(desc["digest"])

    out = tmp_path / "layer.tar"
    plain = lc.json(
        "layer", "create", str(src), "--compression", "none", "-o", str(out),
        "--source-date-epoch", "0",
    )  # fmt: skip
    assert isinstance(plain, dict)
    assert plain["path"] == str(out)
    assert plain["digest"] == plain["diff_id"] == desc["diff_id"]
    assert plain["compression"] is None
    assert not store.has_blob(plain["digest"])
    with tarfile.open(out) as tar:
        assert "bin/tool" in tar.getnames()
        member = tar.getmember("etc/passwd")
        assert (member.uid, member.mtime) == (0, 0)

    human = lc("layer", "create", str(src), "--compression", "zstd")
    assert "application/vnd.oci.image.layer.v1.tar+zstd" in human
    assert "diff_id" in human


# --- the full flow ----------------------------------------------------------------------------


def test_full_flow(lc: CLI, tmp_path: Path) -> None:
    # layer create -> image new -> append (a directory, then a blob) -> config
    base = base_tree(tmp_path / "base")
    layer = lc.json("layer", "create", str(base), "-o", str(tmp_path / "base.tgz"))
    assert isinstance(layer, dict)
    new = lc.json("image", "new", "demo:1", "--arch", "arm64", "--variant", "v8")
    assert isinstance(new, dict)
    assert (new["tag"], new["architecture"], new["layers"]) == ("demo:1", "arm64", [])
    appended = lc.json(
        "image", "append", "demo:1", str(tmp_path / "base.tgz"), "--created-by", "ADD base /"
    )
    assert isinstance(appended, dict)
    assert appended["layer"]["digest"] == layer["digest"]
    assert [x["digest"] for x in appended["layers"]] == [layer["digest"]]
    assert lc("image", "append", "demo:1", str(app_tree(tmp_path / "app"))) == (
        f"demo:1 {image_digest(lc, 'demo:1')}\n"
    )
    lc("image", "config", "demo:1", "--env", "PATH=/bin", "--env", "MODE=prod",
       "--cmd", "sh", "--cmd=-c", "--cmd", "echo hi", "--workdir", "/app",
       "--label", "org.example=1", "--expose", "8080", "--volume", "/data")  # fmt: skip
    info = lc.json("inspect", "demo:1")
    assert isinstance(info, dict)
    run = info["config"]["config"]
    assert run["Env"] == ["PATH=/bin", "MODE=prod"]
    assert run["Cmd"] == ["sh", "-c", "echo hi"]
    assert run["WorkingDir"] == "/app"
    assert run["ExposedPorts"] == {"8080/tcp": {}}

    # history -> which -> ls / cat
    history = lc.json("history", "demo:1")
    assert isinstance(history, list)
    assert [(h["layer"], h["empty_layer"]) for h in history] == [
        (0, False),
        (1, False),
        (None, True),
    ]
    assert history[0]["created_by"] == "ADD base /"
    assert history[1]["created_by"] == f"layercore image append {tmp_path / 'app'}"
    which = lc.json("which", "demo:1", "/etc/hostname")
    assert isinstance(which, dict)
    assert (which["layer"], which["created_by"]) == (1, history[1]["created_by"])
    assert [(h["layer"], h["change"]) for h in which["history"]] == [(0, "added"), (1, "modified")]
    assert lc("ls", "demo:1", "/etc") == "hostname\npasswd\n"
    assert lc("cat", "demo:1", "/etc/hostname") == "app\n"

    # diff against the base image made of the first layer only
    lc("image", "new", "only-base:1", "--arch", "arm64", "--variant", "v8")
    lc("image", "append", "only-base:1", str(tmp_path / "base.tgz"))
    assert lc("diff", "only-base:1", "demo:1") == ("A /app\nA /app/main.sh\nM /etc/hostname\n")

    # flatten / squash keep the merged view
    before = lc("ls", "demo:1", "-R", "-l")
    flat = lc.json("flatten", "demo:1", "--tag", "demo:flat")
    assert isinstance(flat, dict)
    assert len(flat["layers"]) == 1
    assert lc("ls", "demo:flat", "-R", "-l") == before
    assert lc("diff", "demo:1", "demo:flat", "--content") == ""
    squashed = lc.json("squash", "demo:1", "0", "2", "--tag", "demo:sq")
    assert isinstance(squashed, dict)
    assert squashed["layers"][0]["diff_id"] == flat["layers"][0]["diff_id"]
    assert lc("ls", "demo:sq", "-R", "-l") == before
    assert lc("diff", "demo:flat", "demo:sq") == ""

    # export / import, through every format
    digest = image_digest(lc, "demo:1")
    diff_ids = list(Store(lc.store).load("demo:1").diff_ids)
    for fmt, layout, dest in (
        ("oci", None, tmp_path / "layout"),
        ("oci-archive", None, tmp_path / "demo-oci.tar"),
        ("docker-archive", "oci", tmp_path / "demo-docker.tar"),
        ("docker-archive", "legacy", tmp_path / "demo-legacy.tar"),
    ):
        options = ["--docker-layout", "legacy"] if layout == "legacy" else []
        exported = lc.json("export", "demo:1", str(dest), "--format", fmt, *options)
        assert exported == {
            "digest": digest,
            "dest": str(dest),
            "format": fmt,
            "docker_layout": layout,
            "name": None,
        }
        other = CLI(tmp_path / f"store-{dest.stem}", lc.capsys)
        imported = other.json("import", str(dest), "--tag", "back:1")
        assert isinstance(imported, dict)
        assert imported["tag"] == "back:1"
        assert [x["diff_id"] for x in imported["layers"]] == diff_ids
        assert other("cat", "back:1", "/etc/hostname") == "app\n"
        if fmt != "docker-archive":
            assert imported["digest"] == digest
        if layout == "legacy":
            # Uncompressed layer.tar members: the imported layers are plain tars.
            assert [x["digest"] for x in imported["layers"]] == diff_ids
            with tarfile.open(dest) as tar:
                names = tar.getnames()
            assert "repositories" in names and "oci-layout" not in names

    # tag / rm / gc / du
    assert lc("tag", "demo:1", "demo:latest") == f"tagged demo:latest -> {digest}\n"
    usage = lc.json("du")
    assert isinstance(usage, dict)
    rows = {u["tag"]: u for u in usage["images"]}
    assert rows["demo:latest"]["digest"] == digest
    assert rows["demo:1"]["shared_bytes"] > 0
    assert usage["saved_bytes"] > 0
    assert lc("rm", "demo:1", "demo:latest", "demo:flat", "demo:sq", "only-base:1") == (
        "untagged demo:1\nuntagged demo:latest\nuntagged demo:flat\nuntagged demo:sq\n"
        "untagged only-base:1\n"
    )
    usage = lc.json("du")
    assert isinstance(usage, dict)
    assert usage["unreferenced_bytes"] > 0
    gc = lc.json("gc")
    assert isinstance(gc, dict)
    assert gc["bytes_freed"] == usage["unreferenced_bytes"]
    assert gc["removed"]
    after = lc.json("du")
    assert after == {
        "total_bytes": 0,
        "shared_bytes": 0,
        "saved_bytes": 0,
        "unreferenced_bytes": 0,
        "images": [],
    }


# --- listings -------------------------------------------------------------------------------


def test_images_table_and_json(lc: CLI, app: str) -> None:
    listing = lc.json("images")
    assert isinstance(listing, list)
    assert [i["tag"] for i in listing] == ["base:1", "app:1"]
    for item in listing:
        assert sorted(item) == [
            "architecture", "config_digest", "created", "digest", "layers", "media_type", "os",
            "size", "tag",
        ]  # fmt: skip
        assert item["created"] == "2023-11-14T22:13:20Z"
    store = Store(lc.store)
    image = store.load("app:1")
    expected = (
        len(image.manifest_bytes) + len(image.config_bytes) + sum(x.size for x in image.layers)
    )
    assert listing[1]["size"] == expected

    table = lc("images").splitlines()
    assert table[0].split() == ["TAG", "DIGEST", "LAYERS", "SIZE", "CREATED"]
    row = table[2].split()
    assert row[0] == "app:1"
    assert row[1] == image.digest.removeprefix("sha256:")[:12]
    assert row[2] == "2"
    assert row[-1] == "2023-11-14T22:13:20Z"
    assert all(line == line.rstrip() for line in table)
    assert "\x1b" not in "\n".join(table)


def test_inspect_table_and_json(lc: CLI, app: str) -> None:
    info = lc.json("inspect", app)
    assert isinstance(info, dict)
    assert sorted(info) == ["config", "digest", "manifest"]
    store = Store(lc.store)
    image = store.load(app)
    assert info["manifest"] == image.manifest
    assert info["config"] == image.config
    assert lc.json("inspect", image.digest) == info
    assert lc.json("inspect", image.digest.removeprefix("sha256:")[:12]) == info

    text = lc("inspect", app)
    for expected in (
        image.digest,
        image.config_digest,
        "PATH=/bin",
        '["/app/main.sh"]',
        "tags",
        image.layers[1].diff_id,
        "chain id",
    ):
        assert expected in text


def test_history_table_marks_empty_layers(lc: CLI, app: str) -> None:
    history = lc.json("history", app)
    assert isinstance(history, list)
    assert [h["layer"] for h in history] == [0, 1, None]
    assert sorted(history[0]) == [
        "author", "comment", "created", "created_by", "digest", "empty_layer", "layer", "size",
    ]  # fmt: skip
    assert history[1]["comment"] == "the app"
    assert history[2]["created_by"] == 'ENV PATH=/bin; CMD ["/app/main.sh"]'
    assert history[2]["digest"] is None
    lines = lc("history", app).splitlines()
    assert lines[0].split() == ["LAYER", "DIGEST", "SIZE", "CREATED", "CREATED", "BY", "COMMENT"]
    assert lines[1].split()[0] == "0"
    assert "ADD base /" in lines[1]
    assert lines[2].endswith("the app")
    assert lines[3].split()[:3] == ["-", "(empty)", "-"]


def test_ls_plain_long_recursive_and_json(lc: CLI, app: str) -> None:
    assert lc("ls", app) == "app\nbin\netc\nvar\n"
    assert lc("ls", app, "bin/") == "sh\ntool\n"
    assert lc("ls", app, "/etc/passwd") == "/etc/passwd\n"
    long = lc("ls", app, "/bin", "-l").splitlines()
    assert long[0].split() == [
        "lrwxrwxrwx",
        "0/0",
        "0",
        "B",
        "2023-11-14",
        "22:13",
        "sh",
        "->",
        "tool",
    ]
    assert long[1].split() == ["-rwxr-xr-x", "0/0", "10.0", "KiB", "2023-11-14", "22:13", "tool"]
    recursive = lc("ls", app, "/var", "-R")
    assert recursive == "/var/log\n/var/log/boot.log\n"
    assert lc("ls", app, "-R").splitlines()[:3] == ["/app", "/app/main.sh", "/bin"]
    entries = lc.json("ls", app, "/bin")
    assert isinstance(entries, list)
    assert entries[1] == {
        "path": "/bin/tool",
        "kind": "file",
        "mode": 0o755,
        "uid": 0,
        "gid": 0,
        "uname": "",
        "gname": "",
        "size": len(TOOL),
        "mtime": EPOCH,
        "linkname": None,
        "devmajor": 0,
        "devminor": 0,
        "xattrs": [],
        "layer": 0,
    }
    assert entries[0]["linkname"] == "tool"


def test_ls_shows_hardlinks_and_escapes_odd_names(lc: CLI, tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"data/a": "body\n"})
    os.link(src / "data" / "a", src / "data" / "b")
    (src / "data" / "new\nline").write_text("x")
    os.mkdir(os.fsencode(src) + b"/caf\xe9")
    lc("image", "new", "odd:1")
    lc("image", "append", "odd:1", str(src))
    long = lc("ls", "odd:1", "/data", "-l").splitlines()
    assert long[1].startswith("hrw-r--r--")
    assert long[1].endswith("b link to /data/a")
    assert long[2].endswith("new\\x0aline")
    assert "caf\\xe9" in lc("ls", "odd:1")


def test_cat_writes_raw_bytes_and_follows_symlinks(
    lc: CLI, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw))
    assert main(["--store", str(lc.store), "cat", app, "/bin/sh"]) == 0
    assert raw.getvalue() == TOOL


def test_which_names_the_layer_and_its_history(lc: CLI, app: str, tmp_path: Path) -> None:
    store = Store(lc.store)
    image = store.load(app)
    which = lc.json("which", app, "etc/hostname")
    assert isinstance(which, dict)
    assert sorted(which) == ["created_by", "diff_id", "digest", "entry", "history", "layer", "path"]
    assert which["path"] == "/etc/hostname"
    assert which["digest"] == image.layers[1].digest
    assert which["entry"]["size"] == 4
    bottom, top = image.layers[0].digest, image.layers[1].digest
    assert which["history"] == [
        {"layer": 0, "change": "added", "digest": bottom, "created_by": "ADD base /"},
        {"layer": 1, "change": "modified", "digest": top, "created_by": "COPY app /"},
    ]
    text = lc("which", app, "/etc/hostname").splitlines()
    assert text[0] == f"/etc/hostname: layer 1 {image.layers[1].digest[7:19]} (COPY app /)"
    assert text[2] == "history:"
    assert text[3].split()[:3] == ["0", "added", image.layers[0].digest[7:19]]
    assert text[4].split()[:2] == ["1", "modified"]
    assert text[4].endswith("COPY app /")

    # A deleted path: not found, and the error says which layer deleted it.
    upper = tmp_path / "upper"
    shutil.copytree(tmp_path / "base", upper, symlinks=True)
    (upper / "var" / "log" / "boot.log").unlink()
    whiteout = Layer.from_diff(
        image.stack, upper, tmp_path / "rm.tar", compression=None, source_date_epoch=EPOCH
    )
    lc("image", "append", app, str(whiteout.path), "--created-by", "RUN rm boot.log")
    err = lc.fail("which", app, "/var/log/boot.log")
    assert "no such path in image app:1 (deleted by layer 2: RUN rm boot.log)" in err


# --- diff -----------------------------------------------------------------------------------


def test_diff_reports_added_deleted_and_modified(lc: CLI, app: str, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    shutil.copytree(tmp_path / "base", upper, symlinks=True)
    (upper / "var" / "log" / "boot.log").unlink()
    os.chmod(upper / "etc" / "passwd", 0o600)
    image = Store(lc.store).load("base:1")
    change = Layer.from_diff(image.stack, upper, tmp_path / "change.tgz", source_date_epoch=EPOCH)
    lc("image", "append", "base:1", str(change.path), "--tag", "base:2")
    changes = lc.json("diff", "base:1", "base:2")
    assert changes == [
        {"change": "M", "path": "/etc/passwd", "fields": ["mode"]},
        {"change": "D", "path": "/var/log/boot.log", "fields": []},
    ]
    assert lc("diff", "base:2", "base:1") == "M /etc/passwd\nA /var/log/boot.log\n"
    assert lc("diff", app, app) == ""


def test_diff_content_compares_bodies_only_when_asked(
    lc: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, body in (("one", "aaaa\n"), ("two", "bbbb\n")):
        src = tree(tmp_path / name, {"conf": body, "same": "same\n"})
        lc("image", "new", f"{name}:1")
        lc("image", "append", f"{name}:1", str(src), "--source-date-epoch", str(EPOCH))
    # Equal metadata (size, mode, clamped mtime): equal without --content.
    assert lc("diff", "one:1", "two:1") == ""
    assert lc.json("diff", "one:1", "two:1", "--content") == [
        {"change": "M", "path": "/conf", "fields": ["content"]}
    ]
    # Files of the same layer at the same path are equal without being read.
    lc("image", "append", "one:1", str(tree(tmp_path / "more", {"x": "x"})), "--tag", "one:2")

    def no_reading(*_args: object) -> bool:
        raise AssertionError("a body was read")

    monkeypatch.setattr("layercore.cli.inspect._same_body", no_reading)
    assert lc("diff", "one:1", "one:2", "--content") == "A /x\n"


def test_diff_output_order_is_the_walk_order(lc: CLI, tmp_path: Path) -> None:
    lc("image", "new", "e:1")
    lc("image", "append", "e:1", str(tree(tmp_path / "t", {"a/x": "1", "a-b/y": "2", "a.c": "3"})))
    lc("image", "new", "z:1")
    assert lc("diff", "z:1", "e:1") == "A /a\nA /a/x\nA /a-b\nA /a-b/y\nA /a.c\n"


# --- changing images ------------------------------------------------------------------------


def test_image_config_merges_env_and_labels_and_edits_ports(lc: CLI, app: str) -> None:
    lc("image", "config", app, "--env", "A=1", "--label", "x=1", "--label", "y=2",
       "--expose", "80", "--expose", "53/udp", "--volume", "/data")  # fmt: skip
    lc("image", "config", app, "--unset-env", "PATH", "--env", "A=2", "--unset-label", "x",
       "--unexpose", "80", "--volume", "/cache", "--unset-volume", "/data",
       "--entrypoint-json", '["/init"]', "--cmd-json", "[]", "--user", "1000:1000",
       "--stop-signal", "SIGINT", "--created-by", "custom", "--comment", "why")  # fmt: skip
    config = Store(lc.store).load(app).runtime_config
    assert config.env == ("A=2",)
    assert dict(config.labels) == {"y": "2"}
    assert config.exposed_ports == ("53/udp",)
    assert config.volumes == ("/cache",)
    assert config.entrypoint == ("/init",)
    assert config.cmd in (None, ())
    assert (config.user, config.stop_signal) == ("1000:1000", "SIGINT")
    history = lc.json("history", app)
    assert isinstance(history, list)
    assert (history[-1]["created_by"], history[-1]["comment"]) == ("custom", "why")
    assert history[-1]["empty_layer"] is True


def test_changes_to_an_image_loaded_by_digest_are_saved_untagged(lc: CLI, app: str) -> None:
    digest = image_digest(lc, app)
    out = lc("image", "config", digest, "--user", "nobody")
    assert out.startswith("<untagged> sha256:")
    new_digest = out.split()[1]
    assert Store(lc.store).tags()["app:1"] == digest
    listing = lc.json("images")
    assert isinstance(listing, list)
    assert (None, new_digest) in [(i["tag"], i["digest"]) for i in listing]
    assert "<none>" in lc("images")
    tagged = lc.json("image", "config", digest, "--user", "root", "--tag", "app:root")
    assert isinstance(tagged, dict)
    assert Store(lc.store).tags()["app:root"] == tagged["digest"]


def test_append_with_tag_leaves_the_source_tag_alone(lc: CLI, app: str) -> None:
    base = lc.json("inspect", "base:1")
    full = lc.json("inspect", app)
    assert isinstance(base, dict)
    assert isinstance(full, dict)
    assert len(base["manifest"]["layers"]) == 1
    assert len(full["manifest"]["layers"]) == 2
    assert full["manifest"]["layers"][0] == base["manifest"]["layers"][0]


# --- moving images --------------------------------------------------------------------------


def test_import_takes_the_name_in_the_source(lc: CLI, app: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    lc("export", app, str(layout), "--name", "shipped")
    lc("export", "base:1", str(layout), "--name", "base")
    other = CLI(tmp_path / "other", lc.capsys)
    imported = other.json("import", str(layout), "--name", "shipped")
    assert isinstance(imported, dict)
    assert imported["tag"] == "shipped"
    assert imported["digest"] == image_digest(lc, app)
    assert other("import", str(layout), "--name", "base").startswith("base sha256:")


def test_export_docker_layout(lc: CLI, app: str, tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.tar"
    out = lc("export", app, str(legacy), "--format", "docker-archive", "--docker-layout", "legacy")
    assert out.endswith(f"to {legacy} (docker-archive, legacy layout)\n")
    with tarfile.open(legacy) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["app:1"]
    assert all(name.endswith("/layer.tar") for name in manifest[0]["Layers"])
    # --docker-layout is for docker-archives only: a usage error, and nothing is written.
    for fmt in ("oci", "oci-archive"):
        dest = tmp_path / f"out-{fmt}"
        err = lc.fail("export", app, str(dest), "--format", fmt, "--docker-layout", "oci", status=2)
        assert err.startswith("layercore: error: export: --docker-layout applies to")
        assert fmt in err
        assert not dest.exists()
    assert "invalid choice" in lc.fail(
        "export", app, str(legacy), "--format", "docker-archive", "--docker-layout", "v1", status=2
    )


def test_export_legacy_of_zstd_layers_without_zstandard_is_an_error(
    lc: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lc("image", "new", "z:1")
    lc("image", "append", "z:1", str(app_tree(tmp_path / "app")), "--compression", "zstd")
    dest = tmp_path / "z.tar"
    argv = ["export", "z:1", str(dest), "--format", "docker-archive", "--docker-layout", "legacy"]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "zstandard", None)
        err = lc.fail(*argv)
    assert err.startswith("layercore: error: exporting a zstd layer")
    assert "pip install 'layercore[zstd]'" in err
    assert not dest.exists()
    lc(*argv)
    assert dest.exists()


# --- tags, rm, gc, du, verify ---------------------------------------------------------------


def test_rm_removes_what_exists_and_fails_for_the_rest(lc: CLI, app: str) -> None:
    lc("tag", app, "app:2")
    status, out, err = lc.run("rm", "app:2", "nope:1", "app:1")
    assert status == 1
    assert out == "untagged app:2\nuntagged app:1\n"
    assert err.startswith("layercore: error: ")
    assert "nope:1" in err
    assert sorted(Store(lc.store).tags()) == ["base:1"]


def test_tag_json_and_moving_a_tag(lc: CLI, app: str) -> None:
    moved = lc.json("tag", "base:1", "app:1")
    assert moved == {"tag": "app:1", "digest": image_digest(lc, "base:1")}


def test_gc_and_du_tables(lc: CLI, app: str) -> None:
    table = lc("du").splitlines()
    assert table[0].split() == ["TAG", "DIGEST", "SIZE", "UNIQUE", "SHARED"]
    assert [line.split()[0] for line in table[1:3]] == ["base:1", "app:1"]
    assert table[-1].startswith("blobs on disk: ")
    assert "saved by sharing: " in table[-1]
    # The images app:1 and base:1 replaced are unreferenced until gc.
    assert "(`layercore gc` frees it)" in table[-1]
    assert lc("gc").startswith("removed ")
    assert "gc" not in lc("du").splitlines()[-1]
    usage = lc.json("du")
    assert isinstance(usage, dict)
    assert sorted(usage) == [
        "images",
        "saved_bytes",
        "shared_bytes",
        "total_bytes",
        "unreferenced_bytes",
    ]
    assert sorted(usage["images"][0]) == ["digest", "shared_bytes", "size", "tag", "unique_bytes"]
    assert lc("gc") == "removed 0 blobs, freed 0 B\n"
    lc("rm", "app:1")
    assert "(`layercore gc` frees it)" in lc("du")
    out = lc("gc")
    assert out.startswith("removed ")
    assert out != "removed 0 blobs, freed 0 B\n"


def test_verify_reports_damaged_blobs(lc: CLI, app: str) -> None:
    assert lc.json("verify") == {"damaged": []}
    assert lc("verify", app) == "app:1: every blob matches its digest\n"
    store = Store(lc.store)
    layer = store.load(app).layers[1]
    blob = store.blob_path(layer.digest)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    status, out, _err = lc.run("verify", app)
    assert status == 1
    assert out == f"damaged {layer.digest}\n"
    assert lc.run("verify", "base:1")[0] == 0


# --- terminals ------------------------------------------------------------------------------


def run_with_terminal_stderr(*argv: str) -> tuple[int, bytes, bytes]:
    """Runs the installed console script with stderr on a pseudo-terminal: (status, what the
    terminal got, stdout)."""
    leader, follower = pty.openpty()
    seen = b""
    try:
        proc = subprocess.Popen(
            [VENV_BIN / "layercore", *argv],
            stdout=subprocess.PIPE,
            stderr=follower,
            env=dict(os.environ, TERM="xterm-256color"),
        )
        os.close(follower)
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = proc.communicate()
    finally:
        os.close(leader)
    return proc.returncode, seen, stdout


def test_progress_goes_to_a_terminal_stderr_and_stdout_stays_plain(tmp_path: Path) -> None:
    src = base_tree(tmp_path / "src")
    status, seen, stdout = run_with_terminal_stderr(
        "--store", str(tmp_path / "s"), "layer", "create", str(src)
    )
    assert status == 0
    assert b"building a layer from" in seen
    assert b"\x1b[" not in stdout
    assert b"diff_id" in stdout


def test_export_and_import_show_a_byte_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    layer = store.build_layer(base_tree(tmp_path / "src"))
    store.save(Image.scratch(created=0).append(layer), "app:1")
    out = tmp_path / "app.tar"
    status, seen, _ = run_with_terminal_stderr(
        "--store", str(store.root), "export", "app:1", str(out), "--format", "oci-archive"
    )
    assert status == 0 and out.is_file()
    assert b"exporting app:1" in seen
    status, seen, _ = run_with_terminal_stderr(
        "--store", str(tmp_path / "other"), "import", str(out), "--tag", "copy:1"
    )
    assert status == 0
    assert b"importing app.tar" in seen
    assert Store(tmp_path / "other").load("copy:1").digest == store.load("app:1").digest


def test_no_progress_when_stderr_is_not_a_terminal(lc: CLI, tmp_path: Path) -> None:
    status, _out, err = lc.run("layer", "create", str(base_tree(tmp_path / "src")))
    assert (status, err) == (0, "")


def test_store_option_after_the_command(lc: CLI, tmp_path: Path) -> None:
    lc("image", "new", "x:1")
    assert main(["images", "--json", "--store", str(lc.store)]) == 0
    listing = json.loads(lc.capsys.readouterr().out)
    assert [i["tag"] for i in listing] == ["x:1"]


def test_source_date_epoch_from_the_environment(
    lc: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tree(tmp_path / "src", {"f": "x"})
    lc("layer", "create", str(src), "-o", str(tmp_path / "l.tar"), "--compression", "none")
    with tarfile.open(tmp_path / "l.tar") as tar:
        assert tar.getmember("f").mtime == EPOCH
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    err = lc.fail("layer", "create", str(src), status=2)
    assert "SOURCE_DATE_EPOCH must be a Unix time, not 'yesterday'" in err

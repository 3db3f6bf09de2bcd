"""`make demo`: images in the embedded default store, sharing one base.

Into the store at ``$LAYERCORE_HOME`` (default ``~/.local/share/layercore``) it builds a base
image from a busybox-static root filesystem, then an app and a worker on that base from one
two-stage Dockerfile (``layercore build``: a RUN in the first stage, COPY from the context and
from that stage, metadata), showing each build's steps. It then shows the app's history, which
layer provides a file, the store's disk use with the base stored once, runs the app's command
in a container over the shared snapshots (removed after), and exports the app to an OCI layout
and a docker-archive in ``./demo-export``.

Every timestamp comes from a fixed ``SOURCE_DATE_EPOCH``, so running the demo again produces the
same digests and writes no layer twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from layercore import Image, Store, cli

EPOCH = 1_700_000_000
BASE, APP, WORKER = "demo/base:1", "demo/app:1", "demo/worker:1"


def busybox_rootfs(root: Path) -> None:
    """A minimal busybox root filesystem: the static binary, one link per applet, /etc basics."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("busybox is not installed: `make demo` installs busybox-static")
    for d in ("bin", "etc", "root", "tmp", "var/log", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True)
    for name in applets.stdout.split():
        if name != "busybox":
            os.symlink("busybox", root / "bin" / name)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc" / "os-release").write_text('NAME="layercore demo"\nID=demo\n')


def app_tree(root: Path, name: str, assets: int) -> None:
    """An application directory: a script and some static files."""
    app = root / "app"
    (app / "static").mkdir(parents=True)
    (app / "main.sh").write_text(f"#!/bin/sh\necho 'hello from {name}'\n")
    os.chmod(app / "main.sh", 0o755)
    for i in range(assets):
        (app / "static" / f"{name}-{i:03d}.css").write_text(f".c{i} {{ color: #{i:06x}; }}\n" * 40)


DOCKERFILE = """\
FROM demo/base:1 AS assets
ARG NAME
RUN mkdir -p /out && echo "built for $NAME" > /out/BUILD-INFO

FROM demo/base:1
ARG NAME
WORKDIR /app
COPY app/ ./
COPY --from=assets /out/BUILD-INFO ./
ENV APP=$NAME
LABEL org.opencontainers.image.title=$NAME
EXPOSE 8080
CMD ["/app/main.sh"]
"""


def run(store: Store, *argv: str) -> None:
    """Runs one `layercore` command against the store, echoing it first."""
    print(f"\n$ layercore {' '.join(argv)}", flush=True)
    status = cli.main(["--store", str(store.root), *argv])
    if status != 0:
        raise SystemExit(status)


def main() -> None:
    os.environ["SOURCE_DATE_EPOCH"] = str(EPOCH)
    store = Store()
    print(f"store: {store.root} (an OCI image layout)")
    with tempfile.TemporaryDirectory(prefix="layercore-demo-") as tmp:
        work = Path(tmp)
        rootfs, app, worker = work / "rootfs", work / "app", work / "worker"
        busybox_rootfs(rootfs)
        app_tree(app, "app", 200)
        app_tree(worker, "worker", 50)

        started = time.perf_counter()
        base = (
            Image.scratch()
            .append(
                store.build_layer(rootfs, source_date_epoch=EPOCH),
                created_by="ADD busybox-rootfs /",
            )
            .with_config(env={"PATH": "/bin"}, cmd=["sh"])
        )
        base = store.save(base, BASE)
        print(f"saved {BASE:<14} {base.digest}  ({time.perf_counter() - started:.2f} s)")

        dockerfile = work / "Dockerfile"
        dockerfile.write_text(DOCKERFILE)
        print(f"\n{dockerfile}:\n{DOCKERFILE}")
        for tag, tree, name in ((APP, app, "app"), (WORKER, worker, "worker")):
            run(
                store,
                "build",
                "-f",
                str(dockerfile),
                "-t",
                tag,
                "--build-arg",
                f"NAME={name}",
                "--progress",
                "plain",
                str(tree),
            )

    started = time.perf_counter()
    store.save(store.load(APP), APP)
    print(
        f"saved {APP} again: every blob already stored, no layer written "
        f"({(time.perf_counter() - started) * 1000:.1f} ms)"
    )

    run(store, "images")
    run(store, "history", APP)
    run(store, "which", APP, "/app/main.sh")
    run(store, "which", APP, "/bin/sh")
    run(store, "du")
    # A container of the app: its command over the image's shared snapshots, nothing copied.
    run(store, "run", "--rm", APP)

    export = Path("demo-export").absolute()
    export.mkdir(parents=True, exist_ok=True)
    oci_dir, docker_tar = export / "app-oci", export / "app-docker.tar"
    run(store, "export", APP, str(oci_dir), "--format", "oci")
    run(store, "export", APP, str(docker_tar), "--format", "docker-archive")
    print(
        f"\nexported {APP} to {oci_dir} (try `skopeo inspect oci:{oci_dir}:{APP}`) and {docker_tar}"
    )


if __name__ == "__main__":
    main()

"""A short run of what a user does first with an installed layercore, from outside the checkout.

It builds a layer, saves an image in a fresh store, exports it as an OCI archive and imports
that again, and runs the ``layercore`` console script. The image is reproducible
(``SOURCE_DATE_EPOCH``), and its digest is the last line printed, so that builds of the same
source on other toolchains (the wheel, the sdist) can be compared byte for byte.

It checks that the package in use is the installed one (not ``python/``), and that its build is
what the caller expects:
``--wheel-tag TAG`` for a wheel, ``--from-source`` for an sdist that pip compiled.

Usage: ``python smoke.py (--wheel-tag TAG | --from-source)``; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sysconfig
import tempfile
from pathlib import Path


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"smoke: FAILED: {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--wheel-tag", help="the tag the installed wheel must carry")
    mode.add_argument("--from-source", action="store_true", help="an sdist built by pip")
    args = parser.parse_args()
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"

    import layercore
    from layercore import Image, Store

    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    package = Path(layercore.__file__).resolve().parent
    check(package.parent == site, f"layercore imported from {package}, not from {site}")
    info = layercore.build_info()
    check(info.release, f"the core is a {info.profile!r} build")
    if args.wheel_tag:
        check(info.wheel_tag == args.wheel_tag, f"wheel tag {info.wheel_tag!r}, not the built one")
    else:
        # pip builds a wheel from the sdist and installs that: it has a tag, for this host.
        check(info.wheel_tag is not None, "an sdist install should record its wheel's tag")
    print(f"smoke: layercore {info.version} from {package} ({info.wheel_tag})")

    with tempfile.TemporaryDirectory(prefix="layercore-smoke-") as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs"
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc" / "os-release").write_text("ID=smoke\n")
        (rootfs / "bin").mkdir()
        (rootfs / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
        os.chmod(rootfs / "bin" / "hello", 0o755)
        os.symlink("hello", rootfs / "bin" / "hi")

        store = Store(work / "store")
        layer = store.build_layer(rootfs, source_date_epoch=1_700_000_000)
        # gzip, as built by the core's own compressor: the digest covers its bytes too.
        image = Image.scratch().append(layer, created_by="COPY rootfs /")
        image = store.save(image.with_config(cmd=["/bin/hello"]), "smoke:1")
        check(store.load("smoke:1").digest == image.digest, "the saved image does not load back")
        check(
            image.stack.read("bin/hello") == b"#!/bin/sh\necho hello\n",
            "the merged view reads a different /bin/hello",
        )

        archive = work / "smoke.tar"
        store.export_image("smoke:1", archive, format="oci-archive")
        check(archive.stat().st_size > 0, f"{archive} is empty")
        again = Store(work / "again")
        imported = again.import_image(archive, "smoke:copy")
        check(imported.digest == image.digest, "the imported archive names another image")
        print(f"smoke: built, saved, exported and imported {image.digest}")

    script = Path(sysconfig.get_paths()["scripts"]) / "layercore"
    res = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    check(res.returncode == 0, f"`layercore --version` exited {res.returncode}: {res.stderr}")
    first = res.stdout.splitlines()[0] if res.stdout else ""
    check(first == f"layercore {info.version}", f"`layercore --version` printed {first!r}")
    print(res.stdout, end="")
    print(f"image {image.digest}")


if __name__ == "__main__":
    main()

"""The process the crash and concurrency tests kill and race: a store operation run in a loop.

``python crash_worker.py ROOT WORK HOST`` imports layercore once, then for each line
``OP SEED`` on stdin forks a child (its own process group, so a kill takes any sandbox it
started) that runs ``OP`` on the store at ``ROOT`` over and over with ``random.Random(SEED)``,
and writes ``pid PID`` on stdout; once that child is dead it writes ``exit STATUS`` (the
``os.waitpid`` status). Forking from one warm process spares each kill a Python start-up.

``python crash_worker.py --race OP ROOT WORK HOST SECONDS SEED`` runs ``OP`` for ``SECONDS``
and prints one JSON line: operations done, errors by kind, and the tags it last wrote.

``WORK`` holds what the test prepared: ``archives/*.tar`` (OCI archives) and the images
``team/app:0..`` on the registry ``HOST`` (empty when there is none). The store has
``busybox:test`` and ``src:1`` (three layers), which no operation removes.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from layercore import Image, Layer, Store
from layercore.build import build
from layercore.errors import ImageNotFoundError, LayerError, SourceNotFoundError

EPOCH = 1_700_000_000
OPS = ("save", "import_image", "pull", "build", "gc", "flatten", "squash")


class Worker:
    """One operation's loop body, on the store ``root``; ``name`` keeps its tags its own."""

    def __init__(self, root: Path, work: Path, host: str, rng: random.Random, name: str) -> None:
        self.store = Store(root)
        self.work = work
        self.host = host
        self.rng = rng
        self.name = name.replace("_", "-")
        self.scratch = work / f"scratch-{os.getpid()}"
        self.scratch.mkdir(exist_ok=True)
        self.archives = sorted((work / "archives").glob("*.tar"))
        self.tags: dict[str, str] = {}  # what this worker last wrote under its own tags
        self.n = 0

    def _random_layer(self, size: int) -> Layer:
        tree = self.scratch / f"tree-{self.n}"
        tree.mkdir()
        (tree / "data").write_bytes(self.rng.randbytes(size))
        out = self.scratch / f"layer-{self.n}.tar.gz"
        return Layer.from_dir(tree, out, source_date_epoch=EPOCH)

    def save(self) -> None:
        layer = self._random_layer(self.rng.randrange(8 << 10, 64 << 10))
        image = Image.scratch(created=EPOCH).append(layer)
        tag = f"{self.name}:{self.n % 3}"
        saved = self.store.save(image, tag)
        self.tags[tag] = saved.digest

    def import_image(self) -> None:
        tag = f"{self.name}:1"
        image = self.store.import_image(self.rng.choice(self.archives), tag)
        self.tags[tag] = image.digest
        if self.rng.random() < 0.5:
            self.store.remove(tag)
            del self.tags[tag]
            self.store.gc()

    def pull(self) -> None:
        tag = f"{self.name}:1"
        image = self.store.pull(f"{self.host}/team/app:{self.rng.randrange(4)}", tag=tag)
        self.tags[tag] = image.digest
        if self.rng.random() < 0.5:
            self.store.remove(tag)
            del self.tags[tag]
            self.store.gc()

    def build(self) -> None:
        ctx = self.scratch / f"ctx-{self.n}"
        ctx.mkdir()
        (ctx / "data").write_bytes(self.rng.randbytes(self.rng.randrange(4 << 10, 32 << 10)))
        (ctx / "Dockerfile").write_text(
            "FROM busybox:test\nCOPY data /data\nRUN cat /data /data > /twice\n"
        )
        tag = f"{self.name}:1"
        result = build(ctx, store=self.store, tags=[tag], source_date_epoch=EPOCH)
        self.tags[tag] = result.digest

    def gc(self) -> None:
        with self.store.writing():
            self.store.put_blob(self.rng.randbytes(self.rng.randrange(1 << 10, 32 << 10)))
        self.save()
        tag = f"{self.name}:{self.n % 3}"
        self.store.remove(tag)
        del self.tags[tag]
        self.store.gc()

    def flatten(self) -> None:
        tag = f"{self.name}:1"
        epoch = EPOCH + self.rng.randrange(1 << 20)
        self.tags[tag] = self.store.flatten("src:1", tag, source_date_epoch=epoch).digest

    def squash(self) -> None:
        tag = f"{self.name}:1"
        epoch = EPOCH + self.rng.randrange(1 << 20)
        self.tags[tag] = self.store.squash("src:1", 0, 2, tag, source_date_epoch=epoch).digest

    def load(self) -> None:
        """Reads every tag and checks every blob it needs: the concurrency test's reader."""
        for tag in self.store.tags():
            image = self.store.load(tag)
            for layer in image.layers:
                self.store.open_blob(layer.digest)

    def step(self, op: str) -> None:
        self.n += 1
        getattr(self, op)()


def serve(root: Path, work: Path, host: str) -> None:
    """The zygote: forks one looping child per ``OP SEED`` line (see the module doc)."""
    for line in sys.stdin:
        op, seed = line.split()
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                os.setsid()
                worker = Worker(root, work, host, random.Random(int(seed)), op)
                while True:
                    worker.step(op)
            except BaseException:
                traceback.print_exc()
                status = 1
            finally:
                sys.stderr.flush()
                os._exit(status)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {status}", flush=True)


#: What a racing operation may meet and count as expected (docs/RELIABILITY.md, Concurrency):
#: a reader listing tags while another process moves or removes them and gc deletes the blobs.
EXPECTED: dict[str, tuple[type[BaseException], ...]] = {
    "load": (ImageNotFoundError, SourceNotFoundError),
}


def race(op: str, root: Path, work: Path, host: str, seconds: float, seed: int) -> None:
    """Runs ``op`` for ``seconds``; prints ``{"op", "done", "errors", "tags", "failures"}``."""
    worker = Worker(root, work, host, random.Random(seed), f"{op}-{os.getpid()}")
    expected = EXPECTED.get(op, ())
    errors: Counter[str] = Counter()
    failures: list[str] = []
    done = 0
    deadline = time.monotonic() + seconds
    step: Callable[[str], None] = worker.step
    while time.monotonic() < deadline:
        try:
            step(op)
            done += 1
        except expected as e:
            errors[type(e).__name__] += 1
        except LayerError as e:
            errors[type(e).__name__] += 1
            failures.append(traceback.format_exc())
    result = {"op": op, "done": done, "errors": dict(errors), "tags": worker.tags}
    print(json.dumps({**result, "failures": failures[:3]}), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "--race":
        op, root, work, host, seconds, seed = argv[1:]
        race(op, Path(root), Path(work), host, float(seconds), int(seed))
    else:
        root, work, host = argv
        serve(Path(root), Path(work), host)


if __name__ == "__main__":
    main(sys.argv[1:])

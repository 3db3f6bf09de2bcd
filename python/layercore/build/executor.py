"""Running a build: each needed stage, instruction by instruction, into images in the store.

- **FROM** ``scratch``, an earlier stage, a tag or digest the store holds, else a registry
  reference (pulled once). A ``--platform`` other than this machine's is an error. The base
  image's ``ONBUILD`` triggers run first.
- **Metadata** instructions change the config through
  :class:`~layercore.build.metadata.StageState` and add an ``empty_layer`` history entry.
- **WORKDIR** sets the working directory and, unless it is ``/``, writes a layer holding it
  (created 0755 and owned by the stage's ``USER``, as BuildKit does; existing directories keep
  their attributes).
- **COPY** and **ADD** (local sources) stage what they select in a scratch directory of the
  store, hard-linked where the file system allows (nothing of a source is changed: owner and
  mode overrides are applied as the layer is written), then write it as one layer placed at
  the destination (:meth:`Layer.from_dir <layercore.Layer.from_dir>` with ``under``). Docker's
  rules: a directory's contents are copied; the destination is a directory when it ends in
  ``/``, when there are several sources, or when the image has a directory there; relative
  destinations are under ``WORKDIR``. ``--from`` reads another stage's (or an image's) tree,
  ``--chown`` takes ids or names from the image's ``/etc/passwd`` and ``/etc/group``,
  ``--chmod`` octal bits, ``--exclude`` patterns. ``ADD`` unpacks local tar archives.
- **RUN** mounts an overlay of the stage's snapshots (:meth:`Store.snapshots
  <layercore.Store.snapshots>`: each layer extracted once, keyed by chain_id) with a fresh
  upper dir, in a private mount namespace (a user namespace with ``userxattr`` when not
  root), runs the command on it with ``bwrap`` (new mount, PID, IPC and UTS namespaces; the
  network unless ``--network=none``; ``/proc``, ``/dev``, and the host's ``/etc/hosts`` and
  ``/etc/resolv.conf`` mounted in on mount points that a skeleton lower dir provides), streams
  its output, writes the upper dir as the layer (:meth:`Store.overlay_layer
  <layercore.Store.overlay_layer>`) and keeps it as that layer's snapshot. Where overlayfs
  cannot be mounted (or ``LAYERCORE_SNAPSHOTTER=copy``), the stage's tree is extracted into a
  scratch root filesystem (kept for the stage's next ``RUN``) and diffed
  (:meth:`Store.diff_layer <layercore.Store.diff_layer>`).

History entries are BuildKit's (``comment: buildkit.dockerfile.v0``); ``source_date_epoch``
sets every ``created`` and clamps the mtimes the layers carry.

Steps that write a layer go through the **build cache** (:meth:`_Build.cached`): a key of the
parent's key and the step's inputs (a ``COPY``'s by the checksum of what it selects, never an
mtime; a ``COPY --from`` by the source's chain_id), a record in the store per key, a hit
reusing the recorded layer, and every miss explained from the records that followed the
same parent. ``cache_from`` adds the records of caches in registries (a hit's layer is fetched
when something reads it), ``cache_to`` pushes this build's
(:mod:`layercore.build.remote_cache`).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import posixpath
import re
import shutil
import stat
import subprocess
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from layercore import _core
from layercore.build.checksum import SourceChecksum, SourceTree, checksum_sources, walk_sources
from layercore.build.context import (
    IgnoreRules,
    ignore_file_for,
    read_ignore_file,
    resolve_sources,
)
from layercore.build.dockerfile import Dockerfile, Instruction, parse_dockerfile
from layercore.build.metadata import BUILDKIT_COMMENT, METADATA, StageState
from layercore.build.stages import BuildPlan, Stage, plan_build
from layercore.errors import (
    BuildError,
    DockerfileError,
    ImageNotFoundError,
    LayerError,
    SourceNotFoundError,
)
from layercore.image import Image, host_architecture, sha256_digest
from layercore.layer import Compression, DirAttrs, Layer, Owner, StrPath
from layercore.runtime.sandbox import (
    DEFAULT_PATH,
    MOUNT_FAILED_CODE,
    MOUNT_FAILED_MARK,
    MergedLower,
    Mount,
    OverlayUnavailable,
    bwrap_command,
    chroot_command,
    host_files_for,
    id_table,
    in_overlay,
    kill_group,
    link_lowers,
    make_skeleton,
    overlay_failed,
    overlay_options,
    overlay_works,
    unmount,
)
from layercore.store import Store

if TYPE_CHECKING:
    # Loaded only by a build given cache references: it brings in the registry client.
    from layercore.build.remote_cache import CacheExport, CacheRef, RemoteCache

__all__ = ["BuildEvent", "BuildResult", "BuildStep", "build"]

#: Mount points bwrap creates in the root filesystem if they are missing; removed after a RUN.
_MOUNT_POINTS = ("proc", "dev", "etc/hosts", "etc/resolv.conf")
_OUTPUT_LINES = 20
#: The manifest annotations that name the base image (OCI image-spec annotations.md).
_BASE_DIGEST = "org.opencontainers.image.base.digest"
_BASE_NAME = "org.opencontainers.image.base.name"


@dataclass(frozen=True)
class BuildStep:
    """One instruction of the build: where it is (``stage``, ``line``), its text, the layer
    digest it wrote (None for metadata), whether it came from the cache (``cached``, with the
    ``reason`` it did not), and how long it took."""

    stage: str
    line: int
    instruction: str
    layer: str | None
    cached: bool
    reason: str | None
    seconds: float
    evidence: tuple[str, ...] = ()  # up to ten paths or values behind ``reason``
    evidence_count: int = 0  # how many there are in all

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "line": self.line,
            "instruction": self.instruction,
            "layer": self.layer,
            "cached": self.cached,
            "reason": self.reason,
            "evidence": list(self.evidence),
            "evidence_count": self.evidence_count,
            "seconds": round(self.seconds, 6),
        }


@dataclass(frozen=True)
class BuildResult:
    """What a build made: the ``image`` (saved under ``tags``), its ``digest``, every
    ``step``, the ``warnings`` (the parser's, the planner's, and a build cache's that could
    not be used), and what each ``--cache-to`` pushed (``cache_exports``)."""

    image: Image
    digest: str
    steps: list[BuildStep]
    tags: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cache_exports: list[CacheExport] = field(default_factory=list)


@dataclass(frozen=True)
class BuildEvent:
    """What a progress display is told: ``kind`` is ``"step"`` (a step starts: ``stage``,
    ``line``, ``text``), ``"output"`` (a line a ``RUN`` printed, in ``text``), ``"done"`` (the
    step ended: ``step``) or ``"warning"``."""

    kind: Literal["step", "output", "done", "warning"]
    stage: str = ""
    line: int = 0
    text: str = ""
    step: BuildStep | None = None


Progress = Callable[[BuildEvent], None]


def build(
    context: StrPath,
    *,
    dockerfile: StrPath | None = None,
    dockerfile_text: str | bytes | None = None,
    tags: Sequence[str] = (),
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    store: Store | None = None,
    source_date_epoch: int | None = None,
    compression: Compression = "gzip",
    no_cache: bool | Sequence[str] = False,
    progress: Progress | None = None,
    secrets: Mapping[str, StrPath] | None = None,
    cache_to: Sequence[str | CacheRef] = (),
    cache_from: Sequence[str | CacheRef] = (),
) -> BuildResult:
    """Builds the Dockerfile (``dockerfile``, default ``CONTEXT/Dockerfile``; or its text as
    ``dockerfile_text``) with the directory ``context``; saves the image under each of
    ``tags`` in ``store`` (default: the embedded store). ``labels`` are added to the final
    image; ``source_date_epoch`` (default ``$SOURCE_DATE_EPOCH``) fixes ``created`` and
    clamps mtimes. ``secrets`` maps ids to files for ``RUN --mount=type=secret``: they are
    mounted read-only for the step and never reach a layer, the history or the config.
    Steps that write a layer (``WORKDIR``, ``COPY``, ``ADD``, ``RUN``) are looked up in the
    store's build cache by a key of their parent's key and their inputs (for ``COPY`` and
    ``ADD``, the checksum of what they select; never an mtime); a hit reuses the layer, a miss
    says why in its step's ``reason``. ``no_cache=True`` runs every step (and still records
    them); a list of stage names or indexes runs every step of those stages only
    (``--no-cache-filter``).
    ``cache_from`` (registry references, ``REF`` or BuildKit's ``type=registry,ref=REF``, or
    :class:`~layercore.build.remote_cache.CacheRef`) adds build caches others exported: a step
    the store has no record of hits one of theirs, and only then is its layer downloaded (and
    the record kept in the store). A reference that is missing or unreadable is a warning,
    not a failure. ``cache_to`` (``REF[,mode=min|max]``, or BuildKit's spelling) pushes this
    build's records and their layers there once the image is saved: ``min`` (the default)
    those of the steps whose layers are in the image, ``max`` those of every step of every
    stage. A failed push raises (the image is saved and tagged) unless the reference says
    ``ignore-error=true``; a malformed reference raises ValueError before anything runs.
    Raises :class:`~layercore.errors.DockerfileError` for a
    Dockerfile at fault and :class:`~layercore.errors.BuildError` for a step that failed;
    nothing is tagged then."""
    exports, imports = _cache_refs(cache_to, export=True), _cache_refs(cache_from, export=False)
    context_dir = Path(context)
    if not context_dir.is_dir():
        raise SourceNotFoundError("the build context is not a directory", context_dir)
    if dockerfile_text is None:
        path = Path(dockerfile) if dockerfile is not None else context_dir / "Dockerfile"
        try:
            text: str | bytes = path.read_bytes()
        except FileNotFoundError:
            raise SourceNotFoundError("no Dockerfile here", path) from None
        shown = str(path)
    else:
        text, path, shown = dockerfile_text, None, "Dockerfile"
    if source_date_epoch is None and os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        source_date_epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    df = parse_dockerfile(text, shown)
    arch, variant = host_architecture()
    platform = f"linux/{arch}" + (f"/{variant}" if variant else "")
    platform_args = {
        "TARGETPLATFORM": platform,
        "TARGETOS": "linux",
        "TARGETARCH": arch,
        "TARGETVARIANT": variant or "",
        "BUILDPLATFORM": platform,
        "BUILDOS": "linux",
        "BUILDARCH": arch,
        "BUILDVARIANT": variant or "",
    }
    plan = plan_build(df, build_args=build_args or {}, target=target, platform_args=platform_args)
    store = store if store is not None else Store()
    ignore = read_ignore_file(ignore_file_for(context_dir, path))
    runner = _Build(
        store=store,
        context=context_dir,
        ignore=ignore,
        dockerfile=df,
        plan=plan,
        build_args=dict(build_args or {}),
        platform=platform,
        source_date_epoch=source_date_epoch,
        compression=compression,
        progress=progress or (lambda _event: None),
        secrets={k: Path(v) for k, v in (secrets or {}).items()},
        no_cache=no_cache,
    )
    for warning in df.warnings:
        runner.warn(warning)
    if plan.unused_build_args:
        runner.warn(
            "build args not consumed by any instruction: " + ", ".join(plan.unused_build_args)
        )
    if imports:
        from layercore.build.remote_cache import RemoteCache

        runner.remote = RemoteCache.load(store, imports, runner.warn)
    with runner:
        image = runner.run()
        runner.materialize(image.layers)
        if labels:
            image = runner.add_labels(image, labels)
        image = image.with_annotations(runner.base_annotations())
        image = store.save(image)
        for tag in tags:
            store.save(image, tag)
        pushed = [done for ref in exports if (done := runner.export(ref)) is not None]
    return BuildResult(image, image.digest, runner.steps, list(tags), list(runner.warnings), pushed)


def _cache_refs(refs: Sequence[str | CacheRef], *, export: bool) -> list[CacheRef]:
    """The cache references, parsed (ValueError for one that is malformed)."""
    if isinstance(refs, str):
        refs = [refs]
    if not refs:
        return []
    from layercore.build.remote_cache import CacheRef

    return [CacheRef.parse(r, export=export) if isinstance(r, str) else r for r in refs]


class _Build:
    def __init__(
        self,
        *,
        store: Store,
        context: Path,
        ignore: IgnoreRules,
        dockerfile: Dockerfile,
        plan: BuildPlan,
        build_args: dict[str, str],
        platform: str,
        source_date_epoch: int | None,
        compression: Compression,
        progress: Progress,
        secrets: dict[str, Path],
        no_cache: bool | Sequence[str] = False,
    ) -> None:
        self.store = store
        self.no_cache = no_cache is True
        self.no_cache_stages = (
            set() if isinstance(no_cache, bool) else {str(s).lower() for s in no_cache}
        )
        self.stage_keys: dict[int, str] = {}  # stage -> the cache key of its last step
        # stage -> (key, the line of its first miss, whether that miss had no record at all)
        self.chain: dict[int, tuple[str, int | None, bool]] = {}
        self.outcome: dict[tuple[str, int], tuple[bool, str | None, tuple[str, ...], int]] = {}
        self.secrets = secrets
        self.context = context
        self.ignore = ignore
        self.df = dockerfile
        self.plan = plan
        self.build_args = build_args
        self.platform = platform
        self.epoch = source_date_epoch
        self.compression = compression
        self.progress = progress
        self.steps: list[BuildStep] = []
        self.images: dict[int, Image] = {}
        self.froms: dict[int, str] = {}  # stage -> the digest of the image its FROM names
        self.trees: dict[str, Path] = {}  # extracted trees of stages/images, for COPY --from
        self.rootfs: dict[int, tuple[list[str], Path]] = {}  # stage -> (diff_ids, rootfs dir)
        self.linked: dict[str, Path] = {}  # chain_id -> a COPY layer's snapshot of links
        self.lowers: dict[tuple[str, ...], MergedLower | None] = {}  # diff_ids -> its snapshots
        self.warnings: list[str] = []
        self.remote: RemoteCache | None = None  # the --cache-from records
        # layer digest -> the --cache-from hits whose layer it is and that wait for it:
        # (key, parent, where); fetched when something reads the layer (materialize)
        self.pending: dict[str, list[tuple[str, str, str]]] = {}
        self._pending_lock = threading.Lock()
        # stage -> the records of its steps that wrote a layer, in order (for --cache-to)
        self.used: dict[int, list[dict[str, Any]]] = {}
        self._exit = ExitStack()

    def __enter__(self) -> _Build:
        # gc waits for the build: the snapshots and layers it uses stay.
        self._exit.enter_context(self.store.writing())
        return self

    def __exit__(self, *_exc: object) -> None:
        self._exit.close()

    # -- helpers

    def created(self) -> int:
        return self.epoch if self.epoch is not None else int(time.time())

    def workspace(self, name: str) -> Path:
        return self._exit.enter_context(self.store.workspace(name))

    def fail(self, message: str, ins: Instruction) -> DockerfileError:
        return self.df.error(message, ins)

    def warn(self, text: str) -> None:
        """A warning for the result and the progress display."""
        self.warnings.append(text)
        self.progress(BuildEvent("warning", text=text))

    # -- stages

    def run(self) -> Image:
        """Builds the needed stages, each as soon as the stages it depends on are built: stages
        that do not depend on each other run at once. The first failure stops what has not
        started, waits for what has, and is raised."""
        from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

        needed = self.plan.needed
        if len(needed) == 1:
            self.images[needed[0]] = self.stage(self.plan.stages[needed[0]])
            return self.images[needed[0]]
        futures: dict[int, Future[None]] = {}

        def build_stage(index: int) -> None:
            for dep in self.plan.stages[index].depends_on:
                futures[dep].result()
            self.images[index] = self.stage(self.plan.stages[index])

        workers = min(len(needed), max(os.cpu_count() or 1, 2))
        with ThreadPoolExecutor(workers, thread_name_prefix="layercore-stage") as pool:
            # Submitted dependencies first: a stage waits only for ones already running or done.
            for index in needed:
                futures[index] = pool.submit(build_stage, index)
            done, _pending = wait(futures.values(), return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for f in futures.values():
                    f.cancel()
                wait(futures.values())
                error = failed[0].exception()
                assert error is not None
                raise error
        # Steps in the order of the plan, whatever order the stages ran in.
        order = {index: n for n, index in enumerate(needed)}
        by_label = {self.plan.stages[i].label: order[i] for i in needed}
        self.steps.sort(key=lambda step: (by_label.get(step.stage, 0), step.line))
        return self.images[self.plan.target.index]

    def base(self, stage: Stage) -> Image:
        if stage.platform is not None and stage.platform not in (
            self.platform,
            "linux/" + host_architecture()[0],
        ):
            raise self.fail(
                f"--platform={stage.platform} is not this machine's platform ({self.platform}); "
                "layercore builds for the machine it runs on",
                stage.origin,
            )
        if stage.base_stage is not None:
            return self.images[stage.base_stage]
        if stage.base == "scratch":
            return Image.scratch(created=self.epoch or 0)
        image = self.image(stage.base, stage.origin)
        self.froms[stage.index] = image.digest
        return image

    def base_annotations(self) -> dict[str, str | None]:
        """The manifest annotations naming the image the target stage starts from, through
        the stages it is built on (what BuildKit writes); None (removed, not inherited from
        the base's own manifest) when that is ``scratch``."""
        stage = self.plan.target
        while stage.base_stage is not None:
            stage = self.plan.stages[stage.base_stage]
        digest = self.froms.get(stage.index)
        if digest is None:
            return {_BASE_DIGEST: None, _BASE_NAME: None}
        from layercore.imageref import Reference

        try:
            name = Reference.parse(stage.base).qualified
        except ValueError:
            name = stage.base
        return {_BASE_DIGEST: digest, _BASE_NAME: name}

    def image(self, ref: str, ins: Instruction) -> Image:
        """An image by tag or digest from the store, else pulled once from its registry."""
        try:
            return self.store.load(ref)
        except (ImageNotFoundError, ValueError):
            pass
        try:
            return self.store.pull(ref)
        except Exception as e:
            raise self.fail(f"cannot find or pull the image {ref!r}: {e}", ins) from None

    def stage(self, stage: Stage) -> Image:
        image = self.base(stage)
        run = dict(image.config.get("config") or {})
        state = StageState(self.df, run, meta_args=self.plan.meta_args, build_args=self.build_args)
        triggers = state.config.pop("OnBuild", None) or []
        instructions: list[Instruction] = []
        if triggers:
            onbuild = parse_dockerfile("\n".join(triggers), f"ONBUILD of {stage.base}")
            instructions.extend(onbuild.instructions)
        instructions.extend(stage.instructions)
        image = self.store.attach(image)
        if stage.base_stage is not None:
            start = self.stage_keys[stage.base_stage]
        else:
            start = _key(
                {
                    "from": "scratch" if stage.base == "scratch" else image.digest,
                    # Both change a layer's bytes: a layer of another build's is no hit.
                    "compression": self.compression,
                    "source_date_epoch": self.epoch,
                }
            )
        self.chain[stage.index] = (start, None, False)
        for ins in instructions:
            image = self.store.attach(self.step(stage, state, image, ins))
        self.stage_keys[stage.index] = self.chain[stage.index][0]
        return image

    # -- the build cache

    def cached(
        self,
        stage: Stage,
        ins: Instruction,
        inputs: Mapping[str, Any],
        make: Callable[[], Layer],
        *,
        cacheable: str | None = None,
        linked: bool = False,
        files: Callable[[], dict[str, Any]] | None = None,
    ) -> Layer:
        """The step's layer: from the build cache when a record has its key (the parent's key
        and ``inputs``) in the store, or else in a ``--cache-from`` cache (its layer fetched
        when something reads it, :meth:`remote_hit`); else made by ``make`` and recorded with
        ``files()`` (a COPY's sources,
        an entry a file, made only on a miss: they explain the next one). ``cacheable``, when
        given, is why this step is never looked up. A ``linked`` step (``COPY --link``) makes a
        layer that does not depend on the ones below, so its key leaves the parent out (the
        steps after it still follow both). The outcome (hit, or the reason for the miss) goes
        to the step's :class:`BuildStep`."""
        chained, missed, fresh = self.chain[stage.index]
        parent = _LINKED if linked else chained
        text = " ".join(ins.text.split()) if "\n" not in ins.text else ins.text
        key = _key({"parent": parent, "keyword": ins.keyword, **inputs})
        after = _key({"parent": chained, "linked": key}) if linked else key
        forced = self.forced(stage)
        record = None if forced or cacheable else self.store.cache_record(key)
        layer: Layer | None = None
        if record is not None:
            d = record["layer"]
            layer = Layer.open(
                self.store.blob_path(d["digest"]), digest=d["digest"], diff_id=d["diff_id"]
            )
        elif not (forced or cacheable) and self.remote is not None:
            record, layer = self.remote_hit(key, parent, f"[{stage.label}:{ins.line}]")
        if record is not None and layer is not None:
            self.outcome[(stage.label, ins.line)] = (True, None, (), 0)
            self.chain[stage.index] = (after, missed, fresh)
            self.keep(stage, ins, text, key, parent, layer, record.get("inputs") or inputs)
            return layer
        if files is not None:
            inputs = {**inputs, "files": files()}
        evidence: list[str]
        if self.no_cache:
            reason, evidence, count = "--no-cache", [], 0
        elif forced:
            reason, evidence, count = f"--no-cache-filter {stage.label}", [], 0
        elif cacheable:
            reason, evidence, count = cacheable, [], 0
        else:
            reason, evidence, count = self.explain(parent, missed, fresh, ins, text, inputs)
        layer = make()
        self.store.put_cache_record(
            key,
            parent,
            {
                "stage": stage.label,
                "line": ins.line,
                "keyword": ins.keyword,
                "instruction": text,
                "layer": {"digest": layer.digest, "diff_id": layer.diff_id},
                "inputs": dict(inputs),
            },
        )
        self.keep(stage, ins, text, key, parent, layer, inputs)
        self.outcome[(stage.label, ins.line)] = (False, reason, tuple(evidence[:10]), count)
        if missed is None:
            missed, fresh = ins.line, reason == _NO_RECORD
        self.chain[stage.index] = (after, missed, fresh)
        return layer

    def explain(
        self,
        parent: str,
        missed: int | None,
        fresh: bool,
        ins: Instruction,
        text: str,
        inputs: Mapping[str, Any],
    ) -> tuple[str, list[str], int]:
        """Why a step missed: what differs from the record of the same step after the same
        parent, or that the parent itself changed (after a first miss that had no record at
        all, the steps after it have none either). The ``--cache-from`` records that followed
        the parent count as siblings too, after the store's."""
        siblings = self.store.cache_children(parent)
        if self.remote is not None:
            known = {r.get("key") for r in siblings}
            siblings += [r for r in self.remote.children(parent) if r["key"] not in known]
        same = [
            r for r in siblings if r.get("keyword") == ins.keyword and r.get("line") == ins.line
        ]
        same = same or [r for r in siblings if r.get("keyword") == ins.keyword]
        if not same:
            if missed is not None and not fresh:
                return f"parent changed (line {missed})", [], 0
            return _NO_RECORD, [], 0
        old = same[0]
        if old.get("instruction") != text:
            return f"instruction changed: {old.get('instruction')} → {text}", [], 0
        before = old.get("inputs") or {}
        if "files" in inputs and isinstance(before.get("files"), dict):
            return _explain_files(text, before["files"], inputs["files"])
        env_old, env_new = before.get("env") or {}, inputs.get("env") or {}
        changed = sorted(k for k in {*env_old, *env_new} if env_old.get(k) != env_new.get(k))
        if changed:
            k = changed[0]
            what = "build arg" if k in (inputs.get("args") or {}) else "env"
            shown = [
                f"{k}: {env_old.get(k, '(unset)')} → {env_new.get(k, '(unset)')}" for k in changed
            ]
            return (
                f"{what} {k} changed: {env_old.get(k, '(unset)')} → {env_new.get(k, '(unset)')}",
                shown[:10],
                len(shown),
            )
        if before.get("mounts") != inputs.get("mounts") and "mounts" in inputs:
            return _explain_mounts(before.get("mounts") or [], inputs["mounts"])
        for name in sorted({*before, *inputs}):
            if before.get(name) != inputs.get(name):
                return f"{name} changed", [], 0
        return "inputs changed", [], 0

    def forced(self, stage: Stage) -> bool:
        """Whether ``--no-cache`` or ``--no-cache-filter`` runs every step of ``stage``."""
        return self.no_cache or bool({stage.name or "", str(stage.index)} & self.no_cache_stages)

    def remote_hit(
        self, key: str, parent: str, where: str
    ) -> tuple[dict[str, Any] | None, Layer | None]:
        """The ``--cache-from`` record of ``key`` and its layer, or ``(None, None)``. The layer
        is not fetched here but when something reads it (:meth:`materialize`: a later step
        looking at the tree, a ``RUN``, saving the image), as BuildKit's lazy blobs are: the
        layers of a stage that only a ``COPY --from`` hit follows never move. Its record goes
        into the store once it has the layer."""
        assert self.remote is not None
        record = self.remote.record(key)
        if record is None:
            return None, None
        d = record["layer"]
        path = self.store.blob_path(d["digest"])
        if self.store.has_blob(d["digest"]):
            self.store.put_cache_record(key, parent, _local_record(record))
            return record, Layer.open(path, digest=d["digest"], diff_id=d["diff_id"])
        with self._pending_lock:
            self.pending.setdefault(d["digest"], []).append((key, parent, where))
        compression: Compression = (
            "gzip" if d["mediaType"].endswith("+gzip") else
            "zstd" if d["mediaType"].endswith("+zstd") else None
        )  # fmt: skip
        return record, Layer(
            path=path,
            media_type=d["mediaType"],
            digest=d["digest"],
            diff_id=d["diff_id"],
            size=d["size"],
            uncompressed_size=None,
            compression=compression,
        )

    def materialize(self, layers: Sequence[Layer]) -> None:
        """Brings the layers among ``layers`` that hit in a ``--cache-from`` cache and are not
        fetched yet into the store (downloaded, verified against their digest and size), and
        keeps their records there, so the next build hits them in the store. A layer that
        cannot be fetched fails the build (its step was taken from the cache already)."""
        waiting = [layer.digest for layer in layers if layer.digest in self.pending]
        if len(waiting) > 1:
            # Several at once (the saved image's, a RUN's), as a pull downloads them.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(len(waiting), 4), "layercore-fetch") as pool:
                list(pool.map(self.fetch_layer, waiting))
        elif waiting:
            self.fetch_layer(waiting[0])

    def fetch_layer(self, digest: str) -> None:
        """:meth:`materialize` for one layer digest; nothing if it is not waiting."""
        with self._pending_lock:
            hits = list(self.pending.get(digest, ()))
        if not hits:
            return
        assert self.remote is not None
        key, _parent, where = hits[0]
        try:
            self.remote.fetch(self.store, key)
        except LayerError as e:
            raise BuildError(
                f"cache from {self.remote.origin(key)}: the layer {digest} of {where}, a step "
                f"taken from that cache, could not be fetched: {e.message}",
                self.df.path,
            ) from None
        with self._pending_lock:
            hits = self.pending.pop(digest, [])
        for key, parent, _where in hits:
            record = self.remote.record(key)
            assert record is not None
            self.store.put_cache_record(key, parent, _local_record(record))

    def keep(
        self,
        stage: Stage,
        ins: Instruction,
        text: str,
        key: str,
        parent: str,
        layer: Layer,
        inputs: Mapping[str, Any],
    ) -> None:
        """Keeps the step's record, as ``--cache-to`` exports it."""
        self.used.setdefault(stage.index, []).append(
            {
                "key": key,
                "parent": parent,
                "stage": stage.label,
                "line": ins.line,
                "keyword": ins.keyword,
                "instruction": text,
                "layer": {
                    "digest": layer.digest,
                    "diff_id": layer.diff_id,
                    "size": layer.size,
                    "mediaType": layer.media_type,
                },
                "inputs": dict(inputs),
            }
        )

    def export(self, ref: CacheRef) -> CacheExport | None:
        """Pushes the records ``ref.mode`` chooses to ``ref``: ``min``, those of the target
        stage and the stages it is built on (the image's layers); ``max``, every stage's. A
        failure raises, or with ``ignore_error`` is a warning (and None)."""
        from layercore.build.remote_cache import export_cache
        from layercore.registry.transfer import RemoteBlob

        if ref.mode == "max":
            stages = list(self.plan.needed)
        else:
            stages = []
            index: int | None = self.plan.target.index
            while index is not None:
                stages.insert(0, index)
                index = self.plan.stages[index].base_stage
        records: dict[str, dict[str, Any]] = {}
        for index in stages:
            for record in self.used.get(index, []):
                records.setdefault(record["key"], record)
        # Layers that hit in a --cache-from cache and were never fetched: mounted from there
        # when the export goes to the same registry, else fetched now.
        remote: dict[str, RemoteBlob] = {}
        with self._pending_lock:
            waiting = {d: hits[0][0] for d, hits in self.pending.items()}
        for record in records.values():
            digest = record["layer"]["digest"]
            if digest in waiting and self.remote is not None:
                remote[digest] = RemoteBlob(
                    self.remote.location(waiting[digest]),
                    functools.partial(self.fetch_layer, digest),
                )
        try:
            return export_cache(self.store, list(records.values()), ref, remote=remote)
        except LayerError as e:
            if not ref.ignore_error:
                raise
            self.warn(f"cache to {ref.reference} failed (ignore-error=true): {e.message}")
            return None

    def step(self, stage: Stage, state: StageState, image: Image, ins: Instruction) -> Image:
        text = " ".join(ins.text.split()) if "\n" not in ins.text else ins.text
        self.progress(BuildEvent("step", stage.label, ins.line, text))
        started = time.perf_counter()
        before = len(image.layers)
        if ins.keyword in METADATA:
            entry = state.apply(ins)
            image = image.with_runtime_config(
                state.config,
                created_by=entry.created_by if entry else None,
                comment=BUILDKIT_COMMENT,
                created=self.created(),
                author=state.author,
                history=entry is not None,
            )
        elif ins.keyword == "WORKDIR":
            image = self.workdir(stage, state, image, ins)
        elif ins.keyword in ("COPY", "ADD"):
            image = self.copy(stage, state, image, ins)
        elif ins.keyword == "RUN":
            image = self.run_step(stage, state, image, ins)
        else:
            raise self.fail(f"{ins.keyword} cannot be used here", ins)
        layer = image.layers[-1].digest if len(image.layers) > before else None
        cached, reason, evidence, count = self.outcome.pop(
            (stage.label, ins.line), (False, None, (), 0)
        )
        step = BuildStep(
            stage.label, ins.line, text, layer, cached, reason, time.perf_counter() - started,
            evidence, count,
        )  # fmt: skip
        self.steps.append(step)
        self.progress(BuildEvent("done", stage.label, ins.line, text, step))
        return image

    def add_labels(self, image: Image, labels: Mapping[str, str]) -> Image:
        run = dict(image.config.get("config") or {})
        run["Labels"] = {**(run.get("Labels") or {}), **labels}
        shown = " ".join(f"{k}={v}" for k, v in labels.items())
        return image.with_runtime_config(
            run, created_by=f"LABEL {shown}", comment=BUILDKIT_COMMENT, created=self.created()
        )

    # -- WORKDIR

    def workdir(self, stage: Stage, state: StageState, image: Image, ins: Instruction) -> Image:
        path = state.expand(ins.args[0], ins)
        wd = posixpath.normpath(posixpath.join(state.workdir, path)) if path else state.workdir
        wd = "/" + wd.lstrip("/")
        state.config["WorkingDir"] = wd
        if wd == "/":
            return image.with_runtime_config(
                state.config,
                created_by=f"WORKDIR {wd}",
                comment=BUILDKIT_COMMENT,
                created=self.created(),
            )
        user = state.config.get("User") or ""
        found: list[list[DirAttrs]] = []

        def attrs() -> list[DirAttrs]:
            if not found:
                uid, gid = self.owner(user, image, ins) if user else (0, 0)
                found.append(self.dir_attrs(image, wd.strip("/"), uid, gid))
            return found[0]

        def make() -> Layer:
            with self.store.workspace("workdir") as empty:
                return self.store.build_layer(
                    empty,
                    compression=self.compression,
                    source_date_epoch=self.epoch,
                    under=wd.strip("/"),
                    under_dirs=attrs(),
                )

        # The directories' attributes but a new one's mtime (the build's time) make the key,
        # and the user a new one is made for.
        parent = self.chain[stage.index][0]
        recorded = self.recorded_inputs(
            stage, image, "WORKDIR", parent, {"workdir": wd, "user": user}
        )
        shown = recorded.get("dirs") if recorded is not None else None
        if not isinstance(shown, list):
            shown = [[d.mode, d.uid, d.gid] for d in attrs()]
        layer = self.cached(stage, ins, {"workdir": wd, "dirs": shown, "user": user}, make)
        image = image.with_runtime_config(state.config, history=False)
        return image.append(
            layer, created_by=f"WORKDIR {wd}", comment=BUILDKIT_COMMENT, created=self.created()
        )

    def recorded_inputs(
        self, stage: Stage, image: Image, keyword: str, parent: str, known: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """The inputs of this step's ``--cache-from`` record (the one after ``parent`` with
        ``keyword`` and the ``known`` inputs, and whose key they make), when the layers of
        ``image`` hit in a cache and were not fetched: their tree is that of the cache's build
        (the parent key names it, as it does for any step that hit), so what the step's key
        needs from the tree (a WORKDIR's directory attributes, whether a COPY's destination
        is a directory) is read from the record instead of fetching the layers to look.
        None otherwise."""
        if self.remote is None or self.forced(stage):
            return None
        with self._pending_lock:
            if not any(layer.digest in self.pending for layer in image.layers):
                return None
        for record in self.remote.children(parent):
            inputs = record.get("inputs") or {}
            if (
                record.get("keyword") == keyword
                and all(inputs.get(k) == v for k, v in known.items())
                and _key({"parent": parent, "keyword": keyword, **inputs}) == record["key"]
            ):
                return dict(inputs)
        return None

    def dir_attrs(self, image: Image, rel: str, uid: int, gid: int) -> list[DirAttrs]:
        """Attributes for each directory of ``rel``: an existing one keeps its own, a new one
        is 0755 and owned by ``uid:gid``. (A RUN's snapshot holds the real mtimes its layer
        clamped to ``source_date_epoch``; the layer writer clamps these directories' mtimes
        too, so the layer does not depend on which of the two the lookup read.)"""
        out = []
        parts = [p for p in rel.split("/") if p]
        mtime = self.created()
        for i in range(len(parts)):
            entry = self.lookup(image, "/".join(parts[: i + 1]))
            if entry is not None and entry.kind == "dir":
                out.append(DirAttrs(entry.mode, entry.uid, entry.gid, entry.mtime))
            else:
                out.append(DirAttrs(0o755, uid, gid, mtime))
        return out

    def lookup(self, image: Image, rel: str) -> _Found | None:
        """What ``image``'s tree has at ``rel``: read from its snapshots on disk when they all
        exist and the build runs as root (so they hold the image's owners), which spares
        indexing its layers; else from its merged view."""
        if not image.layers:
            return None
        self.materialize(image.layers)
        key = tuple(image.diff_ids)
        if key not in self.lowers:
            snapshots = None
            if os.geteuid() == 0 and overlay_works():
                snapshots = self.store.existing_snapshots(image.layers, given=self.linked)
            self.lowers[key] = None if snapshots is None else MergedLower(snapshots, "trusted")
        lower = self.lowers[key]
        if lower is None:
            entry = image.stack.lookup(rel)
            if entry is None:
                return None
            return _Found(entry.kind, entry.mode, entry.uid, entry.gid, entry.mtime)
        found = lower.lookup(rel)
        if found is None:
            return None
        st = found[0]
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if found[1] else "other"
        return _Found(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime))

    def owner(self, spec: str, image: Image, ins: Instruction) -> tuple[int, int]:
        """``user[:group]`` as ids: numbers as they are, names from the image's
        ``/etc/passwd`` and ``/etc/group``."""
        user, _, group = spec.partition(":")

        def table(path: str) -> dict[str, tuple[int, int]]:
            if not image.layers:
                return {}
            self.materialize(image.layers)
            try:
                text = image.stack.read(path).decode(errors="replace")
            except (SourceNotFoundError, OSError, ValueError):
                return {}
            return id_table(text)

        if user.isdigit():
            uid, gid = int(user), int(user)
        else:
            passwd = table("etc/passwd")
            if user not in passwd:
                raise self.fail(
                    f"unable to find user {user}: no matching entries in passwd file", ins
                )
            uid, gid = passwd[user]
        if group:
            if group.isdigit():
                gid = int(group)
            else:
                groups = table("etc/group")
                if group not in groups:
                    raise self.fail(
                        f"unable to find group {group}: no matching entries in group file", ins
                    )
                gid = groups[group][0]
        return uid, gid

    # -- COPY and ADD

    def copy(self, stage: Stage, state: StageState, image: Image, ins: Instruction) -> Image:
        parents = ins.flag("parents") not in (None, "false")
        add = ins.keyword == "ADD"
        heredocs = {f"<<{h.name}": h for h in ins.heredocs}
        args = list(ins.args)
        if len(args) < 2:
            raise self.fail(
                f"{ins.keyword} requires at least two arguments: a source and a destination", ins
            )
        dest_word = state.expand(args[-1], ins)
        sources = [a if a in heredocs else state.expand(a, ins) for a in args[:-1]]
        if not add and any(s.startswith(("http://", "https://")) for s in sources):
            raise self.fail("COPY cannot take a URL: use ADD", ins)
        if add and any(s.startswith("git@") or s.endswith(".git") for s in sources):
            raise self.fail("ADD of a git repository is not supported", ins)
        checksum = ins.flag("checksum")
        chown = ins.flag("chown")
        uid, gid = self.owner(state.expand(chown, ins), image, ins) if chown else (0, 0)
        chmod_text = ins.flag("chmod")
        chmod = None
        if chmod_text:
            try:
                chmod = int(chmod_text, 8)
            except ValueError:
                raise self.fail(
                    f"invalid --chmod={chmod_text}: give octal bits such as 0755", ins
                ) from None
            if not 0 <= chmod <= 0o7777:
                raise self.fail(f"invalid --chmod={chmod_text}", ins)
        # --exclude patterns match a selected path, and paths inside a selected directory
        # relative to it; .dockerignore matches paths relative to the context.
        excludes = IgnoreRules([state.expand(e, ins) for e in ins.flag_values("exclude")])
        source_from = ins.flag("from")
        flags = sorted(f for f in ins.flags if not f.startswith(("--chown", "--chmod")))
        link = ins.flag("link") not in (None, "false")
        dest = dest_word if dest_word.startswith("/") else posixpath.join(state.workdir, dest_word)
        dest = "/" + posixpath.normpath(dest).lstrip("/") if dest != "/" else "/"
        looked: list[_Found | None] = []

        def existing() -> _Found | None:
            """What the image has at the destination (looked up once, when needed)."""
            if not looked:
                looked.append(self.lookup(image, dest.strip("/")) if dest != "/" else None)
            return looked[0]

        def write(keyed: bool) -> Layer:
            """Selects, stages and writes the layer; unless ``keyed`` already (sources from the
            context), the build cache is consulted once the selection's checksum is known."""
            if source_from is not None:
                root, ignore = self.tree(state.expand(source_from, ins), ins), IgnoreRules()
            else:
                root, ignore = self.context, self.ignore
            matches: list[tuple[str, str | None]] = []  # (relative source or URL, heredoc name)
            for src in sources:
                if src in heredocs:
                    matches.append((src, heredocs[src].name))
                    continue
                if src.startswith(("http://", "https://")):
                    matches.append((src, _URL))
                    continue
                try:
                    found = resolve_sources(
                        root, src, ignore, line=ins.line, dockerfile=self.df.path
                    )
                except SourceNotFoundError as e:
                    raise self.fail(f"{ins.keyword} {src}: {e.message}", ins) from None
                matches.extend((rel, None) for rel in found if not excludes.ignored(rel))

            def is_dir(rel: str) -> bool:
                path = root / rel if rel != "." else root
                return path.is_dir() and not path.is_symlink()

            named_dir = (
                parents  # --parents always copies into the destination as a directory
                or dest_word.endswith("/")
                or dest_word in (".", "")
                or dest == "/"
                or ((there := existing()) is not None and there.kind == "dir")
            )
            if len(matches) > 1 and not named_dir:
                raise self.fail(
                    f"When using {ins.keyword} with more than one source file, the destination "
                    "must be a directory and end with a /",
                    ins,
                )
            # A directory's contents go into the destination; so do files named as a directory.
            single = matches[0][0] if len(matches) == 1 and matches[0][1] is None else None
            if checksum is not None and not (len(matches) == 1 and matches[0][1] == _URL):
                raise self.fail("ADD --checksum takes exactly one URL source", ins)
            # What ADD unpacks, detected once by content: source -> its compression.
            archives = {
                rel: kind
                for rel, mark in matches
                if add and mark is None and (kind := _archive_kind(root / rel)) is not None
            }
            single_dir = single is not None and (is_dir(single) or single in archives)
            into_dir = named_dir or len(matches) > 1 or single_dir
            under = dest.strip("/") if into_dir else posixpath.dirname(dest).strip("/")
            if link:
                # --link: the layer does not look at the image below; the directories on the
                # way are made as new ones (BuildKit's copy onto scratch, then merged).
                new = DirAttrs(0o755, uid, gid, self.created())
                dirs = [new] * len([p for p in under.split("/") if p])
            else:
                dirs = self.dir_attrs(image, under, uid, gid)

            def stage_into(staging: Path) -> None:
                for rel, heredoc_name in matches:
                    if heredoc_name == _URL:
                        name = _url_name(rel) if into_dir else posixpath.basename(dest)
                        self.fetch(rel, staging / name, checksum, ins)
                        continue
                    if heredoc_name is not None:
                        doc = heredocs[rel]
                        content = doc.content
                        name = heredoc_name if into_dir else posixpath.basename(dest)
                        target = staging / name
                        target.write_text(content)
                        os.chmod(target, 0o664)  # as BuildKit's Mkfile for inline documents
                        os.utime(target, (self.created(), self.created()))
                        continue
                    source = root / rel if rel != "." else root
                    if parents and rel != ".":
                        # --parents: the source keeps its path from the root under the destination.
                        placed = staging / posixpath.dirname(rel)
                        _stage_parents(root, rel, staging)
                        if source.is_dir() and not source.is_symlink():
                            (placed / posixpath.basename(rel)).mkdir(exist_ok=True)
                            _stage_tree(
                                source, placed / posixpath.basename(rel), rel, ignore, excludes
                            )
                        else:
                            _stage_entry(source, placed / posixpath.basename(rel))
                        continue
                    if source.is_dir() and not source.is_symlink():
                        _stage_tree(source, staging, rel, ignore, excludes)
                    elif rel in archives:
                        _unpack(source, archives[rel], staging, ins, self.df)
                    else:
                        name = posixpath.basename(rel) if into_dir else posixpath.basename(dest)
                        _stage_entry(source, staging / name)

            def inputs_of(selected: SourceChecksum | str) -> dict[str, Any]:
                return {
                    "args": [*sources, dest_word],
                    "dest": dest,
                    "under": under,
                    "dirs": [[d.mode, d.uid, d.gid] for d in dirs],
                    "owner": [uid, gid],
                    "chmod": chmod,
                    "flags": flags,
                    "sources": selected if isinstance(selected, str) else selected.digest,
                }

            def written(staging: Path) -> Layer:
                layer = self.store.build_layer(
                    staging,
                    compression=self.compression,
                    source_date_epoch=self.epoch,
                    owner=(uid, gid),
                    under=under or None,
                    under_dirs=dirs,
                    chmod=chmod,
                )
                # A layer just written from this staging matches it to the mtime (a cached one
                # was written from sources equal in all but their mtimes): link its snapshot.
                if chmod is None and self.needs_tree(stage, ins) and overlay_works():
                    linked = self.link_snapshot(staging, under, dirs, uid, gid)
                    if linked is not None:
                        self.linked[_core.chain_id([*image.diff_ids, layer.diff_id])] = linked
                return layer

            def staged_and_written() -> Layer:
                with self.store.workspace("copy") as staging:
                    stage_into(staging)
                    return written(staging)

            if keyed:
                return staged_and_written()
            if checksum is not None:
                # ADD --checksum URL: the checksum names the content, so it is the key (with
                # the file's name and mode): a hit downloads nothing, as with BuildKit.
                url = matches[0][0]
                name = _url_name(url) if into_dir else posixpath.basename(dest)
                return self.cached(
                    stage, ins, inputs_of(f"{name} 600 {checksum}"), staged_and_written
                )
            if not parents and not archives and all(mark is None for _, mark in matches):
                # Files of the context only: checksummed in place, through the store's stat
                # cache, so a hit stages nothing (staging links the files, moving their ctime).
                plan: list[tuple[Path, str] | SourceTree] = []
                for rel, _mark in matches:
                    source = root / rel if rel != "." else root
                    if source.is_dir() and not source.is_symlink():
                        plan.append(SourceTree(source, "", _skipper(rel, ignore, excludes)))
                    else:
                        name = posixpath.basename(rel) if into_dir else posixpath.basename(dest)
                        plan.append((source, name))
                selected = checksum_sources(plan, cache=self.store.stat_cache_path())
                return self.cached(
                    stage,
                    ins,
                    inputs_of(selected),
                    staged_and_written,
                    linked=link,
                    files=lambda: _files_of(selected),
                )
            with self.store.workspace("copy") as staging:
                stage_into(staging)
                selected = checksum_sources([SourceTree(staging)])
                return self.cached(
                    stage,
                    ins,
                    inputs_of(selected),
                    lambda: written(staging),
                    linked=link,
                    files=lambda: _files_of(selected),
                )

        if source_from is not None:
            # From a stage or an image: its chain_id names its whole tree, so the key needs
            # no look at it, and a hit neither mounts nor stages anything.
            src = self.source_image(state.expand(source_from, ins), ins)
            from_inputs = {
                "args": [*sources, dest_word],
                "workdir": state.workdir,
                "owner": [uid, gid],
                "chmod": chmod,
                "flags": flags,
                "from": _core.chain_id(list(src.diff_ids)) if src.layers else "scratch",
            }
            # Whether the destination is a directory below decides where the files go.
            recorded = self.recorded_inputs(
                stage, image, ins.keyword, _LINKED if link else self.chain[stage.index][0],
                from_inputs,
            )  # fmt: skip
            if recorded is not None and isinstance(recorded.get("dest_is_dir"), bool):
                from_inputs["dest_is_dir"] = recorded["dest_is_dir"]
            else:
                from_inputs["dest_is_dir"] = (
                    found := existing()
                ) is not None and found.kind == "dir"
            layer = self.cached(stage, ins, from_inputs, lambda: write(True), linked=link)
        else:
            layer = write(False)
        shown = ["--parents"] if parents else []
        shown += [f"--chown={chown}"] if chown else []
        shown += [f"--chmod={chmod_text}"] if chmod_text else []
        created_by = " ".join([ins.keyword, *shown, *sources, dest_word]) + " # buildkit"
        return image.append(
            layer, created_by=created_by, comment=BUILDKIT_COMMENT, created=self.created()
        )

    def stage_index(self, ref: str) -> int | None:
        """The index of the stage ``ref`` names (its name or its index), if it does."""
        for s in self.plan.stages:
            if s.name == ref.lower() or str(s.index) == ref:
                return s.index
        return None

    def source_image(self, ref: str, ins: Instruction) -> Image:
        """The image ``--from=ref`` names: an earlier stage (by name or index), else an image
        from the store or a registry."""
        index = self.stage_index(ref)
        if index is not None and index in self.images:
            return self.images[index]
        return self.image(ref, ins)

    def needs_tree(self, stage: Stage, ins: Instruction) -> bool:
        """Whether a RUN of ``stage`` after ``ins``, or another stage, will look at the tree."""
        later = any(i.keyword == "RUN" and i.line > ins.line for i in stage.instructions)
        return later or any(stage.index in s.depends_on for s in self.plan.stages)

    def link_snapshot(
        self, staging: Path, under: str, dirs: Sequence[DirAttrs], uid: int, gid: int
    ) -> Path | None:
        """A snapshot of the ``COPY`` layer just written from ``staging`` (placed at ``under``,
        whose directories have ``dirs``, every entry owned by ``uid:gid``, modes as staged), for
        this build only, made of hard links to the staged files (so of the context's, which
        must not be changed: they are never written through, and the snapshot is not kept past
        the build): a RUN over it creates no file for what COPY brought. ``None`` unless every
        file already has the owner the layer gives it (a ``--chown`` the files do not have:
        the snapshot is then extracted as usual), or for a special file."""
        snap = self.workspace("snap") / "fs"
        root = os.geteuid() == 0
        times: list[tuple[Path, int, int]] = []  # path, atime_ns, mtime_ns

        def own(path: Path) -> None:
            if root:
                os.lchown(path, uid, gid)

        try:
            snap.mkdir()
            base = snap
            for name, attrs in zip(under.split("/") if under else [], dirs, strict=True):
                base = base / name
                base.mkdir()
                os.chmod(base, attrs.mode & 0o7777)
                if root:
                    os.lchown(base, attrs.uid, attrs.gid)
                times.append((base, attrs.mtime * 10**9, attrs.mtime * 10**9))
            for dirpath, dirnames, filenames in os.walk(staging):
                here = Path(dirpath)
                out = base / here.relative_to(staging)
                for name in [*dirnames, *filenames]:
                    source, target = here / name, out / name
                    st = source.lstat()
                    if stat.S_ISDIR(st.st_mode):
                        target.mkdir()
                        os.chmod(target, stat.S_IMODE(st.st_mode))
                        own(target)
                    elif stat.S_ISLNK(st.st_mode):
                        os.symlink(os.readlink(source), target)
                        own(target)
                    elif stat.S_ISREG(st.st_mode) and (
                        (st.st_uid, st.st_gid) == (uid, gid) if root else st.st_uid == os.geteuid()
                    ):
                        os.link(source, target, follow_symlinks=False)
                        continue
                    else:
                        raise _NotLinkable(str(source))
                    times.append((target, st.st_atime_ns, st.st_mtime_ns))
            for path, atime, mtime in reversed(times):
                os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        except (_NotLinkable, OSError):
            shutil.rmtree(snap, ignore_errors=True)
            return None
        return snap

    def fetch(self, url: str, target: Path, checksum: str | None, ins: Instruction) -> None:
        """``ADD URL``: the body at ``target``, mode 0600, its mtime from ``Last-Modified``
        (else the build's time); with ``--checksum`` the bytes must hash to it."""
        from email.utils import parsedate_to_datetime

        from layercore import _core
        from layercore.errors import DigestMismatchError, NetworkError

        if checksum is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
            raise self.fail(f"ADD --checksum={checksum}: give sha256:<64 hex digits>", ins)
        partial = target.with_name(target.name + ".part")
        try:
            reply = _core.HttpClient().download(url, [], partial, expected_digest=checksum)
        except DigestMismatchError as e:
            raise self.fail(
                f"ADD {url}: the download hashes to {e.actual}, not to --checksum={checksum}", ins
            ) from None
        except NetworkError as e:
            raise self.fail(f"ADD {url}: {e.message}", ins) from None
        if reply.digest is None:
            partial.unlink(missing_ok=True)
            raise self.fail(f"ADD {url}: the server answered HTTP {reply.status}", ins)
        partial.rename(target)
        os.chmod(target, 0o600)
        mtime = self.created()
        modified = reply.header("last-modified")
        if modified:
            with suppress(TypeError, ValueError):
                mtime = int(parsedate_to_datetime(modified).timestamp())
        os.utime(target, (mtime, mtime))

    def tree(self, ref: str, ins: Instruction) -> Path:
        """The extracted tree of a stage (by name or index) or an image, for ``--from``."""
        if ref in self.trees:
            return self.trees[ref]
        index = self.stage_index(ref)
        if index is not None and index in self.images:
            self.materialize(self.images[index].layers)
        if index is not None and index in self.rootfs:
            # The stage ran a RUN: its root filesystem is there, brought up to date.
            path = self.rootfs_for(self.plan.stages[index], self.images[index])
            self.trees[ref] = path
            return path
        image = self.images[index] if index is not None else self.image(ref, ins)
        mounted = None
        if image.layers and os.geteuid() == 0 and overlay_works():
            # The stage's snapshots, mounted read-only: nothing is extracted but the layers
            # that have no snapshot yet.
            mounted = self.mounted(image)
        if mounted is not None:
            path = mounted
        else:
            path = self.workspace("from")
            image.stack.extract(path)
        self.trees[ref] = path
        return path

    def mounted(self, image: Image) -> Path | None:
        """The merged tree of ``image``'s snapshots, mounted read-only (an overlay without an
        upper dir) in a workspace until the build ends; root only. ``None`` if it cannot be
        mounted."""
        ws = self.workspace("view")
        snapshots = self.store.snapshots(image.layers, given=self.linked)
        lowers = link_lowers(ws, snapshots)
        (ws / "skel").mkdir()
        (ws / "merged").mkdir()
        options = "ro,lowerdir=" + ":".join(["skel", *lowers])
        done = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, "merged"],
            cwd=ws,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            overlay_failed(os.geteuid())
            return None
        self._exit.callback(unmount, ws / "merged")
        _VIEWS[ws / "merged"] = MergedLower(snapshots, "trusted")
        self._exit.callback(_VIEWS.pop, ws / "merged", None)
        return ws / "merged"

    # -- RUN

    def run_step(self, stage: Stage, state: StageState, image: Image, ins: Instruction) -> Image:
        network = ins.flag("network") or "default"
        if network not in ("default", "none", "host"):
            raise self.fail(f"RUN --network={network}: use default, none or host", ins)
        argv = state.command(ins)
        script_mount: Mount | None = None
        step_scope = ExitStack()
        if ins.heredocs and not ins.json:
            doc = ins.heredocs[0]
            alone = ins.args[0].strip() in (f"<<{doc.name}", f"<<-{doc.name}")
            if alone and doc.content.startswith("#!"):
                # A script with its own interpreter runs as a file, as BuildKit runs it: mounted
                # read-only for the step, never part of the layer.
                script = step_scope.enter_context(self.store.workspace("heredoc")) / doc.name
                script.write_text(doc.content)
                os.chmod(script, 0o755)
                target = f"/.layercore-heredoc/{doc.name}"
                script_mount = Mount("bind", script, target, True)
                argv = [target]
            elif alone:
                argv = [*state.shell, doc.content]
            else:
                docs = "".join(h.content + h.name + "\n" for h in ins.heredocs)
                argv = [*state.shell, ins.args[0] + "\n" + docs]
        # Not root: every file of the tree belongs to the caller on disk; a path keeps the
        # owner the image gives it, and a new one belongs to root (the sandbox's root).
        owner: Owner = "numeric" if os.geteuid() == 0 else "inherit"
        inputs = {
            "argv": argv,
            "env": state.run_env(),
            "args": {k: v for k, v in state.args.items() if v is not None},
            "user": state.config.get("User") or "",
            "workdir": state.workdir,
            "network": network,
            "mounts": self.mount_keys(state, ins),
            "script": ins.heredocs[0].content if script_mount is not None else None,
        }

        def make() -> Layer:
            self.materialize(image.layers)
            mounts = self.mounts(state, ins, step_scope)
            if script_mount is not None:
                mounts.append(script_mount)
            if overlay_works():
                try:
                    return self.run_overlay(stage, state, image, ins, argv, network, mounts, owner)
                except OverlayUnavailable:
                    if os.environ.get("LAYERCORE_SNAPSHOTTER") == "overlay":
                        raise BuildError(
                            "LAYERCORE_SNAPSHOTTER=overlay, but overlayfs cannot be mounted here",
                            self.df.path,
                            stage=stage.label,
                            line=ins.line,
                        ) from None
                    overlay_failed(os.geteuid())
            rootfs = self.rootfs_for(stage, image)
            targets = [*_MOUNT_POINTS, *(m.target.lstrip("/") for m in mounts)]
            points = _MountPoints(rootfs, targets)
            try:
                (rootfs / state.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
                self._run(stage, state, image, ins, rootfs, argv, network, mounts)
            except BaseException:
                self.rootfs.pop(stage.index, None)
                raise
            finally:
                points.restore()
            layer = self.store.diff_layer(
                image.stack if image.layers else self.workspace("empty"),
                rootfs,
                compression=self.compression,
                source_date_epoch=self.epoch,
                owner=owner,
            )
            self.rootfs[stage.index] = ([*image.diff_ids, layer.diff_id], rootfs)
            return layer

        with step_scope:
            layer = self.cached(stage, ins, inputs, make)
        return image.append(
            layer,
            created_by=state.run_history(argv),
            comment=BUILDKIT_COMMENT,
            created=self.created(),
        )

    def mount_keys(self, state: StageState, ins: Instruction) -> list[Any]:
        """What a ``RUN``'s mounts add to its cache key: each spec as written, expanded, and
        for a bind mount what it binds: the checksum of the context's files there (ignored
        ones too: a change to them can only cost a miss), or the key of the stage it comes
        from. A cache mount's contents and a secret's never enter a key."""
        out: list[Any] = []
        for spec in ins.flag_values("mount"):
            text = state.expand(spec, ins)
            opts = _mount_options(text)
            if opts.get("type", "bind") != "bind":
                out.append(text)
                continue
            ref = opts.get("from")
            if ref is not None:
                index = self.stage_index(ref)
                bound = self.stage_keys.get(index, ref) if index is not None else ref
                out.append([text, bound])
                continue
            source = posixpath.normpath("/" + opts.get("source", opts.get("src", "/"))).lstrip("/")
            path = self.context / source if source else self.context
            if path.is_dir() and not path.is_symlink():
                sources: list[tuple[Path, str] | SourceTree] = [SourceTree(path)]
            else:
                sources = (
                    [(path, posixpath.basename(source) or ".")] if os.path.lexists(path) else []
                )
            selected = checksum_sources(sources, cache=self.store.stat_cache_path())
            out.append([text, selected.digest])
        return out

    def run_overlay(
        self,
        stage: Stage,
        state: StageState,
        image: Image,
        ins: Instruction,
        argv: list[str],
        network: str,
        mounts: list[Mount],
        owner: Owner,
    ) -> Layer:
        """RUN on an overlay of the stage's snapshots: the upper dir is the step's change,
        written as the layer and then kept as that layer's snapshot. Mount points missing from
        the image are made in a skeleton directory mounted as the top lower dir, so neither
        the upper dir nor the layer has them."""
        with self.store.workspace("run") as ws:
            userns = os.geteuid() != 0
            xattrs: Literal["trusted", "user"] = "user" if userns else "trusted"
            snapshots = self.store.snapshots(image.layers, xattrs=xattrs, given=self.linked)
            lowers = link_lowers(ws, snapshots)
            files = host_files_for(network)
            points = [("proc", True), ("dev", True), *((f, False) for f in files)]
            points.append((state.workdir, True))
            for m in mounts:
                points.append((m.target, m.kind == "tmpfs" or bool(m.source and m.source.is_dir())))
            make_skeleton(MergedLower(snapshots, xattrs), ws / "skel", points)
            for name in ("upper", "work", "merged"):
                (ws / name).mkdir(mode=0o755)
            os.chmod(ws / "upper", 0o755)
            merged = ws / "merged"
            options = overlay_options(lowers, userns=userns)
            self._run(
                stage,
                state,
                image,
                ins,
                merged,
                argv,
                network,
                mounts,
                host_files=files,
                overlay=(ws, options),
            )
            layer = self.store.overlay_layer(
                ws / "upper",
                lower=image.stack if owner == "inherit" else None,
                compression=self.compression,
                source_date_epoch=self.epoch,
                owner=owner,
            )
            self.store.commit_snapshot(ws / "upper", [*image.layers, layer], xattrs=xattrs)
        return layer

    def _run(
        self,
        stage: Stage,
        state: StageState,
        image: Image,
        ins: Instruction,
        rootfs: Path,
        argv: list[str],
        network: str,
        mounts: list[Mount],
        *,
        host_files: list[str] | None = None,
        overlay: tuple[Path, str] | None = None,
    ) -> None:
        """Runs the command in ``rootfs`` (with ``overlay``, the workspace holding the lower
        dir links, upper, work and merged dirs, and the mount options: ``rootfs`` is mounted
        there first, in the command's private mount namespace); raises :class:`BuildError` if
        it fails."""
        env = state.run_env()
        env.setdefault("PATH", DEFAULT_PATH)
        user = state.config.get("User") or ""
        uid, gid = self.owner(user, image, ins) if user else (0, 0)
        workdir = state.workdir
        if host_files is None:
            host_files = host_files_for(network)
        userns = overlay is not None and os.geteuid() != 0
        if uid != 0 and os.geteuid() == 0:
            command = chroot_command(
                rootfs,
                workdir,
                uid,
                gid,
                network,
                host_files,
                mounts,
                argv,
                prepare=overlay is None,
            )
            process_env = env
        else:
            command = bwrap_command(
                rootfs, workdir, network, host_files, mounts, env, argv, userns=userns
            )
            process_env = None
        if overlay is not None:
            command = in_overlay(command, overlay[0], overlay[1], userns=userns)
        shown = " ".join(argv)
        tail: deque[str] = deque(maxlen=_OUTPUT_LINES)
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=process_env,
            )
        except FileNotFoundError:
            raise BuildError(
                f"RUN needs {command[0]} on PATH (Debian: bubblewrap, util-linux)",
                self.df.path,
                stage=stage.label,
                line=ins.line,
                command=shown,
            ) from None
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                tail.append(line)
                self.progress(BuildEvent("output", stage.label, ins.line, line))
            code = proc.wait()
        except BaseException:
            kill_group(proc)
            raise
        first = next(iter(tail), "")
        if overlay is not None and (
            (code == MOUNT_FAILED_CODE and first == MOUNT_FAILED_MARK)
            # No user namespace for a caller that is not root: the wrapper could not start.
            or (code == 1 and userns and first.startswith("unshare: "))
        ):
            raise OverlayUnavailable()
        if code != 0:
            raise BuildError(
                f"stage {stage.label}: RUN {shown!r} exited with code {code}",
                self.df.path,
                stage=stage.label,
                line=ins.line,
                command=shown,
                exit_code=code,
                output="\n".join(tail),
            )

    def mounts(self, state: StageState, ins: Instruction, scope: ExitStack) -> list[Mount]:
        """The ``--mount`` options of a ``RUN``, each made ready on the host: a bind of the
        context (a staged copy: what .dockerignore leaves) or of a stage's tree, a persistent
        cache directory of the store (``sharing=locked`` holds its lock for the step), a tmpfs,
        a secret file given to the build. None of them enters the layer."""
        out = []
        for spec in ins.flag_values("mount"):
            opts = _mount_options(state.expand(spec, ins))
            kind = opts.get("type", "bind")
            if kind not in ("bind", "cache", "tmpfs", "secret"):
                raise self.fail(f"RUN --mount=type={kind} is not supported", ins)
            target = opts.get("target") or opts.get("dst") or opts.get("destination")
            if kind == "secret" and not target:
                target = "/run/secrets/" + opts.get("id", "")
            if not target:
                raise self.fail(f"RUN --mount={spec}: give target=PATH", ins)
            target = posixpath.normpath(posixpath.join(state.workdir, target))
            readonly = opts.get("readonly", opts.get("ro", "false")) != "false"
            if kind == "bind":
                out.append(self.bind_mount(opts, target, ins, scope))
            elif kind == "cache":
                cache_id = opts.get("id") or target
                mode = int(opts.get("mode", "755"), 8)
                uid, gid = int(opts.get("uid", "0")), int(opts.get("gid", "0"))
                directory = self.store.cache_mount(cache_id, mode=mode, uid=uid, gid=gid)
                if opts.get("sharing", "shared") in ("locked", "private"):
                    scope.enter_context(self.store.cache_lock(cache_id))
                out.append(Mount("bind", directory, target, readonly))
            elif kind == "tmpfs":
                out.append(Mount("tmpfs", None, target, False))
            elif kind == "secret":
                secret_id = opts.get("id") or posixpath.basename(target)
                source = self.secrets.get(secret_id)
                if source is None:
                    if opts.get("required", "false") != "false":
                        raise self.fail(f"secret {secret_id!r} is required but was not given", ins)
                    continue
                out.append(Mount("bind", Path(source), target, True))
        return out

    def bind_mount(
        self, opts: Mapping[str, str], target: str, ins: Instruction, scope: ExitStack
    ) -> Mount:
        rw = opts.get("rw", opts.get("readwrite", "false")) != "false"
        source = posixpath.normpath("/" + opts.get("source", opts.get("src", "/"))).lstrip("/")
        if "from" in opts:
            root = self.tree(opts["from"], ins)
            path = root / source if source else root
            if not os.path.lexists(path):
                raise self.fail(f"RUN --mount: {source or '/'} is not in {opts['from']}", ins)
            if not rw:
                return Mount("bind", path, target, True)
            copy = scope.enter_context(self.store.workspace("mount")) / "src"
            if path.is_dir():
                shutil.copytree(path, copy, symlinks=True)
            else:
                shutil.copy2(path, copy, follow_symlinks=False)
            return Mount("bind", copy, target, False)
        # The context, as .dockerignore leaves it: staged (linked, or copied when it may be
        # written: a rw bind's changes are thrown away, never made to the context).
        rel = source or "."
        path = self.context / rel if rel != "." else self.context
        if not os.path.lexists(path) or (rel != "." and self.ignore.ignored(rel)):
            raise self.fail(f"RUN --mount: {rel} is not in the build context", ins)
        staging = scope.enter_context(self.store.workspace("mount")) / "src"
        if path.is_dir() and not path.is_symlink():
            staging.mkdir()
            _stage_tree(path, staging, rel, self.ignore, IgnoreRules())
            if rw:
                copied = staging.with_name("rw")
                shutil.copytree(staging, copied, symlinks=True)
                staging = copied
        elif rw:
            shutil.copy2(path, staging, follow_symlinks=False)
        else:
            _stage_entry(path, staging)
        return Mount("bind", staging, target, not rw)

    def rootfs_for(self, stage: Stage, image: Image) -> Path:
        """The stage's tree extracted: the last RUN's, with the layers added since applied."""
        from layercore.extract import apply

        cached = self.rootfs.get(stage.index)
        ids = list(image.diff_ids)
        if cached is not None and ids[: len(cached[0])] == cached[0]:
            path = cached[1]
            for layer in image.layers[len(cached[0]) :]:
                apply(layer, path)
            return path
        path = self.workspace("rootfs")
        if image.layers:
            image.stack.extract(path)
        return path


@dataclass(frozen=True)
class _Found:
    """What a path of an image's tree is, as :meth:`_Build.lookup` finds it."""

    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int


class _MountPoints:
    """Remembers which paths of ``targets`` (relative to ``rootfs``) and of their parents are
    missing before a RUN, so the empty files and directories the sandbox creates to mount on
    can be removed after it, and the times of the directories they were made in restored."""

    def __init__(self, rootfs: Path, targets: Sequence[str]) -> None:
        self.rootfs = rootfs
        self.created: list[Path] = []
        self.times: dict[Path, os.stat_result] = {}
        for target in targets:
            parts = [p for p in target.split("/") if p]
            for i in range(len(parts)):
                path = rootfs.joinpath(*parts[: i + 1])
                if not os.path.lexists(path):
                    parent = path.parent
                    with suppress(OSError):
                        self.times.setdefault(parent, parent.lstat())
                    self.created.extend(
                        rootfs.joinpath(*parts[: j + 1]) for j in range(i, len(parts))
                    )
                    break
        self.created = sorted(set(self.created), key=lambda p: len(p.parts), reverse=True)

    def restore(self) -> None:
        for path in self.created:
            _remove_mount_point(path)
        for path, st in self.times.items():
            with suppress(OSError):
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


# -- sandboxes -------------------------------------------------------------------------------------


def _mount_options(text: str) -> dict[str, str]:
    """A ``--mount`` spec (expanded) as options: keys lower case, a bare key ``true``."""
    opts = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        opts[key.lower()] = value if sep else "true"
    return opts


class _NotLinkable(Exception):
    """A staged file differs from its layer entry: it cannot be linked into a snapshot."""


_NO_RECORD = "no cache record for this step"
#: The parent key of every ``COPY --link`` step: its layer does not depend on the ones below.
_LINKED = "sha256:" + "0" * 64


def _local_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A ``--cache-from`` record as the store keeps it (its key and parent are the file's)."""
    return {name: value for name, value in record.items() if name not in ("key", "parent")}


def _key(obj: Mapping[str, Any]) -> str:
    """A build cache key: the SHA-256 of the canonical JSON of ``obj``."""
    return sha256_digest(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def _files_of(selected: SourceChecksum) -> dict[str, Any]:
    """A COPY's sources as its cache record keeps them, to explain a later miss."""
    return {
        r.name: [r.kind, r.mode, f"{r.uid}:{r.gid}", r.size,
                 r.link.decode(errors="replace"), sorted(r.xattrs), r.content]
        for r in selected.records
    }  # fmt: skip


def _explain_mounts(old: Sequence[Any], new: Sequence[Any]) -> tuple[str, list[str], int]:
    """A RUN's miss from its mounts (:meth:`_Build.mount_keys`) when its text and env are the
    same: a bind mount over files (or a stage) that changed."""
    bound = [
        str(b[0])
        for a, b in zip(old, new, strict=False)
        if isinstance(b, list) and isinstance(a, list) and a[0] == b[0] and a[1] != b[1]
    ]
    if not bound:
        return "mounts changed", [], 0
    opts = _mount_options(bound[0])
    what = f"stage {opts['from']}" if "from" in opts else opts.get("source", opts.get("src", "."))
    target = opts.get("target", opts.get("dst", opts.get("destination", "?")))
    shown = [f"--mount={b}" for b in bound]
    return f"bind mount {target} changed: what it binds ({what}) changed", shown, len(shown)


def _explain_files(
    text: str, old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[str, list[str], int]:
    """A COPY's miss from its sources: which files changed (and in what), which came and went;
    one mode change on many files is named as such (a umask?)."""
    fields = ("kind", "mode", "owner", "size", "link", "xattrs", "content")
    changed: list[tuple[str, str]] = []
    modes: dict[tuple[Any, Any], int] = {}
    for name in sorted(set(old) & set(new)):
        a, b = old[name], new[name]
        if a == b:
            continue
        what = [f for f, x, y in zip(fields, a, b, strict=False) if x != y]
        what = [w for w in what if w != "size" or "content" not in what]
        changed.append((name, ", ".join(what) or "metadata"))
        if what == ["mode"]:
            modes[(a[1], b[1])] = modes.get((a[1], b[1]), 0) + 1
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    parts = []
    evidence = [f"{n} ({w})" for n, w in changed]
    if len(modes) == 1 and len(changed) > 1 and sum(modes.values()) == len(changed):
        (a_mode, b_mode), n = next(iter(modes.items()))
        parts.append(f"mode {a_mode:04o} → {b_mode:04o} on {n} files (umask?)")
    elif changed:
        noun = "file" if len(changed) == 1 else "files"
        parts.append(f"{len(changed)} {noun} changed: {changed[0][0]} ({changed[0][1]})")
    if added or removed:
        noun = "file" if len(added) == 1 else "files"
        parts.append(f"{len(added)} {noun} added, {len(removed)} removed")
        evidence += [f"{n} (added)" for n in added] + [f"{n} (removed)" for n in removed]
    reason = f"{text}: " + ("; ".join(parts) or "sources changed")
    return reason, evidence[:10], len(evidence)


#: The mark of a URL source among a COPY's matches.
_URL = "\0url"


def _url_name(url: str) -> str:
    """The file name ``ADD URL dir/`` gives: the URL path's last part, as BuildKit does."""
    import urllib.parse

    base = posixpath.basename(urllib.parse.urlsplit(url).path)
    return base if base not in ("", ".", "/") else "__unnamed__"


# -- staging ---------------------------------------------------------------------------------------


#: Read-only overlays of snapshots a build has mounted (see ``_Build.mounted``), by their
#: mount point: a file staged from one is linked from the snapshot that holds it.
_VIEWS: dict[Path, MergedLower] = {}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        for root, lower in list(_VIEWS.items()):
            if source.is_relative_to(root):
                found = lower.lookup(source.relative_to(root).as_posix())
                if found is not None and stat.S_ISREG(found[0].st_mode):
                    with suppress(OSError):
                        os.link(found[2], target, follow_symlinks=False)
                        return
        shutil.copy2(source, target, follow_symlinks=False)


def _stage_entry(source: Path, target: Path) -> None:
    """One source entry at ``target``: a file hard-linked (or copied), a symlink re-created
    with its target as it is, a directory created with the source's mode and mtime."""
    st = source.lstat()
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), target)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    elif stat.S_ISDIR(st.st_mode):
        target.mkdir(exist_ok=True)
    elif stat.S_ISREG(st.st_mode):
        if target.exists():
            target.unlink()
        _link_or_copy(source, target)


def _skipper(
    rel: str, ignore: IgnoreRules, excludes: IgnoreRules
) -> Callable[[str, bool], bool] | None:
    """What a walk of the directory ``rel`` (in its root) leaves out: a path ``ignore`` (paths
    from the root) or ``excludes`` (paths from the directory) drops, unless a directory may
    still hold a path an exception keeps; ``None`` when nothing is left out."""
    if not ignore and not excludes:
        return None
    prefix = "" if rel == "." else rel.rstrip("/") + "/"

    def skipped(inner: str, directory: bool) -> bool:
        for rules, path in ((ignore, prefix + inner), (excludes, inner)):
            if rules and rules.ignored(path) and not (directory and rules.may_hold_kept(path)):
                return True
        return False

    return skipped


def _plan_tree(
    source: Path, rel: str, ignore: IgnoreRules, excludes: IgnoreRules
) -> list[tuple[Path, str]]:
    """What :func:`_stage_tree` stages from the directory ``source`` (``rel`` in its root):
    each kept entry and its name in the staging directory, a directory before its contents
    (the same walk a context ``COPY``'s checksum takes, :func:`_skipper`)."""
    return list(walk_sources(source, _skipper(rel, ignore, excludes)))


def _stage_tree(
    source: Path, staging: Path, rel: str, ignore: IgnoreRules, excludes: IgnoreRules
) -> None:
    """The contents of the directory ``source`` (``rel`` in its root) merged into ``staging``;
    what ``ignore`` (paths from the root) or ``excludes`` (paths from ``source``) leave out is
    skipped (:func:`_plan_tree`); directory modes and mtimes are copied once their contents
    are in."""
    dirs: list[tuple[Path, os.stat_result]] = [(staging, source.stat())]
    for path, name in _plan_tree(source, rel, ignore, excludes):
        target = staging / name
        if path.is_dir() and not path.is_symlink():
            target.mkdir(exist_ok=True)
            dirs.append((target, path.stat()))
        else:
            _stage_entry(path, target)
    for path, st in reversed(dirs):
        _copy_dir_attrs(path, st)


def _copy_dir_attrs(path: Path, st: os.stat_result) -> None:
    """A staged directory given its source's mode and times (the writer reads them)."""
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _stage_parents(root: Path, rel: str, staging: Path) -> None:
    """The directories above ``rel`` (in ``root``) created in ``staging`` with their modes and
    mtimes, for ``COPY --parents``."""
    parts = rel.split("/")[:-1]
    for i in range(len(parts)):
        sub = "/".join(parts[: i + 1])
        target = staging / sub
        if not target.is_dir():
            target.mkdir()
            _copy_dir_attrs(target, (root / sub).stat())


#: Leading bytes of the compressed archives ADD unpacks.
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)


def _archive_kind(path: Path) -> str | None:
    """How a local ``ADD`` source is a tar archive, by its content: ``"tar"``, ``"gzip"``,
    ``"zstd"``, ``"bzip2"`` or ``"xz"``; None for anything else (copied as it is)."""
    if path.is_symlink() or not path.is_file():
        return None
    with path.open("rb") as f:
        head = f.read(512)
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), "tar")
    if kind == "tar" and not (len(head) == 512 and head[257:262] == b"ustar"):
        return None
    return kind if _tar_inside(path, kind) else None


def _tar_inside(path: Path, kind: str) -> bool:
    """Whether the (compressed) file holds a tar: its first header read by the layer reader
    (plain, gzip, zstd) or by tarfile (bzip2, xz); a compressed file of anything else is
    copied as it is, as Docker does."""
    from layercore import _core
    from layercore.errors import LayerError

    try:
        if kind in ("tar", "gzip", "zstd"):
            next(iter(_core.open_entries(os.fspath(path))), None)
            return True
        return tarfile.is_tarfile(path)
    except (LayerError, OSError, tarfile.TarError):
        return False


def _unpack(archive: Path, kind: str, staging: Path, ins: Instruction, df: Dockerfile) -> None:
    """``ADD`` of a local tar archive: its entries into ``staging``, nothing outside it. Plain,
    gzip and zstd tars go through the layer engine's extraction (links resolved inside the
    root); bzip2 and xz, which it does not read, through tarfile's ``tar`` filter."""
    from layercore.errors import LayerError
    from layercore.extract import apply

    try:
        if kind in ("tar", "gzip", "zstd"):
            apply(archive, staging)
            return
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="tar")
    except (LayerError, tarfile.TarError, OSError) as e:
        raise df.error(f"ADD {archive.name}: cannot unpack it: {e}", ins) from None


def _remove_mount_point(path: Path) -> None:
    """Removes what bwrap created to mount on (an empty file or directory)."""
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.is_file() and path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass

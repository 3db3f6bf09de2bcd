//! Flattening a stack of layers into one layer, and squashing a range of a stack.
//!
//! [`flatten`] writes one layer whose contents are the merged view of a stack (OCI image-spec
//! layer.md, DESIGN.md §2); [`squash`] merges a range of layers into one that, stacked on the
//! layers below the range, gives the same view as the range did, keeping only the whiteouts
//! that still hide something.
//!
//! # Two passes, memory O(entries)
//!
//! ```text
//! pass 1: layers in parallel ── EntryIter ──> LayerIndex (headers, where each body is)
//!                                        └──> spool file (bodies of compressed layers)
//! merge:  top-down over the indexes ──> winners per path ──> sorted in canonical order
//! pass 2: canonical order ──> LayerWriter; bodies read with pread (blob or spool)
//! ```
//!
//! Pass 1 keeps every header (path, kind, metadata, where the body is) in memory and no body.
//! The merge is go-containerregistry's `mutate.Extract` (top-down,
//! tombstones for whiteouts and non-directories, staged opaque directories) with its bugs fixed:
//! a layer's whiteouts and opaque markers hide only lower layers, whatever the archive order;
//! hardlinks keep the content of the inode they were made from even when its first name is
//! overwritten or deleted above (go-containerregistry #2002, #977); a directory only implied by
//! an entry below it (`a/b/c` with no `a/`) is a directory of its layer too, which takes its
//! attributes from the highest lower layer that has a directory entry for it (and over a lower
//! non-directory is an error: extracting it would write through a symlink or into a file).
//!
//! The output is written in canonical order (depth first, each directory before its contents,
//! names sorted by bytes: what `Layer.from_dir` writes), so the same stack and options always
//! give the same bytes. Canonical order is known only once every layer is indexed (its first
//! entry may come from any layer), so bodies are read again in pass 2: from a plain tar blob at
//! the recorded offset (`pread`, after checking the file did not change); from a compressed
//! blob not by decoding it a second time (inflate is the most expensive step of a flatten) but
//! from a spool file that pass 1 filled with the layer's decoded file bodies as it went. The
//! spool is an unnamed temp file beside the output, gone when the call returns: the cost is
//! disk space up to the uncompressed size of the bodies in compressed layers, never memory.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::thread;

pub use crate::blob_writer::LayerDescriptor;
use crate::blob_writer::LayerWriter;
use crate::compress::Compression;
use crate::entry::{split_parent, Entry, EntryKind, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::error::{Error, Result};
use crate::layer::EntryIter;
use crate::parallel;
use crate::tar::header::{self, HeaderSpec};
use crate::tar::reader::normalize_path;

/// Read size for copying decoded bodies to a spool file.
const BUFFER_SIZE: usize = 256 * 1024;

/// Write buffer of a spool file: bodies are mostly small, writes should not be.
const SPOOL_BUFFER: usize = 1 << 20;

/// Entries between two calls of the caller's `check` (Ctrl-C) while writing.
const CHECK_EVERY: usize = 256;

/// Mode of a directory that no layer describes (see [`flatten`]).
pub const IMPLIED_DIR_MODE: u32 = 0o755;

/// How to write a flattened or squashed layer.
#[derive(Clone, Debug)]
pub struct FlattenOptions {
    pub compression: Compression,
    /// Codec level; `None` takes [`Compression::default_level`].
    pub level: Option<i32>,
    /// Threads for compressing, and for reading layers in pass 1; `None` uses every core. The
    /// bytes never depend on it.
    pub threads: Option<usize>,
    /// Clamps every mtime to at most this value when given.
    pub source_date_epoch: Option<i64>,
}

impl Default for FlattenOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Gzip,
            level: None,
            threads: None,
            source_date_epoch: None,
        }
    }
}

/// Writes to `out` one layer equal to the merged view of `layers` (bottom first).
///
/// Semantics (OCI image-spec layer.md, DESIGN.md §2), whatever the order of entries within a
/// layer: the highest layer that has a path provides it; a directory over a directory merges
/// and takes the upper attributes; `.wh.X` and `D/.wh..wh..opq` hide lower layers only, never
/// entries of their own layer; a non-directory hides everything below its path in lower layers;
/// whiteouts never appear in the output; within one layer the last entry for a path wins.
/// Hardlinks: every surviving name of an inode keeps the content it was linked to, even when
/// the name the link was made from is overwritten or deleted higher up; the first surviving
/// name in output order carries the body (and the metadata of the inode's first entry), the
/// others are hardlinks to it. Hardlinked non-files (devices, FIFOs, symlinks) come out as
/// independent copies, as `Layer.from_dir` would write them.
///
/// A directory that no layer has an entry for but that an entry lies below (`a/b/c` without
/// `a/` or `a/b/`) is written as a directory of mode 0755, uid/gid 0 without names, mtime 0 (the
/// `source_date_epoch` when given: an extractor creates it "now", and a clamped build of the
/// extracted tree would say that). When a lower layer has a directory entry for it, that
/// entry's attributes are used instead.
///
/// The output is in canonical order and reproducible: the same layers and options give the same
/// bytes with any thread count. Input errors, [`Error::Unsupported`] naming the layer at fault:
/// an entry with a `..` component, a name under a `.wh.` name, a non-regular entry named
/// `.wh.*`, a hardlink whose target is not an earlier entry of its layer (or is a directory),
/// an entry below a non-directory of its own layer (`link -> /etc` and `link/passwd`), and an
/// entry below a path that its layer does not describe but a lower layer has as a
/// non-directory (extracting it would write through a symlink or into a file: CONFORMANCE 23;
/// a layer that means to replace it has a directory entry for it). A damaged blob is the
/// reader's error; a blob that changes between the two passes is [`Error::Changed`]. `check` is
/// called regularly; its error (Ctrl-C) stops the work. Nothing is left at `out` on failure.
pub fn flatten(
    layers: &[PathBuf],
    out: &Path,
    options: &FlattenOptions,
    check: &dyn Fn() -> Result<()>,
) -> Result<LayerDescriptor> {
    merge_range(layers, 0, layers.len(), out, options, check)
}

/// Merges `layers[start..end]` (bottom first) into one layer at `out` such that
/// `layers[..start]` + that layer + `layers[end..]` shows the same merged view as `layers`.
///
/// Entries follow [`flatten`]'s rules. Whiteouts and opaque markers are kept only where still
/// needed: a whiteout of a path the kept layers (`layers[..start]`) show, and an opaque marker on
/// a directory whose kept content must vanish (an opaque or deleted-and-recreated directory in
/// the range); one below a path already whited out, made opaque or replaced by a non-directory
/// is redundant and dropped (CONFORMANCE 11). Within a directory the opaque marker comes first,
/// then the whiteouts, then the other entries. Whiteouts are empty regular files, mode 0,
/// uid/gid 0, mtime 0. With `start == 0` this is [`flatten`] of `layers[..end]`.
///
/// Errors as for [`flatten`] (for the layers below the range also when only they, on their
/// own, are at fault: they remain a stack of their own), plus [`Error::InvalidArgument`] for an
/// empty or out-of-bounds range. Only `layers[..end]` are read.
pub fn squash(
    layers: &[PathBuf],
    start: usize,
    end: usize,
    out: &Path,
    options: &FlattenOptions,
    check: &dyn Fn() -> Result<()>,
) -> Result<LayerDescriptor> {
    if start >= end || end > layers.len() {
        return Err(Error::InvalidArgument(format!(
            "cannot squash layers {start}..{end} of a stack of {}: the range must be non-empty \
             and within the stack",
            layers.len()
        )));
    }
    merge_range(&layers[..end], start, end, out, options, check)
}

fn merge_range(
    layers: &[PathBuf],
    start: usize,
    end: usize,
    out: &Path,
    options: &FlattenOptions,
    check: &dyn Fn() -> Result<()>,
) -> Result<LayerDescriptor> {
    if options.threads == Some(0) {
        return Err(Error::InvalidArgument("threads must be at least 1".into()));
    }
    options
        .compression
        .check_level(options.level.unwrap_or(options.compression.default_level()))?;
    let spool_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let indexes = index_all(layers, &spool_dir, options.threads, check)?;
    let plan = plan(&indexes, start, end)?;
    check()?;
    write(&indexes, &plan, out, options, check)
}

// ---------------------------------------------------------------------------------------------
// Pass 1: indexing

/// What identifies the bytes of a blob file: if any of it changes between the passes, the
/// offsets recorded in pass 1 cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Everything pass 1 learnt about one layer: its headers, not its bodies.
struct LayerIndex {
    path: PathBuf,
    /// Where pass 2 reads the bodies.
    store: Store,
    /// Every entry but whiteouts and opaque markers, in archive order.
    entries: Vec<Entry>,
    /// Per entry, the offset of its body in the store (0 for entries without a body).
    data_at: Vec<u64>,
    /// Per entry, the index of the entry that carries its content: itself, or for a hardlink
    /// the entry its target named when the link was read (never itself a hardlink).
    body: Vec<u32>,
    /// Per entry: some hardlink of this layer resolves to it.
    linked: Vec<bool>,
    /// Path -> the last entry for it (the one an extraction leaves).
    last: HashMap<Vec<u8>, u32>,
    /// Paths deleted by `.wh.` entries.
    whiteouts: Vec<Vec<u8>>,
    /// Directories made opaque (the root is the empty path).
    opaques: Vec<Vec<u8>>,
    /// Directories that entries of this layer lie in but that have no entry of their own.
    implied: Vec<Vec<u8>>,
}

/// Where the bodies of a layer's regular files are read in pass 2.
enum Store {
    /// The blob is a plain tar: bodies are read where they are, if the file is still the one
    /// that was indexed.
    Blob(Stamp),
    /// The blob is compressed: its bodies were decoded into this unnamed temp file.
    Spool(File),
}

/// Indexes every layer, up to `threads` at a time (every core when `None`); the first failure
/// in layer order wins, and `check` runs on this thread while the workers read. Spool files go
/// to `spool_dir`.
fn index_all(
    paths: &[PathBuf],
    spool_dir: &Path,
    threads: Option<usize>,
    check: &dyn Fn() -> Result<()>,
) -> Result<Vec<LayerIndex>> {
    let workers = threads.unwrap_or_else(|| {
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    parallel::map_stoppable(paths.len(), workers, check, |i, stop| {
        index_layer(&paths[i], spool_dir, stop)
    })
}

fn stamp_path(path: &Path) -> Result<Stamp> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot stat", e))?;
    Ok(Stamp::of(&meta))
}

/// A name for messages: as text when it is UTF-8, else with the odd bytes escaped.
fn show(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) => s.to_owned(),
        Err(_) => name.escape_ascii().to_string(),
    }
}

fn unsupported(layer: &Path, entry: &[u8], detail: &str) -> Error {
    Error::Unsupported {
        path: layer.to_path_buf(),
        detail: format!("entry '{}': {detail}", show(entry)),
    }
}

/// Rejects names a merged filesystem cannot hold: `..` components (they would climb out of the
/// root), anything below a `.wh.` name, and non-regular entries named like whiteouts (whiteouts
/// are regular files, image-spec layer.md).
fn check_name(layer: &Path, entry: &Entry) -> Result<()> {
    let mut parts = entry.path.split(|&b| b == b'/').peekable();
    while let Some(part) = parts.next() {
        if part == b".." {
            return Err(unsupported(
                layer,
                &entry.path,
                "'..' components are not allowed in a layer",
            ));
        }
        let last = parts.peek().is_none();
        if part.starts_with(WHITEOUT_PREFIX) {
            if !last {
                return Err(unsupported(
                    layer,
                    &entry.path,
                    "a name below a '.wh.' name cannot exist in a filesystem",
                ));
            }
            if !matches!(entry.kind, EntryKind::Whiteout | EntryKind::Opaque) {
                return Err(unsupported(
                    layer,
                    &entry.path,
                    &format!(
                        "a {} named like a whiteout (whiteouts are regular files)",
                        entry.kind.as_str()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn spool_error<'p>(dir: &'p Path, what: &'static str) -> impl FnOnce(io::Error) -> Error + 'p {
    move |e| Error::Io {
        path: dir.to_path_buf(),
        what,
        source: e,
    }
}

fn index_layer(path: &Path, spool_dir: &Path, stop: &AtomicBool) -> Result<LayerIndex> {
    let before = stamp_path(path)?;
    let mut iter = EntryIter::open(path)?;
    let mut spool = match iter.compression() {
        Compression::None => None,
        _ => {
            let file = tempfile::tempfile_in(spool_dir)
                .map_err(spool_error(spool_dir, "cannot create a spool file in"))?;
            Some(BufWriter::with_capacity(SPOOL_BUFFER, file))
        }
    };
    let mut spooled = 0u64;
    let mut buf = vec![0u8; if spool.is_some() { BUFFER_SIZE } else { 0 }];
    let mut index = LayerIndex {
        path: path.to_path_buf(),
        store: Store::Blob(before),
        entries: Vec::new(),
        data_at: Vec::new(),
        body: Vec::new(),
        linked: Vec::new(),
        last: HashMap::new(),
        whiteouts: Vec::new(),
        opaques: Vec::new(),
        implied: Vec::new(),
    };
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut seen = 0usize;
    while let Some(entry) = iter.next() {
        let entry = entry?;
        seen += 1;
        if seen % 1024 == 0 && stop.load(AtomicOrdering::Relaxed) {
            return Err(Error::Interrupted);
        }
        check_name(path, &entry)?;
        // Every directory this entry lies in belongs to the layer.
        let mut parent = split_parent(&entry.path).0;
        while !parent.is_empty() && !dirs.contains(parent) {
            dirs.insert(parent.to_vec());
            parent = split_parent(parent).0;
        }
        let (dir, base) = split_parent(&entry.path);
        match entry.kind {
            EntryKind::Opaque => index.opaques.push(dir.to_vec()),
            EntryKind::Whiteout => {
                let mut target = dir.to_vec();
                if !target.is_empty() {
                    target.push(b'/');
                }
                target.extend_from_slice(&base[WHITEOUT_PREFIX.len()..]);
                index.whiteouts.push(target);
            }
            _ => {
                let idx = u32::try_from(index.entries.len()).map_err(|_| {
                    unsupported(path, &entry.path, "more than 2^32 entries in one layer")
                })?;
                let body = if entry.kind == EntryKind::Hardlink {
                    let target = normalize_path(entry.linkname.as_deref().unwrap_or_default());
                    let Some(&t) = index.last.get(&target) else {
                        return Err(unsupported(
                            path,
                            &entry.path,
                            &format!(
                                "hardlink to '{}', which is not an earlier entry of this layer",
                                show(&target)
                            ),
                        ));
                    };
                    let b = index.body[t as usize];
                    if index.entries[b as usize].kind == EntryKind::Dir {
                        return Err(unsupported(
                            path,
                            &entry.path,
                            &format!("hardlink to the directory '{}'", show(&target)),
                        ));
                    }
                    index.linked[b as usize] = true;
                    b
                } else {
                    idx
                };
                let data_at = match spool.as_mut() {
                    Some(spool) if entry.kind == EntryKind::File && entry.size > 0 => {
                        let at = spooled;
                        loop {
                            let n = iter.read_data(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            spool
                                .write_all(&buf[..n])
                                .map_err(spool_error(spool_dir, "cannot write a spool file in"))?;
                            spooled += n as u64;
                        }
                        at
                    }
                    _ => entry.offset,
                };
                index.last.insert(entry.path.clone(), idx);
                index.entries.push(entry);
                index.data_at.push(data_at);
                index.body.push(body);
                index.linked.push(false);
            }
        }
    }
    // An entry below a non-directory of its own layer (`link -> /etc`, then `link/passwd`)
    // would be written through it.
    for dir in &dirs {
        if let Some(&idx) = index.last.get(dir) {
            let e = &index.entries[idx as usize];
            if e.kind != EntryKind::Dir {
                return Err(unsupported(
                    path,
                    dir,
                    &format!(
                        "a {} of this layer that other entries of the layer lie below",
                        e.kind.as_str()
                    ),
                ));
            }
        }
    }
    index.implied = dirs
        .into_iter()
        .filter(|d| !index.last.contains_key(d))
        .collect();
    // The whole blob was read: had it changed meanwhile, the offsets could be another file's.
    if stamp_path(path)? != before {
        return Err(changed(path, "it changed while it was being indexed"));
    }
    if let Some(spool) = spool {
        let file = spool
            .into_inner()
            .map_err(|e| spool_error(spool_dir, "cannot write a spool file in")(e.into_error()))?;
        index.store = Store::Spool(file);
    }
    Ok(index)
}

fn changed(path: &Path, detail: &str) -> Error {
    Error::Changed {
        path: path.to_path_buf(),
        detail: detail.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The merge

/// Who provides a path of the merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Winner {
    /// An entry: `layer` indexes the stack, `idx` that layer's entries.
    Entry { layer: u32, idx: u32, dir: bool },
    /// A directory implied by entries below it in `layer` (the highest such layer) and by no
    /// entry of its own so far; a lower directory entry lends it its attributes.
    Implied { layer: u32 },
}

impl Winner {
    fn is_dir(self) -> bool {
        match self {
            Winner::Entry { dir, .. } => dir,
            Winner::Implied { .. } => true,
        }
    }
}

/// The merged view being built top-down, and what it hides from the layers not yet applied.
#[derive(Default)]
struct View<'a> {
    winners: HashMap<&'a [u8], Winner>,
    /// These paths and everything below them are hidden from lower layers.
    deleted: HashSet<&'a [u8]>,
    /// Everything strictly below these paths is hidden from lower layers (opaque directories,
    /// non-directories; the root is the empty path).
    below: HashSet<&'a [u8]>,
}

/// The ancestors of a path, the root (empty path) first; the root has none.
fn strict_ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    (!path.is_empty()).then_some(&path[..0]).into_iter().chain(
        path.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(move |(i, _)| &path[..i]),
    )
}

impl<'a> View<'a> {
    fn hidden(&self, path: &[u8]) -> bool {
        if self.deleted.is_empty() && self.below.is_empty() {
            return false;
        }
        self.deleted.contains(path)
            || strict_ancestors(path).any(|a| self.deleted.contains(a) || self.below.contains(a))
    }

    /// Applies layer `k`, which lies below every layer applied so far.
    ///
    /// A directory that an upper layer only implies, over a visible non-directory of this
    /// layer, is an error: extracting the upper layer would write through a symlink (or into a
    /// file), which GNU tar and umoci refuse or resolve differently (CONFORMANCE 23).
    fn apply(&mut self, indexes: &'a [LayerIndex], k: usize) -> Result<()> {
        let layer = &indexes[k];
        let k = k as u32;
        for (path, &idx) in &layer.last {
            if self.hidden(path) {
                continue;
            }
            let entry = &layer.entries[idx as usize];
            let dir = entry.kind == EntryKind::Dir;
            let found = Winner::Entry { layer: k, idx, dir };
            match self.winners.get_mut(path.as_slice()) {
                None => {
                    self.winners.insert(path, found);
                }
                Some(w @ Winner::Implied { .. }) if dir => *w = found,
                Some(Winner::Implied { layer: upper }) => {
                    let upper = &indexes[*upper as usize];
                    return Err(Error::Unsupported {
                        path: upper.path.clone(),
                        detail: format!(
                            "entries below '{p}' need it to be a directory, but this layer has \
                             no entry for it and a lower layer ({}) has it as a {}: they would \
                             be written through it",
                            layer.path.display(),
                            entry.kind.as_str(),
                            p = show(path),
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        for path in &layer.implied {
            if !self.hidden(path) {
                self.winners
                    .entry(path)
                    .or_insert(Winner::Implied { layer: k });
            }
        }
        // Only now: a layer's whiteouts, opaque markers and non-directories hide lower layers,
        // never the layer's own entries.
        self.deleted
            .extend(layer.whiteouts.iter().map(Vec::as_slice));
        self.below.extend(layer.opaques.iter().map(Vec::as_slice));
        self.below.extend(
            layer
                .last
                .iter()
                .filter(|(_, &idx)| layer.entries[idx as usize].kind != EntryKind::Dir)
                .map(|(p, _)| p.as_slice()),
        );
        Ok(())
    }
}

/// One entry of the output, before it is written.
#[derive(Debug)]
enum Source {
    /// The winner `idx` of layer `layer`.
    Entry { layer: u32, idx: u32 },
    /// A directory no layer describes.
    Implied,
    /// A `.wh.` entry (squash only).
    Whiteout,
    /// A `.wh..wh..opq` entry (squash only).
    Opaque,
}

struct Out<'a> {
    path: Cow<'a, [u8]>,
    source: Source,
}

/// Sorting rank of a name within its directory: the opaque marker, then whiteouts, then the
/// rest (image-spec layer.md: whiteouts SHOULD come before their siblings).
fn rank(name: &[u8]) -> u8 {
    if name == OPAQUE_MARKER {
        0
    } else if name.starts_with(WHITEOUT_PREFIX) {
        1
    } else {
        2
    }
}

/// Canonical archive order: depth first, each directory before its contents, names within a
/// directory by [`rank`], then by bytes (GNU `tar --sort=name`, `Layer.from_dir`).
fn canonical(a: &[u8], b: &[u8]) -> Ordering {
    let mut x = a.split(|&c| c == b'/');
    let mut y = b.split(|&c| c == b'/');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(m), Some(n)) => {
                let o = rank(m).cmp(&rank(n)).then_with(|| m.cmp(n));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + name.len() + 1);
    p.extend_from_slice(dir);
    if !dir.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Decides the output of merging `indexes[start..end]` over `indexes[..start]`, in canonical
/// order (see [`squash`]; with `start == 0` this is [`flatten`]).
fn plan(indexes: &[LayerIndex], start: usize, end: usize) -> Result<Vec<Out<'_>>> {
    let mut view = View::default();
    for k in (start..end).rev() {
        view.apply(indexes, k)?;
    }
    let merged: Vec<&[u8]> = view.winners.keys().copied().collect();
    let mut hiders: Vec<Out<'_>> = Vec::new();
    if start > 0 {
        let deleted: Vec<&[u8]> = view.deleted.iter().copied().collect();
        let below: Vec<&[u8]> = view.below.iter().copied().collect();
        let range = std::mem::take(&mut view.winners);
        // What the kept layers show on their own.
        let mut kept = View::default();
        for k in (0..start).rev() {
            kept.apply(indexes, k)?;
        }
        let kept_parents: HashSet<&[u8]> = kept.winners.keys().map(|p| split_parent(p).0).collect();
        hiders = minimal_hiders(&range, &kept.winners, &kept_parents, &deleted, &below);
        // Implied directories of the range take the attributes the whole stack gives them.
        view.winners = range;
        for k in (0..start).rev() {
            view.apply(indexes, k)?;
        }
    }
    let mut outs: Vec<Out<'_>> = merged
        .into_iter()
        .map(|path| {
            let source = match view.winners[path] {
                Winner::Entry { layer, idx, .. } => Source::Entry { layer, idx },
                Winner::Implied { .. } => Source::Implied,
            };
            Out {
                path: Cow::Borrowed(path),
                source,
            }
        })
        .chain(hiders)
        .collect();
    outs.sort_unstable_by(|a, b| canonical(&a.path, &b.path));
    Ok(outs)
}

/// The whiteouts and opaque markers a squashed range needs over the kept layers: for each path
/// the range hides from below (`deleted`: it and its contents, `below`: its contents), a
/// whiteout if the range does not have the path itself and the kept layers do, an opaque marker
/// if the range has it as a directory and the kept layers have contents in it; nothing if the
/// range has a non-directory there (which hides everything below by itself), and nothing below
/// a path that is already hidden that way.
fn minimal_hiders<'a>(
    range: &HashMap<&'a [u8], Winner>,
    kept: &HashMap<&'a [u8], Winner>,
    kept_parents: &HashSet<&[u8]>,
    deleted: &[&'a [u8]],
    below: &[&'a [u8]],
) -> Vec<Out<'a>> {
    // path -> true for a whiteout of the path, false for an opaque marker in it.
    let mut wanted: HashMap<&'a [u8], bool> = HashMap::new();
    for (&path, whole) in deleted
        .iter()
        .map(|p| (p, true))
        .chain(below.iter().map(|p| (p, false)))
    {
        let is_dir = if path.is_empty() {
            Some(true)
        } else {
            range.get(path).map(|w| w.is_dir())
        };
        match is_dir {
            Some(false) => {}
            Some(true) => {
                if kept_parents.contains(path) {
                    wanted.insert(path, false);
                }
            }
            // Not in the range's view: only a deleted path needs (and gets) a whiteout; a
            // `below` path the range lacks is hidden by something above it (see apply).
            None => {
                if whole && kept.contains_key(path) {
                    wanted.entry(path).or_insert(true);
                }
            }
        }
    }
    let covered = |path: &[u8]| {
        strict_ancestors(path).any(|a| {
            wanted.contains_key(a) || (!a.is_empty() && range.get(a).is_some_and(|w| !w.is_dir()))
        })
    };
    let mut hiders: Vec<Out<'a>> = wanted
        .iter()
        .filter(|(path, _)| !covered(path))
        .map(|(&path, &whiteout)| {
            if whiteout {
                let (dir, base) = split_parent(path);
                let mut name = WHITEOUT_PREFIX.to_vec();
                name.extend_from_slice(base);
                Out {
                    path: Cow::Owned(join(dir, &name)),
                    source: Source::Whiteout,
                }
            } else {
                Out {
                    path: Cow::Owned(join(path, OPAQUE_MARKER)),
                    source: Source::Opaque,
                }
            }
        })
        .collect();
    hiders.sort_unstable_by(|a, b| canonical(&a.path, &b.path));
    hiders
}

// ---------------------------------------------------------------------------------------------
// Pass 2: writing

/// How one output entry is written.
enum Emit {
    /// The entry `body` of `layer` (its kind, metadata and content) under the output path.
    Body {
        layer: u32,
        body: u32,
    },
    /// A hardlink to the output entry at this position.
    Link {
        layer: u32,
        body: u32,
        leader: usize,
    },
    Implied,
    Whiteout,
    Opaque,
}

fn emits(indexes: &[LayerIndex], outs: &[Out<'_>]) -> Vec<Emit> {
    let mut leaders: HashMap<(u32, u32), usize> = HashMap::new();
    outs.iter()
        .enumerate()
        .map(|(i, out)| match out.source {
            Source::Entry { layer, idx } => {
                let index = &indexes[layer as usize];
                let body = index.body[idx as usize];
                // Only regular files are linked in the output, as from_dir links them.
                if index.linked[body as usize]
                    && index.entries[body as usize].kind == EntryKind::File
                {
                    match leaders.get(&(layer, body)) {
                        Some(&leader) => Emit::Link {
                            layer,
                            body,
                            leader,
                        },
                        None => {
                            leaders.insert((layer, body), i);
                            Emit::Body { layer, body }
                        }
                    }
                } else {
                    Emit::Body { layer, body }
                }
            }
            Source::Implied => Emit::Implied,
            Source::Whiteout => Emit::Whiteout,
            Source::Opaque => Emit::Opaque,
        })
        .collect()
}

fn write(
    indexes: &[LayerIndex],
    outs: &[Out<'_>],
    out: &Path,
    options: &FlattenOptions,
    check: &dyn Fn() -> Result<()>,
) -> Result<LayerDescriptor> {
    let emits = emits(indexes, outs);
    let mut blobs: Vec<Option<File>> = indexes.iter().map(|_| None).collect();

    let clamp = |mtime: i64| match options.source_date_epoch {
        Some(sde) => mtime.min(sde),
        None => mtime,
    };
    let mut writer = LayerWriter::create(out, options.compression, options.level, options.threads)?;
    let mut name = Vec::new();
    for (i, (o, emit)) in outs.iter().zip(&emits).enumerate() {
        if i % CHECK_EVERY == 0 {
            check()?;
        }
        name.clear();
        name.extend_from_slice(&o.path);
        let marker = HeaderSpec {
            name: &name,
            typeflag: header::REGTYPE,
            ..HeaderSpec::default()
        };
        match *emit {
            Emit::Whiteout | Emit::Opaque => writer.append_empty(&marker)?,
            Emit::Implied => {
                name.push(b'/');
                writer.append_empty(&HeaderSpec {
                    name: &name,
                    typeflag: header::DIRTYPE,
                    mode: IMPLIED_DIR_MODE,
                    mtime: options.source_date_epoch.unwrap_or(0),
                    ..HeaderSpec::default()
                })?;
            }
            Emit::Link {
                layer,
                body,
                leader,
            } => {
                let e = &indexes[layer as usize].entries[body as usize];
                let spec = HeaderSpec {
                    typeflag: header::LNKTYPE,
                    size: 0,
                    linkname: &outs[leader].path,
                    ..spec_of(e, &name, clamp(e.mtime))
                };
                writer.append_empty(&spec)?;
            }
            Emit::Body { layer, body } => {
                let e = &indexes[layer as usize].entries[body as usize];
                if e.kind == EntryKind::Dir {
                    name.push(b'/');
                }
                let spec = spec_of(e, &name, clamp(e.mtime));
                if e.kind == EntryKind::File && e.size > 0 {
                    let index = &indexes[layer as usize];
                    let file = body_file(index, &mut blobs[layer as usize])?;
                    let (mut at, size) = (index.data_at[body as usize], e.size);
                    let end = at + size;
                    writer.append(
                        &spec,
                        &mut |buf| {
                            let want = (end - at).min(buf.len() as u64) as usize;
                            loop {
                                match file.read_at(&mut buf[..want], at) {
                                    Ok(n) => {
                                        at += n as u64;
                                        return Ok(n);
                                    }
                                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                    Err(e) => return Err(Error::io(&index.path, "cannot read", e)),
                                }
                            }
                        },
                        &|left| {
                            changed(
                                &index.path,
                                &format!(
                                    "the body of '{}' ends {left} bytes early: the layer \
                                     changed after it was indexed",
                                    show(&e.path)
                                ),
                            )
                        },
                    )?;
                } else {
                    writer.append_empty(&spec)?;
                }
            }
        }
    }
    check()?;
    writer.finish()
}

/// The header of entry `e` under the output name `name`.
fn spec_of<'e>(e: &'e Entry, name: &'e [u8], mtime: i64) -> HeaderSpec<'e> {
    let (typeflag, size) = match e.kind {
        EntryKind::File => (header::REGTYPE, e.size),
        EntryKind::Dir => (header::DIRTYPE, 0),
        EntryKind::Symlink => (header::SYMTYPE, 0),
        EntryKind::Char => (header::CHRTYPE, 0),
        EntryKind::Block => (header::BLKTYPE, 0),
        EntryKind::Fifo => (header::FIFOTYPE, 0),
        // Bodies are never hardlinks, and whiteouts are not indexed as entries.
        EntryKind::Hardlink | EntryKind::Whiteout | EntryKind::Opaque => {
            unreachable!("not a body entry: {:?}", e.kind)
        }
    };
    let devices = matches!(e.kind, EntryKind::Char | EntryKind::Block);
    HeaderSpec {
        name,
        typeflag,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size,
        mtime,
        linkname: if e.kind == EntryKind::Symlink {
            e.linkname.as_deref().unwrap_or_default()
        } else {
            &[]
        },
        uname: e.uname.as_bytes(),
        gname: e.gname.as_bytes(),
        devmajor: if devices { e.devmajor } else { 0 },
        devminor: if devices { e.devminor } else { 0 },
        xattrs: &e.xattrs,
    }
}

/// The file to read the layer's bodies from: its spool, or the blob itself (opened once, and
/// only if it is still the file that was indexed).
fn body_file<'f>(index: &'f LayerIndex, blob: &'f mut Option<File>) -> Result<&'f File> {
    let stamp = match &index.store {
        Store::Spool(file) => return Ok(file),
        Store::Blob(stamp) => stamp,
    };
    if blob.is_none() {
        let path = &index.path;
        let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(path, "cannot stat", e))?;
        if Stamp::of(&meta) != *stamp {
            return Err(changed(path, "it changed after it was indexed"));
        }
        *blob = Some(file);
    }
    Ok(blob.as_ref().expect("opened above"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry of a test layer, written in the order given.
    enum T<'a> {
        /// A regular file (also whiteouts: `d/.wh.x`, `d/.wh..wh..opq`).
        F(&'a str, &'a [u8]),
        D(&'a str, u32),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }
    use T::*;

    fn no_check() -> Result<()> {
        Ok(())
    }

    fn layer(dir: &Path, name: &str, compression: Compression, entries: &[T<'_>]) -> PathBuf {
        let out = dir.join(name);
        let mut w = LayerWriter::create(&out, compression, None, Some(2)).unwrap();
        for t in entries {
            let (name, typeflag, mode, body, link): (String, u8, u32, &[u8], &str) = match t {
                F(p, b) => (p.to_string(), header::REGTYPE, 0o644, b, ""),
                D(p, m) => (format!("{p}/"), header::DIRTYPE, *m, b"", ""),
                Sym(p, l) => (p.to_string(), header::SYMTYPE, 0o777, b"", l),
                Hard(p, l) => (p.to_string(), header::LNKTYPE, 0o644, b"", l),
            };
            let spec = HeaderSpec {
                name: name.as_bytes(),
                typeflag,
                mode,
                size: body.len() as u64,
                mtime: 1_600_000_000,
                linkname: link.as_bytes(),
                ..HeaderSpec::default()
            };
            let mut data: &[u8] = body;
            w.append(
                &spec,
                &mut |buf| {
                    let n = buf.len().min(data.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    data = &data[n..];
                    Ok(n)
                },
                &|_| unreachable!(),
            )
            .unwrap();
        }
        w.finish().unwrap();
        out
    }

    /// The layer as lines: `path/` (dir, with mode), `path = body`, `path -> target` (symlink),
    /// `path => target` (hardlink), in archive order.
    fn listing(path: &Path) -> Vec<String> {
        let mut iter = EntryIter::open(path).unwrap();
        let mut lines = Vec::new();
        while let Some(e) = iter.next() {
            let e = e.unwrap();
            let mut body = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = iter.read_data(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
            }
            let p = String::from_utf8(e.path.clone()).unwrap();
            let link = || String::from_utf8(e.linkname.clone().unwrap()).unwrap();
            lines.push(match e.kind {
                EntryKind::Dir => format!("{p}/ {:o}", e.mode),
                EntryKind::File | EntryKind::Whiteout | EntryKind::Opaque => {
                    format!("{p} = {}", String::from_utf8(body).unwrap())
                }
                EntryKind::Symlink => format!("{p} -> {}", link()),
                EntryKind::Hardlink => format!("{p} => {}", link()),
                other => format!("{p} {other:?}"),
            });
        }
        lines
    }

    fn flat(layers: &[PathBuf], out: &Path) -> Vec<String> {
        let options = FlattenOptions {
            compression: Compression::None,
            ..FlattenOptions::default()
        };
        flatten(layers, out, &options, &no_check).unwrap();
        listing(out)
    }

    #[test]
    fn whiteouts_and_opaque_markers_hide_lower_layers_only_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = layer(
            d,
            "base",
            Compression::None,
            &[
                D("d", 0o755),
                F("d/old", b"old"),
                F("x", b"lower x"),
                F("y", b"lower y"),
                D("o", 0o700),
                F("o/old", b"old"),
            ],
        );
        let upper = layer(
            d,
            "upper",
            Compression::None,
            &[
                F(".wh.x", b""),
                F("x", b"upper x"),
                F("y", b"upper y"),
                F(".wh.y", b""),
                D("d", 0o755),
                F("d/new", b"new"),
                F("d/.wh..wh..opq", b""),
                F("o/.wh..wh..opq", b""),
                F("o/new", b"new"),
            ],
        );
        assert_eq!(
            flat(&[base, upper], &d.join("out")),
            [
                "d/ 755",
                "d/new = new",
                "o/ 700",
                "o/new = new",
                "x = upper x",
                "y = upper y"
            ]
        );
    }

    #[test]
    fn a_hardlink_keeps_the_content_it_was_made_from() {
        // go-containerregistry #2002: ln t2 t1 && ln t2 t3; echo 456 > t1
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let lower = layer(
            d,
            "lower",
            Compression::Gzip,
            &[F("t2", b"123"), Hard("t1", "t2"), Hard("t3", "t2")],
        );
        let upper = layer(d, "upper", Compression::None, &[F("t1", b"456")]);
        assert_eq!(
            flat(&[lower.clone(), upper], &d.join("o1")),
            ["t1 = 456", "t2 = 123", "t3 => t2"]
        );
        // The name the others were linked to is deleted: the survivors keep the body.
        let upper = layer(d, "upper2", Compression::None, &[F(".wh.t2", b"")]);
        assert_eq!(
            flat(&[lower.clone(), upper], &d.join("o2")),
            ["t1 = 123", "t3 => t1"]
        );
        // All names deleted at once: nothing is left.
        let upper = layer(
            d,
            "upper3",
            Compression::None,
            &[F(".wh.t1", b""), F(".wh.t2", b""), F(".wh.t3", b"")],
        );
        assert_eq!(
            flat(&[lower.clone(), upper], &d.join("o3")),
            [] as [&str; 0]
        );
        // A name that was a file below becomes a link above: one entry for it.
        let upper = layer(
            d,
            "upper4",
            Compression::None,
            &[F("u", b"new"), Hard("t2", "u")],
        );
        assert_eq!(
            flat(&[lower, upper], &d.join("o4")),
            ["t1 = 123", "t2 = new", "t3 => t1", "u => t2"]
        );
    }

    #[test]
    fn implied_directories_borrow_lower_attributes_or_get_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let l0 = layer(
            d,
            "l0",
            Compression::None,
            &[D("keep", 0o700), F("keep/a", b"a"), F("file", b"f")],
        );
        // keep/ and new/ only implied by their contents.
        let l1 = layer(
            d,
            "l1",
            Compression::None,
            &[F("keep/b", b"b"), F("new/inner", b"i")],
        );
        assert_eq!(
            flat(&[l0, l1], &d.join("out")),
            [
                "file = f",
                "keep/ 700",
                "keep/a = a",
                "keep/b = b",
                "new/ 755",
                "new/inner = i"
            ]
        );
    }

    #[test]
    fn entries_written_through_a_non_directory_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let options = FlattenOptions::default();
        // A lower symlink or file, and an upper layer that writes below it without replacing it.
        for (i, lower) in [Sym("link", "/etc"), F("link", b"file")]
            .into_iter()
            .enumerate()
        {
            let l0 = layer(d, &format!("l0-{i}"), Compression::None, &[lower]);
            let l1 = layer(
                d,
                &format!("l1-{i}"),
                Compression::Gzip,
                &[F("link/passwd", b"x")],
            );
            let out = d.join(format!("out-{i}"));
            match flatten(&[l0.clone(), l1.clone()], &out, &options, &no_check) {
                Err(Error::Unsupported { path, detail }) => {
                    assert_eq!(path, l1, "{detail}");
                    assert!(detail.contains("'link'"), "{detail}");
                }
                other => panic!("{other:?}"),
            }
            assert!(!out.exists());
            // Replacing it explicitly, or deleting it first, is fine.
            let fix = layer(
                d,
                &format!("fix-{i}"),
                Compression::None,
                &[D("link", 0o755), F("link/passwd", b"x")],
            );
            assert_eq!(
                flat(&[l0.clone(), fix], &out),
                ["link/ 755", "link/passwd = x"]
            );
            let del = layer(
                d,
                &format!("del-{i}"),
                Compression::None,
                &[F(".wh.link", b""), F("link/passwd", b"x")],
            );
            assert_eq!(flat(&[l0, del], &out), ["link/ 755", "link/passwd = x"]);
        }
        // The same within one layer, in either order.
        for (i, entries) in [
            [Sym("link", "/etc"), F("link/passwd", b"x")],
            [F("link/passwd", b"x"), Sym("link", "/etc")],
        ]
        .into_iter()
        .enumerate()
        {
            let l0 = layer(d, &format!("same-{i}"), Compression::None, &entries);
            match flatten(std::slice::from_ref(&l0), &d.join("o"), &options, &no_check) {
                Err(Error::Unsupported { path, detail }) => {
                    assert_eq!(path, l0);
                    assert!(detail.contains("'link'"), "{detail}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn type_changes_across_layers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let l0 = layer(
            d,
            "l0",
            Compression::None,
            &[
                D("a", 0o755),
                F("a/deep", b"x"),
                D("s", 0o755),
                F("s/x", b"x"),
            ],
        );
        // A file replaces dir a; a symlink replaces dir s.
        let l1 = layer(
            d,
            "l1",
            Compression::None,
            &[F("a", b"file"), Sym("s", "/abs")],
        );
        // A directory replaces the file a again; nothing of the first a/ comes back.
        let l2 = layer(
            d,
            "l2",
            Compression::None,
            &[D("a", 0o750), F("a/new", b"n")],
        );
        assert_eq!(
            flat(&[l0.clone(), l1.clone()], &d.join("o1")),
            ["a = file", "s -> /abs"]
        );
        assert_eq!(
            flat(&[l0, l1, l2], &d.join("o2")),
            ["a/ 750", "a/new = n", "s -> /abs"]
        );
    }

    #[test]
    fn output_is_in_canonical_order_whatever_the_input_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let l0 = layer(
            d,
            "l0",
            Compression::Gzip,
            &[
                F("a-b", b"1"),
                F("a/x", b"2"),
                D("a", 0o755),
                F("b", b"3"),
                F("a/y", b"4"),
            ],
        );
        assert_eq!(
            flat(&[l0], &d.join("out")),
            ["a/ 755", "a/x = 2", "a/y = 4", "a-b = 1", "b = 3"]
        );
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn compressed_out_of_order_layers_give_the_bytes_plain_ones_give() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let bodies: Vec<Vec<u8>> = (0..6)
            .map(|i| noise(300_000 + i * 1000, i as u64))
            .collect();
        // Reverse order in the archive: every body is wanted after the ones behind it.
        let entries: Vec<T<'_>> = [
            ("z", 0),
            ("y", 1),
            ("m/b", 2),
            ("m/a", 3),
            ("c", 4),
            ("a", 5),
        ]
        .iter()
        .map(|&(p, i)| F(p, &bodies[i]))
        .collect();
        let over = [F("y", b"upper"), F("m/.wh.b", b"")];
        let mut results = Vec::new();
        for (i, compression) in [Compression::None, Compression::Gzip, Compression::Zstd]
            .into_iter()
            .enumerate()
        {
            let l0 = layer(d, &format!("l0-{i}"), compression, &entries);
            let l1 = layer(d, &format!("l1-{i}"), compression, &over);
            for threads in [1, 3] {
                let out = d.join(format!("out-{i}-{threads}"));
                let options = FlattenOptions {
                    compression: Compression::Gzip,
                    threads: Some(threads),
                    ..FlattenOptions::default()
                };
                let desc = flatten(&[l0.clone(), l1.clone()], &out, &options, &no_check).unwrap();
                results.push((desc, std::fs::read(&out).unwrap()));
            }
        }
        assert!(results.iter().all(|r| r == &results[0]));
        // Spool files are unnamed: only the 6 layers and 6 outputs are left.
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 12);
        let out = d.join("out-1-1");
        let mut iter = EntryIter::open(&out).unwrap();
        let mut seen = Vec::new();
        while let Some(e) = iter.next() {
            let e = e.unwrap();
            let mut body = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = iter.read_data(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
            }
            seen.push((String::from_utf8(e.path).unwrap(), body));
        }
        let expected: Vec<(String, Vec<u8>)> = vec![
            ("a".into(), bodies[5].clone()),
            ("c".into(), bodies[4].clone()),
            ("m".into(), Vec::new()),
            ("m/a".into(), bodies[3].clone()),
            ("y".into(), b"upper".to_vec()),
            ("z".into(), bodies[0].clone()),
        ];
        assert_eq!(seen, expected);
    }

    #[test]
    fn squash_keeps_only_the_whiteouts_the_kept_layers_need() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let kept = layer(
            d,
            "kept",
            Compression::None,
            &[
                D("d", 0o755),
                F("d/x", b"x"),
                F("d/y", b"y"),
                D("o", 0o755),
                F("o/old", b"old"),
                F("gone", b"g"),
            ],
        );
        let r1 = layer(
            d,
            "r1",
            Compression::None,
            &[
                F("d/.wh.x", b""),        // redundant: d is whited out above
                F(".wh.never", b""),      // nothing below has it
                F("o/.wh..wh..opq", b""), // o's kept content must vanish
                F("o/new", b"n"),
                F("tmp", b"t"),
            ],
        );
        let r2 = layer(
            d,
            "r2",
            Compression::None,
            &[F(".wh.d", b""), F(".wh.gone", b""), F(".wh.tmp", b"")],
        );
        let top = layer(d, "top", Compression::None, &[F("top", b"t")]);
        let stack = [kept, r1, r2, top];
        let out = d.join("squashed");
        let options = FlattenOptions {
            compression: Compression::None,
            ..FlattenOptions::default()
        };
        squash(&stack, 1, 3, &out, &options, &no_check).unwrap();
        assert_eq!(
            listing(&out),
            [
                ".wh.d = ",
                ".wh.gone = ",
                "o/ 755",
                "o/.wh..wh..opq = ",
                "o/new = n"
            ]
        );
        // The new stack shows what the old one showed.
        let new_stack = [stack[0].clone(), out, stack[3].clone()];
        assert_eq!(flat(&new_stack, &d.join("f1")), flat(&stack, &d.join("f2")));
        // Squashing from the bottom is flattening.
        squash(&stack, 0, 4, &d.join("s0"), &options, &no_check).unwrap();
        assert_eq!(
            std::fs::read(d.join("s0")).unwrap(),
            std::fs::read(d.join("f2")).unwrap()
        );
        assert!(matches!(
            squash(&stack, 2, 2, &d.join("bad"), &options, &no_check),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            squash(&stack, 1, 5, &d.join("bad"), &options, &no_check),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn squash_makes_a_recreated_directory_opaque() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let kept = layer(
            d,
            "kept",
            Compression::None,
            &[D("d", 0o700), F("d/old", b"o")],
        );
        // rm -rf /d in one layer, mkdir /d; touch /d/new in the next.
        let r1 = layer(d, "r1", Compression::None, &[F(".wh.d", b"")]);
        let r2 = layer(
            d,
            "r2",
            Compression::None,
            &[D("d", 0o755), F("d/new", b"n")],
        );
        let out = d.join("sq");
        let options = FlattenOptions {
            compression: Compression::None,
            ..FlattenOptions::default()
        };
        squash(
            &[kept.clone(), r1.clone(), r2.clone()],
            1,
            3,
            &out,
            &options,
            &no_check,
        )
        .unwrap();
        assert_eq!(listing(&out), ["d/ 755", "d/.wh..wh..opq = ", "d/new = n"]);
        assert_eq!(
            flat(&[kept.clone(), out], &d.join("a")),
            flat(&[kept, r1, r2], &d.join("b"))
        );
    }

    #[test]
    fn squash_keeps_an_opaque_root() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let kept = layer(d, "kept", Compression::None, &[F("a", b"a")]);
        let range = layer(
            d,
            "range",
            Compression::None,
            &[F(".wh..wh..opq", b""), F("b", b"b")],
        );
        let out = d.join("sq");
        let options = FlattenOptions {
            compression: Compression::None,
            ..FlattenOptions::default()
        };
        squash(&[kept.clone(), range], 1, 2, &out, &options, &no_check).unwrap();
        assert_eq!(listing(&out), [".wh..wh..opq = ", "b = b"]);
        assert_eq!(flat(&[kept, out], &d.join("f")), ["b = b"]);
    }

    #[test]
    fn hostile_or_broken_input_is_rejected_naming_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let options = FlattenOptions::default();
        for (i, entries) in [
            vec![F("a/../../etc/passwd", b"x")],
            vec![Hard("a", "missing")],
            vec![F("b", b"x"), Hard("a", "c")],
            vec![D("dir", 0o755), Hard("a", "dir")],
            vec![D(".wh.x", 0o755)],
            vec![F(".wh.x/y", b"")],
        ]
        .into_iter()
        .enumerate()
        {
            let bad = layer(d, &format!("bad{i}"), Compression::Gzip, &entries);
            let good = layer(d, &format!("good{i}"), Compression::None, &[F("ok", b"")]);
            let out = d.join(format!("out{i}"));
            match flatten(&[good, bad.clone()], &out, &options, &no_check) {
                Err(Error::Unsupported { path, detail }) => {
                    assert_eq!(path, bad, "{detail}");
                }
                other => panic!("case {i}: {other:?}"),
            }
            assert!(!out.exists());
        }
        let missing = d.join("missing");
        assert!(matches!(
            flatten(&[missing], &d.join("o"), &options, &no_check),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn a_failing_check_stops_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let l0 = layer(d, "l0", Compression::Gzip, &[F("a", b"1")]);
        std::fs::create_dir(d.join("out")).unwrap();
        let stop = || -> Result<()> { Err(Error::Interrupted) };
        let err = flatten(&[l0], &d.join("out/x"), &FlattenOptions::default(), &stop).unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err}");
        assert_eq!(std::fs::read_dir(d.join("out")).unwrap().count(), 0);
    }

    #[test]
    fn an_empty_stack_is_an_empty_layer() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("empty");
        assert_eq!(flat(&[], &out), [] as [&str; 0]);
    }

    #[test]
    fn source_date_epoch_clamps_and_dates_implied_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let l0 = layer(d, "l0", Compression::None, &[F("a/b", b"1")]);
        let out = d.join("out");
        let options = FlattenOptions {
            compression: Compression::None,
            source_date_epoch: Some(1_000),
            ..FlattenOptions::default()
        };
        flatten(&[l0], &out, &options, &no_check).unwrap();
        let entries: Vec<Entry> = EntryIter::open(&out).unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e.mtime == 1_000));
        assert_eq!((entries[0].mode, entries[0].uid), (0o755, 0));
    }

    #[test]
    fn canonical_order_ranks_markers_then_whiteouts() {
        let mut names: Vec<&[u8]> = vec![
            b"a-b",
            b"a/x",
            b"a",
            b"a/.wh.z",
            b"a/.wh..wh..opq",
            b"a/-",
            b"b",
            b".wh.c",
        ];
        names.sort_by(|a, b| canonical(a, b));
        assert_eq!(
            names,
            [
                &b".wh.c"[..],
                b"a",
                b"a/.wh..wh..opq",
                b"a/.wh.z",
                b"a/-",
                b"a/x",
                b"a-b",
                b"b"
            ]
        );
    }
}

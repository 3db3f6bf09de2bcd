//! The merged view of a stack of layers, without extracting anything (DESIGN.md §3).
//!
//! For a path P in layers L0..Ln (bottom first), search from the top. In layer Lk, P is
//! *found* if Lk has an entry P; *deleted* if Lk has a whiteout for P or for an ancestor of P;
//! *cut off* (the search stops after Lk) if an ancestor of P is opaque in Lk or is a
//! non-directory entry of Lk. Whiteouts and opaque markers hide only lower layers: the layer's
//! own entries survive them, in any archive order. A directory over a lower directory merges
//! (the highest layer's attributes, both layers' children); anything else replaces.
//!
//! [`MergedView::lookup_at`] is that rule, literally, over the per-layer indexes. The view also
//! builds, once, a merged index by applying the layers bottom-up (as extraction would), so that
//! [`MergedView::lookup`] is one hash probe, [`MergedView::listdir`] a scan of the children and
//! [`MergedView::walk`] a slice in walk order. Tests hold the two in agreement on every path.
//!
//! Decisions where the rule is silent (see also [`crate::index`] for the per-layer ones):
//!
//! * A visible path always has a visible directory for every ancestor. A parent that the
//!   providing layer does not carry is an *implied* directory there: it lets a lower directory
//!   at that path show through (attributes and children), and is only itself visible (mode
//!   0755, 0:0, mtime 0) where nothing lower is a visible directory, as `tar -x` would create
//!   it. The parents of a layer's whiteouts and opaque markers are implied the same way (a
//!   layer holding only `a/.wh.x` shows an `a/`), as flatten writes them.
//! * [`MergedView::read`] follows symbolic links, resolved inside the stack's root (an absolute
//!   target starts from the root, `..` stops at the root), like an `open` in a chroot; lookups
//!   never follow them. A hardlink's body is the body of its target in the same layer.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::collections::{btree_map, BTreeMap};
use std::ffi::OsStr;
use std::hash::BuildHasher;
use std::io::Write;
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::digest;
use crate::entry::{split_parent, Entry, EntryKind};
use crate::error::{Error, Result};
use crate::index::{join, walk_cmp, Cut, LayerIndex};
use crate::tar::reader::normalize_path;

/// Symbolic links followed in one path resolution before giving up (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;
/// Hardlink-to-hardlink hops followed before calling it a loop.
const MAX_HARDLINK_HOPS: usize = 64;
const EMPTY: u32 = u32::MAX;

/// What a layer did to a path, as [`MergedView::history`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// The layer has an entry for the path and nothing was visible there below it (first
    /// appearance, or re-creation after a deletion).
    Added,
    /// The layer has an entry for the path and replaces (or, for a directory over a directory,
    /// updates the attributes of) what was visible below it.
    Modified,
    /// A whiteout of the path or of an ancestor removed what was visible.
    Deleted,
    /// An opaque ancestor, or a non-directory entry at an ancestor, hid what was visible.
    Hidden,
}

impl Change {
    /// The name the Python API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Modified => "modified",
            Change::Deleted => "deleted",
            Change::Hidden => "hidden",
        }
    }
}

/// Where a visible entry comes from: layer index and entry index in that layer.
#[derive(Clone, Copy, Debug)]
struct Loc {
    layer: u32,
    entry: u32,
}

/// A hash table slot: the high bits of the path's hash, its walk position ([`EMPTY`] for a
/// free slot) and where its entry is.
#[derive(Clone, Copy, Debug)]
struct Slot {
    tag: u32,
    visible: u32,
    layer: u32,
    entry: u32,
}

/// A path borrowed from a layer index, ordered for the walk (see [`walk_cmp`]).
#[derive(Clone, Copy, PartialEq, Eq)]
struct WalkKey<'a>(&'a [u8]);

impl Ord for WalkKey<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        walk_cmp(self.0, other.0)
    }
}

impl PartialOrd for WalkKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The merged view of a stack of indexed layers (bottom first). Immutable and `Sync`: share it.
///
/// Memory: besides the layer indexes it shares, 8 bytes per visible path for the walk order,
/// 4 for the subtree ends and 32 to 64 for the hash table (paths are not copied: the table
/// compares against the entries' own paths).
pub struct MergedView {
    layers: Vec<Arc<LayerIndex>>,
    /// Visible entries in walk order.
    visible: Vec<Loc>,
    /// For each visible entry, the index just past its subtree (itself + descendants).
    ends: Vec<u32>,
    /// Open addressing, linear probing, at most half full.
    table: Vec<Slot>,
    mask: usize,
    hasher: RandomState,
}

impl MergedView {
    /// Merges `layers` (bottom first) by applying them bottom-up: whiteouts, then opaque
    /// markers, then the layer's visible entries (parents first). Cost O(entries · log entries).
    pub fn new(layers: Vec<Arc<LayerIndex>>) -> MergedView {
        let visible = merge(&layers);
        let mut view = MergedView {
            layers,
            visible,
            ends: Vec::new(),
            table: Vec::new(),
            mask: 0,
            hasher: RandomState::new(),
        };
        view.ends = view.subtree_ends();
        view.build_table();
        view
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[Arc<LayerIndex>] {
        &self.layers
    }

    /// How many paths are visible.
    pub fn len(&self) -> usize {
        self.visible.len()
    }

    /// Whether nothing is visible.
    pub fn is_empty(&self) -> bool {
        self.visible.is_empty()
    }

    /// The chain_id of the stack (from the diff_ids found while indexing); an error for an
    /// empty stack, which has none.
    pub fn chain_id(&self) -> Result<String> {
        let ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id()).collect();
        digest::chain_id(&ids)
    }

    /// The entry visible at `path` and the layer (bottom = 0) that provides it. Paths are
    /// relative to the root, with or without a leading `/` (see [`normalize`]); the root itself
    /// has no entry. Symbolic links are not followed.
    pub fn lookup(&self, path: &[u8]) -> Option<(usize, &Entry)> {
        let path = normalize(path);
        self.probe(&path).map(|slot| {
            let k = slot.layer as usize;
            (k, self.layers[k].entry(slot.entry))
        })
    }

    /// The walk position of the entry visible at `path` (see [`MergedView::get`]).
    pub fn position(&self, path: &[u8]) -> Option<usize> {
        self.find(&normalize(path))
    }

    /// [`MergedView::position`] of many paths, appended to `out` in order. Faster than one
    /// call per path: the paths are hashed in small batches and the table slots and entries
    /// they need are prefetched, so the memory latency of one lookup overlaps the others'.
    pub fn positions<P: AsRef<[u8]>>(&self, paths: &[P], out: &mut Vec<Option<usize>>) {
        const BATCH: usize = 16;
        out.reserve(paths.len());
        if self.visible.is_empty() {
            out.extend(paths.iter().map(|_| None));
            return;
        }
        let mut norm: Vec<Cow<'_, [u8]>> = Vec::with_capacity(BATCH);
        let mut hashes = [0u64; BATCH];
        for chunk in paths.chunks(BATCH) {
            norm.clear();
            norm.extend(chunk.iter().map(|p| normalize(p.as_ref())));
            for (h, p) in hashes.iter_mut().zip(&norm) {
                *h = self.hasher.hash_one(&**p);
                prefetch(&self.table[*h as usize & self.mask]);
            }
            let hashes = &hashes[..norm.len()];
            // The first slot is nearly always the one: fetch its entry, then its path.
            for &h in hashes {
                let slot = &self.table[h as usize & self.mask];
                if slot.visible != EMPTY && slot.tag == (h >> 32) as u32 {
                    prefetch(self.layers[slot.layer as usize].entry(slot.entry));
                }
            }
            for &h in hashes {
                let slot = &self.table[h as usize & self.mask];
                if slot.visible != EMPTY && slot.tag == (h >> 32) as u32 {
                    let path = &self.layers[slot.layer as usize].entry(slot.entry).path;
                    prefetch(path.as_ptr());
                }
            }
            for (p, &h) in norm.iter().zip(hashes) {
                out.push(self.probe_hashed(p, h).map(|slot| slot.visible as usize));
            }
        }
    }

    /// The visible entry number `i` in walk order, with its layer.
    pub fn get(&self, i: usize) -> Option<(usize, &Entry)> {
        (i < self.visible.len()).then(|| self.at(i))
    }

    /// Every visible entry, depth first, each directory followed by its contents, names sorted
    /// by bytes (GNU `tar --sort=name` order), with the layer that provides it.
    pub fn walk(&self) -> impl ExactSizeIterator<Item = (usize, &Entry)> + '_ {
        (0..self.visible.len()).map(|i| self.at(i))
    }

    /// The names of the visible children of directory `path` (`""` or `"/"` is the root),
    /// sorted by bytes. [`Error::NotFound`] if nothing is visible at `path`,
    /// [`Error::Unsupported`] if it is not a directory.
    pub fn listdir(&self, path: &[u8]) -> Result<Vec<&[u8]>> {
        let path = normalize(path);
        let (mut j, end) = if path.is_empty() {
            (0, self.visible.len())
        } else {
            let v = self.find(&path).ok_or_else(|| not_found(&path))?;
            let kind = self.at(v).1.kind;
            if kind != EntryKind::Dir {
                return Err(Error::Unsupported {
                    path: pathbuf(&path),
                    detail: format!("is a {}, not a directory", describe(kind)),
                });
            }
            (v + 1, self.ends[v] as usize)
        };
        let mut names = Vec::new();
        while j < end {
            names.push(split_parent(&self.at(j).1.path).1);
            j = self.ends[j] as usize;
        }
        Ok(names)
    }

    /// The lookup rule of DESIGN.md §3, applied top-down to the layer indexes, over the
    /// bottom `top` layers only: what was visible at `path` once layers `0..top` were applied.
    /// `lookup_at(p, layers().len())` equals [`MergedView::lookup`]; this one costs
    /// O(layers · depth) hash probes.
    pub fn lookup_at(&self, path: &[u8], top: usize) -> Option<(usize, &Entry)> {
        let path = normalize(path);
        self.resolve(&path, top.min(self.layers.len()))
            .map(|(k, i)| (k, self.layers[k].entry(i)))
    }

    /// The layers that changed `path`, bottom to top: which one added it, modified it,
    /// deleted it (whiteout) or hid it (opaque or non-directory ancestor). Only layers that
    /// touched the path are listed: an entry for it always counts; a whiteout, opaque marker
    /// or replaced ancestor only when something was visible to remove. A layer whose implied
    /// directory lets the lower directory show through changes nothing.
    pub fn history(&self, path: &[u8]) -> Vec<(usize, Change)> {
        let path = normalize(path);
        let mut out = Vec::new();
        let mut current: Option<&Entry> = None;
        for (k, layer) in self.layers.iter().enumerate() {
            if let Some(i) = layer.get(&path) {
                let entry = layer.entry(i);
                let cut = layer.cut(&path);
                let through = layer.is_implied(i)
                    && cut.is_none()
                    && current.is_some_and(|e| e.kind == EntryKind::Dir);
                if !through {
                    let change = match current {
                        Some(_) => Change::Modified,
                        None => Change::Added,
                    };
                    out.push((k, change));
                    current = Some(entry);
                }
            } else if let Some(cut) = layer.cut(&path) {
                if current.take().is_some() {
                    let change = match cut {
                        Cut::Whiteout => Change::Deleted,
                        Cut::Opaque | Cut::NonDir => Change::Hidden,
                    };
                    out.push((k, change));
                }
            }
        }
        out
    }

    /// The body of the regular file at `path`. Symbolic links are followed inside the stack
    /// (see the module docs), hardlinks within the providing layer. Errors:
    /// [`Error::NotFound`] if nothing is visible there; [`Error::Unsupported`] for a directory,
    /// device, FIFO or a symlink loop; [`Error::Corrupt`] for a hardlink whose target the layer
    /// does not have; the blob's read errors. Reads the whole body into memory: for large
    /// files use [`MergedView::read_into`].
    pub fn read(&self, path: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(path, &mut out)?;
        Ok(out)
    }

    /// [`MergedView::read`], streaming the body into `out`; returns its size.
    pub fn read_into(&self, path: &[u8], out: &mut dyn Write) -> Result<u64> {
        let (k, i) = self.open_file(path)?;
        self.layers[k].copy_data(i, out)
    }

    /// The layer and entry whose body `path` reads (see [`MergedView::read`]).
    pub fn open_file(&self, path: &[u8]) -> Result<(usize, u32)> {
        let v = self.follow(path)?;
        let Loc { layer, entry } = self.visible[v];
        let k = layer as usize;
        let index = &self.layers[k];
        let mut i = entry;
        for _ in 0..MAX_HARDLINK_HOPS {
            let e = index.entry(i);
            match e.kind {
                EntryKind::File => return Ok((k, i)),
                EntryKind::Hardlink => {
                    let target = e.linkname.as_deref().unwrap_or_default();
                    i = hardlink_target(index, i, target).ok_or_else(|| {
                        Error::corrupt(
                            index.blob(),
                            e.offset,
                            format!(
                                "hardlink '{}' points to '{}', which is not a regular file of \
                                 the same layer",
                                e.path.escape_ascii(),
                                target.escape_ascii()
                            ),
                        )
                    })?;
                }
                kind => {
                    return Err(Error::Unsupported {
                        path: pathbuf(&normalize(path)),
                        detail: format!("is a {}, not a regular file", describe(kind)),
                    })
                }
            }
        }
        Err(Error::corrupt(
            index.blob(),
            index.entry(entry).offset,
            format!(
                "hardlink '{}' is part of a loop of hardlinks",
                index.entry(entry).path.escape_ascii()
            ),
        ))
    }

    /// Resolves `path` like `open` in a chroot at the stack's root: symlinks in every
    /// component are followed, absolute targets start from the root, `..` stops at the root.
    fn follow(&self, path: &[u8]) -> Result<usize> {
        let requested = normalize(path);
        let not_dir = |at: &[u8]| Error::Unsupported {
            path: pathbuf(&requested),
            detail: format!("'{}' is not a directory", at.escape_ascii()),
        };
        // Components still to resolve, last first.
        let mut pending: Vec<Vec<u8>> = requested
            .split(|&b| b == b'/')
            .rev()
            .map(<[u8]>::to_vec)
            .collect();
        let mut current: Vec<u8> = Vec::new();
        let mut found: Option<usize> = None;
        let mut links = 0;
        while let Some(part) = pending.pop() {
            if part.is_empty() || part == b"." {
                continue;
            }
            if part == b".." {
                current.truncate(split_parent(&current).0.len());
                found = if current.is_empty() {
                    None
                } else {
                    self.find(&current)
                };
                continue;
            }
            let next = join(&current, &part);
            let v = self.find(&next).ok_or_else(|| not_found(&requested))?;
            let entry = self.at(v).1;
            if entry.kind == EntryKind::Symlink {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::Unsupported {
                        path: pathbuf(&requested),
                        detail: "too many levels of symbolic links".into(),
                    });
                }
                let target = entry.linkname.as_deref().unwrap_or_default();
                if target.starts_with(b"/") {
                    current.clear();
                    found = None;
                }
                pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                continue;
            }
            if !pending.is_empty() && entry.kind != EntryKind::Dir {
                // More components follow: it had better be a directory (unless all that
                // follows is `.`/empty, which `a/file/` would not be after normalising).
                if pending.iter().any(|p| !p.is_empty() && p != b".") {
                    return Err(not_dir(&next));
                }
            }
            current = next;
            found = Some(v);
        }
        match found {
            Some(v) => Ok(v),
            None => Err(Error::Unsupported {
                path: pathbuf(&requested),
                detail: "is the root directory, not a regular file".into(),
            }),
        }
    }

    fn at(&self, v: usize) -> (usize, &Entry) {
        let Loc { layer, entry } = self.visible[v];
        (layer as usize, self.layers[layer as usize].entry(entry))
    }

    fn path_of(&self, v: usize) -> &[u8] {
        &self.at(v).1.path
    }

    fn find(&self, path: &[u8]) -> Option<usize> {
        self.probe(path).map(|slot| slot.visible as usize)
    }

    /// The table slot of `path`. A slot carries the entry's location so that a hit costs one
    /// probe and one look at the entry (memory latency, not hashing, bounds a lookup).
    fn probe(&self, path: &[u8]) -> Option<&Slot> {
        if self.visible.is_empty() {
            return None;
        }
        self.probe_hashed(path, self.hasher.hash_one(path))
    }

    fn probe_hashed(&self, path: &[u8], h: u64) -> Option<&Slot> {
        let tag = (h >> 32) as u32;
        let mut i = h as usize & self.mask;
        loop {
            let slot = &self.table[i];
            if slot.visible == EMPTY {
                return None;
            }
            if slot.tag == tag && self.layers[slot.layer as usize].entry(slot.entry).path == path {
                return Some(slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    fn build_table(&mut self) {
        let capacity = (self.visible.len() * 2).next_power_of_two().max(16);
        let empty = Slot {
            tag: 0,
            visible: EMPTY,
            layer: 0,
            entry: 0,
        };
        let mut table = vec![empty; capacity];
        let mask = capacity - 1;
        for v in 0..self.visible.len() {
            let h = self.hasher.hash_one(self.path_of(v));
            let mut i = h as usize & mask;
            while table[i].visible != EMPTY {
                i = (i + 1) & mask;
            }
            let Loc { layer, entry } = self.visible[v];
            table[i] = Slot {
                tag: (h >> 32) as u32,
                visible: v as u32,
                layer,
                entry,
            };
        }
        self.table = table;
        self.mask = mask;
    }

    /// In walk order a directory's subtree is the run of paths below it that follows it.
    fn subtree_ends(&self) -> Vec<u32> {
        let n = self.visible.len();
        let mut ends = vec![0u32; n];
        let mut open: Vec<usize> = Vec::new();
        for v in 0..n {
            let path = self.path_of(v);
            while let Some(&top) = open.last() {
                let dir = self.path_of(top);
                if path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/' {
                    break;
                }
                ends[top] = v as u32;
                open.pop();
            }
            ends[v] = v as u32 + 1;
            if self.at(v).1.kind == EntryKind::Dir {
                open.push(v);
            }
        }
        for top in open {
            ends[top] = n as u32;
        }
        ends
    }

    /// The top-down rule over layers `0..top`; `path` is normalised.
    fn resolve(&self, path: &[u8], top: usize) -> Option<(usize, u32)> {
        for k in (0..top).rev() {
            let layer = &self.layers[k];
            if let Some(i) = layer.get(path) {
                if layer.is_implied(i) && layer.cut(path).is_none() {
                    // An implied directory lets a lower directory show through.
                    if let Some((j, e)) = self.resolve(path, k) {
                        if self.layers[j].entry(e).kind == EntryKind::Dir {
                            return Some((j, e));
                        }
                    }
                }
                return Some((k, i));
            }
            if layer.cut(path).is_some() {
                return None;
            }
        }
        None
    }
}

impl std::fmt::Debug for MergedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergedView")
            .field(
                "layers",
                &self.layers.iter().map(|l| l.blob()).collect::<Vec<_>>(),
            )
            .field("visible", &self.visible.len())
            .finish()
    }
}

/// A path as the view takes it: relative, without `./`, `//`, `.` components or a trailing
/// `/` (a leading `/` is accepted and removed, as for an absolute path inside the stack).
/// Borrows when the path is already clean, which is the common case.
pub fn normalize(path: &[u8]) -> Cow<'_, [u8]> {
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    let rest = &path[start..];
    let clean = rest.is_empty()
        || (rest[rest.len() - 1] != b'/'
            && rest
                .split(|&b| b == b'/')
                .all(|p| !p.is_empty() && p != b"."));
    if clean {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(normalize_path(rest))
    }
}

/// The visible entries of the stack in walk order, by applying the layers bottom-up.
fn merge(layers: &[Arc<LayerIndex>]) -> Vec<Loc> {
    let Some(bottom) = layers.first() else {
        return Vec::new();
    };
    // The bottom layer, usually the biggest, is the state as it is: build the tree in bulk.
    let mut state: BTreeMap<WalkKey<'_>, Loc> = bottom
        .visible()
        .iter()
        .map(|&i| (WalkKey(&bottom.entry(i).path), Loc { layer: 0, entry: i }))
        .collect();
    for (k, layer) in layers.iter().enumerate().skip(1) {
        for target in layer.whiteouts() {
            remove_below(&mut state, target, true);
        }
        for dir in layer.opaque_dirs() {
            remove_below(&mut state, dir, false);
        }
        // Parents first: a directory that replaces a lower non-directory must not remove
        // children this layer already put below it.
        for &i in layer.visible() {
            let entry = layer.entry(i);
            let here = Loc {
                layer: k as u32,
                entry: i,
            };
            match state.entry(WalkKey(&entry.path)) {
                btree_map::Entry::Vacant(v) => {
                    v.insert(here);
                }
                btree_map::Entry::Occupied(mut o) => {
                    let lower = *o.get();
                    let lower_kind = layers[lower.layer as usize].entry(lower.entry).kind;
                    if lower_kind == EntryKind::Dir && entry.kind == EntryKind::Dir {
                        if !layer.is_implied(i) {
                            o.insert(here);
                        }
                    } else {
                        o.insert(here);
                        remove_below(&mut state, &entry.path, false);
                    }
                }
            }
        }
    }
    state.into_values().collect()
}

/// Removes everything below `path` from `state` (and `path` itself if `inclusive`). In walk
/// order the descendants of a path are exactly the keys that follow it and start with `path/`.
fn remove_below<'a>(state: &mut BTreeMap<WalkKey<'a>, Loc>, path: &'a [u8], inclusive: bool) {
    if path.is_empty() {
        state.clear();
        return;
    }
    let doomed: Vec<WalkKey<'a>> = state
        .range((Bound::Excluded(WalkKey(path)), Bound::Unbounded))
        .map(|(k, _)| *k)
        .take_while(|k| k.0.len() > path.len() && k.0.starts_with(path) && k.0[path.len()] == b'/')
        .collect();
    for k in doomed {
        state.remove(&k);
    }
    if inclusive {
        state.remove(&WalkKey(path));
    }
}

/// The entry a hardlink (entry `link` of `index`) gets its body from: the last entry at
/// `target` before the link in the archive (as extraction would have found it), else the last
/// one at all; followed further if that is a hardlink too (by the caller).
fn hardlink_target(index: &LayerIndex, link: u32, target: &[u8]) -> Option<u32> {
    let last = index.last_entry(target)?;
    let found = if last < link {
        last
    } else {
        (0..link)
            .rev()
            .find(|&j| {
                let e = index.entry(j);
                e.path == target && !matches!(e.kind, EntryKind::Whiteout | EntryKind::Opaque)
            })
            .unwrap_or(last)
    };
    matches!(
        index.entry(found).kind,
        EntryKind::File | EntryKind::Hardlink
    )
    .then_some(found)
}

/// Asks the CPU to start loading the cache line at `p` (a no-op on other architectures).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults, whatever the address, and has no
    // effect but on timing. SSE, which provides it, is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A kind as messages name it.
fn describe(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "regular file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symbolic link",
        EntryKind::Hardlink => "hardlink",
        EntryKind::Char => "character device",
        EntryKind::Block => "block device",
        EntryKind::Fifo => "FIFO",
        EntryKind::Whiteout => "whiteout",
        EntryKind::Opaque => "opaque marker",
    }
}

fn pathbuf(path: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(path))
}

fn not_found(path: &[u8]) -> Error {
    Error::NotFound {
        path: pathbuf(path),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::compress::Compression;
    use crate::index::testutil::*;

    fn stack(dir: &Path, layers: &[Vec<Spec>]) -> MergedView {
        let indexes = layers
            .iter()
            .enumerate()
            .map(|(k, specs)| {
                let path = blob(dir, &format!("layer{k}"), specs, Compression::None);
                Arc::new(LayerIndex::build(&path).unwrap())
            })
            .collect();
        MergedView::new(indexes)
    }

    fn walk(view: &MergedView) -> Vec<String> {
        view.walk()
            .map(|(_, e)| String::from_utf8(e.path.clone()).unwrap())
            .collect()
    }

    fn names(view: &MergedView, path: &str) -> Vec<String> {
        view.listdir(path.as_bytes())
            .unwrap()
            .into_iter()
            .map(|n| String::from_utf8(n.to_vec()).unwrap())
            .collect()
    }

    fn text(view: &MergedView, path: &str) -> String {
        String::from_utf8(view.read(path.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn whiteouts_hide_lower_layers_only_in_either_order() {
        let tmp = tempfile::tempdir().unwrap();
        let base = vec![file("x", b"lower"), file("y", b"lower y")];
        let view = stack(
            tmp.path(),
            &[
                base.clone(),
                vec![file(".wh.x", b""), file("x", b"upper"), file(".wh.y", b"")],
            ],
        );
        assert_eq!(walk(&view), ["x"]);
        assert_eq!(text(&view, "x"), "upper");
        let view = stack(
            tmp.path(),
            &[base, vec![file("x", b"upper"), file(".wh.x", b"")]],
        );
        assert_eq!(walk(&view), ["x", "y"]);
        assert_eq!(view.lookup(b"/x").unwrap().0, 1);
        assert_eq!(
            view.history(b"x"),
            [(0, Change::Added), (1, Change::Modified)]
        );
        assert_eq!(view.history(b"gone"), []);
    }

    #[test]
    fn opaque_directories_in_either_order() {
        let tmp = tempfile::tempdir().unwrap();
        let base = vec![
            dir("d", 0o755),
            file("d/old", b""),
            dir("d/sub", 0o755),
            file("d/sub/f", b""),
        ];
        for upper in [
            vec![
                dir("d", 0o700),
                file("d/new", b"n"),
                file("d/.wh..wh..opq", b""),
            ],
            vec![
                file("d/.wh..wh..opq", b""),
                dir("d", 0o700),
                file("d/new", b"n"),
            ],
            vec![file("d/new", b"n"), file("d/.wh..wh..opq", b"")],
        ] {
            let view = stack(tmp.path(), &[base.clone(), upper.clone()]);
            assert_eq!(walk(&view), ["d", "d/new"], "{upper:?}");
            assert_eq!(names(&view, "d"), ["new"]);
            assert_eq!(
                view.history(b"d/sub/f"),
                [(0, Change::Added), (1, Change::Hidden)]
            );
            assert!(view.lookup(b"d/old").is_none());
        }
        // Without its own `d` entry the upper layer's implied `d` lets the lower one show.
        let view = stack(
            tmp.path(),
            &[
                base.clone(),
                vec![file("d/new", b"n"), file("d/.wh..wh..opq", b"")],
            ],
        );
        let (k, d) = view.lookup(b"d").unwrap();
        assert_eq!((k, d.mode), (0, 0o755));
        assert_eq!(view.history(b"d"), [(0, Change::Added)]);
    }

    #[test]
    fn the_parents_of_markers_are_directories_of_their_layer() {
        let tmp = tempfile::tempdir().unwrap();
        // Nothing lower: the implied parents appear, empty, with the implied attributes.
        let view = stack(
            tmp.path(),
            &[
                vec![file("other", b"")],
                vec![file("a/.wh.x", b""), file("o/p/.wh..wh..opq", b"")],
            ],
        );
        assert_eq!(walk(&view), ["a", "o", "o/p", "other"]);
        let (k, a) = view.lookup(b"a").unwrap();
        assert_eq!(
            (k, a.kind, a.mode, a.uid, a.mtime),
            (1, EntryKind::Dir, 0o755, 0, 0)
        );
        assert!(view.listdir(b"a").unwrap().is_empty());
        assert_eq!(names(&view, "o"), ["p"]);
        assert_eq!(view.history(b"a"), [(1, Change::Added)]);
        // A lower directory shows through with its attributes and (but for the whited-out
        // name) its children; the implied directory changes nothing in its history.
        let view = stack(
            tmp.path(),
            &[
                vec![dir("a", 0o700), file("a/x", b""), file("a/y", b"")],
                vec![file("a/.wh.x", b"")],
            ],
        );
        assert_eq!(walk(&view), ["a", "a/y"]);
        let (k, a) = view.lookup(b"a").unwrap();
        assert_eq!((k, a.mode, a.mtime), (0, 0o700, 1_000));
        assert_eq!(view.history(b"a"), [(0, Change::Added)]);
        assert_eq!(
            view.history(b"a/x"),
            [(0, Change::Added), (1, Change::Deleted)]
        );
        // Whited out and implied in one layer: the lower directory goes, the implied one stays.
        let view = stack(
            tmp.path(),
            &[
                vec![dir("a", 0o700), file("a/x", b"")],
                vec![file(".wh.a", b""), file("a/.wh.y", b"")],
            ],
        );
        assert_eq!(walk(&view), ["a"]);
        let (k, a) = view.lookup(b"a").unwrap();
        assert_eq!((k, a.mode), (1, 0o755));
        assert_eq!(
            view.history(b"a"),
            [(0, Change::Added), (1, Change::Modified)]
        );
        // Over a lower file, the implied directory replaces it (as the parent of any entry
        // would).
        let view = stack(
            tmp.path(),
            &[vec![file("a", b"file")], vec![file("a/.wh.x", b"")]],
        );
        let (k, a) = view.lookup(b"a").unwrap();
        assert_eq!((k, a.kind), (1, EntryKind::Dir));
    }

    #[test]
    fn type_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = vec![dir("p", 0o755), dir("p/q", 0o755), file("p/q/f", b"")];
        // A file replaces a directory.
        let view = stack(tmp.path(), &[tree.clone(), vec![file("p", b"now a file")]]);
        assert_eq!(walk(&view), ["p"]);
        assert_eq!(
            view.history(b"p/q/f"),
            [(0, Change::Added), (1, Change::Hidden)]
        );
        assert_eq!(
            view.history(b"p"),
            [(0, Change::Added), (1, Change::Modified)]
        );
        // A directory replaces a file.
        let view = stack(
            tmp.path(),
            &[
                vec![file("p", b"file")],
                vec![dir("p", 0o711), file("p/new", b"")],
            ],
        );
        assert_eq!(walk(&view), ["p", "p/new"]);
        assert_eq!(view.lookup(b"p").unwrap().1.mode, 0o711);
        // A symlink replaces a directory, and a directory a symlink.
        let view = stack(
            tmp.path(),
            &[tree.clone(), vec![symlink("p", "/elsewhere")]],
        );
        assert_eq!(walk(&view), ["p"]);
        assert_eq!(view.lookup(b"p").unwrap().1.kind, EntryKind::Symlink);
        let view = stack(
            tmp.path(),
            &[
                vec![symlink("p", "x")],
                vec![dir("p", 0o755), file("p/f", b"")],
            ],
        );
        assert_eq!(walk(&view), ["p", "p/f"]);
        // A file in a lower layer under a later implied directory of the same name.
        let view = stack(tmp.path(), &[vec![file("p", b"")], vec![file("p/f", b"")]]);
        assert_eq!(walk(&view), ["p", "p/f"]);
        let (k, p) = view.lookup(b"p").unwrap();
        assert_eq!((k, p.kind, p.mode), (1, EntryKind::Dir, 0o755));
        assert_eq!(
            view.history(b"p"),
            [(0, Change::Added), (1, Change::Modified)]
        );
    }

    #[test]
    fn directories_merge_with_the_highest_attributes() {
        let tmp = tempfile::tempdir().unwrap();
        let view = stack(
            tmp.path(),
            &[
                vec![dir("d", 0o700), file("d/a", b"")],
                vec![dir("d", 0o750), file("d/b", b"")],
                vec![file("d/c", b"")],
            ],
        );
        assert_eq!(walk(&view), ["d", "d/a", "d/b", "d/c"]);
        let (k, d) = view.lookup(b"d/").unwrap();
        assert_eq!((k, d.mode, d.mtime), (1, 0o750, 1_000));
        assert_eq!(
            view.history(b"d"),
            [(0, Change::Added), (1, Change::Modified)]
        );
        assert_eq!(names(&view, "/"), ["d"]);
        assert_eq!(names(&view, "./d/"), ["a", "b", "c"]);
        assert!(matches!(view.listdir(b"nope"), Err(Error::NotFound { .. })));
        assert!(matches!(
            view.listdir(b"d/a"),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn reads_follow_hardlinks_in_the_layer_and_symlinks_in_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let view = stack(
            tmp.path(),
            &[
                vec![
                    file("etc/real", b"content"),
                    hardlink("etc/link", "etc/real"),
                    hardlink("etc/link2", "etc/link"),
                    symlink("abs", "/etc/real"),
                    symlink("rel", "etc/../etc/./real"),
                    symlink("up", "../../../etc/real"),
                    symlink("dirlink", "/etc"),
                    symlink("loop", "loop"),
                    symlink("dangling", "nothing"),
                    hardlink("bad", "nowhere"),
                    fifo("pipe"),
                ],
                // The target is replaced above; the link keeps the old body.
                vec![file("etc/real", b"changed")],
            ],
        );
        assert_eq!(text(&view, "etc/link"), "content");
        assert_eq!(text(&view, "etc/link2"), "content");
        assert_eq!(text(&view, "etc/real"), "changed");
        for p in ["abs", "rel", "up", "dirlink/real", "dirlink/../etc/real"] {
            assert_eq!(text(&view, p), "changed", "{p}");
        }
        assert_eq!(text(&view, "dirlink/link"), "content");
        assert!(matches!(view.read(b"loop"), Err(Error::Unsupported { .. })));
        assert!(matches!(
            view.read(b"dangling"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(view.read(b"missing"), Err(Error::NotFound { .. })));
        assert!(matches!(view.read(b"etc"), Err(Error::Unsupported { .. })));
        assert!(matches!(view.read(b"pipe"), Err(Error::Unsupported { .. })));
        assert!(matches!(
            view.read(b"etc/real/x"),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(view.read(b"/"), Err(Error::Unsupported { .. })));
        match view.read(b"bad") {
            Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("'nowhere'"), "{detail}"),
            other => panic!("{other:?}"),
        }
        let mut out = Vec::new();
        assert_eq!(view.read_into(b"etc/link", &mut out).unwrap(), 7);
        assert_eq!(out, b"content");
    }

    #[test]
    fn a_hardlink_uses_the_target_written_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        let view = stack(
            tmp.path(),
            &[vec![
                file("t", b"first"),
                hardlink("l", "t"),
                file("t", b"second"),
            ]],
        );
        assert_eq!(text(&view, "l"), "first");
        assert_eq!(text(&view, "t"), "second");
    }

    #[test]
    fn empty_stack_and_chain_id() {
        let tmp = tempfile::tempdir().unwrap();
        let view = MergedView::new(Vec::new());
        assert!(view.is_empty() && view.lookup(b"x").is_none());
        assert!(view.listdir(b"").unwrap().is_empty());
        assert!(matches!(view.chain_id(), Err(Error::InvalidArgument(_))));
        let view = stack(tmp.path(), &[vec![file("a", b"")], vec![file("b", b"")]]);
        let ids: Vec<&str> = view.layers().iter().map(|l| l.diff_id()).collect();
        assert_eq!(view.chain_id().unwrap(), digest::chain_id(&ids).unwrap());
    }

    #[test]
    fn normalize_borrows_clean_paths() {
        assert!(matches!(normalize(b"a/b"), Cow::Borrowed(b"a/b")));
        assert!(matches!(normalize(b"/a/b"), Cow::Borrowed(b"a/b")));
        assert_eq!(&*normalize(b"./a//b/./"), b"a/b");
        assert_eq!(&*normalize(b"/"), b"");
        assert_eq!(&*normalize(b""), b"");
    }

    /// A small deterministic generator (no dependency needed for a test).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    fn random_path(rng: &mut Rng) -> String {
        let depth = 1 + rng.below(3);
        (0..depth)
            .map(|_| ["a", "b", "c"][rng.below(3)])
            .collect::<Vec<_>>()
            .join("/")
    }

    fn random_layer(rng: &mut Rng) -> Vec<Spec> {
        let mut specs = Vec::new();
        let mut files: Vec<String> = Vec::new();
        for _ in 0..rng.below(9) {
            let p = random_path(rng);
            let (parent, base) = match p.rsplit_once('/') {
                Some((d, b)) => (format!("{d}/"), b.to_owned()),
                None => (String::new(), p.clone()),
            };
            match rng.below(7) {
                0 | 1 => {
                    specs.push(file(&p, p.as_bytes()));
                    files.push(p);
                }
                2 | 3 => specs.push(dir(&p, 0o700 + rng.below(64) as u32)),
                4 => specs.push(file(&format!("{parent}.wh.{base}"), b"")),
                5 => {
                    let d = if rng.below(4) == 0 {
                        String::new()
                    } else {
                        format!("{p}/")
                    };
                    specs.push(file(&format!("{d}.wh..wh..opq"), b""));
                }
                _ => match files.first() {
                    Some(t) => specs.push(hardlink(&p, t)),
                    None => specs.push(symlink(&p, "a")),
                },
            }
        }
        specs
    }

    fn universe() -> Vec<String> {
        let mut all = Vec::new();
        for a in ["a", "b", "c"] {
            all.push(a.to_owned());
            for b in ["a", "b", "c"] {
                all.push(format!("{a}/{b}"));
                for c in ["a", "b", "c"] {
                    all.push(format!("{a}/{b}/{c}"));
                }
            }
        }
        all
    }

    fn same(a: Option<(usize, &Entry)>, b: Option<(usize, &Entry)>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some((k, e)), Some((j, f))) => k == j && std::ptr::eq(e, f),
            _ => false,
        }
    }

    #[test]
    fn the_merged_index_agrees_with_the_top_down_rule_on_random_stacks() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = Rng(7);
        for round in 0..150 {
            let layers: Vec<Vec<Spec>> = (0..1 + rng.below(4))
                .map(|_| random_layer(&mut rng))
                .collect();
            let dir = tmp.path().join(round.to_string());
            std::fs::create_dir(&dir).unwrap();
            let view = stack(&dir, &layers);
            let n = view.layers().len();
            let walked = walk(&view);
            for p in universe() {
                let here = view.lookup(p.as_bytes());
                assert!(
                    same(here, view.lookup_at(p.as_bytes(), n)),
                    "{p} in {layers:?}: {here:?} vs {:?}",
                    view.lookup_at(p.as_bytes(), n)
                );
                // A view of the lower layers only agrees with lookup_at of that many.
                let lower = MergedView::new(view.layers()[..n - 1].to_vec());
                assert!(same(
                    lower.lookup(p.as_bytes()),
                    view.lookup_at(p.as_bytes(), n - 1)
                ));
                // History ends in the visible state, at the providing layer.
                let history = view.history(p.as_bytes());
                match (here, history.last()) {
                    (None, None) => {}
                    (None, Some((_, c))) => assert!(matches!(c, Change::Deleted | Change::Hidden)),
                    (Some((k, _)), Some((j, c))) => {
                        assert!(
                            matches!(c, Change::Added | Change::Modified),
                            "{p}: {history:?}"
                        );
                        assert_eq!(k, *j, "{p} in {layers:?}: {history:?}");
                    }
                    (Some(_), None) => panic!("{p} visible without history in {layers:?}"),
                }
                assert_eq!(here.is_some(), walked.contains(&p));
            }
            // Every visible path has a visible directory parent, and listdir agrees with walk.
            for p in &walked {
                let (parent, name) = split_parent(p.as_bytes());
                if !parent.is_empty() {
                    assert_eq!(view.lookup(parent).unwrap().1.kind, EntryKind::Dir);
                }
                assert!(view.listdir(parent).unwrap().contains(&name));
                assert!(!name.starts_with(b".wh."));
            }
            let mut sorted = walked.clone();
            sorted.sort_by(|a, b| walk_cmp(a.as_bytes(), b.as_bytes()));
            assert_eq!(sorted, walked);
        }
    }
}

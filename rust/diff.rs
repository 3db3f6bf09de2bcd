//! Changesets: a layer from the difference between two directory trees ([`diff_dirs`]), between
//! a stack's merged view and a directory ([`diff_stack_dir`]), and a layer from an overlayfs
//! upper directory ([`from_overlay_upper`]).
//!
//! ```text
//! lower walk thread ─┐                      plan (in memory, O(entries))       LayerWriter
//!                    ├─> match by path ──> whiteouts / opaque choice ──> emit ──> pipeline
//! upper walk thread ─┘    (+ bodies when     + hardlink groups kept whole  (bodies opened
//!                          compare=content)                                 relative to dirs)
//! ```
//!
//! Both trees are walked in full before anything is written, on two threads at once. The plan
//! cannot be streamed: whether a directory is cheaper as an opaque marker than as explicit
//! whiteouts depends on its whole subtree, and its whiteouts must come before its first child.
//! The walks keep metadata only (no open descriptors), so a tree of any width fits in the
//! descriptor limit; bodies are opened at emission time relative to their directory, which is
//! checked to still be the inode the walk saw.
//!
//! Output order is canonical: depth-first, names sorted by bytes, each directory followed by its
//! contents, except that within one directory the opaque marker and then the whiteouts come
//! first (OCI image-spec layer.md: whiteouts appear before sibling entries).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::blob_writer::{LayerDescriptor, LayerWriter};
use crate::compress::{self, Compression};
use crate::entry::{EntryKind, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::error::{Error, Result};
use crate::overlay::MergedView;
use crate::tar::header::{self, HeaderSpec};
use crate::walk::{self, read_xattrs, Owner, SourceEntry, WalkOptions, XattrTarget};
use crate::writer::BuildOptions;

/// How [`diff_dirs`] decides that an entry present in both trees is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Type, mode, owner (after the owner policy), size, mtime, link target, xattrs and device
    /// numbers must all be equal. A rewrite that keeps size and mtime goes unnoticed, as with
    /// every metadata-based differ (Docker's, containerd's).
    Metadata,
    /// Everything but the mtime must be equal, and regular files must have equal bodies: a file
    /// touched or copied without its mtime but with the same bytes is unchanged.
    Content,
}

impl Compare {
    /// Parses the Python-facing name: `"metadata"` or `"content"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "metadata" => Ok(Compare::Metadata),
            "content" => Ok(Compare::Content),
            other => Err(Error::InvalidArgument(format!(
                "unknown compare mode {other:?}: expected 'metadata' or 'content'"
            ))),
        }
    }
}

/// How to build a changeset layer.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    pub compression: Compression,
    /// Codec level; `None` takes [`Compression::default_level`].
    pub level: Option<i32>,
    /// Compression threads; `None` uses every core.
    pub threads: Option<usize>,
    pub owner: Owner,
    /// mtimes later than this are clamped to it in the layer (never in the comparison).
    pub source_date_epoch: Option<i64>,
    pub compare: Compare,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Gzip,
            level: None,
            threads: None,
            owner: Owner::Root,
            source_date_epoch: None,
            compare: Compare::Metadata,
        }
    }
}

/// Writes the changeset that turns the tree `lower` into the tree `upper` as a layer at `out`.
///
/// Added and modified entries are written whole (bodies read from `upper`); a deleted path
/// becomes a whiteout `DIR/.wh.NAME` (an empty regular file, mode 0, owner 0, mtime 0). A
/// directory that lost children is written with explicit whiteouts or as an opaque directory
/// (`DIR/.wh..wh..opq` plus all of its upper content), whichever takes fewer entries (explicit
/// on a tie; the root is never opaque). A type change writes the new entry: a non-directory
/// hides everything below it, a new directory is written with all its children. Unchanged
/// directories above a change are written too, so their modes and owners survive extraction.
///
/// Hardlinks: an inode group of `upper` is written whole or not at all, so that applying the
/// layer recreates exactly `upper`'s links. The first written name of a group carries the body,
/// the others link to it. An unchanged name whose lower link partners are gone or changed keeps
/// its lower inode unless `upper` links it to something else.
///
/// Applying the layer onto a copy of `lower` gives `upper` (types, modes, owners under the
/// owner policy, bodies, link targets, xattrs; mtimes in whole seconds, clamped to
/// `source_date_epoch` when given; with [`Compare::Content`] an unchanged body keeps its lower
/// mtime). Sockets cannot be carried: those in `upper` are skipped with a warning, and a lower
/// socket missing from `upper` gets no whiteout. A name starting with `.wh.` in `upper` would
/// read as a whiteout and is [`Error::Unsupported`].
///
/// Same trees and options give the same bytes. The blob appears at `out` only once complete;
/// `check` (Ctrl-C) is polled while walking and between entries.
pub fn diff_dirs(
    lower: &Path,
    upper: &Path,
    out: &Path,
    options: &DiffOptions,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<LayerDescriptor> {
    require_dir(lower)?;
    require_dir(upper)?;
    let writer = LayerWriter::create(out, options.compression, options.level, options.threads)?;
    let exclude = Some(writer.temp_identity()?);
    let compare = options.compare;
    let owner = options.owner;
    let (lower_tree, upper_tree, plan) = polled(upper, check, |stop| {
        let (lower_tree, upper_tree) = thread::scope(|scope| {
            let lower_walk = thread::Builder::new()
                .name("layercore-walk-lower".into())
                .stack_size(WALK_STACK)
                .spawn_scoped(scope, || {
                    let tree = Tree::collect(lower, owner, exclude, true, stop);
                    if tree.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    tree
                })
                .map_err(|e| Error::io(lower, "cannot start a thread", e))?;
            let upper_tree = Tree::collect(upper, owner, exclude, true, stop);
            if upper_tree.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let lower_tree = lower_walk.join().expect("walk thread panicked");
            // A failed walk stops the other one: its error, not the other's stop, is the cause.
            match (lower_tree, upper_tree) {
                (Ok(l), Ok(u)) => Ok((l, u)),
                (Err(e), _) if !matches!(e, Error::Interrupted) => Err(e),
                (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
            }
        })?;
        let plan = Differ::new(&lower_tree, &upper_tree, None, compare, stop)?.plan()?;
        Ok((lower_tree, upper_tree, plan))
    })?;
    let source = Emitter {
        tree: &upper_tree,
        lower: Some(&lower_tree),
        strip_overlay: false,
        source_date_epoch: options.source_date_epoch,
    };
    source.finish(&plan, writer, check)
}

/// [`diff_dirs`] with a stack of layers as the lower tree, read from its merged view instead of
/// an extracted directory: what a build step that changed a root filesystem needs (`view` the
/// image before the step, `upper` the root filesystem after it).
///
/// Same plan, order and promises as [`diff_dirs`], against the tree that extracting the stack
/// would give. The lower side's metadata is that of the visible entries: mtimes are whole
/// seconds, so an upper mtime with the same seconds counts as equal whatever its nanoseconds;
/// owners are the entries' uid/gid, compared with the upper's after the owner policy. A name
/// the stack wrote as a hardlink is a regular file sharing its target's inode (metadata and
/// body), and the visible names of one inode form a link group, as on disk after extraction.
/// With [`Compare::Content`], lower bodies stream out of the layer blobs and are compared with
/// the upper files as they come (O(1) memory per file; a compressed blob is decompressed from
/// its start for each body compared).
///
/// Errors: those of [`diff_dirs`]; a layer blob changed since it was indexed is
/// [`Error::Changed`]; a hardlink of the stack whose target its layer lacks is
/// [`Error::Corrupt`].
pub fn diff_stack_dir(
    view: &MergedView,
    upper: &Path,
    out: &Path,
    options: &DiffOptions,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<LayerDescriptor> {
    require_dir(upper)?;
    let writer = LayerWriter::create(out, options.compression, options.level, options.threads)?;
    let exclude = Some(writer.temp_identity()?);
    let compare = options.compare;
    let owner = options.owner;
    let (lower_tree, upper_tree, plan) = polled(upper, check, |stop| {
        let mut upper_tree = Tree::collect(upper, owner, exclude, true, stop)?;
        let lower_tree = Tree::from_view(view, stop)?;
        if owner == Owner::Inherit {
            inherit_owners(&lower_tree, &mut upper_tree);
        }
        let plan = Differ::new(&lower_tree, &upper_tree, Some(view), compare, stop)?.plan()?;
        Ok((lower_tree, upper_tree, plan))
    })?;
    let source = Emitter {
        tree: &upper_tree,
        lower: Some(&lower_tree),
        strip_overlay: false,
        source_date_epoch: options.source_date_epoch,
    };
    source.finish(&plan, writer, check)
}

/// Writes an overlayfs upper directory as a layer at `out`, as `docker commit` does on overlay2.
///
/// A character device 0/0 is a whiteout of its name (`DIR/.wh.NAME`); a directory whose
/// `trusted.overlay.opaque` or `user.overlay.opaque` is `y` is written followed by
/// `DIR/.wh..wh..opq`; in a directory marked for "xwhiteouts" (opaque `x`, or Linux 6.7's
/// `overlay.whiteouts`; the upper root included), an empty regular file with an
/// `overlay.whiteout` xattr is a whiteout too. The overlay's own xattrs
/// (`trusted.overlay.*`, `user.overlay.*`) are not copied. Everything else is written as
/// [`crate::writer::build_from_dir`] writes it, in the same canonical order with each
/// directory's whiteouts first.
///
/// With [`Owner::Inherit`], `lower` (the merged view below the upper dir) gives each path it
/// has its owner; without `lower` that policy is an [`Error::InvalidArgument`].
///
/// Errors: a metadata-only copy-up (`overlay.metacopy`) or a renamed directory
/// (`overlay.redirect`) has its content in the lower layers, which this function does not see:
/// [`Error::Unsupported`] naming the path (diff the merged view against the lower one instead).
pub fn from_overlay_upper(
    upper: &Path,
    out: &Path,
    options: &BuildOptions,
    lower: Option<&MergedView>,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<LayerDescriptor> {
    require_dir(upper)?;
    let owner = options.owner;
    if owner == Owner::Inherit && lower.is_none() {
        return Err(Error::InvalidArgument(
            "the 'inherit' owner policy needs the lower stack".into(),
        ));
    }
    let writer = LayerWriter::create(out, options.compression, options.level, options.threads)?;
    let exclude = Some(writer.temp_identity()?);
    let (tree, plan) = polled(upper, check, |stop| {
        let mut tree = Tree::collect(upper, owner, exclude, false, stop)?;
        if let (Owner::Inherit, Some(view)) = (owner, lower) {
            inherit_owners(&Tree::from_view(view, stop)?, &mut tree);
        }
        let plan = overlay_plan(&tree)?;
        Ok((tree, plan))
    })?;
    let source = Emitter {
        tree: &tree,
        lower: None,
        strip_overlay: true,
        source_date_epoch: options.source_date_epoch,
    };
    source.finish(&plan, writer, check)
}

/// Stack for threads that recurse along the tree depth (the walk, the plan), as for the walk
/// of `build_from_dir`.
const WALK_STACK: usize = 16 << 20;
/// Entries written between two calls of `check`.
const CHECK_EVERY: usize = 256;

fn require_dir(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot stat source", e))?;
    if !meta.is_dir() {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            detail: "source is not a directory".into(),
        });
    }
    Ok(())
}

/// Runs `work` on a thread with a deep stack while this thread polls `check` (Python's signal
/// handlers run only on the main thread); a failing check raises the stop flag that `work`
/// polls, and its error (Ctrl-C) wins. `source` names the work in errors.
fn polled<T: Send>(
    source: &Path,
    check: &(dyn Fn() -> Result<()> + Sync),
    work: impl FnOnce(&AtomicBool) -> Result<T> + Send,
) -> Result<T> {
    let stop = AtomicBool::new(false);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    thread::scope(|scope| {
        let stop = &stop;
        let worker = thread::Builder::new()
            .name("layercore-diff".into())
            .stack_size(WALK_STACK)
            .spawn_scoped(scope, move || {
                let result = work(stop);
                let _ = done_tx.send(());
                result
            })
            .map_err(|e| Error::io(source, "cannot start a thread", e))?;
        let mut interrupted = None;
        while let Err(mpsc::RecvTimeoutError::Timeout) =
            done_rx.recv_timeout(Duration::from_millis(25))
        {
            if let Err(e) = check() {
                stop.store(true, Ordering::Relaxed);
                interrupted = Some(e);
                break;
            }
        }
        let result = worker.join().expect("diff thread panicked");
        match interrupted {
            Some(e) => Err(e),
            None => result,
        }
    })
}

fn stopped(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// (device, inode): the identity of a file.
type Inode = (u64, u64);

/// One walked entry, metadata only (no open descriptor).
#[derive(Debug)]
struct Node {
    rel: Vec<u8>,
    kind: EntryKind,
    mode: u32,
    uid: u64,
    gid: u64,
    uname: Vec<u8>,
    gname: Vec<u8>,
    /// For regular files (hardlinks included) the inode's size; 0 otherwise.
    size: u64,
    /// Unclamped.
    mtime: i64,
    mtime_nsec: u32,
    /// Symlink target (for walker hardlinks: the first path of the inode, unused).
    linkname: Vec<u8>,
    devmajor: u32,
    devminor: u32,
    /// Walk-time xattrs (for regular files only when the caller asked for them).
    xattrs: Vec<(String, Vec<u8>)>,
    dev: u64,
    ino: u64,
    /// Index just past the last descendant (`self + 1` for a non-directory).
    end: usize,
}

impl Node {
    fn from_source(e: SourceEntry) -> Node {
        Node {
            rel: e.rel,
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            uname: e.uname,
            gname: e.gname,
            size: e.size,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            linkname: e.linkname,
            devmajor: e.devmajor,
            devminor: e.devminor,
            xattrs: e.xattrs,
            dev: e.dev,
            ino: e.ino,
            end: 0,
        }
    }

    fn name(&self) -> &[u8] {
        match self.rel.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.rel[i + 1..],
            None => &self.rel,
        }
    }

    fn parent(&self) -> &[u8] {
        match self.rel.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.rel[..i],
            None => &[],
        }
    }

    fn is_regular(&self) -> bool {
        matches!(self.kind, EntryKind::File | EntryKind::Hardlink)
    }

    fn key(&self) -> Inode {
        (self.dev, self.ino)
    }
}

/// A walked tree in walk order (preorder, names sorted by bytes).
struct Tree {
    root: PathBuf,
    nodes: Vec<Node>,
    warnings: Vec<String>,
    /// Hardlink groups (inodes with two or more names in the tree), members in walk order.
    groups: Vec<Vec<usize>>,
    group_of: HashMap<usize, usize>,
}

impl Tree {
    fn collect(
        root: &Path,
        owner: Owner,
        exclude: Option<Inode>,
        file_xattrs: bool,
        stop: &AtomicBool,
    ) -> Result<Tree> {
        let options = WalkOptions {
            owner,
            // Compare real mtimes; clamping happens when writing.
            source_date_epoch: None,
            exclude,
        };
        let mut nodes = Vec::new();
        let mut warnings = Vec::new();
        walk::walk(
            root,
            &options,
            &mut |entry| {
                if nodes.len() % 1024 == 0 {
                    stopped(stop)?;
                }
                let xattrs = if file_xattrs && entry.kind == EntryKind::File {
                    Some(file_xattrs_of(&entry, root)?)
                } else {
                    None
                };
                let mut node = Node::from_source(entry);
                if let Some(xattrs) = xattrs {
                    node.xattrs = xattrs;
                }
                nodes.push(node);
                Ok(())
            },
            &mut |w| warnings.push(w),
        )?;
        set_ends(&mut nodes);
        // Hardlink groups: the walker reports every name after the first as a hardlink.
        let mut by_inode: HashMap<Inode, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for node in nodes.iter().filter(|n| n.kind == EntryKind::Hardlink) {
            by_inode.entry(node.key()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        }
        let mut group_of = HashMap::new();
        if !by_inode.is_empty() {
            let mut sizes = HashMap::new();
            for (i, node) in nodes.iter().enumerate() {
                if node.is_regular() {
                    if let Some(&g) = by_inode.get(&node.key()) {
                        groups[g].push(i);
                        group_of.insert(i, g);
                        if node.kind == EntryKind::File {
                            sizes.insert(node.key(), node.size);
                        }
                    }
                }
            }
            for node in nodes.iter_mut().filter(|n| n.kind == EntryKind::Hardlink) {
                node.size = sizes.get(&node.key()).copied().unwrap_or(0);
            }
        }
        Ok(Tree {
            root: root.to_path_buf(),
            nodes,
            warnings,
            groups,
            group_of,
        })
    }

    /// The visible entries of a stack as a lower tree, in the view's walk order (the order of
    /// [`Tree::collect`]). A regular file's identity (`dev`, `ino`) is the layer and entry
    /// that hold its body, so the names a layer wrote as hardlinks of one file form a group,
    /// as they would on disk after extraction; a hardlink name takes the metadata of that
    /// file (extraction makes one inode: the link's own header is not applied). mtimes are
    /// whole seconds (`mtime_nsec` 0), which [`same_metadata`] matches against any
    /// sub-second part of the upper side.
    fn from_view(view: &MergedView, stop: &AtomicBool) -> Result<Tree> {
        let mut nodes = Vec::with_capacity(view.len());
        for (v, (_, entry)) in view.walk().enumerate() {
            if v % 1024 == 0 {
                stopped(stop)?;
            }
            let (meta, dev, ino) = match entry.kind {
                EntryKind::File | EntryKind::Hardlink => {
                    let (k, i) = view.open_file(&entry.path)?;
                    (view.layers()[k].entry(i), k as u64, u64::from(i))
                }
                _ => (entry, u64::MAX, v as u64),
            };
            let kind = match entry.kind {
                EntryKind::Hardlink => EntryKind::File,
                kind => kind,
            };
            nodes.push(Node {
                rel: entry.path.clone(),
                kind,
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
                uname: meta.uname.as_bytes().to_vec(),
                gname: meta.gname.as_bytes().to_vec(),
                size: if kind == EntryKind::File {
                    meta.size
                } else {
                    0
                },
                mtime: meta.mtime,
                mtime_nsec: 0,
                linkname: if kind == EntryKind::Symlink {
                    entry.linkname.clone().unwrap_or_default()
                } else {
                    Vec::new()
                },
                devmajor: meta.devmajor,
                devminor: meta.devminor,
                xattrs: meta.xattrs.clone(),
                dev,
                ino,
                end: 0,
            });
        }
        set_ends(&mut nodes);
        let mut by_inode: HashMap<Inode, Vec<usize>> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            if node.is_regular() {
                by_inode.entry(node.key()).or_default().push(i);
            }
        }
        let mut groups: Vec<Vec<usize>> = by_inode.into_values().filter(|g| g.len() > 1).collect();
        groups.sort_unstable();
        let mut group_of = HashMap::new();
        for (g, members) in groups.iter().enumerate() {
            for &i in members {
                group_of.insert(i, g);
            }
        }
        Ok(Tree {
            root: PathBuf::from("/"),
            nodes,
            warnings: Vec::new(),
            groups,
            group_of,
        })
    }

    /// The direct children of `dir` (`None` = the root), in order.
    fn children(&self, dir: Option<usize>) -> Children<'_> {
        let (next, end) = match dir {
            None => (0, self.nodes.len()),
            Some(d) => (d + 1, self.nodes[d].end),
        };
        Children {
            nodes: &self.nodes,
            next,
            end,
        }
    }

    fn path(&self, i: usize) -> PathBuf {
        self.root
            .join(std::ffi::OsStr::from_bytes(&self.nodes[i].rel))
    }

    /// The members of `i`'s hardlink group, or `i` alone.
    fn group(&self, i: usize) -> &[usize] {
        match self.group_of.get(&i) {
            Some(&g) => &self.groups[g],
            None => &[],
        }
    }
}

/// Sets each node's subtree end, from the depth of each path (the order is a preorder).
fn set_ends(nodes: &mut [Node]) {
    let mut open: Vec<(usize, usize)> = Vec::new();
    for i in 0..nodes.len() {
        let depth = nodes[i].rel.iter().filter(|&&b| b == b'/').count();
        while open.last().is_some_and(|&(_, d)| d >= depth) {
            let (j, _) = open.pop().expect("checked");
            nodes[j].end = i;
        }
        nodes[i].end = i + 1;
        if nodes[i].kind == EntryKind::Dir {
            open.push((i, depth));
        }
    }
    let n = nodes.len();
    for (j, _) in open {
        nodes[j].end = n;
    }
}

struct Children<'a> {
    nodes: &'a [Node],
    next: usize,
    end: usize,
}

impl Iterator for Children<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.next >= self.end {
            return None;
        }
        let i = self.next;
        self.next = self.nodes[i].end;
        Some(i)
    }
}

/// `listxattrat(2)` (Linux 6.13). System calls added since Linux 5.1 have one number on every
/// architecture (`include/uapi/asm-generic/unistd.h`), and libc does not wrap this one yet.
const SYS_LISTXATTRAT: libc::c_long = 465;
/// Set when the kernel (or a seccomp filter) refuses `listxattrat`: use paths from then on.
static NO_LISTXATTRAT: AtomicBool = AtomicBool::new(false);

/// The xattrs of a regular file the walk just reported.
///
/// Most files have none, and asking the open parent directory whether this one has any
/// (`listxattrat` with a zero-size buffer) skips the lookup of the whole path from the root
/// that `llistxattr` would make: on a tree of small files, that lookup cost as much as the
/// walk's own `fstatat`. Files that do have xattrs are read by path with [`read_xattrs`].
fn file_xattrs_of(entry: &SourceEntry, root: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let path = || root.join(std::ffi::OsStr::from_bytes(&entry.rel));
    if !NO_LISTXATTRAT.load(Ordering::Relaxed) {
        let (dir, name) = entry.parent_and_name();
        let name = cstr(name, path)?;
        // SAFETY: `dir` is an open directory, `name` NUL-terminated; a NULL list with size 0
        // only asks for the size of the name list.
        let n = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                std::ptr::null_mut::<libc::c_char>(),
                0usize,
            )
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOTSUP) => return Ok(Vec::new()),
                Some(libc::ENOSYS) | Some(libc::EPERM) => {
                    NO_LISTXATTRAT.store(true, Ordering::Relaxed)
                }
                // Anything else: the path-based read below reports it properly.
                _ => {}
            }
        }
    }
    let p = path();
    read_xattrs(XattrTarget::Path(&p), || p.clone())
}

/// Compares two walk-order paths component by component: the order of the walk (`a/x` before
/// `a-b`, although `-` sorts before `/` as bytes).
fn walk_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let mut x = a.split(|&c| c == b'/');
    let mut y = b.split(|&c| c == b'/');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(p), Some(q)) => match p.cmp(q) {
                std::cmp::Ordering::Equal => continue,
                other => return other,
            },
        }
    }
}

/// One entry of the output, in archive order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    /// An upper entry, written whole.
    Entry(usize),
    /// A whiteout for the lower entry with this index (diff) ...
    WhiteoutLower(usize),
    /// ... or named by this upper entry (an overlay whiteout device).
    WhiteoutUpper(usize),
    /// The opaque marker of this upper directory.
    Opaque(usize),
    /// Reserved for a directory entry while its children are planned.
    Slot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Added,
    Same,
    Changed,
}

/// The diff of two collected trees.
struct Differ<'a> {
    lower: &'a Tree,
    upper: &'a Tree,
    /// For each upper entry, the lower entry with the same path.
    lower_of: Vec<Option<usize>>,
    upper_of: Vec<Option<usize>>,
    status: Vec<Status>,
}

impl<'a> Differ<'a> {
    /// `view` is the stack `lower` was made from ([`Tree::from_view`]), where its bodies are.
    fn new(
        lower: &'a Tree,
        upper: &'a Tree,
        view: Option<&'a MergedView>,
        compare: Compare,
        stop: &AtomicBool,
    ) -> Result<Self> {
        let (lower_of, upper_of) = match_paths(lower, upper);
        let mut status = vec![Status::Added; upper.nodes.len()];
        let mut bodies = Bodies::new(lower, upper)?;
        let mut verdicts: HashMap<(Inode, Inode), bool> = HashMap::new();
        // A stack's bodies are compared in one pass per blob, before the loop.
        let streamed = match (view, compare) {
            (Some(view), Compare::Content) => {
                Some(stack_bodies_equal(view, lower, upper, &lower_of, stop)?)
            }
            _ => None,
        };
        for (u, l) in lower_of.iter().enumerate() {
            let Some(l) = *l else { continue };
            let (ln, un) = (&lower.nodes[l], &upper.nodes[u]);
            let (meta, mtime) = same_metadata(ln, un);
            status[u] = match compare {
                Compare::Metadata if meta && mtime => Status::Same,
                Compare::Content if meta && un.is_regular() && un.size > 0 => {
                    if u % 256 == 0 {
                        stopped(stop)?;
                    }
                    let key = (ln.key(), un.key());
                    let known = match &streamed {
                        Some(s) => Some(s[&u]),
                        None => verdicts.get(&key).copied(),
                    };
                    let same = match known {
                        Some(same) => same,
                        None => {
                            let same = bodies.equal(l, u)?;
                            if upper.group_of.contains_key(&u) {
                                verdicts.insert(key, same);
                            }
                            same
                        }
                    };
                    if same {
                        Status::Same
                    } else {
                        Status::Changed
                    }
                }
                Compare::Content if meta => Status::Same,
                _ => Status::Changed,
            };
        }
        Ok(Differ {
            lower,
            upper,
            lower_of,
            upper_of,
            status,
        })
    }

    /// Plans the output; repeats while hardlink groups force more names to be written.
    fn plan(mut self) -> Result<Vec<Item>> {
        loop {
            let mut plan = Vec::new();
            self.plan_dir(None, None, &mut plan)?;
            let mut emitted = vec![false; self.upper.nodes.len()];
            for item in &plan {
                if let Item::Entry(u) = *item {
                    emitted[u] = true;
                }
            }
            if !self.keep_links_whole(&mut emitted) {
                return Ok(plan);
            }
        }
    }

    /// Marks names that must be written so that applying the layer gives `upper`'s hardlinks:
    /// a group of `upper` is written whole or not at all, and a name that is not written keeps
    /// its lower inode, so its lower link partners that are not written either must be exactly
    /// its upper link partners. Returns whether anything was marked (then the plan is redone:
    /// more written names can change a directory's opaque/explicit choice).
    ///
    /// One pass in walk order, counting the names marked so far as written, so the result is
    /// what marking one group at a time would give: for `a`, `b` linked in `lower` and two equal
    /// copies in `upper`, only `a` is rewritten and `b` keeps the old inode.
    fn keep_links_whole(&mut self, emitted: &mut [bool]) -> bool {
        let upper = self.upper;
        let mut marked = false;
        let mut kept = Vec::new();
        for u in 0..upper.nodes.len() {
            if !upper.nodes[u].is_regular() {
                continue;
            }
            let ugroup = upper.group(u);
            if emitted[u] {
                // Written: its whole upper group must be written too.
                if ugroup.iter().any(|&p| !emitted[p]) {
                    for &p in ugroup {
                        self.status[p] = Status::Changed;
                        emitted[p] = true;
                    }
                    marked = true;
                }
                continue;
            }
            let Some(l) = self.lower_of[u] else { continue };
            let lgroup = self.lower.group(l);
            if ugroup.is_empty() && lgroup.is_empty() {
                continue;
            }
            kept.clear();
            if lgroup.is_empty() {
                kept.push(u);
            }
            kept.extend(
                lgroup
                    .iter()
                    .filter_map(|&q| self.upper_of[q])
                    .filter(|&p| !emitted[p]),
            );
            kept.sort_unstable();
            let same = if ugroup.is_empty() {
                kept == [u]
            } else {
                kept == ugroup
            };
            if !same {
                let members = if ugroup.is_empty() {
                    vec![u]
                } else {
                    ugroup.to_vec()
                };
                for p in members {
                    self.status[p] = Status::Changed;
                    emitted[p] = true;
                }
                marked = true;
            }
        }
        marked
    }

    /// Plans the children of the upper directory `u` (`None` = root), which is a directory in
    /// `lower` too (`l`). Writes `u` itself when it changed or anything below it is written.
    fn plan_dir(&self, u: Option<usize>, l: Option<usize>, plan: &mut Vec<Item>) -> Result<()> {
        let start = plan.len();
        if u.is_some() {
            plan.push(Item::Slot);
        }
        // Whiteouts first: the lower children that upper lacks.
        let mut upper_children = self.upper.children(u).peekable();
        let mut deleted = 0usize;
        for lc in self.lower.children(l) {
            let name = self.lower.nodes[lc].name();
            while upper_children
                .peek()
                .is_some_and(|&uc| self.upper.nodes[uc].name() < name)
            {
                upper_children.next();
            }
            if upper_children
                .peek()
                .is_some_and(|&uc| self.upper.nodes[uc].name() == name)
            {
                continue;
            }
            plan.push(Item::WhiteoutLower(lc));
            deleted += 1;
        }
        for uc in self.upper.children(u) {
            let node = &self.upper.nodes[uc];
            match self.lower_of[uc] {
                Some(lc) if node.kind == EntryKind::Dir => {
                    if self.lower.nodes[lc].kind == EntryKind::Dir {
                        self.plan_dir(Some(uc), Some(lc), plan)?;
                    } else {
                        self.whole(uc, plan)?;
                    }
                }
                Some(_) if self.status[uc] == Status::Same => {}
                _ => self.whole(uc, plan)?,
            }
        }
        let Some(u) = u else { return Ok(()) };
        let below = plan.len() - start - 1;
        let changed = self.status[u] != Status::Same;
        let explicit = below + usize::from(changed || below > 0);
        // The directory, its marker, and every upper entry below it.
        let opaque = 2 + (self.upper.nodes[u].end - u - 1);
        if deleted > 0 && opaque < explicit {
            plan.truncate(start);
            plan.push(Item::Entry(u));
            plan.push(Item::Opaque(u));
            for d in u + 1..self.upper.nodes[u].end {
                self.check_name(d)?;
                plan.push(Item::Entry(d));
            }
        } else if explicit > 0 {
            self.check_name(u)?;
            plan[start] = Item::Entry(u);
        } else {
            plan.truncate(start);
        }
        Ok(())
    }

    /// Writes `u` and everything below it.
    fn whole(&self, u: usize, plan: &mut Vec<Item>) -> Result<()> {
        for d in u..self.upper.nodes[u].end {
            self.check_name(d)?;
            plan.push(Item::Entry(d));
        }
        Ok(())
    }

    fn check_name(&self, u: usize) -> Result<()> {
        if self.upper.nodes[u].name().starts_with(WHITEOUT_PREFIX) {
            return Err(Error::Unsupported {
                path: self.upper.path(u),
                detail: "a name starting with .wh. would read as a whiteout in a layer".into(),
            });
        }
        Ok(())
    }
}

/// Pairs the nodes of two trees by path (both are in walk order): for each upper node the
/// lower node at its path, and for each lower node the upper one.
fn match_paths(lower: &Tree, upper: &Tree) -> (Vec<Option<usize>>, Vec<Option<usize>>) {
    let (ln, un) = (lower.nodes.len(), upper.nodes.len());
    let mut lower_of = vec![None; un];
    let mut upper_of = vec![None; ln];
    let (mut i, mut j) = (0, 0);
    while i < ln && j < un {
        match walk_order(&lower.nodes[i].rel, &upper.nodes[j].rel) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                lower_of[j] = Some(i);
                upper_of[i] = Some(j);
                i += 1;
                j += 1;
            }
        }
    }
    (lower_of, upper_of)
}

/// Gives each upper path the owner (ids and names) the lower tree has for it ([`Owner::Inherit`]);
/// paths the lower tree lacks keep the upper's (root, under that policy).
fn inherit_owners(lower: &Tree, upper: &mut Tree) {
    let (lower_of, _) = match_paths(lower, upper);
    for (u, l) in lower_of.into_iter().enumerate() {
        if let Some(l) = l {
            let (l, u) = (&lower.nodes[l], &mut upper.nodes[u]);
            u.uid = l.uid;
            u.gid = l.gid;
            u.uname.clone_from(&l.uname);
            u.gname.clone_from(&l.gname);
        }
    }
}

/// (everything but the mtime is equal, the mtimes are equal). Equal seconds count as equal
/// mtimes unless both sides have different non-zero nanoseconds (a copy that kept whole
/// seconds only is not a change).
fn same_metadata(l: &Node, u: &Node) -> (bool, bool) {
    let kind = l.kind == u.kind || (l.is_regular() && u.is_regular());
    let meta = kind
        && l.mode == u.mode
        && l.uid == u.uid
        && l.gid == u.gid
        && l.size == u.size
        && (u.kind != EntryKind::Symlink || l.linkname == u.linkname)
        && l.devmajor == u.devmajor
        && l.devminor == u.devminor
        && l.xattrs == u.xattrs;
    let mtime = l.mtime == u.mtime
        && (l.mtime_nsec == 0 || u.mtime_nsec == 0 || l.mtime_nsec == u.mtime_nsec);
    (meta, mtime)
}

/// Body comparison for [`Compare::Content`].
struct Bodies<'a> {
    lower: Opener<'a>,
    upper: Opener<'a>,
    a: Vec<u8>,
    b: Vec<u8>,
}

impl<'a> Bodies<'a> {
    fn new(lower: &'a Tree, upper: &'a Tree) -> Result<Self> {
        Ok(Bodies {
            lower: Opener::new(lower)?,
            upper: Opener::new(upper)?,
            a: Vec::new(),
            b: Vec::new(),
        })
    }

    /// Whether lower entry `l` and upper entry `u` (same size) have the same bytes.
    fn equal(&mut self, l: usize, u: usize) -> Result<bool> {
        const BUF: usize = 256 * 1024;
        if self.a.is_empty() {
            self.a = vec![0; BUF];
            self.b = vec![0; BUF];
        }
        let mut x = self.lower.open(l)?;
        let mut y = self.upper.open(u)?;
        let size = self.lower.tree.nodes[l].size;
        let mut left = size;
        while left > 0 {
            let n = (BUF as u64).min(left) as usize;
            read_full(&mut x, &mut self.a[..n], &self.lower, l, size)?;
            read_full(&mut y, &mut self.b[..n], &self.upper, u, size)?;
            if self.a[..n] != self.b[..n] {
                return Ok(false);
            }
            left -= n as u64;
        }
        Ok(true)
    }
}

/// Read size of a streamed body comparison.
const BODY_BUF: usize = 256 * 1024;

/// For every upper regular file whose lower counterpart in a stack has the same metadata and a
/// body, whether the bodies are equal. Each layer blob is read once, front to back, for all of
/// its bodies (a compressed blob cannot seek, and decompressing it from its start for each file
/// would cost O(files x blob)). A body that two compared names share (a hardlink of the stack)
/// is read again for the second name.
fn stack_bodies_equal(
    view: &MergedView,
    lower: &Tree,
    upper: &Tree,
    lower_of: &[Option<usize>],
    stop: &AtomicBool,
) -> Result<HashMap<usize, bool>> {
    // (layer, data offset, upper index, lower index), in blob order.
    let mut todo: Vec<(u64, u64, usize, usize)> = Vec::new();
    for (u, l) in lower_of.iter().enumerate() {
        let Some(l) = *l else { continue };
        let (ln, un) = (&lower.nodes[l], &upper.nodes[u]);
        if un.is_regular() && un.size > 0 && same_metadata(ln, un).0 {
            let offset = view.layers()[ln.dev as usize].entry(ln.ino as u32).offset;
            todo.push((ln.dev, offset, u, l));
        }
    }
    let mut verdicts = HashMap::with_capacity(todo.len());
    if todo.is_empty() {
        return Ok(verdicts);
    }
    todo.sort_unstable();
    let mut opener = Opener::new(upper)?;
    let mut a = vec![0u8; BODY_BUF];
    let mut b = vec![0u8; BODY_BUF];
    for group in todo.chunk_by(|x, y| x.0 == y.0) {
        let index = &view.layers()[group[0].0 as usize];
        index.check_fresh()?;
        let blob = index.blob();
        let read_err = |e: io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::truncated(blob, e.to_string()),
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                Error::corrupt(blob, 0, format!("damaged compressed stream: {e}"))
            }
            _ => Error::io(blob, "cannot read", e),
        };
        let file = File::open(blob).map_err(|e| Error::io(blob, "cannot open", e))?;
        let (_, mut stream) =
            compress::decoder(io::BufReader::with_capacity(BODY_BUF, file)).map_err(read_err)?;
        let mut pos = 0u64;
        for (n, &(_, offset, u, l)) in group.iter().enumerate() {
            if n % 256 == 0 {
                stopped(stop)?;
            }
            let size = lower.nodes[l].size;
            let mut y = opener.open(u)?;
            if offset < pos {
                // The body of a name compared just before: read it again on its own.
                let mut cmp = SameBytes {
                    file: &mut y,
                    buf: &mut b,
                    opener: &opener,
                    u,
                    size,
                    same: true,
                    error: None,
                };
                let copied = index.copy_data(lower.nodes[l].ino as u32, &mut cmp);
                let same = match (copied, cmp.same, cmp.error) {
                    (_, _, Some(e)) => return Err(e),
                    (_, false, None) => false,
                    (Ok(_), true, None) => true,
                    (Err(e), true, None) => return Err(e),
                };
                verdicts.insert(u, same);
                continue;
            }
            let mut skip = offset - pos;
            while skip > 0 {
                let want = (BODY_BUF as u64).min(skip) as usize;
                let got = read_stream(&mut stream, &mut a[..want]).map_err(read_err)?;
                skip -= got as u64;
            }
            pos = offset;
            let mut left = size;
            let mut same = true;
            while left > 0 {
                let want = (BODY_BUF as u64).min(left) as usize;
                read_stream(&mut stream, &mut a[..want]).map_err(read_err)?;
                read_full(&mut y, &mut b[..want], &opener, u, size)?;
                pos += want as u64;
                left -= want as u64;
                if a[..want] != b[..want] {
                    same = false;
                    break;
                }
            }
            verdicts.insert(u, same);
        }
    }
    Ok(verdicts)
}

/// Fills `buf` from a decompressed blob stream; a stream that ends first is truncated.
fn read_stream(stream: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match stream.read(&mut buf[at..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ends inside a body being compared",
                ))
            }
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// A sink that compares what is written to it with the next bytes of an upper file; stops the
/// copy (with an error) at the first difference.
struct SameBytes<'x, 'a> {
    file: &'x mut File,
    buf: &'x mut [u8],
    opener: &'x Opener<'a>,
    u: usize,
    size: u64,
    same: bool,
    /// A failure to read the upper file, which wins over the copy's own error.
    error: Option<Error>,
}

impl io::Write for SameBytes<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.buf.len());
        if let Err(e) = read_full(
            self.file,
            &mut self.buf[..n],
            self.opener,
            self.u,
            self.size,
        ) {
            self.error = Some(e);
            return Err(io::Error::other("upper file unreadable"));
        }
        if self.buf[..n] != data[..n] {
            self.same = false;
            return Err(io::Error::other("bodies differ"));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn read_full(file: &mut File, buf: &mut [u8], o: &Opener<'_>, i: usize, size: u64) -> Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match file.read(&mut buf[at..]) {
            Ok(0) => {
                return Err(Error::Changed {
                    path: o.tree.path(i),
                    detail: format!("file shrank while being compared ({size} bytes expected)"),
                })
            }
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(o.tree.path(i), "cannot read", e)),
        }
    }
    Ok(())
}

/// Opens the bodies of a walked tree relative to their directory, in walk order: keeps the
/// chain of directories down to the current one open, and checks every opened inode against
/// what the walk saw (a file or directory swapped since is [`Error::Changed`]).
struct Opener<'a> {
    tree: &'a Tree,
    root: OwnedFd,
    /// The open directories from the root down: (relative path, descriptor).
    dirs: Vec<(Vec<u8>, OwnedFd)>,
    /// Relative path -> index of directories, to check their identity when opened.
    dir_index: HashMap<&'a [u8], usize>,
}

impl<'a> Opener<'a> {
    fn new(tree: &'a Tree) -> Result<Self> {
        let c = cstr(tree.root.as_os_str().as_bytes(), || tree.root.clone())?;
        // SAFETY: `c` is NUL-terminated; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Error::io(
                &tree.root,
                "cannot open source",
                io::Error::last_os_error(),
            ));
        }
        let dir_index = tree
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.kind == EntryKind::Dir)
            .map(|(i, n)| (n.rel.as_slice(), i))
            .collect();
        Ok(Opener {
            tree,
            // SAFETY: a fresh descriptor owned by nobody else.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            dirs: Vec::new(),
            dir_index,
        })
    }

    fn changed(&self, path: PathBuf, detail: &str) -> Error {
        Error::Changed {
            path,
            detail: detail.into(),
        }
    }

    /// The open directory `rel` (empty = the root).
    fn dir(&mut self, rel: &[u8]) -> Result<RawFd> {
        while let Some((open, _)) = self.dirs.last() {
            if rel.starts_with(open) && (rel.len() == open.len() || rel[open.len()] == b'/') {
                break;
            }
            self.dirs.pop();
        }
        loop {
            let (done, fd) = match self.dirs.last() {
                Some((open, fd)) => (open.len(), fd.as_raw_fd()),
                None => (0, self.root.as_raw_fd()),
            };
            if done == rel.len() {
                return Ok(fd);
            }
            let from = if done == 0 { 0 } else { done + 1 };
            let next = rel[from..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(rel.len(), |p| from + p);
            let sub = &rel[..next];
            let path = || self.tree.root.join(std::ffi::OsStr::from_bytes(sub));
            let name = cstr(&rel[from..next], path)?;
            // SAFETY: `fd` is an open directory, `name` is NUL-terminated; result checked.
            let raw = unsafe {
                libc::openat(
                    fd,
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            if raw < 0 {
                let err = io::Error::last_os_error();
                return Err(match err.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                        self.changed(path(), "directory replaced or removed after the walk")
                    }
                    _ => Error::io(path(), "cannot open directory", err),
                });
            }
            // SAFETY: a fresh descriptor owned by nobody else.
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            let file = File::from(owned);
            let meta = file
                .metadata()
                .map_err(|e| Error::io(path(), "cannot stat", e))?;
            let expected = self.dir_index.get(sub).map(|&i| self.tree.nodes[i].key());
            if expected != Some((meta.dev(), meta.ino())) {
                return Err(self.changed(path(), "directory replaced after the walk"));
            }
            self.dirs.push((sub.to_vec(), OwnedFd::from(file)));
        }
    }

    /// Opens the regular file `i`, checked to be the inode the walk saw, with its walk size.
    fn open(&mut self, i: usize) -> Result<File> {
        let tree = self.tree;
        let node = &tree.nodes[i];
        let dir = self.dir(node.parent())?;
        let name = cstr(node.name(), || tree.path(i))?;
        // SAFETY: `dir` is an open directory, `name` is NUL-terminated; result checked.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOENT) => {
                    self.changed(tree.path(i), "replaced or removed after the walk")
                }
                _ => Error::io(tree.path(i), "cannot open", err),
            });
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = file
            .metadata()
            .map_err(|e| Error::io(tree.path(i), "cannot stat", e))?;
        if (meta.dev(), meta.ino()) != node.key() {
            return Err(self.changed(tree.path(i), "replaced after the walk"));
        }
        if meta.len() != node.size {
            return Err(Error::Changed {
                path: tree.path(i),
                detail: format!("size changed from {} to {} bytes", node.size, meta.len()),
            });
        }
        Ok(file)
    }
}

fn cstr(bytes: &[u8], path: impl FnOnce() -> PathBuf) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::Unsupported {
        path: path(),
        detail: "path contains a NUL byte".into(),
    })
}

const OVERLAY_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// The value of the overlay xattr `name` (`opaque`, `redirect`...) under either namespace.
fn overlay_xattr<'x>(xattrs: &'x [(String, Vec<u8>)], name: &str) -> Option<&'x [u8]> {
    xattrs.iter().find_map(|(k, v)| {
        OVERLAY_PREFIXES
            .iter()
            .any(|p| k.strip_prefix(p) == Some(name))
            .then_some(v.as_slice())
    })
}

fn is_overlay_xattr(name: &str) -> bool {
    OVERLAY_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Plans an overlay upper directory: every entry, whiteout devices renamed, opaque markers after
/// their directory, each directory's whiteouts before its other children.
fn overlay_plan(tree: &Tree) -> Result<Vec<Item>> {
    let mut plan = Vec::with_capacity(tree.nodes.len());
    // The upper root is marked for xwhiteouts like any directory (the kernel reads the
    // layer root's mark too), so top-level paths can be deleted in that form.
    let root = read_xattrs(XattrTarget::Path(&tree.root), || tree.root.clone())?;
    overlay_dir(tree, None, marks_xwhiteouts(&root), &mut plan)?;
    Ok(plan)
}

/// Whether a directory with these xattrs may hold xwhiteouts: Linux 6.7 marked such
/// directories with `overlay.whiteouts`, 6.8+ with `overlay.opaque=x`.
fn marks_xwhiteouts(xattrs: &[(String, Vec<u8>)]) -> bool {
    overlay_xattr(xattrs, "opaque") == Some(b"x") || overlay_xattr(xattrs, "whiteouts").is_some()
}

fn overlay_dir(
    tree: &Tree,
    dir: Option<usize>,
    xwhiteouts: bool,
    plan: &mut Vec<Item>,
) -> Result<()> {
    let whiteout = |c: usize| -> Result<bool> {
        let node = &tree.nodes[c];
        match node.kind {
            EntryKind::Char => Ok(node.devmajor == 0 && node.devminor == 0),
            // Kernel 6.7+: in a directory marked opaque=x, an empty file with
            // overlay.whiteout is a whiteout (so that overlays can be nested).
            EntryKind::File if xwhiteouts && node.size == 0 => {
                let path = tree.path(c);
                let xattrs = read_xattrs(XattrTarget::Path(&path), || path.clone())?;
                Ok(overlay_xattr(&xattrs, "whiteout").is_some())
            }
            _ => Ok(false),
        }
    };
    let mut others = Vec::new();
    for c in tree.children(dir) {
        if whiteout(c)? {
            plan.push(Item::WhiteoutUpper(c));
        } else {
            others.push(c);
        }
    }
    for c in others {
        let node = &tree.nodes[c];
        if node.name().starts_with(WHITEOUT_PREFIX) {
            return Err(Error::Unsupported {
                path: tree.path(c),
                detail: "a name starting with .wh. would read as a whiteout in a layer".into(),
            });
        }
        plan.push(Item::Entry(c));
        if node.kind == EntryKind::Dir {
            if overlay_xattr(&node.xattrs, "redirect").is_some() {
                return Err(Error::Unsupported {
                    path: tree.path(c),
                    detail: "renamed directory (overlay.redirect): its content lives in the \
                             lower layers; diff the merged view instead"
                        .into(),
                });
            }
            if overlay_xattr(&node.xattrs, "opaque") == Some(b"y") {
                plan.push(Item::Opaque(c));
            }
            overlay_dir(tree, Some(c), marks_xwhiteouts(&node.xattrs), plan)?;
        }
    }
    Ok(())
}

/// Writes a plan's entries through a [`LayerWriter`].
struct Emitter<'a> {
    tree: &'a Tree,
    /// The lower tree, for the names of its whiteouts.
    lower: Option<&'a Tree>,
    strip_overlay: bool,
    source_date_epoch: Option<i64>,
}

impl<'a> Emitter<'a> {
    /// Writes the plan, finishes the blob, and hands back its descriptor with the walk's
    /// warnings.
    fn finish(
        &self,
        plan: &[Item],
        mut writer: LayerWriter,
        check: &(dyn Fn() -> Result<()> + Sync),
    ) -> Result<LayerDescriptor> {
        self.write(plan, &mut writer, check)?;
        let mut descriptor = writer.finish()?;
        descriptor.warnings = self.tree.warnings.clone();
        Ok(descriptor)
    }

    fn write(
        &self,
        plan: &[Item],
        writer: &mut LayerWriter,
        check: &(dyn Fn() -> Result<()> + Sync),
    ) -> Result<()> {
        let mut opener = Opener::new(self.tree)?;
        let mut first_name: HashMap<Inode, &'a [u8]> = HashMap::new();
        let mut name = Vec::new();
        for (n, item) in plan.iter().enumerate() {
            if n % CHECK_EVERY == 0 {
                check()?;
            }
            let result = match *item {
                Item::Entry(u) => self.entry(u, writer, &mut opener, &mut first_name, &mut name),
                Item::WhiteoutLower(l) => {
                    let lower = self.lower.expect("lower whiteouts come from a diff");
                    let node = &lower.nodes[l];
                    whiteout(writer, node.parent(), node.name(), &mut name)
                }
                Item::WhiteoutUpper(u) => {
                    let node = &self.tree.nodes[u];
                    whiteout(writer, node.parent(), node.name(), &mut name)
                }
                Item::Opaque(u) => {
                    let node = &self.tree.nodes[u];
                    marker(writer, &node.rel, OPAQUE_MARKER, &mut name)
                }
                Item::Slot => unreachable!("every slot is filled or removed"),
            };
            result?;
        }
        Ok(())
    }

    fn entry(
        &self,
        u: usize,
        writer: &mut LayerWriter,
        opener: &mut Opener<'a>,
        first_name: &mut HashMap<Inode, &'a [u8]>,
        name: &mut Vec<u8>,
    ) -> Result<()> {
        let tree: &'a Tree = self.tree;
        let node = &tree.nodes[u];
        name.clear();
        name.extend_from_slice(&node.rel);
        let mut xattrs: Vec<(String, Vec<u8>)>;
        let mut linkname: &[u8] = &node.linkname;
        let mut size = 0;
        let mut body = None;
        let typeflag = match node.kind {
            EntryKind::File | EntryKind::Hardlink => {
                let grouped = tree.group_of.contains_key(&u);
                match first_name.get(&node.key()) {
                    Some(first) if grouped => {
                        linkname = first;
                        xattrs = node.xattrs.clone();
                        if node.kind == EntryKind::File {
                            // Only hardlink entries carry walk-time xattrs without being
                            // asked; read them for a body-less name.
                            let path = tree.path(u);
                            xattrs = read_xattrs(XattrTarget::Path(&path), || path.clone())?;
                        }
                        header::LNKTYPE
                    }
                    _ => {
                        if grouped {
                            first_name.insert(node.key(), &node.rel);
                        }
                        let file = opener.open(u)?;
                        xattrs = read_xattrs(XattrTarget::Fd(file.as_raw_fd()), || tree.path(u))?;
                        size = node.size;
                        body = Some(file);
                        linkname = b"";
                        header::REGTYPE
                    }
                }
            }
            EntryKind::Dir => {
                name.push(b'/');
                xattrs = node.xattrs.clone();
                header::DIRTYPE
            }
            EntryKind::Symlink => {
                xattrs = node.xattrs.clone();
                header::SYMTYPE
            }
            EntryKind::Char => {
                xattrs = node.xattrs.clone();
                header::CHRTYPE
            }
            EntryKind::Block => {
                xattrs = node.xattrs.clone();
                header::BLKTYPE
            }
            EntryKind::Fifo => {
                xattrs = node.xattrs.clone();
                header::FIFOTYPE
            }
            EntryKind::Whiteout | EntryKind::Opaque => {
                unreachable!("the walk reports files, not whiteouts")
            }
        };
        if self.strip_overlay {
            if overlay_xattr(&xattrs, "metacopy").is_some() {
                return Err(Error::Unsupported {
                    path: tree.path(u),
                    detail: "metadata-only copy-up (overlay.metacopy): the body lives in the \
                             lower layers; diff the merged view instead"
                        .into(),
                });
            }
            xattrs.retain(|(k, _)| !is_overlay_xattr(k));
        }
        let mut mtime = node.mtime;
        if let Some(epoch) = self.source_date_epoch {
            mtime = mtime.min(epoch);
        }
        let spec = HeaderSpec {
            name,
            typeflag,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            size,
            mtime,
            linkname,
            uname: &node.uname,
            gname: &node.gname,
            devmajor: node.devmajor,
            devminor: node.devminor,
            xattrs: &xattrs,
        };
        match body.as_mut() {
            Some(file) => writer.append_file(&spec, file, &tree.path(u)),
            None => writer.append_empty(&spec),
        }
    }
}

/// Writes the whiteout `parent/.wh.name`.
fn whiteout(writer: &mut LayerWriter, parent: &[u8], name: &[u8], buf: &mut Vec<u8>) -> Result<()> {
    let mut base = WHITEOUT_PREFIX.to_vec();
    base.extend_from_slice(name);
    marker(writer, parent, &base, buf)
}

/// Writes an empty marker file `parent/base`: mode 0, owner 0, mtime 0 (as containerd and
/// Moby write whiteouts), so that a layer's bytes do not depend on when it was made.
fn marker(writer: &mut LayerWriter, parent: &[u8], base: &[u8], buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    if !parent.is_empty() {
        buf.extend_from_slice(parent);
        buf.push(b'/');
    }
    buf.extend_from_slice(base);
    writer.append_empty(&HeaderSpec {
        name: buf,
        typeflag: header::REGTYPE,
        ..HeaderSpec::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::EntryIter;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn no_check() -> Result<()> {
        Ok(())
    }

    fn write(root: &Path, rel: &str, body: &str, mtime: i64) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, body).unwrap();
        set_mtime(&p, mtime);
    }

    fn set_mtime(p: &Path, mtime: i64) {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(mtime as u64);
        let f = File::open(p).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
    }

    /// Every directory below `root` gets mtime `t`, deepest first.
    /// Sets the xattr `k` of `p` (not following a symlink); false where the filesystem refuses.
    fn set(p: &Path, k: &str, v: &[u8]) -> bool {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        let k = CString::new(k).unwrap();
        // SAFETY: valid C strings and buffer.
        let rc = unsafe { libc::lsetxattr(c.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        rc == 0
    }

    fn freeze(root: &Path, t: i64) {
        fn rec(p: &Path, t: i64) {
            for e in fs::read_dir(p).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    rec(&e.path(), t);
                }
            }
            set_mtime(p, t);
        }
        rec(root, t);
    }

    fn listing(path: &Path) -> Vec<(String, &'static str, i64)> {
        EntryIter::open(path)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (String::from_utf8(e.path).unwrap(), e.kind.as_str(), e.mtime)
            })
            .collect()
    }

    fn run(lower: &Path, upper: &Path, out: &Path, compare: Compare) -> LayerDescriptor {
        let options = DiffOptions {
            compression: Compression::None,
            compare,
            ..DiffOptions::default()
        };
        diff_dirs(lower, upper, out, &options, &no_check).unwrap()
    }

    #[test]
    fn walk_order_puts_a_directory_before_its_contents_and_compares_components() {
        use std::cmp::Ordering::*;
        assert_eq!(walk_order(b"a", b"a/x"), Less);
        assert_eq!(walk_order(b"a/x", b"a-b"), Less);
        assert_eq!(walk_order(b"a-b", b"a/x"), Greater);
        assert_eq!(walk_order(b"a/x", b"a/x"), Equal);
        assert_eq!(walk_order(b"b", b"a/z/z"), Greater);
    }

    #[test]
    fn whiteouts_first_opaque_when_smaller_and_unchanged_parents_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        let kept = ["p/k1", "p/k2", "p/k3", "q/keep"];
        for rel in ["p/d/a", "p/d/b", "p/d/c", "p/m", "p/z"]
            .iter()
            .chain(&kept)
        {
            write(&lower, rel, rel, 1000);
        }
        freeze(&lower, 1000);
        for rel in kept {
            write(&upper, rel, rel, 1000);
        }
        write(&upper, "p/0new", "0", 2000);
        write(&upper, "p/d/new", "new", 2000);
        freeze(&upper, 1000);
        fs::set_permissions(upper.join("p"), fs::Permissions::from_mode(0o700)).unwrap();
        let out = dir.path().join("layer.tar");
        let d = run(&lower, &upper, &out, Compare::Metadata);
        assert_eq!(d.digest, d.diff_id);
        let names: Vec<(String, &str)> =
            listing(&out).into_iter().map(|(p, k, _)| (p, k)).collect();
        let expected = [
            ("p", "dir"),
            ("p/.wh.m", "whiteout"),
            ("p/.wh.z", "whiteout"),
            ("p/0new", "file"),
            ("p/d", "dir"),
            ("p/d/.wh..wh..opq", "opaque"),
            ("p/d/new", "file"),
        ];
        let expected: Vec<(String, &str)> =
            expected.iter().map(|(p, k)| (p.to_string(), *k)).collect();
        assert_eq!(names, expected);
        // p: explicit = p, 2 whiteouts, 0new, d's 3 = 7 entries; opaque would be p, marker,
        // 0new, k1-k3, d, d/new = 8. d: explicit = d, 3 whiteouts, new = 5; opaque = 3.
        // Same trees, same bytes.
        let again = run(
            &lower,
            &upper,
            &dir.path().join("again.tar"),
            Compare::Metadata,
        );
        assert_eq!(again.diff_id, d.diff_id);
    }

    #[test]
    fn type_changes_and_content_compare() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        write(&lower, "x/deep/f", "f", 1000);
        write(&lower, "y", "y", 1000);
        write(&lower, "same", "body", 1000);
        symlink("target", lower.join("l")).unwrap();
        freeze(&lower, 1000);
        write(&upper, "x", "now a file", 1000);
        write(&upper, "y/child", "c", 1000);
        write(&upper, "same", "body", 3000); // touched only
        fs::create_dir(upper.join("l")).unwrap();
        freeze(&upper, 1000);
        let out = dir.path().join("meta.tar");
        run(&lower, &upper, &out, Compare::Metadata);
        let kinds: Vec<(String, &str)> =
            listing(&out).into_iter().map(|(p, k, _)| (p, k)).collect();
        let expected: Vec<(String, &str)> = [
            ("l", "dir"),
            ("same", "file"),
            ("x", "file"),
            ("y", "dir"),
            ("y/child", "file"),
        ]
        .iter()
        .map(|(p, k)| (p.to_string(), *k))
        .collect();
        assert_eq!(kinds, expected);
        let out = dir.path().join("content.tar");
        run(&lower, &upper, &out, Compare::Content);
        let paths: Vec<String> = listing(&out).into_iter().map(|(p, _, _)| p).collect();
        assert_eq!(paths, ["l", "x", "y", "y/child"]);
    }

    #[test]
    fn overlay_upper_with_a_user_opaque_dir_and_no_devices() {
        // user.overlay.* needs no privileges, so this runs as any user.
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        write(&upper, "o/child", "c", 1000);
        write(&upper, "plain", "p", 1000);
        freeze(&upper, 1000);
        if !set(&upper.join("o"), "user.overlay.opaque", b"y") {
            return; // a filesystem without user xattrs
        }
        let out = dir.path().join("layer.tar");
        let options = BuildOptions {
            compression: Compression::None,
            source_date_epoch: Some(500),
            ..BuildOptions::default()
        };
        from_overlay_upper(&upper, &out, &options, None, &no_check).unwrap();
        let got = listing(&out);
        let expected: Vec<(String, &str, i64)> = [
            ("o", "dir", 500),
            ("o/.wh..wh..opq", "opaque", 0),
            ("o/child", "file", 500),
            ("plain", "file", 500),
        ]
        .iter()
        .map(|(p, k, t)| (p.to_string(), *k, *t))
        .collect();
        assert_eq!(got, expected);
        let first = EntryIter::open(&out).unwrap().next().unwrap().unwrap();
        assert!(first.xattrs.is_empty(), "overlay xattrs are not copied");
    }

    #[test]
    fn overlay_upper_xwhiteouts_count_at_the_root_when_it_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        write(&upper, "gone", "", 1000);
        write(&upper, "d/gone", "", 1000);
        write(&upper, "empty", "", 1000);
        freeze(&upper, 1000);
        if !set(&upper.join("gone"), "user.overlay.whiteout", b"y") {
            return; // a filesystem without user xattrs
        }
        assert!(set(&upper.join("d/gone"), "user.overlay.whiteout", b"y"));
        assert!(set(&upper.join("d"), "user.overlay.opaque", b"x"));
        let options = BuildOptions {
            compression: Compression::None,
            source_date_epoch: Some(500),
            ..BuildOptions::default()
        };
        let kinds = |out: &Path| -> Vec<(String, &'static str)> {
            listing(out).into_iter().map(|(p, k, _)| (p, k)).collect()
        };
        let owned = |v: &[(&str, &'static str)]| -> Vec<(String, &'static str)> {
            v.iter().map(|(p, k)| (p.to_string(), *k)).collect()
        };
        // An unmarked root: its empty files are files, whatever their xattrs.
        let out = dir.path().join("unmarked.tar");
        from_overlay_upper(&upper, &out, &options, None, &no_check).unwrap();
        assert_eq!(
            kinds(&out),
            owned(&[
                ("d", "dir"),
                ("d/.wh.gone", "whiteout"),
                ("empty", "file"),
                ("gone", "file")
            ])
        );
        // Marked (6.7's overlay.whiteouts or 6.8's opaque=x): `gone` is a whiteout; `empty`,
        // without the whiteout xattr, stays a file.
        for (name, value) in [
            ("user.overlay.whiteouts", &b"y"[..]),
            ("user.overlay.opaque", b"x"),
        ] {
            let c = CString::new(upper.as_os_str().as_bytes()).unwrap();
            for old in ["user.overlay.whiteouts", "user.overlay.opaque"] {
                let k = CString::new(old).unwrap();
                // SAFETY: valid C strings.
                unsafe { libc::lremovexattr(c.as_ptr(), k.as_ptr()) };
            }
            assert!(set(&upper, name, value));
            let out = dir.path().join("marked.tar");
            from_overlay_upper(&upper, &out, &options, None, &no_check).unwrap();
            assert_eq!(
                kinds(&out),
                owned(&[
                    (".wh.gone", "whiteout"),
                    ("d", "dir"),
                    ("d/.wh.gone", "whiteout"),
                    ("empty", "file")
                ]),
                "{name}"
            );
        }
    }

    #[test]
    fn a_stack_as_lower_streams_bodies_once_per_blob_and_keeps_link_groups() {
        use crate::index::testutil::{blob, dir as tdir, file, hardlink, Spec};
        use crate::index::LayerIndex;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let l0 = blob(
            dir.path(),
            "l0.tar.gz",
            &[
                tdir("d", 0o755),
                file("d/a", &big),
                file("d/b", b"beta"),
                file("d/c", b"gone"),
                hardlink("d/h", "d/a"),
                file("d/z", &big[..70_000]),
            ],
            Compression::Gzip,
        );
        let l1 = blob(
            dir.path(),
            "l1.tar",
            &[
                tdir("d", 0o755),
                Spec::File("d/.wh.c".into(), Vec::new()),
                file("d/b", b"BETA"),
            ],
            Compression::None,
        );
        let index = |p: &Path| Arc::new(LayerIndex::build(p).unwrap());
        let view = MergedView::new(vec![index(&l0), index(&l1)]);
        let upper = dir.path().join("upper");
        write(&upper, "d/b", "BETA", 9000);
        fs::write(upper.join("d/a"), &big).unwrap();
        fs::hard_link(upper.join("d/a"), upper.join("d/h")).unwrap();
        fs::write(upper.join("d/z"), &big[..70_000]).unwrap();
        write(&upper, "d/new", "n", 9000);
        for rel in ["d/a", "d/z"] {
            fs::set_permissions(upper.join(rel), fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::set_permissions(upper.join("d"), fs::Permissions::from_mode(0o755)).unwrap();
        let run = |name: &str| {
            let options = DiffOptions {
                compression: Compression::None,
                compare: Compare::Content,
                ..DiffOptions::default()
            };
            let out = dir.path().join(name);
            diff_stack_dir(&view, &upper, &out, &options, &no_check).unwrap();
            listing(&out)
                .into_iter()
                .map(|(p, k, _)| (p, k))
                .collect::<Vec<_>>()
        };
        let pairs = |v: &[(&str, &'static str)]| -> Vec<(String, &'static str)> {
            v.iter().map(|(p, k)| (p.to_string(), *k)).collect()
        };
        // New mtimes, same bodies: only the new file (and its directory).
        assert_eq!(run("same.tar"), pairs(&[("d", "dir"), ("d/new", "file")]));
        // One byte changed in the linked body: the whole upper link group is written.
        let mut changed = big.clone();
        changed[299_999] ^= 1;
        fs::write(upper.join("d/a"), &changed).unwrap();
        assert_eq!(
            run("changed.tar"),
            pairs(&[
                ("d", "dir"),
                ("d/a", "file"),
                ("d/h", "hardlink"),
                ("d/new", "file")
            ])
        );
    }

    #[test]
    fn a_missing_tree_fails_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("upper")).unwrap();
        let err = diff_dirs(
            &dir.path().join("nope"),
            &dir.path().join("upper"),
            &dir.path().join("out"),
            &DiffOptions::default(),
            &no_check,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failing_check_stops_the_diff_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        write(&lower, "a", "a", 1000);
        write(&upper, "b", "b", 1000);
        let out_dir = dir.path().join("out");
        fs::create_dir(&out_dir).unwrap();
        let stop = || -> Result<()> { Err(Error::Interrupted) };
        let err = diff_dirs(
            &lower,
            &upper,
            &out_dir.join("l"),
            &DiffOptions::default(),
            &stop,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err}");
        assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 0);
    }
}

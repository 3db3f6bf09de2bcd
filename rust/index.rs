//! The index of one layer blob: every entry in archive order plus the lookup structures the
//! merged view ([`crate::overlay`]) needs: path → entry, whiteout targets, opaque directories.
//!
//! An index is built once per blob by streaming its entries (nothing of the file bodies is kept,
//! only their offsets in the uncompressed tar), and can be cached in a small binary file
//! (`<blob>.lcidx` beside the blob, or `<blob file name>.lcidx` in an index directory) that
//! records the blob's size, mtime and inode, so an index whose blob was rewritten is noticed
//! and rebuilt instead of trusted.
//!
//! Layer-local rules decided here, once, so every reader of the index sees the same layer:
//!
//! * A path that appears twice in one layer: the later entry wins, as extraction would have it.
//! * An entry below a non-directory entry of the same layer (`a` a file, `a/b` anything) can
//!   not exist in a file system: it is *shadowed* and never visible.
//! * Any entry with a component starting with `.wh.` that is not a whiteout or an opaque marker
//!   (a directory or symlink named `.wh.x`, say) is shadowed too: names starting with `.wh.`
//!   never appear in a merged view, and only regular files are whiteouts (as the reader
//!   classifies them).
//! * A parent directory that the layer does not carry but that one of its (visible) entries
//!   needs is an *implied* directory (mode 0755, owner 0:0, mtime 0), as `tar -x` would create
//!   it. Implied directories let lower attributes show through (see [`crate::overlay`]).
//!   The parents of whiteouts and opaque markers are implied the same way (`a/.wh.x` with no
//!   `a` entry makes `a` a directory of the layer), as flatten writes them and apply (ours and
//!   containerd's) creates them. A marker under a same-layer non-directory or a `.wh.` name
//!   implies nothing, like any shadowed entry.
//! * Entry paths with a `..` component are rejected: the merged view of a hostile layer would
//!   otherwise name things outside its root.

use std::cmp::Ordering;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use crate::compress::{self, Compression};
use crate::digest::{Digester, HashingReader};
use crate::entry::{split_parent, Entry, EntryKind, WHITEOUT_PREFIX};
use crate::error::{Error, Result};
use crate::layer::{self, LayerInfo, SeekPoint};
use crate::pagebuf::{PageBuf, PageBufReader};
use crate::parallel;
use crate::tar::reader::TarReader;

/// What an index file's name adds to its blob's name.
pub const INDEX_SUFFIX: &str = ".lcidx";

/// First bytes of an index file. The `\r\n\x1a` tail (as in PNG) catches text-mode mangling.
const MAGIC: &[u8; 8] = b"LCIDX\r\n\x1a";
/// Format version; an index of another version is rebuilt, never misread.
const VERSION: u32 = 2;
/// Length of the `sha256:<hex>` trailer that checks an index file's integrity.
const TRAILER: usize = 71;

/// Marks "no entry" in a [`Slot`].
const NONE: u32 = u32::MAX;

/// Identity of a blob file at the time it was indexed. A blob rewritten in place changes its
/// size or mtime; a blob replaced by rename changes its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobStamp {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ino: u64,
}

impl BlobStamp {
    /// The stamp of `blob` as it is now.
    pub fn of(blob: &Path) -> Result<BlobStamp> {
        let meta = fs::metadata(blob).map_err(|e| Error::io(blob, "cannot stat", e))?;
        Ok(BlobStamp {
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ino: meta.ino(),
        })
    }
}

/// Why a layer hides lower content at a path (see [`LayerIndex::cut`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// A whiteout of the path or of one of its ancestors.
    Whiteout,
    /// An opaque marker in one of its ancestors (the root included).
    Opaque,
    /// A non-directory entry at one of its ancestors (a file that replaces a directory).
    NonDir,
}

/// Everything one layer says about one path.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The last entry with this path (not whiteouts or markers), or [`NONE`].
    entry: u32,
    /// The entry is not visible (below a same-layer non-directory, or a `.wh.` name).
    shadowed: bool,
    /// The layer has `.wh.NAME` for this path.
    whiteout: bool,
    /// The layer has `.wh..wh..opq` in this directory.
    opaque: bool,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            entry: NONE,
            shadowed: false,
            whiteout: false,
            opaque: false,
        }
    }
}

/// The index of one layer blob. Immutable once built; share it with `Arc`.
///
/// Memory is O(entries): the entries' metadata and paths, one hash map over the distinct paths,
/// and the whiteout targets and opaque directories. Bodies are never held.
#[derive(Debug)]
pub struct LayerIndex {
    blob: PathBuf,
    stamp: BlobStamp,
    info: LayerInfo,
    /// Archive entries in archive order, then the implied directories.
    entries: Vec<Entry>,
    archive_len: usize,
    slots: HashMap<Box<[u8]>, Slot>,
    /// Distinct whiteout targets (`d/.wh.x` → `d/x`), in archive order.
    whiteouts: Vec<Box<[u8]>>,
    /// Distinct opaque directories (`d/.wh..wh..opq` → `d`; the root is `""`), in archive order.
    opaque: Vec<Box<[u8]>>,
    /// The visible entries (implied directories included), one per path, in walk order.
    order: Vec<u32>,
    /// Gzip members [`LayerIndex::copy_data`] can start decompressing at, in stream order.
    seek: Vec<SeekPoint>,
}

impl LayerIndex {
    /// Indexes `blob` by streaming it. The blob's digest and diff_id are computed at the same
    /// time, so the index also names the layer: in the same pass for a plain tar; for gzip and
    /// zstd by [`layer::describe`] on a second thread, reading the blob alongside the entry
    /// scan (the layer reader's strict decoders are not public, so the stream cannot be hashed
    /// on its way to the entry scan; decompression is done twice, in parallel).
    ///
    /// Errors: those of [`layer::describe`] / [`EntryIter`] for a missing or damaged blob;
    /// [`Error::Unsupported`] for an entry path with a `..` component; [`Error::Changed`] if the
    /// blob changed while it was read.
    pub fn build(blob: &Path) -> Result<LayerIndex> {
        Self::build_cancellable(blob, &AtomicBool::new(false))
    }

    /// [`LayerIndex::build`], giving up with [`Error::Interrupted`] soon after `cancel` is set.
    pub fn build_cancellable(blob: &Path, cancel: &AtomicBool) -> Result<LayerIndex> {
        let stamp = BlobStamp::of(blob)?;
        let (info, entries, seek) = match sniff(blob)? {
            Compression::None => {
                let (info, entries) = scan_plain(blob, cancel)?;
                (info, entries, Vec::new())
            }
            Compression::Gzip | Compression::Zstd => scan_compressed(blob, cancel)?,
        };
        if BlobStamp::of(blob)? != stamp {
            return Err(Error::Changed {
                path: blob.to_path_buf(),
                detail: "the blob changed while it was being indexed".into(),
            });
        }
        Self::assemble(blob.to_path_buf(), stamp, info, entries, seek)
    }

    /// Loads the cached index of `blob` (at [`LayerIndex::index_path`] for `index_dir`) if
    /// there is a fresh one, else builds it; with `save`, a built index is written there. A
    /// damaged, foreign-version or stale index file is rebuilt (and, with `save`,
    /// overwritten), never trusted.
    pub fn open(blob: &Path, index_dir: Option<&Path>, save: bool) -> Result<LayerIndex> {
        Self::open_cancellable(blob, index_dir, save, &AtomicBool::new(false))
    }

    /// [`LayerIndex::open`], giving up with [`Error::Interrupted`] soon after `cancel` is set.
    pub fn open_cancellable(
        blob: &Path,
        index_dir: Option<&Path>,
        save: bool,
        cancel: &AtomicBool,
    ) -> Result<LayerIndex> {
        let cached = Self::index_path(blob, index_dir);
        // Missing, stale, unreadable or damaged: the cache is only a cache, rebuild it.
        if let Ok(Some(index)) = Self::load(&cached, blob) {
            return Ok(index);
        }
        let index = Self::build_cancellable(blob, cancel)?;
        if save {
            index.save(&cached)?;
        }
        Ok(index)
    }

    /// Where the cached index of `blob` lives: `<blob>.lcidx` beside it, or with an
    /// `index_dir`, `<index_dir>/<blob file name>.lcidx` (so that a directory of blobs, such
    /// as an OCI layout's `blobs/sha256`, holds nothing else). Blobs sharing one `index_dir`
    /// need distinct file names (content-addressed blobs have them); the stamp check keeps an
    /// index of another blob from being used all the same.
    pub fn index_path(blob: &Path, index_dir: Option<&Path>) -> PathBuf {
        let mut name = match (index_dir, blob.file_name()) {
            (Some(dir), Some(file)) => dir.join(file).into_os_string(),
            _ => blob.as_os_str().to_owned(),
        };
        name.push(INDEX_SUFFIX);
        PathBuf::from(name)
    }

    /// The blob this index describes.
    pub fn blob(&self) -> &Path {
        &self.blob
    }

    /// Digests, sizes and compression of the blob, found while indexing it.
    pub fn info(&self) -> &LayerInfo {
        &self.info
    }

    /// The layer's diff_id (sha256 of the uncompressed tar).
    pub fn diff_id(&self) -> &str {
        &self.info.diff_id
    }

    /// The blob's identity when it was indexed.
    pub fn stamp(&self) -> BlobStamp {
        self.stamp
    }

    /// The archive's entries in archive order (whiteouts and opaque markers included, implied
    /// directories not).
    pub fn entries(&self) -> &[Entry] {
        &self.entries[..self.archive_len]
    }

    /// Entry `i`: an archive entry below `entries().len()`, an implied directory above.
    pub fn entry(&self, i: u32) -> &Entry {
        &self.entries[i as usize]
    }

    /// Whether entry `i` is an implied directory rather than an archive entry.
    pub fn is_implied(&self, i: u32) -> bool {
        i as usize >= self.archive_len
    }

    /// The visible entry this layer has at `path` (the later one if the archive has two;
    /// implied directories included), or `None` if it has none or it is shadowed.
    pub fn get(&self, path: &[u8]) -> Option<u32> {
        match self.slots.get(path) {
            Some(s) if s.entry != NONE && !s.shadowed => Some(s.entry),
            _ => None,
        }
    }

    /// The last archive entry at `path` whatever its visibility (a hardlink's target is found
    /// this way: its body is in the layer even when the name is not visible).
    pub fn last_entry(&self, path: &[u8]) -> Option<u32> {
        match self.slots.get(path) {
            Some(s) if s.entry != NONE && !self.is_implied(s.entry) => Some(s.entry),
            _ => None,
        }
    }

    /// Whether the layer has a whiteout (`.wh.NAME`) for exactly `path`.
    pub fn is_whited_out(&self, path: &[u8]) -> bool {
        self.slots.get(path).is_some_and(|s| s.whiteout)
    }

    /// Whether the layer marks directory `path` opaque (`""` is the root).
    pub fn is_opaque(&self, path: &[u8]) -> bool {
        self.slots.get(path).is_some_and(|s| s.opaque)
    }

    /// The whiteout targets, distinct, in archive order.
    pub fn whiteouts(&self) -> impl Iterator<Item = &[u8]> {
        self.whiteouts.iter().map(|p| &p[..])
    }

    /// The opaque directories, distinct, in archive order (`""` is the root).
    pub fn opaque_dirs(&self) -> impl Iterator<Item = &[u8]> {
        self.opaque.iter().map(|p| &p[..])
    }

    /// The visible entries (implied directories included), one per path, in walk order: depth
    /// first, each directory before its contents, names sorted by bytes.
    pub fn visible(&self) -> &[u32] {
        &self.order
    }

    /// Whether this layer hides what lower layers have at `path`, and why: a whiteout of the
    /// path or of an ancestor ([`Cut::Whiteout`] takes precedence), an opaque ancestor, or a
    /// non-directory entry at an ancestor. Says nothing about the layer's own entry at `path`.
    pub fn cut(&self, path: &[u8]) -> Option<Cut> {
        if self.is_whited_out(path) {
            return Some(Cut::Whiteout);
        }
        let mut hidden = None;
        let mut ancestor = path;
        loop {
            ancestor = split_parent(ancestor).0;
            if let Some(slot) = self.slots.get(ancestor) {
                if slot.whiteout {
                    return Some(Cut::Whiteout);
                }
                if hidden.is_none() {
                    if slot.opaque {
                        hidden = Some(Cut::Opaque);
                    } else if slot.entry != NONE
                        && !slot.shadowed
                        && self.entries[slot.entry as usize].kind != EntryKind::Dir
                    {
                        hidden = Some(Cut::NonDir);
                    }
                }
            }
            if ancestor.is_empty() {
                return hidden;
            }
        }
    }

    /// Checks that the blob is still the one that was indexed.
    pub fn check_fresh(&self) -> Result<()> {
        if BlobStamp::of(&self.blob)? == self.stamp {
            Ok(())
        } else {
            Err(Error::Changed {
                path: self.blob.clone(),
                detail: "the blob changed since it was indexed".into(),
            })
        }
    }

    /// Copies the data of entry `i` (a regular file's body) from the blob into `out`; returns
    /// the bytes copied (the entry's size). A plain tar is read at the entry's offset; a gzip
    /// blob is decompressed from the last seek point (a member start, see
    /// [`layer::scan_seekable`]) at or before the entry, so at most [`layer::SEEK_SPACING`]
    /// bytes plus one member are decoded and skipped when the blob has many members (ours have
    /// one per MiB); a zstd blob, or a gzip blob of one member, from its start. O(1) memory.
    /// [`Error::Changed`] if the blob is not the one indexed.
    pub fn copy_data(&self, i: u32, out: &mut dyn Write) -> Result<u64> {
        self.check_fresh()?;
        let entry = self.entry(i);
        let blob = &self.blob;
        let file = File::open(blob).map_err(|e| Error::io(blob, "cannot open", e))?;
        let read_err = |e: io::Error| stream_error(blob, e);
        let mut buf = PageBuf::new(COPY_BUFFER);
        let mut body: Box<dyn Read> = match self.info.compression {
            Compression::None => {
                let mut file = file;
                file.seek(SeekFrom::Start(entry.offset))
                    .map_err(|e| Error::io(blob, "cannot seek", e))?;
                Box::new(file)
            }
            Compression::Gzip | Compression::Zstd => {
                // Start at the last gzip member at or before the entry's data, if any.
                let start = match self.seek.partition_point(|p| p.stream <= entry.offset) {
                    0 => SeekPoint {
                        stored: 0,
                        stream: 0,
                    },
                    n => self.seek[n - 1],
                };
                let mut file = file;
                file.seek(SeekFrom::Start(start.stored))
                    .map_err(|e| Error::io(blob, "cannot seek", e))?;
                let (_, mut stream) =
                    compress::decoder(PageBufReader::with_capacity(COPY_BUFFER, file))
                        .map_err(read_err)?;
                let mut skip = entry.offset - start.stream;
                while skip > 0 {
                    let want = buf.len().min(usize::try_from(skip).unwrap_or(usize::MAX));
                    let n = read_some(&mut stream, &mut buf[..want]).map_err(read_err)?;
                    if n == 0 {
                        return Err(short(blob, entry));
                    }
                    skip -= n as u64;
                }
                stream
            }
        };
        let mut left = entry.size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = read_some(&mut body, &mut buf[..want]).map_err(read_err)?;
            if n == 0 {
                return Err(short(blob, entry));
            }
            out.write_all(&buf[..n])
                .map_err(|e| Error::io(blob, "cannot write the data read from", e))?;
            left -= n as u64;
        }
        Ok(entry.size)
    }

    /// Writes the index to `path` (atomically: a temp file beside it, renamed into place),
    /// creating its directory if missing.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.encode();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, "cannot create the directory", e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".lcidx-")
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, "cannot create a temp file in", e))?;
        tmp.write_all(&bytes)
            .map_err(|e| Error::io(tmp.path(), "cannot write", e))?;
        // No fsync: an index torn by a crash fails its checksum and is rebuilt, and a
        // cache is not worth a disk flush per layer.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(tmp.path(), "cannot chmod", e))?;
        tmp.persist(path)
            .map_err(|e| Error::io(path, "cannot rename into place", e.error))?;
        Ok(())
    }

    /// Reads the index file at `path` as the index of `blob`. `Ok(None)` if it is stale (the
    /// blob's size, mtime or inode differ from those recorded); [`Error::NotFound`] if there is
    /// no such file; [`Error::Corrupt`] if it is not an intact index of this format version.
    pub fn load(path: &Path, blob: &Path) -> Result<Option<LayerIndex>> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?;
        let current = BlobStamp::of(blob)?;
        let (stamp, info, entries, seek) = decode(&bytes, path)?;
        if stamp != current {
            return Ok(None);
        }
        Self::assemble(blob.to_path_buf(), stamp, info, entries, seek).map(Some)
    }

    /// Builds the lookup structures over the archive entries.
    fn assemble(
        blob: PathBuf,
        stamp: BlobStamp,
        info: LayerInfo,
        mut entries: Vec<Entry>,
        seek: Vec<SeekPoint>,
    ) -> Result<LayerIndex> {
        if entries.len() >= NONE as usize {
            return Err(Error::Unsupported {
                path: blob,
                detail: format!("{} entries are more than an index can hold", entries.len()),
            });
        }
        let mut slots: HashMap<Box<[u8]>, Slot> = HashMap::with_capacity(entries.len() + 1);
        let mut whiteouts = Vec::new();
        let mut opaque = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if e.path.split(|&b| b == b'/').any(|part| part == b"..") {
                return Err(Error::Unsupported {
                    path: blob,
                    detail: format!(
                        "entry '{}' climbs out of the layer root with '..'",
                        e.path.escape_ascii()
                    ),
                });
            }
            let (parent, base) = split_parent(&e.path);
            match e.kind {
                EntryKind::Whiteout => {
                    let target = join(parent, &base[WHITEOUT_PREFIX.len()..]);
                    let slot = slots.entry(target.clone().into()).or_default();
                    if !slot.whiteout {
                        slot.whiteout = true;
                        whiteouts.push(target.into());
                    }
                }
                EntryKind::Opaque => {
                    let slot = slots.entry(parent.into()).or_default();
                    if !slot.opaque {
                        slot.opaque = true;
                        opaque.push(parent.into());
                    }
                }
                _ => slots.entry(e.path.as_slice().into()).or_default().entry = i as u32,
            }
        }
        let archive_len = entries.len();

        // One walk up the ancestors of each entry (the last one of its path, in archive
        // order; every whiteout and opaque marker) decides whether it is visible and which
        // parents it implies. Shadowed: a component named `.wh.*` (for a marker, one of its
        // parent's), or a non-directory ancestor in this layer. A marker itself is never
        // visible, but its parents are directories of the layer, as flatten writes them.
        let mut order: Vec<u32> = Vec::with_capacity(archive_len);
        let mut missing: Vec<Vec<u8>> = Vec::new();
        for i in 0..archive_len {
            let entry = &entries[i];
            let marker = matches!(entry.kind, EntryKind::Whiteout | EntryKind::Opaque);
            if !marker && slots.get(entry.path.as_slice()).map(|s| s.entry) != Some(i as u32) {
                continue;
            }
            let named = if marker {
                split_parent(&entry.path).0
            } else {
                &entry.path
            };
            let mut hidden = named
                .split(|&b| b == b'/')
                .any(|part| part.starts_with(WHITEOUT_PREFIX));
            missing.clear();
            let mut ancestor = split_parent(&entry.path).0;
            while !hidden && !ancestor.is_empty() {
                match slots.get(ancestor) {
                    Some(s) if s.entry != NONE => {
                        hidden = entries[s.entry as usize].kind != EntryKind::Dir;
                    }
                    _ => missing.push(ancestor.to_vec()),
                }
                ancestor = split_parent(ancestor).0;
            }
            if hidden {
                if !marker {
                    if let Some(slot) = slots.get_mut(entries[i].path.as_slice()) {
                        slot.shadowed = true;
                    }
                }
                continue;
            }
            if !marker {
                order.push(i as u32);
            }
            for dir in missing.drain(..) {
                let at = entries.len() as u32;
                match slots.entry(dir.clone().into()) {
                    MapEntry::Occupied(mut o) => o.get_mut().entry = at,
                    MapEntry::Vacant(v) => {
                        v.insert(Slot {
                            entry: at,
                            ..Slot::default()
                        });
                    }
                }
                entries.push(implied_dir(dir));
                order.push(at);
            }
        }
        // Archives are usually written sorted (ours, `tar --sort=name`), and a stable sort
        // of an almost sorted list is nearly linear.
        order.sort_by(|&a, &b| walk_cmp(&entries[a as usize].path, &entries[b as usize].path));
        Ok(LayerIndex {
            blob,
            stamp,
            info,
            entries,
            archive_len,
            slots,
            whiteouts,
            opaque,
            order,
            seek,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.archive_len * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let s = &self.stamp;
        put_uint(&mut out, s.size);
        put_int(&mut out, s.mtime);
        put_int(&mut out, s.mtime_nsec);
        put_uint(&mut out, s.ino);
        let info = &self.info;
        out.push(match info.compression {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 2,
        });
        put_bytes(&mut out, info.digest.as_bytes());
        put_bytes(&mut out, info.diff_id.as_bytes());
        put_uint(&mut out, info.size);
        put_uint(&mut out, info.uncompressed_size);
        put_uint(&mut out, self.archive_len as u64);
        for e in self.entries() {
            out.push(kind_code(e.kind));
            put_bytes(&mut out, &e.path);
            put_uint(&mut out, u64::from(e.mode));
            put_uint(&mut out, e.uid);
            put_uint(&mut out, e.gid);
            put_bytes(&mut out, e.uname.as_bytes());
            put_bytes(&mut out, e.gname.as_bytes());
            put_uint(&mut out, e.size);
            put_int(&mut out, e.mtime);
            match &e.linkname {
                None => out.push(0),
                Some(l) => {
                    out.push(1);
                    put_bytes(&mut out, l);
                }
            }
            put_uint(&mut out, u64::from(e.devmajor));
            put_uint(&mut out, u64::from(e.devminor));
            put_uint(&mut out, e.xattrs.len() as u64);
            for (k, v) in &e.xattrs {
                put_bytes(&mut out, k.as_bytes());
                put_bytes(&mut out, v);
            }
            put_uint(&mut out, e.offset);
        }
        put_uint(&mut out, self.seek.len() as u64);
        for p in &self.seek {
            put_uint(&mut out, p.stored);
            put_uint(&mut out, p.stream);
        }
        let mut d = Digester::new();
        d.update(&out);
        out.extend_from_slice(d.finish().as_bytes());
        out
    }
}

/// Indexes (or loads the cached indexes of) several blobs in parallel, one worker per core.
/// Returns them in the order given; the same blob named twice is indexed once and shared.
/// Cached indexes are looked for (and with `save`, written) where [`LayerIndex::index_path`]
/// puts them for `index_dir`. `check` is called on the calling thread while it waits (Python's
/// Ctrl-C check); its error stops every worker. The first failure in blob order is reported.
pub fn open_all(
    blobs: &[PathBuf],
    index_dir: Option<&Path>,
    save: bool,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<Vec<Arc<LayerIndex>>> {
    check()?;
    let mut first_of: HashMap<&Path, usize> = HashMap::new();
    let distinct: Vec<usize> = (0..blobs.len())
        .filter(|&i| *first_of.entry(&blobs[i]).or_insert(i) == i)
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let indexes = parallel::map_stoppable(distinct.len(), workers, check, |n, cancel| {
        LayerIndex::open_cancellable(&blobs[distinct[n]], index_dir, save, cancel)
    })?;
    let mut shared: Vec<Option<Arc<LayerIndex>>> = vec![None; blobs.len()];
    for (&i, index) in distinct.iter().zip(indexes) {
        shared[i] = Some(Arc::new(index));
    }
    Ok((0..blobs.len())
        .map(|i| {
            let first = first_of[blobs[i].as_path()];
            Arc::clone(
                shared[first]
                    .as_ref()
                    .expect("every distinct blob was indexed"),
            )
        })
        .collect())
}

/// The compression of `blob`, from its magic number.
fn sniff(blob: &Path) -> Result<Compression> {
    let mut file = File::open(blob).map_err(|e| Error::io(blob, "cannot open", e))?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match read_some(&mut file, &mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(Error::io(blob, "cannot read", e)),
        }
    }
    Ok(Compression::detect(&magic[..got]))
}

/// A plain tar in one pass: the tar reader over the hashed file (the blob is its own
/// uncompressed stream, so one hash is both digests).
fn scan_plain(blob: &Path, cancel: &AtomicBool) -> Result<(LayerInfo, Vec<Entry>)> {
    let file = File::open(blob).map_err(|e| Error::io(blob, "cannot open", e))?;
    let mut tar = TarReader::new(HashingReader::new(file), blob.to_path_buf());
    let mut entries = Vec::new();
    while let Some(entry) = tar.next_entry()? {
        if entries.len() % 1024 == 0 && cancel.load(AtomicOrdering::Relaxed) {
            return Err(Error::Interrupted);
        }
        entries.push(entry);
    }
    let uncompressed_size = tar.position();
    let (_, digester) = tar.into_inner().into_parts();
    let size = digester.len();
    let digest = digester.finish();
    let info = LayerInfo {
        compression: Compression::None,
        diff_id: digest.clone(),
        digest,
        size,
        uncompressed_size,
    };
    Ok((info, entries))
}

/// A gzip or zstd blob: one pass ([`layer::scan`]) that decompresses it once, collecting the
/// entries while both digests are computed. Listing on one thread while a second thread
/// described the blob decompressed it twice: `Stack(layers)` over the benchmarks' 5-layer gzip
/// stack (`index/stack5`) took 731 ms of CPU that way and takes 425 ms in one pass, its wall
/// time 611 ms then and 502 ms now (the largest layer and the merge are what is left).
fn scan_compressed(
    blob: &Path,
    cancel: &AtomicBool,
) -> Result<(LayerInfo, Vec<Entry>, Vec<SeekPoint>)> {
    let mut entries = Vec::new();
    let (info, seek) = layer::scan_seekable(blob, |entry| {
        if entries.len() % 1024 == 0 && cancel.load(AtomicOrdering::Relaxed) {
            return Err(Error::Interrupted);
        }
        entries.push(entry);
        Ok(())
    })?;
    Ok((info, entries, seek))
}

/// Compares two paths in walk order: bytewise, with `/` before every other byte, so that a
/// directory's contents come right after it (`a`, `a/x`, `a-b`: GNU `tar --sort=name`).
pub fn walk_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    let mut i = 0;
    // Skip the common prefix eight bytes at a time: sorting and merging spend their time here.
    while i + 8 <= n && a[i..i + 8] == b[i..i + 8] {
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    if i == n {
        return a.len().cmp(&b.len());
    }
    let rank = |x: u8| if x == b'/' { 0u16 } else { u16::from(x) + 1 };
    rank(a[i]).cmp(&rank(b[i]))
}

/// `parent/name`, or `name` at the root.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut out = Vec::with_capacity(parent.len() + 1 + name.len());
    out.extend_from_slice(parent);
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

fn implied_dir(path: Vec<u8>) -> Entry {
    Entry {
        path,
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        uname: String::new(),
        gname: String::new(),
        size: 0,
        mtime: 0,
        linkname: None,
        devmajor: 0,
        devminor: 0,
        xattrs: Vec::new(),
        offset: 0,
    }
}

const COPY_BUFFER: usize = 256 * 1024;

fn read_some(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn short(blob: &Path, entry: &Entry) -> Error {
    Error::truncated(
        blob,
        format!(
            "the stream ends inside the data of '{}'",
            entry.path.escape_ascii()
        ),
    )
}

/// Classifies a read error of a (decompressed) blob stream like the layer reader does.
fn stream_error(blob: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::truncated(blob, e.to_string()),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            Error::corrupt(blob, 0, format!("damaged compressed stream: {e}"))
        }
        _ => Error::io(blob, "cannot read", e),
    }
}

fn kind_code(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
        EntryKind::Hardlink => 3,
        EntryKind::Char => 4,
        EntryKind::Block => 5,
        EntryKind::Fifo => 6,
        EntryKind::Whiteout => 7,
        EntryKind::Opaque => 8,
    }
}

fn kind_of(code: u8) -> Option<EntryKind> {
    Some(match code {
        0 => EntryKind::File,
        1 => EntryKind::Dir,
        2 => EntryKind::Symlink,
        3 => EntryKind::Hardlink,
        4 => EntryKind::Char,
        5 => EntryKind::Block,
        6 => EntryKind::Fifo,
        7 => EntryKind::Whiteout,
        8 => EntryKind::Opaque,
        _ => return None,
    })
}

/// LEB128.
fn put_uint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Zigzag, then LEB128.
fn put_int(out: &mut Vec<u8>, v: i64) {
    put_uint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over an index file; every failure is [`Error::Corrupt`] at its byte offset.
struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Decoder<'a> {
    fn fail(&self, what: &str) -> Error {
        Error::corrupt(
            self.path,
            self.pos as u64,
            format!("layer index file: {what}"),
        )
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.fail("ends early"))?;
        self.pos += 1;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.fail("a number is too long"))
    }

    fn int(&mut self) -> Result<i64> {
        let z = self.uint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn u32(&mut self) -> Result<u32> {
        let v = self.uint()?;
        u32::try_from(v).map_err(|_| self.fail("a 32-bit field is out of range"))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.uint()?;
        let len = usize::try_from(len).map_err(|_| self.fail("a length is out of range"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| self.fail("a field runs past the end"))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.fail("a text field is not UTF-8"))
    }
}

#[allow(clippy::type_complexity)]
fn decode(bytes: &[u8], path: &Path) -> Result<(BlobStamp, LayerInfo, Vec<Entry>, Vec<SeekPoint>)> {
    let bad = |offset: usize, what: &str| {
        Error::corrupt(path, offset as u64, format!("layer index file: {what}"))
    };
    if bytes.len() < MAGIC.len() + 4 + TRAILER || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad(0, "not a layercore index"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(
            8,
            &format!("format version {version}, expected {VERSION}"),
        ));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER);
    let mut d = Digester::new();
    d.update(body);
    if d.finish().as_bytes() != trailer {
        return Err(bad(body.len(), "checksum mismatch (torn or damaged file)"));
    }
    let mut dec = Decoder {
        buf: body,
        pos: 12,
        path,
    };
    let stamp = BlobStamp {
        size: dec.uint()?,
        mtime: dec.int()?,
        mtime_nsec: dec.int()?,
        ino: dec.uint()?,
    };
    let compression = match dec.byte()? {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Zstd,
        _ => return Err(dec.fail("unknown compression")),
    };
    let info = LayerInfo {
        compression,
        digest: dec.string()?,
        diff_id: dec.string()?,
        size: dec.uint()?,
        uncompressed_size: dec.uint()?,
    };
    let count = dec.uint()?;
    // Every entry takes at least 16 bytes: a count beyond that is a lie, not an allocation.
    if count > (body.len() / 16) as u64 {
        return Err(dec.fail("the entry count is larger than the file"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let kind = kind_of(dec.byte()?).ok_or_else(|| dec.fail("unknown entry kind"))?;
        let path = dec.bytes()?.to_vec();
        let mode = dec.u32()?;
        let uid = dec.uint()?;
        let gid = dec.uint()?;
        let uname = dec.string()?;
        let gname = dec.string()?;
        let size = dec.uint()?;
        let mtime = dec.int()?;
        let linkname = match dec.byte()? {
            0 => None,
            1 => Some(dec.bytes()?.to_vec()),
            _ => return Err(dec.fail("bad link flag")),
        };
        let devmajor = dec.u32()?;
        let devminor = dec.u32()?;
        let nx = dec.uint()?;
        if nx > (body.len() / 2) as u64 {
            return Err(dec.fail("the xattr count is larger than the file"));
        }
        let mut xattrs = Vec::with_capacity(nx as usize);
        for _ in 0..nx {
            xattrs.push((dec.string()?, dec.bytes()?.to_vec()));
        }
        let offset = dec.uint()?;
        entries.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            uname,
            gname,
            size,
            mtime,
            linkname,
            devmajor,
            devminor,
            xattrs,
            offset,
        });
    }
    let points = dec.uint()?;
    // Each point takes at least 2 bytes.
    if points > (body.len() / 2) as u64 {
        return Err(dec.fail("the seek point count is larger than the file"));
    }
    let mut seek = Vec::with_capacity(points as usize);
    for _ in 0..points {
        seek.push(SeekPoint {
            stored: dec.uint()?,
            stream: dec.uint()?,
        });
    }
    if dec.pos != body.len() {
        return Err(dec.fail("bytes after the seek points"));
    }
    Ok((stamp, info, entries, seek))
}

/// Layer blobs for tests, written with tar-rs from a list of specs.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};

    use crate::compress::Compression;

    /// One archive entry. Whiteouts and opaque markers are `File`s with their names.
    #[derive(Clone, Debug)]
    pub enum Spec {
        File(String, Vec<u8>),
        Dir(String, u32),
        Symlink(String, String),
        Hardlink(String, String),
        Fifo(String),
    }

    pub fn file(path: &str, body: &[u8]) -> Spec {
        Spec::File(path.into(), body.to_vec())
    }
    pub fn dir(path: &str, mode: u32) -> Spec {
        Spec::Dir(path.into(), mode)
    }
    pub fn symlink(path: &str, target: &str) -> Spec {
        Spec::Symlink(path.into(), target.into())
    }
    pub fn hardlink(path: &str, target: &str) -> Spec {
        Spec::Hardlink(path.into(), target.into())
    }
    pub fn fifo(path: &str) -> Spec {
        Spec::Fifo(path.into())
    }

    pub fn tar_bytes(specs: &[Spec]) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        for (n, spec) in specs.iter().enumerate() {
            let mut h = ::tar::Header::new_gnu();
            h.set_mtime(1_000 + n as u64);
            h.set_uid(0);
            h.set_gid(0);
            match spec {
                Spec::File(p, body) => {
                    h.set_entry_type(::tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(body.len() as u64);
                    b.append_data(&mut h, p, &body[..]).unwrap();
                }
                Spec::Dir(p, mode) => {
                    h.set_entry_type(::tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{p}/"), &[][..]).unwrap();
                }
                Spec::Symlink(p, t) => {
                    h.set_entry_type(::tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
                Spec::Hardlink(p, t) => {
                    h.set_entry_type(::tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
                Spec::Fifo(p) => {
                    h.set_entry_type(::tar::EntryType::Fifo);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    pub fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
        use std::io::Write;
        match compression {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
        }
    }

    /// Writes a layer blob `dir/name` from `specs`.
    pub fn blob(dir: &Path, name: &str, specs: &[Spec], compression: Compression) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, compress(&tar_bytes(specs), compression)).unwrap();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn sha256(bytes: &[u8]) -> String {
        let mut d = Digester::new();
        d.update(bytes);
        d.finish()
    }

    fn paths(index: &LayerIndex, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&i| String::from_utf8(index.entry(i).path.clone()).unwrap())
            .collect()
    }

    fn data(index: &LayerIndex, i: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let n = index.copy_data(i, &mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    fn sample() -> Vec<Spec> {
        vec![
            file("x", b"first x"),
            file(".wh.gone", b""),
            dir("d", 0o750),
            file("d/.wh..wh..opq", b""),
            file("d/new", b"new"),
            file("deep/er/f", b"implied parents"),
            file("x", b"second x"),
            file("a", b"a file"),
            file("a/b", b"below a file: shadowed"),
            dir(".wh.dir", 0o755),
            file(".wh.dir/inside", b"hidden"),
            file("sub/.wh.sib", b""),
            file(".wh..wh..opq", b""),
        ]
    }

    #[test]
    fn an_index_has_the_layer_rules_and_the_digests() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = tar_bytes(&sample());
        let path = tmp.path().join("l.tar");
        fs::write(&path, &tar).unwrap();
        let index = LayerIndex::build(&path).unwrap();

        assert_eq!(index.diff_id(), sha256(&tar));
        assert_eq!(index.info().digest, sha256(&tar));
        assert_eq!(index.info().compression, Compression::None);
        assert_eq!(index.entries().len(), sample().len());
        let archive: Vec<&[u8]> = index.entries().iter().map(|e| &e.path[..]).collect();
        assert_eq!(archive[..3], [&b"x"[..], b".wh.gone", b"d"]);

        // The later `x` wins.
        let x = index.get(b"x").unwrap();
        assert_eq!(x, 6);
        assert_eq!(data(&index, x), b"second x");
        // Whiteouts and opaque markers.
        assert_eq!(
            index.whiteouts().collect::<Vec<_>>(),
            [&b"gone"[..], b"sub/sib"]
        );
        assert_eq!(index.opaque_dirs().collect::<Vec<_>>(), [&b"d"[..], b""]);
        assert!(index.is_whited_out(b"gone") && !index.is_whited_out(b"x"));
        assert!(index.is_opaque(b"d") && index.is_opaque(b""));
        // Implied parents: deep, deep/er, and sub (the parent of a whiteout).
        let deep = index.get(b"deep").unwrap();
        assert!(index.is_implied(deep));
        assert_eq!(index.entry(deep).kind, EntryKind::Dir);
        assert_eq!(index.entry(deep).mode, 0o755);
        let sub = index.get(b"sub").unwrap();
        assert!(index.is_implied(sub));
        assert_eq!(index.entry(sub).kind, EntryKind::Dir);
        // Shadowed: below a same-layer file, and `.wh.`-named non-whiteouts.
        assert!(index.get(b"a/b").is_none());
        assert_eq!(index.last_entry(b"a/b"), Some(8));
        assert!(index.get(b".wh.dir").is_none() && index.get(b".wh.dir/inside").is_none());
        assert_eq!(
            paths(&index, index.visible()),
            [
                "a",
                "d",
                "d/new",
                "deep",
                "deep/er",
                "deep/er/f",
                "sub",
                "x"
            ]
        );
        // Cuts.
        assert_eq!(index.cut(b"gone/below"), Some(Cut::Whiteout));
        assert_eq!(index.cut(b"gone"), Some(Cut::Whiteout));
        assert_eq!(index.cut(b"a/b"), Some(Cut::NonDir));
        assert_eq!(index.cut(b"d/old"), Some(Cut::Opaque));
        assert_eq!(index.cut(b"anything"), Some(Cut::Opaque)); // the root is opaque
    }

    #[test]
    fn markers_imply_their_parents_unless_shadowed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = blob(
            tmp.path(),
            "l",
            &[
                file("w/.wh.x", b""),
                file("o/p/.wh..wh..opq", b""),
                dir("kept", 0o700),
                file("kept/.wh.y", b""),
                file("f", b"a file"),
                file("f/.wh.z", b""),
                file(".wh.q/.wh.r", b""),
                file(".wh.w", b""),
            ],
            Compression::None,
        );
        let index = LayerIndex::build(&path).unwrap();
        assert_eq!(
            paths(&index, index.visible()),
            ["f", "kept", "o", "o/p", "w"]
        );
        for p in [&b"w"[..], b"o", b"o/p"] {
            let i = index.get(p).unwrap();
            assert!(index.is_implied(i));
            let e = index.entry(i);
            assert_eq!(
                (e.kind, e.mode, e.uid, e.mtime),
                (EntryKind::Dir, 0o755, 0, 0)
            );
        }
        // An explicit directory is not replaced, a same-layer file is not turned into one.
        assert!(!index.is_implied(index.get(b"kept").unwrap()));
        assert_eq!(index.entry(index.get(b"f").unwrap()).kind, EntryKind::File);
        // The markers still speak about lower layers, the layer's own `w` survives `.wh.w`.
        assert!(index.is_whited_out(b"w") && index.is_whited_out(b"w/x"));
        assert!(index.is_opaque(b"o/p"));
        assert_eq!(index.cut(b"o/p/lower"), Some(Cut::Opaque));
        assert_eq!(index.cut(b"o/p"), None);
    }

    #[test]
    fn cut_without_an_opaque_root() {
        let tmp = tempfile::tempdir().unwrap();
        let path = blob(
            tmp.path(),
            "l",
            &[dir("d", 0o755), file("f", b"")],
            Compression::None,
        );
        let index = LayerIndex::build(&path).unwrap();
        assert_eq!(index.cut(b"d/x"), None);
        assert_eq!(index.cut(b"f/x"), Some(Cut::NonDir));
        assert_eq!(index.cut(b"other"), None);
    }

    #[test]
    fn data_is_read_through_every_compression() {
        let tmp = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let specs = [
            file("small", b"hello"),
            file("big", &big),
            file("tail", b"t"),
        ];
        let tar = tar_bytes(&specs);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let path = blob(tmp.path(), &format!("{c:?}"), &specs, c);
            let index = LayerIndex::build(&path).unwrap();
            assert_eq!(index.info().compression, c);
            assert_eq!(index.diff_id(), sha256(&tar));
            assert_eq!(index.info().digest, sha256(&fs::read(&path).unwrap()));
            assert_eq!(data(&index, index.get(b"small").unwrap()), b"hello");
            assert_eq!(data(&index, index.get(b"big").unwrap()), big);
            assert_eq!(data(&index, index.get(b"tail").unwrap()), b"t");
        }
    }

    #[test]
    fn reading_a_rewritten_blob_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = blob(tmp.path(), "l", &[file("f", b"one")], Compression::None);
        let index = LayerIndex::build(&path).unwrap();
        // Same size, same inode: only the mtime tells (set explicitly: two writes within the
        // file system's timestamp granularity may get the same one).
        blob(tmp.path(), "l", &[file("f", b"two")], Compression::None);
        assert_eq!(fs::metadata(&path).unwrap().len(), index.stamp().size);
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        match index.copy_data(0, &mut Vec::new()) {
            Err(Error::Changed { path: at, .. }) => assert_eq!(at, path),
            other => panic!("{other:?}"),
        }
    }

    fn same(a: &LayerIndex, b: &LayerIndex) {
        assert_eq!(a.entries, b.entries);
        assert_eq!(a.archive_len, b.archive_len);
        assert_eq!(a.info, b.info);
        assert_eq!(a.stamp, b.stamp);
        assert_eq!(a.whiteouts, b.whiteouts);
        assert_eq!(a.opaque, b.opaque);
        assert_eq!(a.order, b.order);
        assert_eq!(a.seek, b.seek);
    }

    #[test]
    fn reads_from_many_gzip_members_start_at_a_seek_point() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..12u32 << 20)
            .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
            .collect();
        let specs = vec![file("big", &big), file("small", b"after the big one")];
        let tar = tar_bytes(&specs);
        // One member per MiB of tar, as our writer does.
        let mut gz = Vec::new();
        for chunk in tar.chunks(1 << 20) {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(chunk).unwrap();
            gz.extend_from_slice(&e.finish().unwrap());
        }
        let path = tmp.path().join("many.gz");
        fs::write(&path, &gz).unwrap();

        let index = LayerIndex::build(&path).unwrap();
        assert!(index.seek.len() >= 2, "{:?}", index.seek);
        let mut last = 0;
        for p in &index.seek {
            assert!(p.stream >= last + layer::SEEK_SPACING);
            last = p.stream;
            // A member starts there, and it decodes to the tar stream from `stream` on.
            let at = p.stream as usize;
            let mut d = flate2::read::GzDecoder::new(&gz[p.stored as usize..]);
            let mut head = vec![0u8; 4096.min(tar.len() - at)];
            d.read_exact(&mut head).unwrap();
            assert_eq!(head, &tar[at..at + head.len()]);
        }
        assert_eq!(
            data(&index, index.get(b"small").unwrap()),
            b"after the big one"
        );
        assert_eq!(data(&index, index.get(b"big").unwrap()), big);

        let cached = LayerIndex::index_path(&path, None);
        index.save(&cached).unwrap();
        let loaded = LayerIndex::load(&cached, &path).unwrap().unwrap();
        same(&index, &loaded);
        assert_eq!(
            data(&loaded, loaded.get(b"small").unwrap()),
            b"after the big one"
        );

        // One member (flate2's default), and zstd: no seek points, read from the start.
        for (name, compression) in [("one.gz", Compression::Gzip), ("z.zst", Compression::Zstd)] {
            let one = blob(tmp.path(), name, &specs, compression);
            let index = LayerIndex::build(&one).unwrap();
            assert!(index.seek.is_empty());
            assert_eq!(
                data(&index, index.get(b"small").unwrap()),
                b"after the big one"
            );
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let mut specs = sample();
        specs.push(symlink("link", "/abs/target"));
        specs.push(hardlink("hl", "x"));
        specs.push(fifo("pipe"));
        specs.push(file(&"n".repeat(150), b"long name"));
        let path = blob(tmp.path(), "l.gz", &specs, Compression::Gzip);
        let built = LayerIndex::build(&path).unwrap();
        let cached = LayerIndex::index_path(&path, None);
        assert_eq!(cached, tmp.path().join("l.gz.lcidx"));
        built.save(&cached).unwrap();
        let mode = fs::metadata(&cached).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let loaded = LayerIndex::load(&cached, &path).unwrap().unwrap();
        same(&built, &loaded);
        assert_eq!(data(&loaded, loaded.get(b"x").unwrap()), b"second x");
        // Nothing else was left in the directory (the temp file was renamed).
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_stale_index_is_detected_and_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = blob(tmp.path(), "l", &[file("f", b"one")], Compression::None);
        let first = LayerIndex::open(&path, None, true).unwrap();
        let cached = LayerIndex::index_path(&path, None);
        assert!(cached.exists());
        // Rewritten in place with a different body (and size).
        blob(
            tmp.path(),
            "l",
            &[file("f", b"two, longer"), file("g", b"")],
            Compression::None,
        );
        assert!(LayerIndex::load(&cached, &path).unwrap().is_none());
        let second = LayerIndex::open(&path, None, true).unwrap();
        assert_ne!(first.diff_id(), second.diff_id());
        assert_eq!(second.entries().len(), 2);
        // ... and the rebuilt index was saved over the stale one.
        same(&LayerIndex::load(&cached, &path).unwrap().unwrap(), &second);
        // Replaced by rename with a same-sized file: the inode tells.
        let other = blob(
            tmp.path(),
            "other",
            &[file("f", b"TWO, LONGER"), file("g", b"")],
            Compression::None,
        );
        fs::rename(&other, &path).unwrap();
        assert!(LayerIndex::load(&cached, &path).unwrap().is_none());
        let third = LayerIndex::open(&path, None, false).unwrap();
        assert_eq!(third.diff_id(), sha256(&fs::read(&path).unwrap()));
    }

    #[test]
    fn an_index_directory_holds_the_cache_instead_of_the_blob_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = tmp.path().join("blobs");
        fs::create_dir(&blobs).unwrap();
        let path = blob(&blobs, "abc123", &[file("f", b"one")], Compression::None);
        let dir = tmp.path().join("cache").join("index");
        let cached = LayerIndex::index_path(&path, Some(&dir));
        assert_eq!(cached, dir.join("abc123.lcidx"));

        // Not saved unless asked; saving creates the directory.
        LayerIndex::open(&path, Some(&dir), false).unwrap();
        assert!(!dir.exists());
        let first = LayerIndex::open(&path, Some(&dir), true).unwrap();
        same(&LayerIndex::load(&cached, &path).unwrap().unwrap(), &first);
        assert_eq!(fs::read_dir(&blobs).unwrap().count(), 1);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);

        // A stale cache there is rebuilt and overwritten.
        blob(
            &blobs,
            "abc123",
            &[file("f", b"two, longer"), file("g", b"")],
            Compression::None,
        );
        assert!(LayerIndex::load(&cached, &path).unwrap().is_none());
        let second = LayerIndex::open(&path, Some(&dir), true).unwrap();
        assert_eq!(second.entries().len(), 2);
        same(&LayerIndex::load(&cached, &path).unwrap().unwrap(), &second);

        // open_all takes the same directory.
        let other = blob(&blobs, "def456", &[file("h", b"")], Compression::Gzip);
        let ok = || Ok(());
        open_all(&[path.clone(), other], Some(&dir), true, &ok).unwrap();
        assert!(dir.join("def456.lcidx").exists());
        assert_eq!(fs::read_dir(&blobs).unwrap().count(), 2);
    }

    #[test]
    fn a_damaged_index_is_an_error_and_open_rebuilds() {
        let tmp = tempfile::tempdir().unwrap();
        let path = blob(tmp.path(), "l", &sample(), Compression::Zstd);
        let cached = LayerIndex::index_path(&path, None);
        let index = LayerIndex::open(&path, None, true).unwrap();
        let good = fs::read(&cached).unwrap();
        let mut cases = Vec::new();
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        cases.push((flipped, "checksum"));
        cases.push((good[..good.len() - 1].to_vec(), "checksum"));
        cases.push((
            b"not an index at all, just some text......................".repeat(3),
            "not a layercore index",
        ));
        let mut version = good.clone();
        version[8] = 9;
        cases.push((version, "format version 9"));
        for (bytes, needle) in cases {
            fs::write(&cached, &bytes).unwrap();
            match LayerIndex::load(&cached, &path) {
                Err(Error::Corrupt {
                    path: at, detail, ..
                }) => {
                    assert_eq!(at, cached);
                    assert!(detail.contains(needle), "{detail}");
                }
                other => panic!("{other:?}"),
            }
            same(&LayerIndex::open(&path, None, false).unwrap(), &index);
        }
        fs::remove_file(&cached).unwrap();
        assert!(matches!(
            LayerIndex::load(&cached, &path),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn dot_dot_paths_are_rejected() {
        let mut h = ::tar::Header::new_ustar();
        h.as_old_mut().name[..6].copy_from_slice(b"a/../x");
        h.set_entry_type(::tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&[0u8; 1024]);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("l");
        fs::write(&path, &tar).unwrap();
        match LayerIndex::build(&path) {
            Err(Error::Unsupported { path: at, detail }) => {
                assert_eq!(at, path);
                assert!(detail.contains("'a/../x'"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broken_blobs_fail_to_index() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        assert!(matches!(
            LayerIndex::build(&missing),
            Err(Error::NotFound { .. })
        ));
        let gz = compress(&tar_bytes(&sample()), Compression::Gzip);
        let path = tmp.path().join("cut.gz");
        fs::write(&path, &gz[..gz.len() / 2]).unwrap();
        assert!(matches!(
            LayerIndex::build(&path),
            Err(Error::Truncated { .. })
        ));
        let cancel = AtomicBool::new(true);
        let ok = blob(tmp.path(), "ok", &sample(), Compression::None);
        assert!(matches!(
            LayerIndex::build_cancellable(&ok, &cancel),
            Err(Error::Interrupted)
        ));
    }

    #[test]
    fn open_all_keeps_order_shares_duplicates_and_reports_the_first_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let a = blob(tmp.path(), "a", &[file("a", b"a")], Compression::Gzip);
        let b = blob(tmp.path(), "b", &[file("b", b"b")], Compression::None);
        let c = blob(tmp.path(), "c", &[file("c", b"c")], Compression::Zstd);
        let ok = || Ok(());
        let all = open_all(
            &[a.clone(), b.clone(), a.clone(), c.clone()],
            None,
            false,
            &ok,
        )
        .unwrap();
        let names: Vec<&[u8]> = all.iter().map(|l| &l.entries()[0].path[..]).collect();
        assert_eq!(names, [&b"a"[..], b"b", b"a", b"c"]);
        assert!(Arc::ptr_eq(&all[0], &all[2]));
        assert!(!LayerIndex::index_path(&a, None).exists());

        open_all(&[a.clone(), b.clone()], None, true, &ok).unwrap();
        assert!(
            LayerIndex::index_path(&a, None).exists() && LayerIndex::index_path(&b, None).exists()
        );

        let broken = tmp.path().join("broken");
        fs::write(&broken, b"garbage that is no tar at all".repeat(40)).unwrap();
        let missing = tmp.path().join("missing");
        match open_all(&[a.clone(), broken.clone(), missing], None, false, &ok) {
            Err(Error::Corrupt { path, .. }) => assert_eq!(path, broken),
            other => panic!("{other:?}"),
        }
        let stop = || Err(Error::Interrupted);
        assert!(matches!(
            open_all(std::slice::from_ref(&c), None, false, &stop),
            Err(Error::Interrupted)
        ));
        assert!(open_all(&[], None, false, &ok).unwrap().is_empty());
    }

    #[test]
    fn walk_order_puts_slash_first() {
        let mut v: Vec<&[u8]> = vec![b"a-b", b"a/x", b"a", b"a/x/y", b"a0", b"b", b"a.b"];
        v.sort_by(|a, b| walk_cmp(a, b));
        assert_eq!(
            v,
            [&b"a"[..], b"a/x", b"a/x/y", b"a-b", b"a.b", b"a0", b"b"]
        );
    }
}

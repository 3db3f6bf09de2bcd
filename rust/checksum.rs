//! Content checksums of build sources: what a `COPY` or `ADD` cache key covers, computed over
//! the files a step selects, on several threads, with a stat cache.
//!
//! # What a source's record covers
//!
//! Its name (as the step places it), type, permission bits (`mode & 0o7777`), uid, gid, size,
//! symlink target, `security.capability` (the one `security.*` xattr that changes what a file
//! does; SELinux labels differ between machines), every `user.`/`trusted.` xattr, and for a
//! regular file the SHA-256 of its content. **The mtime is not covered**: a file touched but
//! unchanged keeps its record, so a cache key built on it still hits. The digest of a selection
//! is the SHA-256 of its records' canonical lines, joined by newlines, in name order.
//!
//! # The stat cache
//!
//! Hashing a 60 MB context on every build would cost more than the rest of a cached build, so
//! what an entry's record needs beyond its `lstat` (a file's content digest, a symlink's target,
//! the xattrs) is remembered, keyed by its (device, inode) and valid only while its type and
//! mode, size, mtime *and ctime* (both in nanoseconds) are the ones it was read with. An edit
//! that keeps the size and puts the mtime back (`touch -r`) still changes the ctime, which no
//! user can set; so does a change to an xattr, the mode or the owner. A warm entry therefore
//! costs one `lstat`. The cache lives in one file, rewritten atomically (temp file, rename)
//! after each call that read something new; a damaged or foreign file is ignored and replaced.
//!
//! # Walking a tree
//!
//! [`walk`] lists everything below a directory (not following symlinks), asking a `skip`
//! callback about each entry (a skipped directory is not entered): the builder's
//! `.dockerignore` and `--exclude` rules. Its names are relative to the directory, in byte
//! order, so a directory comes before what it holds.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use crate::digest::format_sha256;
use crate::error::{Error, Result};
use crate::parallel::map_stoppable;

/// The first bytes of a stat cache file (and its format version).
const MAGIC: &[u8; 8] = b"LCSTAT02";
/// Read buffer for hashing.
const BUF: usize = 1 << 20;

/// One source as the step selects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    /// Its name in the step (as it will sit under the destination), as bytes.
    pub name: Vec<u8>,
    /// `file`, `dir`, `symlink`, `fifo`, `char`, `block` or `socket`.
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The content size of a regular file, else 0.
    pub size: u64,
    /// A symlink's target, else empty.
    pub link: Vec<u8>,
    /// The xattrs covered, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The SHA-256 of a regular file's content.
    pub sha: Option<[u8; 32]>,
}

/// A name as the canonical line writes it: UTF-8 as is, but a backslash, a space, a newline and
/// each byte that is not UTF-8 escaped (`\\`, `\x20`, `\n`, `\xNN`), so that two different
/// names never make the same line.
fn escape_name(name: &[u8], out: &mut String) {
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                ' ' => out.push_str("\\x20"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
}

impl SourceRecord {
    /// `sha256:<hex>` of a regular file's content.
    pub fn content(&self) -> Option<String> {
        self.sha.as_ref().map(|s| format_sha256(s))
    }

    /// The record as one line of canonical text (the selection's digest is over these).
    pub fn canonical(&self) -> String {
        let mut out = String::with_capacity(64 + self.name.len());
        out.push_str(self.kind);
        out.push(' ');
        escape_name(&self.name, &mut out);
        out.push_str(&format!(
            " {:o} {}:{} {}",
            self.mode, self.uid, self.gid, self.size
        ));
        if !self.link.is_empty() {
            out.push_str(" -> ");
            escape_name(&self.link, &mut out);
        }
        for (k, v) in &self.xattrs {
            out.push_str(&format!(" {k}={}", hex(v)));
        }
        if let Some(c) = self.content() {
            out.push(' ');
            out.push_str(&c);
        }
        out
    }
}

/// The records of a selection, their digest and what the stat cache spared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    /// `sha256:` of the canonical lines joined by newlines: equal digests, equal sources.
    pub digest: String,
    pub records: Vec<SourceRecord>,
    pub stats: ChecksumStats,
}

/// How many contents a call hashed, and how many the stat cache gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumStats {
    pub hashed: u64,
    pub cached: u64,
    pub hashed_bytes: u64,
}

/// What the stat cache knows of one inode, and the stat it is valid for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    mode: u32,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    sha: Option<[u8; 32]>,
    link: Vec<u8>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Known {
    fn same_stat(&self, other: &Known) -> bool {
        (self.mode, self.size, self.mtime_ns, self.ctime_ns)
            == (other.mode, other.size, other.mtime_ns, other.ctime_ns)
    }
}

/// The (device, inode) -> [`Known`] map of a stat cache file.
#[derive(Default)]
struct StatCache {
    map: HashMap<(u64, u64), Known>,
}

/// A cursor over a stat cache file's bytes; `None` when they run out.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl StatCache {
    fn load(path: &Path) -> StatCache {
        let Ok(data) = std::fs::read(path) else {
            return StatCache::default();
        };
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            return StatCache::default();
        }
        Self::parse(&data[MAGIC.len()..]).unwrap_or_default()
    }

    fn parse(body: &[u8]) -> Option<StatCache> {
        let mut cache = StatCache::default();
        let mut c = Cursor(body);
        while !c.0.is_empty() {
            let (dev, ino) = (c.u64()?, c.u64()?);
            let mode = c.u32()?;
            let size = c.u64()?;
            let (mtime_ns, ctime_ns) = (c.u64()? as i64, c.u64()? as i64);
            let has_sha = c.take(1)?[0] == 1;
            let sha: [u8; 32] = c.take(32)?.try_into().ok()?;
            let link = c.bytes()?;
            let mut xattrs = Vec::new();
            for _ in 0..c.u32()? {
                let name = String::from_utf8(c.bytes()?).ok()?;
                xattrs.push((name, c.bytes()?));
            }
            let sha = has_sha.then_some(sha);
            let known = Known {
                mode,
                size,
                mtime_ns,
                ctime_ns,
                sha,
                link,
                xattrs,
            };
            cache.map.insert((dev, ino), known);
        }
        Some(cache)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut out = Vec::with_capacity(MAGIC.len() + self.map.len() * 96);
        out.extend_from_slice(MAGIC);
        for (&(dev, ino), k) in &self.map {
            out.extend_from_slice(&dev.to_le_bytes());
            out.extend_from_slice(&ino.to_le_bytes());
            out.extend_from_slice(&k.mode.to_le_bytes());
            out.extend_from_slice(&k.size.to_le_bytes());
            out.extend_from_slice(&(k.mtime_ns as u64).to_le_bytes());
            out.extend_from_slice(&(k.ctime_ns as u64).to_le_bytes());
            out.push(u8::from(k.sha.is_some()));
            out.extend_from_slice(&k.sha.unwrap_or([0; 32]));
            put_bytes(&mut out, &k.link);
            out.extend_from_slice(&(k.xattrs.len() as u32).to_le_bytes());
            for (name, value) in &k.xattrs {
                put_bytes(&mut out, name.as_bytes());
                put_bytes(&mut out, value);
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "cannot create", e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| Error::io(dir, "cannot create a temp file", e))?;
        tmp.write_all(&out)
            .map_err(|e| Error::io(path, "cannot write the stat cache", e))?;
        tmp.persist(path)
            .map_err(|e| Error::io(path, "cannot replace the stat cache", e.error))?;
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The xattrs a record covers: `security.capability`, `user.*` and `trusted.*`, read with
/// `list(buffer, length)` and `get(name, buffer, length)` (the `l`/`f` xattr calls).
fn covered_xattrs(
    list: impl Fn(*mut libc::c_char, usize) -> isize,
    get: impl Fn(&std::ffi::CStr, *mut libc::c_void, usize) -> isize,
) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 1024];
    let n = loop {
        let n = list(names.as_mut_ptr().cast(), names.len());
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            break n;
        }
        // More names than the buffer holds: ask for their length, then read them all.
        let need = list(std::ptr::null_mut(), 0);
        if need <= 0 {
            break need;
        }
        names.resize(need as usize + 64, 0);
    };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let text = String::from_utf8_lossy(name).into_owned();
        let covered = text == "security.capability"
            || text.starts_with("user.")
            || text.starts_with("trusted.");
        if !covered {
            continue;
        }
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 65536];
        let m = get(&cname, value.as_mut_ptr().cast(), value.len());
        if m >= 0 {
            value.truncate(m as usize);
            out.push((text, value));
        }
    }
    out.sort();
    out
}

/// The covered xattrs of `path` itself (not followed through a symlink).
fn xattrs_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    covered_xattrs(
        // SAFETY: a C string and a buffer of the length passed (or null and 0: the size).
        |buf, len| unsafe { libc::llistxattr(c.as_ptr(), buf, len) },
        // SAFETY: as above.
        |name, buf, len| unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), buf, len) },
    )
}

/// The covered xattrs of an open file.
fn xattrs_of_fd(fd: RawFd) -> Vec<(String, Vec<u8>)> {
    covered_xattrs(
        // SAFETY: an open descriptor and a buffer of the length passed (or null and 0).
        |buf, len| unsafe { libc::flistxattr(fd, buf, len) },
        // SAFETY: as above.
        |name, buf, len| unsafe { libc::fgetxattr(fd, name.as_ptr(), buf, len) },
    )
}

thread_local! {
    /// Each worker's read buffer, allocated once (zeroing 1 MiB per small file would cost
    /// more than hashing it).
    static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; BUF]);
}

/// The SHA-256 of the open file `f` (`path`, for messages), whose `lstat` gave `size`.
fn hash_file(mut f: File, path: &Path, size: u64, stop: &AtomicBool) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut total = 0u64;
    BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    h.update(&buf[..n]);
                    total += n as u64;
                    // A short read of a regular file that reached the size `lstat` gave is its
                    // end: no second read (a file that grew meanwhile is read on).
                    if n < buf.len() && total == size {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, "cannot read source", e)),
            }
        }
        Ok(())
    })?;
    Ok(h.finalize().into())
}

/// Everything below the directory `root`, not following symlinks: each entry's path and its
/// name relative to `root`, in byte order. `skip(name, is_dir)` leaves an entry out (and a
/// directory's contents with it). A directory that cannot be read is an error naming it.
pub fn walk(
    root: &Path,
    skip: &mut dyn FnMut(&[u8], bool) -> Result<bool>,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut pending: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, "cannot list", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, "cannot list", e))?;
            let is_dir = entry
                .file_type()
                .map_err(|e| Error::io(entry.path(), "cannot stat source", e))?
                .is_dir();
            let mut name = prefix.clone();
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(entry.file_name().as_bytes());
            if skip(&name, is_dir)? {
                continue;
            }
            let path = entry.path();
            if is_dir {
                pending.push((path.clone(), name.clone()));
            }
            out.push((path, name));
        }
    }
    out.sort_unstable_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// What a source read afresh adds to the stat cache: its (device, inode) and what it knows.
type Fresh = ((u64, u64), Known);

/// A directory opened for the entries in it (their `stat`, `open` and `readlink` are relative
/// to it, sparing the kernel a walk of the whole path per entry).
struct Dir(OwnedFd);

impl Dir {
    fn open(path: &Path) -> Result<Dir> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(path, "cannot open directory", e))?;
        Ok(Dir(f.into()))
    }
}

fn cstring(base: &[u8], path: &Path) -> Result<CString> {
    CString::new(base).map_err(|_| Error::io(path, "bad name", io::ErrorKind::InvalidInput.into()))
}

/// `lstat` of `base` in `dir` (or of `path` when there is no directory to start from).
fn lstat_at(dir: Option<&Dir>, base: &CString, path: &Path) -> Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    let r = match dir {
        // SAFETY: an open directory, a C string, room for one stat.
        Some(d) => unsafe {
            libc::fstatat(
                d.0.as_raw_fd(),
                base.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        None => {
            let c = cstring(path.as_os_str().as_bytes(), path)?;
            // SAFETY: as above.
            unsafe { libc::lstat(c.as_ptr(), st.as_mut_ptr()) }
        }
    };
    if r != 0 {
        return Err(Error::io(
            path,
            "cannot stat source",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the call succeeded, so it filled the stat.
    Ok(unsafe { st.assume_init() })
}

fn kind_of_mode(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFCHR => "char",
        libc::S_IFBLK => "block",
        _ => "socket",
    }
}

/// The record of one source (`base` in `dir`, else `path`), from the stat cache when its stat
/// is the one remembered; the second value is what to remember when it was read afresh.
fn record_of(
    dir: Option<&Dir>,
    base: &[u8],
    path: &Path,
    name: &[u8],
    cache: &StatCache,
    stop: &AtomicBool,
) -> Result<(SourceRecord, Option<Fresh>)> {
    let cbase = cstring(base, path)?;
    let st = lstat_at(dir, &cbase, path)?;
    let kind = kind_of_mode(st.st_mode);
    let stamp = Known {
        mode: st.st_mode,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime.saturating_mul(1_000_000_000) + st.st_mtime_nsec,
        ctime_ns: st.st_ctime.saturating_mul(1_000_000_000) + st.st_ctime_nsec,
        sha: None,
        link: Vec::new(),
        xattrs: Vec::new(),
    };
    let key = (st.st_dev, st.st_ino);
    let (known, fresh) = match cache.map.get(&key).filter(|k| k.same_stat(&stamp)) {
        Some(k) => (k.clone(), false),
        None => {
            let mut k = stamp;
            match (kind, dir) {
                ("file", Some(d)) => {
                    // SAFETY: an open directory and a C string; the result is checked.
                    let fd = unsafe {
                        libc::openat(
                            d.0.as_raw_fd(),
                            cbase.as_ptr(),
                            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
                        )
                    };
                    if fd < 0 {
                        let e = io::Error::last_os_error();
                        return Err(Error::io(path, "cannot open source", e));
                    }
                    // SAFETY: a descriptor just opened, owned from here on.
                    let f = unsafe { File::from_raw_fd(fd) };
                    let now = f
                        .metadata()
                        .map_err(|e| Error::io(path, "cannot stat source", e))?;
                    if (now.dev(), now.ino()) != key {
                        let e = io::Error::other("replaced while it was read");
                        return Err(Error::io(path, "source changed", e));
                    }
                    k.xattrs = xattrs_of_fd(fd);
                    k.sha = Some(hash_file(f, path, k.size, stop)?);
                }
                ("file", None) => {
                    k.xattrs = xattrs_of(path);
                    let f =
                        File::open(path).map_err(|e| Error::io(path, "cannot open source", e))?;
                    k.sha = Some(hash_file(f, path, k.size, stop)?);
                }
                _ => {
                    k.xattrs = xattrs_of(path);
                    if kind == "symlink" {
                        k.link = std::fs::read_link(path)
                            .map_err(|e| Error::io(path, "cannot read symlink", e))?
                            .as_os_str()
                            .as_bytes()
                            .to_vec();
                    }
                }
            }
            (k, true)
        }
    };
    let record = SourceRecord {
        name: name.to_vec(),
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == "file" { st.st_size as u64 } else { 0 },
        link: known.link.clone(),
        xattrs: known.xattrs.clone(),
        sha: if kind == "file" { known.sha } else { None },
    };
    Ok((record, fresh.then_some((key, known))))
}

/// The most entries of one directory one job takes (a huge directory still spreads).
const CHUNK: usize = 256;

/// The checksum of `sources` (each a path on disk and its name in the step, bytes), their
/// records in the order given, reading them on `workers` threads; `cache` is the stat cache
/// file (read, and rewritten if anything was read afresh). Entries are read directory by
/// directory, each relative to its open directory. A source that vanishes or cannot be read is
/// an error naming it.
pub fn checksum_sources(
    sources: &[(PathBuf, Vec<u8>)],
    cache: Option<&Path>,
    workers: usize,
    check: &dyn Fn() -> Result<()>,
) -> Result<Checksum> {
    let mut stat_cache = cache.map(StatCache::load).unwrap_or_default();
    // Group the sources by the directory they sit in: each job opens one directory.
    let mut dirs: HashMap<&Path, usize> = HashMap::new();
    let mut groups: Vec<(Option<&Path>, Vec<usize>)> = Vec::new();
    for (i, (path, _)) in sources.iter().enumerate() {
        let parent = match (path.parent(), path.file_name()) {
            (Some(p), Some(_)) => Some(if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }),
            _ => None,
        };
        let g = match parent {
            Some(p) => *dirs.entry(p).or_insert_with(|| {
                groups.push((Some(p), Vec::new()));
                groups.len() - 1
            }),
            None => {
                groups.push((None, Vec::new()));
                groups.len() - 1
            }
        };
        groups[g].1.push(i);
    }
    let jobs: Vec<(Option<&Path>, &[usize])> = groups
        .iter()
        .flat_map(|(dir, members)| members.chunks(CHUNK).map(move |c| (*dir, c)))
        .collect();
    let done = map_stoppable(jobs.len(), workers, check, |j, stop| {
        let (dir, members) = jobs[j];
        let opened = dir.map(Dir::open).transpose()?;
        let mut out = Vec::with_capacity(members.len());
        for &i in members {
            let (path, name) = &sources[i];
            let base = path.file_name().map(|b| b.as_bytes()).unwrap_or_default();
            out.push((
                i,
                record_of(opened.as_ref(), base, path, name, &stat_cache, stop)?,
            ));
        }
        Ok(out)
    })?;
    let mut results: Vec<Option<(SourceRecord, Option<Fresh>)>> =
        (0..sources.len()).map(|_| None).collect();
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r);
    }
    let mut stats = ChecksumStats::default();
    let mut dirty = false;
    let mut records = Vec::with_capacity(results.len());
    let mut h = Sha256::new();
    for (i, (record, fresh)) in results.into_iter().flatten().enumerate() {
        if record.kind == "file" {
            if fresh.is_some() {
                stats.hashed += 1;
                stats.hashed_bytes += record.size;
            } else {
                stats.cached += 1;
            }
        }
        if let Some((key, known)) = fresh {
            dirty = true;
            stat_cache.map.insert(key, known);
        }
        if i > 0 {
            h.update(b"\n");
        }
        h.update(record.canonical().as_bytes());
        records.push(record);
    }
    if let Some(path) = cache {
        if dirty {
            stat_cache.save(path)?;
        }
    }
    let digest = format_sha256(h.finalize().as_slice());
    Ok(Checksum {
        digest,
        records,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn no_check() -> Result<()> {
        Ok(())
    }

    fn one(path: &Path, cache: &Path) -> (SourceRecord, ChecksumStats) {
        let mut c = checksum_sources(
            &[(path.to_path_buf(), b"f".to_vec())],
            Some(cache),
            2,
            &no_check,
        )
        .unwrap();
        (c.records.remove(0), c.stats)
    }

    #[test]
    fn the_stat_cache_sees_an_edit_that_keeps_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let (file, cache) = (dir.path().join("f"), dir.path().join("cache"));
        fs::write(&file, b"aaaa").unwrap();
        let (first, s1) = one(&file, &cache);
        assert_eq!((s1.hashed, s1.cached), (1, 0));
        let (again, s2) = one(&file, &cache);
        assert_eq!((s2.hashed, s2.cached), (0, 1));
        assert_eq!(first, again);
        // Same size, mtime put back: the ctime moved, so it is hashed again.
        let mtime = fs::metadata(&file).unwrap().modified().unwrap();
        fs::write(&file, b"bbbb").unwrap();
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let (edited, s3) = one(&file, &cache);
        assert_eq!(s3.hashed, 1);
        assert_ne!(edited.sha, first.sha);
        // A mode change is in the record; the mtime is not.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let (chmodded, _) = one(&file, &cache);
        assert_ne!(chmodded.canonical(), edited.canonical());
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        let (touched, _) = one(&file, &cache);
        assert_eq!(touched.canonical(), chmodded.canonical());
    }

    #[test]
    fn a_damaged_cache_is_ignored_and_a_missing_source_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (file, cache) = (dir.path().join("f"), dir.path().join("cache"));
        fs::write(&file, b"x").unwrap();
        fs::write(&cache, b"LCSTAT02 not records").unwrap();
        let (_, s) = one(&file, &cache);
        assert_eq!(s.hashed, 1);
        let missing = dir.path().join("gone");
        let err = checksum_sources(&[(missing.clone(), b"gone".to_vec())], None, 2, &no_check)
            .unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn names_are_escaped_so_no_two_make_the_same_line() {
        let mut seen = std::collections::HashSet::new();
        for name in [
            &b"a b"[..],
            b"a\\x20b",
            b"a\nb",
            b"a\\nb",
            b"\xff",
            b"\xfe",
            b"\\xff",
            b"\xef\xbf\xbd",
        ] {
            let mut out = String::new();
            escape_name(name, &mut out);
            assert!(seen.insert(out.clone()), "{name:?} -> {out}");
            assert!(!out.contains(' ') && !out.contains('\n'));
        }
    }

    #[test]
    fn walk_lists_in_byte_order_and_skips_what_it_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("skipme/deep")).unwrap();
        fs::write(root.join("a/b/f"), b"1").unwrap();
        fs::write(root.join("a-z"), b"2").unwrap();
        std::os::unix::fs::symlink("a", root.join("link")).unwrap();
        let mut asked = Vec::new();
        let found = walk(root, &mut |name, is_dir| {
            asked.push((String::from_utf8_lossy(name).into_owned(), is_dir));
            Ok(name == b"skipme")
        })
        .unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|(_, n)| String::from_utf8_lossy(n).into_owned())
            .collect();
        assert_eq!(names, ["a", "a-z", "a/b", "a/b/f", "link"]);
        // A symlink to a directory is not entered, and is not a directory to `skip`.
        assert!(asked.contains(&("link".into(), false)));
        assert!(!asked.iter().any(|(n, _)| n.starts_with("skipme/")));
    }

    #[test]
    fn a_warm_entry_keeps_its_xattrs_and_link_until_its_ctime_moves() {
        let dir = tempfile::tempdir().unwrap();
        let (file, cache) = (dir.path().join("f"), dir.path().join("cache"));
        fs::write(&file, b"x").unwrap();
        if xattr_set(&file, "user.a", b"1").is_err() {
            return; // no user xattrs on this filesystem
        }
        let (first, _) = one(&file, &cache);
        let (warm, s) = one(&file, &cache);
        assert_eq!((s.hashed, s.cached), (0, 1));
        assert_eq!(warm.xattrs, first.xattrs);
        xattr_set(&file, "user.a", b"2").unwrap();
        let (changed, _) = one(&file, &cache);
        assert_eq!(changed.xattrs, vec![("user.a".to_string(), b"2".to_vec())]);
    }

    fn xattr_set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: valid C strings and a buffer of the given length.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

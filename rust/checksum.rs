//! Content checksums of build sources: what a `COPY` or `ADD` cache key covers, computed over
//! the files a step selects, on several threads, with a stat cache.
//!
//! # What a source's record covers
//!
//! Its name (as the step places it), type, permission bits (`mode & 0o7777`), uid, gid, size,
//! symlink target, `security.capability` (the one `security.*` xattr that changes what a file
//! does; SELinux labels differ between machines), every `user.`/`trusted.` xattr, and for a
//! regular file the SHA-256 of its content. **The mtime is not covered**: a file touched but
//! unchanged keeps its record, so a cache key built on it still hits.
//!
//! # The stat cache
//!
//! Hashing a 60 MB context on every build would cost more than the rest of a cached build, so a
//! regular file's content digest is remembered, keyed by its (device, inode) and valid only while
//! its size, mtime *and ctime* (both in nanoseconds) are the ones it was hashed with. An edit
//! that keeps the size and puts the mtime back (`touch -r`) still changes the ctime, which no
//! user can set, so it is still seen. The cache lives in one file, rewritten atomically (temp
//! file, rename) after each call that hashed something; a damaged or foreign file is ignored
//! and replaced.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use crate::digest::format_sha256;
use crate::error::{Error, Result};
use crate::parallel::map_stoppable;

/// The first bytes of a stat cache file (and its format version).
const MAGIC: &[u8; 8] = b"LCSTAT01";
/// Bytes of one cache record: dev, ino, size, mtime_ns, ctime_ns, sha256.
const RECORD: usize = 8 * 5 + 32;
/// Read buffer for hashing.
const BUF: usize = 1 << 20;

/// One source as the step selects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    /// Its name in the step (as it will sit under the destination).
    pub name: String,
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
    /// `sha256:<hex>` of a regular file's content, else `None`.
    pub content: Option<String>,
}

impl SourceRecord {
    /// The record as one line of canonical text (its digest is what a key takes).
    pub fn canonical(&self) -> String {
        let mut out = format!(
            "{} {} {:o} {}:{} {}",
            self.kind, self.name, self.mode, self.uid, self.gid, self.size
        );
        if !self.link.is_empty() {
            out.push_str(" -> ");
            out.push_str(&String::from_utf8_lossy(&self.link));
        }
        for (k, v) in &self.xattrs {
            out.push_str(&format!(" {k}={}", hex(v)));
        }
        if let Some(c) = &self.content {
            out.push(' ');
            out.push_str(c);
        }
        out
    }
}

/// How many contents a call hashed, and how many the stat cache gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumStats {
    pub hashed: u64,
    pub cached: u64,
    pub hashed_bytes: u64,
}

#[derive(Clone, Copy)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    sha: [u8; 32],
}

/// The (device, inode) -> stamp map of a stat cache file.
#[derive(Default)]
struct StatCache {
    map: HashMap<(u64, u64), Stamp>,
}

impl StatCache {
    fn load(path: &Path) -> StatCache {
        let mut cache = StatCache::default();
        let Ok(data) = std::fs::read(path) else {
            return cache;
        };
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            return cache;
        }
        let body = &data[MAGIC.len()..];
        if body.len() % RECORD != 0 {
            return cache;
        }
        for r in body.chunks_exact(RECORD) {
            let n = |i: usize| u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().expect("8"));
            let mut sha = [0u8; 32];
            sha.copy_from_slice(&r[40..72]);
            cache.map.insert(
                (n(0), n(1)),
                Stamp {
                    size: n(2),
                    mtime_ns: i128::from(n(3) as i64),
                    ctime_ns: i128::from(n(4) as i64),
                    sha,
                },
            );
        }
        cache
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut out = Vec::with_capacity(MAGIC.len() + self.map.len() * RECORD);
        out.extend_from_slice(MAGIC);
        for (&(dev, ino), s) in &self.map {
            for v in [
                dev,
                ino,
                s.size,
                s.mtime_ns as i64 as u64,
                s.ctime_ns as i64 as u64,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&s.sha);
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

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "char"
    } else if t.is_block_device() {
        "block"
    } else {
        "socket"
    }
}

/// The xattrs a record covers: `security.capability`, `user.*` and `trusted.*` (not followed
/// through a symlink).
fn xattrs_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 1024];
    let n = loop {
        // SAFETY: the buffer is as long as passed; the result is checked.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            break n;
        }
        // More names than the buffer holds: ask for their length, then read them all.
        // SAFETY: a null buffer of length 0 asks for the size.
        let need = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
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
        // SAFETY: as above.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if m >= 0 {
            value.truncate(m as usize);
            out.push((text, value));
        }
    }
    out.sort();
    out
}

thread_local! {
    /// Each worker's read buffer, allocated once (zeroing 1 MiB per small file would cost
    /// more than hashing it).
    static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; BUF]);
}

fn hash_file(path: &Path, stop: &AtomicBool) -> Result<[u8; 32]> {
    let mut f = File::open(path).map_err(|e| Error::io(path, "cannot open source", e))?;
    let mut h = Sha256::new();
    BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, "cannot read source", e)),
            }
        }
        Ok(())
    })?;
    Ok(h.finalize().into())
}

/// The records of `sources` (each a path on disk and its name in the step), in order, hashing
/// regular files on `workers` threads; `cache` is the stat cache file (read, and rewritten if
/// anything was hashed). A source that vanishes or cannot be read is an error naming it.
pub fn checksum_sources(
    sources: &[(PathBuf, String)],
    cache: Option<&Path>,
    workers: usize,
    check: &dyn Fn() -> Result<()>,
) -> Result<(Vec<SourceRecord>, ChecksumStats)> {
    let stat_cache = cache.map(StatCache::load).unwrap_or_default();
    let results = map_stoppable(sources.len(), workers, check, |i, stop| {
        let (path, name) = &sources[i];
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| Error::io(path, "cannot stat source", e))?;
        let kind = kind_of(&meta);
        let mut record = SourceRecord {
            name: name.clone(),
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: if kind == "file" { meta.len() } else { 0 },
            link: Vec::new(),
            xattrs: xattrs_of(path),
            content: None,
        };
        let mut fresh = None;
        if kind == "symlink" {
            record.link = std::fs::read_link(path)
                .map_err(|e| Error::io(path, "cannot read symlink", e))?
                .as_os_str()
                .as_bytes()
                .to_vec();
        } else if kind == "file" {
            let stamp = Stamp {
                size: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
                sha: [0; 32],
            };
            let known = stat_cache.map.get(&(meta.dev(), meta.ino())).filter(|s| {
                s.size == stamp.size && s.mtime_ns == stamp.mtime_ns && s.ctime_ns == stamp.ctime_ns
            });
            let sha = match known {
                Some(s) => s.sha,
                None => {
                    let sha = hash_file(path, stop)?;
                    fresh = Some(((meta.dev(), meta.ino()), Stamp { sha, ..stamp }));
                    sha
                }
            };
            record.content = Some(format_sha256(&sha));
        }
        Ok((record, fresh))
    })?;
    let mut stats = ChecksumStats::default();
    let mut stat_cache = stat_cache;
    let mut records = Vec::with_capacity(results.len());
    for (record, fresh) in results {
        if record.kind == "file" {
            if let Some((key, stamp)) = fresh {
                stats.hashed += 1;
                stats.hashed_bytes += stamp.size;
                stat_cache.map.insert(key, stamp);
            } else {
                stats.cached += 1;
            }
        }
        records.push(record);
    }
    if let Some(path) = cache {
        if stats.hashed > 0 {
            stat_cache.save(path)?;
        }
    }
    Ok((records, stats))
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
        let (mut r, s) = checksum_sources(
            &[(path.to_path_buf(), "f".into())],
            Some(cache),
            2,
            &no_check,
        )
        .unwrap();
        (r.remove(0), s)
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
        assert_ne!(edited.content, first.content);
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
        fs::write(&cache, b"LCSTAT01 not records").unwrap();
        let (_, s) = one(&file, &cache);
        assert_eq!(s.hashed, 1);
        let missing = dir.path().join("gone");
        let err =
            checksum_sources(&[(missing.clone(), "gone".into())], None, 2, &no_check).unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }
}

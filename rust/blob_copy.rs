//! Copying a byte range of one file into a new file while hashing it.
//!
//! The store adds blobs with it and the transports move blobs in and out of layouts and archives
//! with it: a whole blob, or the body of one member of a tar archive (`offset`/`length`), becomes
//! a new file whose sha256 is known, and checked against the name it will be stored under, when
//! the call returns.
//!
//! ```text
//! calling thread:  copy_file_range(src, dest) in 64 MiB steps, writeback started every 64 MiB,
//!                  then fsync(dest)                  (pread/pwrite if the kernel copy refuses)
//! hash thread:     pread(src) 4 MiB at a time ──> sha256                   (only with `verify`)
//!
//! a range that starts inside a page (a tar member's body):
//! calling thread:  pread(src) 4 MiB ──> pwrite(dest) ... fsync(dest)
//!                        └──> hash thread: sha256 of the same buffer, handed back after
//! ```
//!
//! Every pread starts at a page boundary into a page-aligned buffer ([`read_page_aligned`]).
//!
//! Both threads read the same source range; with the source in the page cache the second read is
//! a memory copy, so a verified copy costs about max(copy + fsync, hash) rather than their sum,
//! and an unverified one is the kernel copy `cp` does plus the fsync. The hash covers the source,
//! not what landed in `dest`: a source rewritten in place while it is being copied can give a
//! `dest` that differs from the digest returned (blobs are immutable; only a misused store sees
//! this).
//!
//! Measured on one 10^9-byte random file in the page cache, copied to the same ext4 filesystem
//! (2 shared vCPUs with SHA-NI, kernel 6.18; medians of 5 runs, each after `sync`, all strategies
//! interleaved in one run):
//!
//! | strategy                                                                  | median |
//! |---------------------------------------------------------------------------|--------|
//! | `cp` (coreutils 9.1: one `copy_file_range`), no fsync                     | 0.56 s |
//! | `cp`, then `sync FILE` (its fsync)                                        | 2.09 s |
//! | copy_file_range, fsync                                                    | 2.26 s |
//! | copy_file_range, writeback started every 64 MiB, fsync (`verify=False`)   | 2.24 s |
//! | copy_file_range + sha256 thread, fsync once both are done                 | 3.72 s |
//! | copy_file_range + sha256 thread, fsync right after the copy               | 2.76 s |
//! | the same, writeback started every 64 MiB (`verify=True`, kept)            | 2.32 s |
//! | one pread -> sha256 -> pwrite loop (4 MiB), fsync                         | 5.00 s |
//! | sha256 alone (4 MiB preads)                                               | 1.56 s |
//!
//! The fsync (writing 1 GB to disk) dominates; the kept strategy overlaps it with the hash, so a
//! verified copy costs what an unverified one does. Through the Python binding, in another run:
//! `copy_blob` 2.08 s, `copy_blob(verify=False)` 2.00 s, `cp` + `sync FILE` 2.32 s, `cp` 0.65 s.
//! The `store` benchmarks (`benches/test_store.py`) keep measuring it against `cp`.
//!
//! A range that starts inside a page is what an archive import copies: a tar member's body
//! starts at a multiple of 512. The four 250 MB members of an `oci-archive`, copied
//! (`verify=False`) and fsync'd, against the same blobs copied from an OCI layout directory
//! (medians of 4 interleaved runs, same machine):
//!
//! | strategy                                                            | members | blobs  |
//! |---------------------------------------------------------------------|---------|--------|
//! | copy_file_range (the kernel splices partial pages)                  | 2.61 s  | 1.99 s |
//! | pread into a malloc'd buffer, pwrite                                | 2.72 s  | 2.03 s |
//! | pread from the page boundary into a page-aligned buffer, pwrite     | 2.07 s  |        |
//! | the same in `copy_range`, kept for ranges that start inside a page  | 2.13 s  | 2.03 s |
//!
//! The hash thread reads the same way, for the reason in [`crate::pagebuf`]. Verified, the
//! member copies are read once and hashed from the buffer that is written ([`copy_read_once`]):
//! copying the four members (fsync'd later) took 1.21 s and 1.70 s of CPU, against 1.50 s and
//! 1.76 s with a second read by the hash thread (medians of 5). A small gain, kept because it
//! also halves the reads.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crate::digest::{parse_sha256, Digester};
use crate::error::{Error, Result};
use crate::pagebuf::{read_page_aligned, PageBuf, PAGE};

/// Bytes asked of one `copy_file_range` call; the Ctrl-C check runs between calls.
const COPY_STEP: u64 = 64 << 20;
/// Writeback of `dest` is started (not waited for) every this many bytes, so that the final
/// fsync has little left to write.
const WRITEBACK_STEP: u64 = 64 << 20;
/// The most bytes one pread/pwrite step of the user-space copy moves.
const FALLBACK_BUF: usize = 4 << 20;
/// The read size of the hash thread.
const HASH_BUF: usize = 4 << 20;

/// What to copy and how; `CopyOptions::default()` copies a whole file and hashes it.
#[derive(Debug, Clone)]
pub struct CopyOptions<'a> {
    /// First byte of the source to copy.
    pub offset: u64,
    /// Bytes to copy; `None` copies to the end of the source.
    pub length: Option<u64>,
    /// With `verify`, the digest the bytes must have; a different one removes `dest`.
    pub expected_digest: Option<&'a str>,
    /// Hash the bytes while copying them.
    pub verify: bool,
    /// fsync `dest` before returning. A caller copying several blobs can turn it off and fsync
    /// them all at the end, so that one blob's copy overlaps the previous one's writeback.
    pub sync: bool,
}

impl Default for CopyOptions<'_> {
    fn default() -> Self {
        CopyOptions {
            offset: 0,
            length: None,
            expected_digest: None,
            verify: true,
            sync: true,
        }
    }
}

/// The result of [`copy_blob`]: the `sha256:<hex>` of the bytes (with `verify`) and their count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub digest: Option<String>,
    pub size: u64,
}

/// Copies bytes `[offset, offset + length)` of `src` into the new file `dest`.
///
/// `dest` must not exist (it is created with `O_EXCL`, mode 0644) and is fsync'd before this
/// returns (unless `options.sync` is off). With `verify`, the sha256 of the bytes is computed while they are copied and compared
/// with `expected_digest` when given ([`Error::DigestMismatch`] naming `src`). A source that ends
/// before `offset + length` is [`Error::Truncated`] naming `src`. On any error after `dest` was
/// created (including a mismatch and an interruption by `check`), `dest` is removed.
pub fn copy_blob(
    src: &Path,
    dest: &Path,
    options: &CopyOptions<'_>,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<Copied> {
    if let Some(expected) = options.expected_digest {
        parse_sha256(expected)?;
        if !options.verify {
            return Err(Error::InvalidArgument(format!(
                "copying {}: an expected digest ({expected}) needs verify=True",
                src.display()
            )));
        }
    }
    let source = File::open(src).map_err(|e| Error::io(src, "cannot open", e))?;
    let meta = source
        .metadata()
        .map_err(|e| Error::io(src, "cannot stat", e))?;
    if !meta.is_file() {
        return Err(Error::io(
            src,
            "cannot copy",
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let available = meta.len();
    let start = options.offset;
    let end = match options.length {
        Some(length) => start.checked_add(length).filter(|&e| e <= i64::MAX as u64),
        None => Some(available.max(start)),
    }
    .ok_or_else(|| {
        Error::InvalidArgument(format!(
            "copying {}: offset {start} + length {:?} is out of range",
            src.display(),
            options.length
        ))
    })?;
    if end > available {
        return Err(truncated(src, available, start, end));
    }
    let len = end - start;

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(dest)
        .map_err(|e| Error::io(dest, "cannot create", e))?;
    // From here on, `dest` is ours: any failure removes it.
    let guard = RemoveOnDrop(Some(dest));
    // The umask may have narrowed the mode given to open.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io(dest, "cannot chmod", e))?;

    let digest = if options.verify && start % PAGE as u64 != 0 {
        // A tar member's body: read once, written and hashed from the same buffers.
        let digester = copy_read_once(&source, src, &file, dest, start, len, check)?;
        if options.sync {
            file.sync_all()
                .map_err(|e| Error::io(dest, "cannot fsync", e))?;
        }
        Some(digester.finish())
    } else {
        copy_beside_hash(&source, src, &file, dest, start, len, options, check)?
    };

    if let (Some(expected), Some(actual)) = (options.expected_digest, &digest) {
        if expected != actual {
            return Err(Error::DigestMismatch {
                path: src.to_path_buf(),
                what: "digest",
                expected: expected.to_owned(),
                actual: actual.clone(),
            });
        }
    }
    guard.disarm();
    Ok(Copied { digest, size: len })
}

/// The kernel copy (pread/pwrite when the range starts inside a page or the kernel refuses)
/// with, under `verify`, a hash thread reading the same range; returns the digest (with
/// `verify`). `dest` is fsync'd with `options.sync` while the hash finishes.
#[allow(clippy::too_many_arguments)]
fn copy_beside_hash(
    source: &File,
    src: &Path,
    file: &File,
    dest: &Path,
    start: u64,
    len: u64,
    options: &CopyOptions<'_>,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<Option<String>> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<Option<String>> {
        let hasher = options.verify.then(|| {
            s.spawn(|| {
                let r = hash_range(source, src, start, len, &stop);
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                r
            })
        });
        // The fsync overlaps the end of the hash; on a mismatch it was wasted, which is rare.
        // The kernel copy of a range that starts inside a page (a tar member's body) ran 30 %
        // slower than a user-space copy that reads whole pages (see the module notes).
        let kernel = start % PAGE as u64 == 0;
        let copied = copy_range(source, src, file, dest, start, len, &stop, check, kernel)
            .and_then(|()| {
                if !options.sync || stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                file.sync_all()
                    .map_err(|e| Error::io(dest, "cannot fsync", e))
            });
        if copied.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let hashed = hasher.map(|h| h.join().expect("the hash thread panicked"));
        // The copy's own failure comes first; when the hash thread failed, it stopped the copy.
        copied?;
        match hashed {
            None => Ok(None),
            Some(h) => Ok(Some(
                h?.expect("the copy finished, so the hash was not stopped")
                    .finish(),
            )),
        }
    })
}

fn truncated(src: &Path, available: u64, start: u64, end: u64) -> Error {
    Error::truncated(
        src,
        format!("the file ends at byte {available}, the copy of bytes {start}..{end} needs more"),
    )
}

/// Buffers of [`FALLBACK_BUF`] bytes in flight in [`copy_read_once`].
const PIPELINE_BUFS: usize = 3;

/// A verified copy of a range that starts inside a page: each chunk is read once (from the page
/// boundary), then this thread writes it while a hash thread hashes the same buffer; the hash
/// thread hands buffers back for the next reads. Returns the digester of the range.
fn copy_read_once(
    src: &File,
    src_path: &Path,
    dest: &File,
    dest_path: &Path,
    start: u64,
    len: u64,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<Digester> {
    let (to_hash, chunks) = mpsc::sync_channel::<(Arc<PageBuf>, Range<usize>)>(PIPELINE_BUFS);
    let (give_back, returned) = mpsc::channel::<Arc<PageBuf>>();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut digester = Digester::new();
            for (buf, range) in chunks {
                digester.update(&buf[range]);
                // After a failed copy nobody takes buffers back; that is fine.
                let _ = give_back.send(buf);
            }
            digester
        });
        let copied = (|| -> Result<()> {
            let mut made = 0;
            let mut done = 0u64;
            let mut flushed = 0u64;
            while done < len {
                check()?;
                if done - flushed >= WRITEBACK_STEP {
                    start_writeback(dest, flushed, done - flushed);
                    flushed = done;
                }
                let recycled = match returned.try_recv() {
                    Ok(buf) => Some(buf),
                    Err(_) if made < PIPELINE_BUFS => None,
                    Err(_) => Some(returned.recv().expect("the hash thread holds the buffers")),
                };
                let mut buf = match recycled {
                    // This thread dropped its handle after writing, so the hash thread's was
                    // the last one.
                    Some(buf) => Arc::into_inner(buf).expect("a returned buffer is unshared"),
                    None => {
                        made += 1;
                        PageBuf::for_reads(FALLBACK_BUF)
                    }
                };
                let want = (len - done).min(FALLBACK_BUF as u64) as usize;
                let got = read_range_part(src, src_path, &mut buf, start, len, done, want)?;
                let n = got.len() as u64;
                let buf = Arc::new(buf);
                to_hash
                    .send((Arc::clone(&buf), got.clone()))
                    .expect("the hash thread runs until the sender is dropped");
                dest.write_all_at(&buf[got], done)
                    .map_err(|e| Error::io(dest_path, "cannot write", e))?;
                done += n;
            }
            Ok(())
        })();
        drop(to_hash);
        let digester = hasher.join().expect("the hash thread panicked");
        copied.map(|()| digester)
    })
}

/// Removes `dest` unless disarmed: a failed copy leaves nothing behind.
struct RemoveOnDrop<'a>(Option<&'a Path>);

impl RemoveOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            // The error being reported matters more than a failed cleanup.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Copies `len` bytes from `src` at `start` to `dest` at 0: the kernel copy (when `kernel`), then
/// pread/pwrite for the rest if the kernel copy cannot go on. Returns early (Ok) when `stop` is
/// set.
#[allow(clippy::too_many_arguments)]
fn copy_range(
    src: &File,
    src_path: &Path,
    dest: &File,
    dest_path: &Path,
    start: u64,
    len: u64,
    stop: &AtomicBool,
    check: &(dyn Fn() -> Result<()> + Sync),
    mut kernel: bool,
) -> Result<()> {
    let mut done = 0u64;
    let mut flushed = 0u64;
    let mut buf = PageBuf::empty();
    while done < len {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        check()?;
        if done - flushed >= WRITEBACK_STEP {
            start_writeback(dest, flushed, done - flushed);
            flushed = done;
        }
        let want = (len - done).min(COPY_STEP);
        if kernel {
            match kernel_copy(src, dest, start + done, done, want) {
                Ok(0) => {
                    // Some filesystems (procfs-like, or a file that shrank) report 0: let pread
                    // tell a short file from a filesystem that cannot copy.
                    kernel = false;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if dest_full(&e) => {
                    return Err(Error::io(dest_path, "cannot write", e));
                }
                // EXDEV, ENOSYS, EINVAL, EOPNOTSUPP, ... : read/write copies anything, and an
                // I/O error it runs into is reported against the right file.
                Err(_) => kernel = false,
            }
            continue;
        }
        if buf.is_empty() {
            buf = PageBuf::for_reads(FALLBACK_BUF);
        }
        let mut step = 0u64;
        while step < want {
            let chunk = (want - step).min(FALLBACK_BUF as u64) as usize;
            let got = read_range_part(src, src_path, &mut buf, start, len, done + step, chunk)?;
            let n = got.len() as u64;
            dest.write_all_at(&buf[got], done + step)
                .map_err(|e| Error::io(dest_path, "cannot write", e))?;
            step += n;
        }
        done += want;
    }
    Ok(())
}

/// Asks the kernel to start writing `dest`'s dirty pages in the range to disk, without waiting.
/// Advisory: a failure here shows up again, and is reported, at the fsync.
fn start_writeback(dest: &File, from: u64, len: u64) {
    // SAFETY: a plain syscall on an open descriptor.
    unsafe {
        libc::sync_file_range(
            dest.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

fn kernel_copy(src: &File, dest: &File, from: u64, to: u64, len: u64) -> io::Result<u64> {
    // Offsets fit: the caller checked that the range ends below i64::MAX.
    let mut off_in = from as libc::loff_t;
    let mut off_out = to as libc::loff_t;
    // SAFETY: both descriptors are open for the duration of the call and the offsets are
    // valid pointers to locals.
    let n = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dest.as_raw_fd(),
            &mut off_out,
            len as usize,
            0,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as u64)
    }
}

fn dest_full(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
    )
}

/// The sha256 of `len` bytes of `src` from `start`; `Ok(None)` when stopped by the copy failing.
fn hash_range(
    src: &File,
    path: &Path,
    start: u64,
    len: u64,
    stop: &AtomicBool,
) -> Result<Option<Digester>> {
    let mut buf = PageBuf::for_reads(HASH_BUF.min(len.max(1) as usize));
    let mut digester = Digester::new();
    let mut done = 0u64;
    while done < len {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let want = (len - done).min(HASH_BUF as u64) as usize;
        let got = read_range_part(src, path, &mut buf, start, len, done, want)?;
        done += got.len() as u64;
        digester.update(&buf[got]);
    }
    Ok(Some(digester))
}

/// Reads up to `want` bytes of the range `[start, start + len)` of `src` from `done` bytes into
/// it, with [`read_page_aligned`] into `buf`; returns where in `buf` they are (never empty: a
/// file that ends first is [`Error::Truncated`]).
fn read_range_part(
    src: &File,
    path: &Path,
    buf: &mut PageBuf,
    start: u64,
    len: u64,
    done: u64,
    want: usize,
) -> Result<Range<usize>> {
    let at = start + done;
    loop {
        match read_page_aligned(src, buf, at, want) {
            Ok(got) if got.is_empty() => return Err(truncated(path, at, start, start + len)),
            Ok(got) => return Ok(got),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, "cannot read", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn no_check() -> Result<()> {
        Ok(())
    }

    fn sha256(data: &[u8]) -> String {
        let mut d = Digester::new();
        d.update(data);
        d.finish()
    }

    /// Bytes that differ at every position, so a wrong offset shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    fn source(dir: &Path, data: &[u8]) -> std::path::PathBuf {
        let p = dir.join("src");
        fs::write(&p, data).unwrap();
        p
    }

    fn copy(src: &Path, dest: &Path, options: &CopyOptions<'_>) -> Result<Copied> {
        copy_blob(src, dest, options, &no_check)
    }

    #[test]
    fn whole_file_is_copied_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than one hash read and not a multiple of it.
        let data = pattern(HASH_BUF * 2 + 12345);
        let src = source(dir.path(), &data);
        let dest = dir.path().join("dest");
        let got = copy(&src, &dest, &CopyOptions::default()).unwrap();
        assert_eq!(got.size, data.len() as u64);
        assert_eq!(got.digest.as_deref(), Some(sha256(&data).as_str()));
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn a_range_copies_exactly_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(100_000);
        let src = source(dir.path(), &data);
        for (i, (offset, length)) in [(0u64, 1u64), (512, 4096), (99_999, 1), (1000, 99_000)]
            .into_iter()
            .enumerate()
        {
            let dest = dir.path().join(format!("dest{i}"));
            let options = CopyOptions {
                offset,
                length: Some(length),
                ..CopyOptions::default()
            };
            let got = copy(&src, &dest, &options).unwrap();
            let want = &data[offset as usize..(offset + length) as usize];
            assert_eq!(fs::read(&dest).unwrap(), want);
            assert_eq!(got.size, length);
            assert_eq!(got.digest.as_deref(), Some(sha256(want).as_str()));
        }
    }

    #[test]
    fn an_offset_without_length_copies_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(5000);
        let src = source(dir.path(), &data);
        let dest = dir.path().join("dest");
        let options = CopyOptions {
            offset: 4000,
            ..CopyOptions::default()
        };
        assert_eq!(copy(&src, &dest, &options).unwrap().size, 1000);
        assert_eq!(fs::read(&dest).unwrap(), &data[4000..]);
    }

    #[test]
    fn without_verify_no_digest_is_computed() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(3000);
        let src = source(dir.path(), &data);
        let dest = dir.path().join("dest");
        let options = CopyOptions {
            verify: false,
            ..CopyOptions::default()
        };
        let got = copy(&src, &dest, &options).unwrap();
        assert_eq!(
            got,
            Copied {
                digest: None,
                size: 3000
            }
        );
        assert_eq!(fs::read(&dest).unwrap(), data);
    }

    #[test]
    fn a_range_past_the_end_is_truncated_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), &pattern(1000));
        let dest = dir.path().join("dest");
        for (offset, length) in [
            (0, Some(1001)),
            (999, Some(2)),
            (1001, None),
            (2000, Some(0)),
        ] {
            let options = CopyOptions {
                offset,
                length,
                ..CopyOptions::default()
            };
            match copy(&src, &dest, &options) {
                Err(Error::Truncated { path, .. }) => assert_eq!(path, src),
                other => panic!("{offset} {length:?}: expected Truncated, got {other:?}"),
            }
            assert!(!dest.exists());
        }
    }

    #[test]
    fn a_range_ending_at_the_end_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(1000);
        let src = source(dir.path(), &data);
        let dest = dir.path().join("dest");
        let options = CopyOptions {
            offset: 1000,
            length: Some(0),
            ..CopyOptions::default()
        };
        let got = copy(&src, &dest, &options).unwrap();
        assert_eq!(got.size, 0);
        assert_eq!(got.digest.as_deref(), Some(sha256(b"").as_str()));
    }

    #[test]
    fn a_digest_mismatch_removes_dest() {
        // From a page boundary (kernel copy + hash thread) and from inside a page (read once).
        for offset in [0usize, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let data = pattern(70_000);
            let src = source(dir.path(), &data);
            let dest = dir.path().join("dest");
            let wrong = sha256(b"something else");
            let options = CopyOptions {
                offset: offset as u64,
                expected_digest: Some(&wrong),
                ..CopyOptions::default()
            };
            match copy(&src, &dest, &options) {
                Err(Error::DigestMismatch {
                    path,
                    what,
                    expected,
                    actual,
                }) => {
                    assert_eq!(path, src);
                    assert_eq!(what, "digest");
                    assert_eq!(expected, wrong);
                    assert_eq!(actual, sha256(&data[offset..]));
                }
                other => panic!("expected DigestMismatch, got {other:?}"),
            }
            assert!(!dest.exists());
        }
    }

    #[test]
    fn the_expected_digest_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(70_000);
        let src = source(dir.path(), &data);
        let dest = dir.path().join("dest");
        let right = sha256(&data);
        let options = CopyOptions {
            expected_digest: Some(&right),
            ..CopyOptions::default()
        };
        assert_eq!(copy(&src, &dest, &options).unwrap().digest, Some(right));
    }

    #[test]
    fn an_existing_dest_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), &pattern(100));
        let dest = dir.path().join("dest");
        fs::write(&dest, b"precious").unwrap();
        match copy(&src, &dest, &CopyOptions::default()) {
            Err(Error::Io { path, source, .. }) => {
                assert_eq!(path, dest);
                assert_eq!(source.kind(), io::ErrorKind::AlreadyExists);
            }
            other => panic!("expected Io(AlreadyExists), got {other:?}"),
        }
        assert_eq!(fs::read(&dest).unwrap(), b"precious");
    }

    #[test]
    fn an_empty_file_copies_to_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), b"");
        let dest = dir.path().join("dest");
        let got = copy(&src, &dest, &CopyOptions::default()).unwrap();
        assert_eq!(got.size, 0);
        assert_eq!(got.digest.as_deref(), Some(sha256(b"").as_str()));
        assert_eq!(fs::read(&dest).unwrap(), b"");
    }

    #[test]
    fn a_missing_source_is_not_found_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("missing");
        let dest = dir.path().join("dest");
        match copy(&src, &dest, &CopyOptions::default()) {
            Err(Error::NotFound { path }) => assert_eq!(path, src),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(!dest.exists());
    }

    #[test]
    fn a_directory_source_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        assert!(matches!(
            copy(dir.path(), &dest, &CopyOptions::default()),
            Err(Error::Io { .. })
        ));
        assert!(!dest.exists());
    }

    #[test]
    fn malformed_or_unverifiable_expected_digests_are_invalid_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), b"abc");
        let dest = dir.path().join("dest");
        let good = sha256(b"abc");
        for (expected, verify) in [("sha256:abc", true), (good.as_str(), false)] {
            let options = CopyOptions {
                expected_digest: Some(expected),
                verify,
                ..CopyOptions::default()
            };
            assert!(matches!(
                copy(&src, &dest, &options),
                Err(Error::InvalidArgument(_))
            ));
            assert!(!dest.exists());
        }
    }

    #[test]
    fn an_interruption_removes_dest() {
        for offset in [0u64, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let src = source(dir.path(), &pattern(10_000));
            let dest = dir.path().join("dest");
            let interrupted = || -> Result<()> { Err(Error::Interrupted) };
            let options = CopyOptions {
                offset,
                ..CopyOptions::default()
            };
            assert!(matches!(
                copy_blob(&src, &dest, &options, &interrupted),
                Err(Error::Interrupted)
            ));
            assert!(!dest.exists());
        }
    }

    #[test]
    fn a_copy_from_inside_a_page_is_exact_across_many_steps() {
        // A tar member's body: the user-space copy, several buffers long.
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(FALLBACK_BUF * 2 + PAGE * 5);
        let src = source(dir.path(), &data);
        for (i, offset) in [512usize, 1000, PAGE - 1].into_iter().enumerate() {
            let length = FALLBACK_BUF * 2 + 12345;
            let dest = dir.path().join(format!("dest{i}"));
            let options = CopyOptions {
                offset: offset as u64,
                length: Some(length as u64),
                ..CopyOptions::default()
            };
            let got = copy_blob(&src, &dest, &options, &no_check).unwrap();
            let want = &data[offset..offset + length];
            assert_eq!(got.digest.as_deref(), Some(sha256(want).as_str()));
            assert_eq!(fs::read(&dest).unwrap(), want);
        }
    }

    #[test]
    fn the_read_write_fallback_copies_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(FALLBACK_BUF * 2 + 77);
        let src_path = source(dir.path(), &data);
        let dest_path = dir.path().join("dest");
        let src = File::open(&src_path).unwrap();
        let dest = File::create(&dest_path).unwrap();
        let stop = AtomicBool::new(false);
        let len = data.len() as u64 - 5;
        copy_range(
            &src, &src_path, &dest, &dest_path, 5, len, &stop, &no_check, false,
        )
        .unwrap();
        assert_eq!(fs::read(&dest_path).unwrap(), &data[5..]);
    }

    #[test]
    fn the_fallback_reports_a_source_that_ends_early() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = source(dir.path(), &pattern(1000));
        let dest_path = dir.path().join("dest");
        let src = File::open(&src_path).unwrap();
        let dest = File::create(&dest_path).unwrap();
        let stop = AtomicBool::new(false);
        let got = copy_range(
            &src, &src_path, &dest, &dest_path, 0, 2000, &stop, &no_check, false,
        );
        match got {
            Err(Error::Truncated { path, .. }) => assert_eq!(path, src_path),
            other => panic!("expected Truncated, got {other:?}"),
        }
        // The hash side sees the same short source.
        match hash_range(&src, &src_path, 500, 1000, &stop) {
            Err(Error::Truncated { path, .. }) => assert_eq!(path, src_path),
            other => panic!(
                "expected Truncated, got {:?}",
                other.map(|d| d.map(|d| d.len()))
            ),
        }
    }

    #[test]
    fn a_stopped_copy_returns_without_copying() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = source(dir.path(), &pattern(1000));
        let dest_path = dir.path().join("dest");
        let src = File::open(&src_path).unwrap();
        let dest = File::create(&dest_path).unwrap();
        let stop = AtomicBool::new(true);
        copy_range(
            &src, &src_path, &dest, &dest_path, 0, 1000, &stop, &no_check, true,
        )
        .unwrap();
        assert!(hash_range(&src, &src_path, 0, 1000, &stop)
            .unwrap()
            .is_none());
        assert_eq!(fs::metadata(&dest_path).unwrap().len(), 0);
    }
}

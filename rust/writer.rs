//! The one-pass layer writer: directory -> deterministic tar -> diff_id -> compression -> digest.
//!
//! The tar stream is produced once and cut into fixed 1 MiB chunks that flow through a bounded
//! pipeline of threads:
//!
//! ```text
//! walker ──entries──> producer (headers + file bodies) ──chunks──> hasher (diff_id) ──> sink
//!   sink = writer                                   (plain tar: digest == diff_id)
//!        | N libdeflate workers -> ordered collector (gzip: one member per chunk, digest)
//!        | libzstd multi-threaded encoder           (zstd, digest)
//! ```
//!
//! Chunk buffers come from a fixed pool, so memory stays at a few MiB whatever the layer size,
//! and chunk boundaries sit at fixed offsets of the tar stream, so the compressed bytes never
//! depend on the number of threads.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread;

use crate::compress::Compression;
use crate::digest::{Digester, HashingWriter};
use crate::entry::EntryKind;
use crate::error::{Error, Result};
use crate::tar::header::{self, HeaderSpec};
use crate::tar::{BLOCK, RECORD};
use crate::walk::{self, Owner, SourceEntry, WalkOptions};

/// Bytes of uncompressed tar per chunk: the unit of hashing hand-off and of parallel gzip.
pub const CHUNK: usize = 1 << 20;

/// How to build a layer.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub compression: Compression,
    /// Codec level; `None` takes [`Compression::default_level`].
    pub level: Option<i32>,
    pub source_date_epoch: Option<i64>,
    pub owner: Owner,
    /// Compression threads; `None` uses every core.
    pub threads: Option<usize>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Gzip,
            level: None,
            source_date_epoch: None,
            owner: Owner::Root,
            threads: None,
        }
    }
}

/// What a build produced: everything a manifest and a config need to reference the layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub compression: Compression,
    /// sha256 of the blob as stored.
    pub digest: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    /// Blob bytes.
    pub size: u64,
    pub uncompressed_size: u64,
    /// Entries left out (sockets), one message each.
    pub warnings: Vec<String>,
}

/// A chunk of the tar stream: a fixed-size buffer and how much of it is filled.
struct Chunk {
    data: Box<[u8]>,
    len: usize,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// Builds a layer from the directory `src` into the file `out`.
///
/// The blob is written to a temporary file beside `out` and renamed into place only when the
/// whole layer is written; on any error nothing is left behind. `check` is called between
/// entries and chunks; an error from it (Ctrl-C) stops the build.
pub fn build_from_dir(
    src: &Path,
    out: &Path,
    options: &BuildOptions,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<LayerDescriptor> {
    let compression = options.compression;
    let level = compression.check_level(options.level.unwrap_or(compression.default_level()))?;
    let threads = options
        .threads
        .unwrap_or_else(|| {
            thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    // Fail on a missing or non-directory source before creating anything.
    let meta = std::fs::metadata(src).map_err(|e| Error::io(src, "cannot stat source", e))?;
    if !meta.is_dir() {
        return Err(Error::Unsupported {
            path: src.to_path_buf(),
            detail: "source is not a directory".into(),
        });
    }

    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".layercore-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| Error::Io {
            path: dir.clone(),
            what: "cannot create a file in",
            source: e,
        })?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| Error::io(tmp.path(), "cannot open", e))?;
    let tmp_meta = file
        .metadata()
        .map_err(|e| Error::io(tmp.path(), "cannot stat", e))?;

    let walk_options = WalkOptions {
        owner: options.owner,
        source_date_epoch: options.source_date_epoch,
        exclude: Some((tmp_meta.dev(), tmp_meta.ino())),
    };
    let (summary, warnings) = run_pipeline(
        src,
        out,
        file,
        compression,
        level,
        threads,
        &walk_options,
        check,
    )?;

    let perms = std::fs::Permissions::from_mode(0o644);
    std::fs::set_permissions(tmp.path(), perms)
        .map_err(|e| Error::io(tmp.path(), "cannot chmod", e))?;
    tmp.persist(out)
        .map_err(|e| Error::io(out, "cannot rename the finished layer into place", e.error))?;

    Ok(LayerDescriptor {
        compression,
        digest: summary.digest,
        diff_id: summary.diff_id,
        size: summary.size,
        uncompressed_size: summary.uncompressed_size,
        warnings,
    })
}

struct Summary {
    digest: String,
    diff_id: String,
    size: u64,
    uncompressed_size: u64,
}

enum WalkEvent {
    Entry(SourceEntry),
    Warning(String),
}

/// Entries cross from the walker to the producer in batches: one channel operation (and at
/// most one thread wake-up) per batch instead of per entry. Every entry in flight holds its
/// parent directory open, so batch size times channel depth bounds the open descriptors.
const WALK_BATCH: usize = 64;
const WALK_BATCHES_IN_FLIGHT: usize = 4;

#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    src: &Path,
    out: &Path,
    file: File,
    compression: Compression,
    level: i32,
    threads: usize,
    walk_options: &WalkOptions,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<(Summary, Vec<String>)> {
    let pool_size = 4 + 2 * threads;
    let (free_tx, free_rx) = sync_channel::<Box<[u8]>>(pool_size);
    for _ in 0..pool_size {
        free_tx
            .send(vec![0u8; CHUNK].into_boxed_slice())
            .expect("pool has room");
    }
    let (full_tx, full_rx) = sync_channel::<Chunk>(2);
    let (walk_tx, walk_rx) = sync_channel::<Vec<WalkEvent>>(WALK_BATCHES_IN_FLIGHT);

    thread::scope(|scope| {
        let walker = thread::Builder::new()
            .name("layercore-walk".into())
            .stack_size(16 << 20)
            .spawn_scoped(scope, move || {
                let batch = std::cell::RefCell::new(Vec::with_capacity(WALK_BATCH));
                let push = |event: WalkEvent| -> Result<()> {
                    let mut batch = batch.borrow_mut();
                    batch.push(event);
                    if batch.len() == WALK_BATCH {
                        let full = std::mem::replace(&mut *batch, Vec::with_capacity(WALK_BATCH));
                        // A closed channel means the producer stopped; its error wins.
                        walk_tx.send(full).map_err(|_| closed())?;
                    }
                    Ok(())
                };
                let mut warnings = Vec::new();
                let walked = walk::walk(
                    src,
                    walk_options,
                    &mut |entry| push(WalkEvent::Entry(entry)),
                    &mut |w| warnings.push(w),
                );
                let mut rest = batch.into_inner();
                rest.extend(warnings.into_iter().map(WalkEvent::Warning));
                if walked.is_ok() && !rest.is_empty() {
                    walk_tx.send(rest).map_err(|_| closed())?;
                }
                walked
            })
            .expect("spawn walker");

        // The sink holds the only senders of the pool: if it dies, a producer waiting for a free
        // buffer wakes up with an error instead of waiting forever.
        let sink =
            scope.spawn(move || sink(full_rx, free_tx, file, out, compression, level, threads));

        let mut warnings = Vec::new();
        let produced = produce(walk_rx, &free_rx, full_tx, &mut warnings, check);
        drop(free_rx);
        let walked = walker.join().expect("walker thread panicked");
        let sunk = sink.join().expect("sink thread panicked");
        // Report the cause, not the symptom: when one stage fails the others see a closed
        // channel. A walk error ends the entry stream early, so it must win over success too.
        match (walked, produced, sunk) {
            (Err(e), _, _) if !is_closed(&e) => Err(e),
            (_, Err(e), _) if !is_closed(&e) => Err(e),
            (_, _, Err(e)) => Err(e),
            (_, Err(e), _) | (Err(e), _, _) => Err(e),
            (Ok(()), Ok(uncompressed), Ok(summary)) => {
                debug_assert_eq!(uncompressed, summary.uncompressed_size);
                Ok((summary, warnings))
            }
        }
    })
}

const PIPE_CLOSED: &str = "layer pipeline stopped";

fn closed() -> Error {
    Error::Io {
        path: PathBuf::new(),
        what: PIPE_CLOSED,
        source: io::ErrorKind::BrokenPipe.into(),
    }
}

fn is_closed(e: &Error) -> bool {
    matches!(
        e,
        Error::Io {
            what: PIPE_CLOSED,
            ..
        }
    )
}

/// Cuts the tar stream into fixed-size chunks taken from the pool.
struct Chunker<'a> {
    cur: Option<Chunk>,
    free: &'a Receiver<Box<[u8]>>,
    full: SyncSender<Chunk>,
    total: u64,
}

impl Chunker<'_> {
    fn current(&mut self) -> Result<&mut Chunk> {
        if self.cur.is_none() {
            let data = self.free.recv().map_err(|_| closed())?;
            self.cur = Some(Chunk { data, len: 0 });
        }
        Ok(self.cur.as_mut().expect("just filled"))
    }

    fn ship_if_full(&mut self) -> Result<()> {
        if self.cur.as_ref().is_some_and(|c| c.len == CHUNK) {
            let chunk = self.cur.take().expect("checked");
            self.full.send(chunk).map_err(|_| closed())?;
        }
        Ok(())
    }

    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let chunk = self.current()?;
            let n = (CHUNK - chunk.len).min(data.len());
            chunk.data[chunk.len..chunk.len + n].copy_from_slice(&data[..n]);
            chunk.len += n;
            self.total += n as u64;
            data = &data[n..];
            self.ship_if_full()?;
        }
        Ok(())
    }

    fn zeros(&mut self, mut n: usize) -> Result<()> {
        while n > 0 {
            let chunk = self.current()?;
            let k = (CHUNK - chunk.len).min(n);
            chunk.data[chunk.len..chunk.len + k].fill(0);
            chunk.len += k;
            self.total += k as u64;
            n -= k;
            self.ship_if_full()?;
        }
        Ok(())
    }

    /// Reads exactly `size` bytes of `file` straight into the chunk buffers.
    fn copy_file(&mut self, file: &mut File, size: u64, source: &SourceEntry) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let chunk = self.current()?;
            let want = ((CHUNK - chunk.len) as u64).min(left) as usize;
            let got = match file.read(&mut chunk.data[chunk.len..chunk.len + want]) {
                Ok(0) => {
                    return Err(Error::Changed {
                        path: source.path(),
                        detail: format!("file shrank: {} of {size} bytes left unread", left),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(source.path(), "cannot read", e)),
            };
            chunk.len += got;
            self.total += got as u64;
            left -= got as u64;
            self.ship_if_full()?;
        }
        Ok(())
    }

    /// Ships the last, partly filled chunk; returns the stream length.
    fn finish(mut self) -> Result<u64> {
        if let Some(chunk) = self.cur.take() {
            if chunk.len > 0 {
                self.full.send(chunk).map_err(|_| closed())?;
            }
        }
        Ok(self.total)
    }
}

/// Turns walk entries into the tar stream; returns its length.
fn produce(
    walk_rx: Receiver<Vec<WalkEvent>>,
    free: &Receiver<Box<[u8]>>,
    full: SyncSender<Chunk>,
    warnings: &mut Vec<String>,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<u64> {
    let mut chunker = Chunker {
        cur: None,
        free,
        full,
        total: 0,
    };
    let mut head = Vec::with_capacity(4 * BLOCK);
    let mut name = Vec::new();
    let events = walk_rx.into_iter().flat_map(|batch| {
        // Between batches: a chance to notice Ctrl-C.
        let checked = check();
        batch.into_iter().map(move |e| match &checked {
            Ok(()) => Ok(e),
            Err(_) => Err(Error::Interrupted),
        })
    });
    for event in events {
        let mut entry = match event? {
            WalkEvent::Entry(e) => e,
            WalkEvent::Warning(w) => {
                warnings.push(w);
                continue;
            }
        };
        name.clear();
        name.extend_from_slice(&entry.rel);
        if entry.kind == EntryKind::Dir {
            name.push(b'/');
        }
        let typeflag = match entry.kind {
            EntryKind::File => header::REGTYPE,
            EntryKind::Hardlink => header::LNKTYPE,
            EntryKind::Symlink => header::SYMTYPE,
            EntryKind::Char => header::CHRTYPE,
            EntryKind::Block => header::BLKTYPE,
            EntryKind::Dir => header::DIRTYPE,
            EntryKind::Fifo => header::FIFOTYPE,
            EntryKind::Whiteout | EntryKind::Opaque => header::REGTYPE,
        };
        // Open before writing the header, so a vanished file fails cleanly.
        let mut body = if entry.kind == EntryKind::File {
            Some(entry.open()?)
        } else {
            None
        };
        head.clear();
        header::encode(
            &HeaderSpec {
                name: &name,
                typeflag,
                mode: entry.mode,
                uid: entry.uid,
                gid: entry.gid,
                size: entry.size,
                mtime: entry.mtime,
                linkname: &entry.linkname,
                uname: &entry.uname,
                gname: &entry.gname,
                devmajor: entry.devmajor,
                devminor: entry.devminor,
                xattrs: &entry.xattrs,
            },
            &mut head,
        );
        chunker.write(&head)?;
        if let Some(file) = body.as_mut() {
            chunker.copy_file(file, entry.size, &entry)?;
            chunker.zeros(header::padding(entry.size))?;
        }
    }
    // End of archive: two zero blocks, then zeros up to a whole record.
    let end = chunker.total + 2 * BLOCK as u64;
    let padded = end.div_ceil(RECORD as u64) * RECORD as u64;
    chunker.zeros((padded - chunker.total) as usize)?;
    chunker.finish()
}

/// Hashes the tar stream (diff_id) and hands it to the compressor/writer for `compression`.
fn sink(
    full: Receiver<Chunk>,
    free: SyncSender<Box<[u8]>>,
    file: File,
    out: &Path,
    compression: Compression,
    level: i32,
    threads: usize,
) -> Result<Summary> {
    match compression {
        Compression::None => sink_plain(full, free, file, out),
        Compression::Gzip => sink_gzip(full, free, file, out, level, threads),
        Compression::Zstd => sink_zstd(full, free, file, out, level, threads),
    }
}

fn write_err(out: &Path, e: io::Error) -> Error {
    Error::io(out, "cannot write layer", e)
}

/// Plain tar: the blob is the tar, so digest == diff_id. Hashing and writing run on two threads.
fn sink_plain(
    full: Receiver<Chunk>,
    free: SyncSender<Box<[u8]>>,
    mut file: File,
    out: &Path,
) -> Result<Summary> {
    let (tx, rx) = sync_channel::<Chunk>(2);
    thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<u64> {
            let mut size = 0u64;
            for chunk in rx {
                file.write_all(chunk.bytes())
                    .map_err(|e| write_err(out, e))?;
                size += chunk.len as u64;
                let _ = free.send(chunk.data);
            }
            Ok(size)
        });
        let mut diff = Digester::new();
        for chunk in full {
            diff.update(chunk.bytes());
            if tx.send(chunk).is_err() {
                break;
            }
        }
        drop(tx);
        let size = writer.join().expect("writer thread panicked")?;
        let diff_id = diff.finish();
        Ok(Summary {
            digest: diff_id.clone(),
            diff_id,
            size,
            uncompressed_size: size,
        })
    })
}

/// gzip: each chunk becomes one gzip member, compressed by `threads` libdeflate workers and
/// written in order. libdeflate level 1 is faster than zlib's and compresses better (see the
/// gzip figures in BENCHMARKS.md); whole-buffer compression is what makes members, not one
/// stream, the natural unit.
fn sink_gzip(
    full: Receiver<Chunk>,
    free: SyncSender<Box<[u8]>>,
    file: File,
    out: &Path,
    level: i32,
    threads: usize,
) -> Result<Summary> {
    let lvl = libdeflater::CompressionLvl::new(level).map_err(|_| {
        Error::InvalidArgument(format!("gzip level {level} is out of range (0-12)"))
    })?;
    let (work_tx, work_rx) = sync_channel::<(u64, Chunk)>(threads);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = sync_channel::<(u64, Vec<u8>)>(2 * threads + 2);
    thread::scope(|scope| {
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let free = free.clone();
            let work_rx = &work_rx;
            scope.spawn(move || {
                let mut compressor = libdeflater::Compressor::new(lvl);
                let mut storer = libdeflater::Compressor::new(
                    libdeflater::CompressionLvl::new(0).expect("level 0"),
                );
                loop {
                    let job = work_rx.lock().expect("work queue lock").recv();
                    let Ok((seq, chunk)) = job else { break };
                    let compressor = if level > 0 && looks_incompressible(chunk.bytes()) {
                        &mut storer
                    } else {
                        &mut compressor
                    };
                    let mut member = vec![0u8; compressor.gzip_compress_bound(chunk.len)];
                    let n = compressor
                        .gzip_compress(chunk.bytes(), &mut member)
                        .expect("output sized by gzip_compress_bound");
                    member.truncate(n);
                    let _ = free.send(chunk.data);
                    if done_tx.send((seq, member)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let collector = scope.spawn(move || -> Result<(String, u64)> {
            let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0u64;
            for (seq, member) in done_rx {
                pending.insert(seq, member);
                while let Some(member) = pending.remove(&next) {
                    writer.write_all(&member).map_err(|e| write_err(out, e))?;
                    next += 1;
                }
            }
            writer.flush().map_err(|e| write_err(out, e))?;
            let (_, digester) = writer.into_parts();
            let size = digester.len();
            Ok((digester.finish(), size))
        });
        let mut diff = Digester::new();
        for (seq, chunk) in full.into_iter().enumerate() {
            diff.update(chunk.bytes());
            if work_tx.send((seq as u64, chunk)).is_err() {
                break;
            }
        }
        drop(work_tx);
        let (digest, size) = collector.join().expect("collector thread panicked")?;
        let uncompressed_size = diff.len();
        Ok(Summary {
            digest,
            diff_id: diff.finish(),
            size,
            uncompressed_size,
        })
    })
}

/// Whether a chunk is random-looking (already-compressed files, encrypted data) all through, so
/// that deflate would spend its time finding no matches: such chunks are stored instead.
///
/// Sixteen 4 KiB samples spread over the chunk must each have a byte histogram as flat as random
/// data's (sum of squared counts within 15% of its expectation, n²/256 + n). Integer arithmetic
/// only, so the decision, and with it the blob's bytes, is the same on every machine. One
/// compressible sample is enough to compress the whole chunk; a compressible stretch that falls
/// between samples (they are 68 KiB apart) is stored, which costs at most that stretch's saving.
/// See the `gzip-1/big` benchmark: random input is where libdeflate is slowest.
fn looks_incompressible(data: &[u8]) -> bool {
    const SAMPLES: usize = 16;
    const LEN: usize = 4096;
    if data.len() < SAMPLES * LEN {
        return false;
    }
    const RANDOM: u64 = (LEN * LEN / 256 + LEN) as u64;
    const LIMIT: u64 = RANDOM + RANDOM * 15 / 100;
    let step = (data.len() - LEN) / (SAMPLES - 1);
    (0..SAMPLES).all(|i| {
        let mut histogram = [0u32; 256];
        for &b in &data[i * step..i * step + LEN] {
            histogram[b as usize] += 1;
        }
        let collisions: u64 = histogram.iter().map(|&c| (c as u64) * (c as u64)).sum();
        collisions <= LIMIT
    })
}

/// zstd: libzstd's own worker threads; `nbWorkers >= 1` even for one thread, because its output
/// is the same for every worker count (and differs from single-threaded mode).
fn sink_zstd(
    full: Receiver<Chunk>,
    free: SyncSender<Box<[u8]>>,
    file: File,
    out: &Path,
    level: i32,
    threads: usize,
) -> Result<Summary> {
    let writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let mut encoder =
        zstd::stream::write::Encoder::new(writer, level).map_err(|e| write_err(out, e))?;
    encoder
        .multithread(threads as u32)
        .map_err(|e| write_err(out, e))?;
    encoder
        .include_checksum(true)
        .map_err(|e| write_err(out, e))?;
    let mut diff = Digester::new();
    for chunk in full {
        diff.update(chunk.bytes());
        encoder
            .write_all(chunk.bytes())
            .map_err(|e| write_err(out, e))?;
        let _ = free.send(chunk.data);
    }
    let mut writer = encoder.finish().map_err(|e| write_err(out, e))?;
    writer.flush().map_err(|e| write_err(out, e))?;
    let (_, digester) = writer.into_parts();
    let size = digester.len();
    let uncompressed_size = diff.len();
    Ok(Summary {
        digest: digester.finish(),
        diff_id: diff.finish(),
        size,
        uncompressed_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    fn no_check() -> Result<()> {
        Ok(())
    }

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("a/deep/er")).unwrap();
        std::fs::create_dir_all(root.join("a-b")).unwrap();
        std::fs::write(root.join("a/x"), b"hello").unwrap();
        std::fs::write(root.join("a/deep/er/big"), vec![7u8; 3 * CHUNK + 17]).unwrap();
        std::fs::write(root.join("a-b/y"), b"").unwrap();
        std::fs::hard_link(root.join("a/x"), root.join("a-b/x-link")).unwrap();
        symlink("/usr/lib64", root.join("lib64")).unwrap();
        let long = "n".repeat(150);
        std::fs::write(root.join("a").join(long), b"long").unwrap();
    }

    fn build(src: &Path, out: &Path, compression: Compression, threads: usize) -> LayerDescriptor {
        let options = BuildOptions {
            compression,
            threads: Some(threads),
            ..BuildOptions::default()
        };
        build_from_dir(src, out, &options, &no_check).unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        let mut d = Digester::new();
        d.update(bytes);
        d.finish()
    }

    #[test]
    fn digests_describe_the_bytes_written() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("src"));
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let out = dir.path().join(format!("layer-{compression:?}"));
            let d = build(&dir.path().join("src"), &out, compression, 2);
            let blob = std::fs::read(&out).unwrap();
            assert_eq!(d.digest, sha(&blob));
            assert_eq!(d.size, blob.len() as u64);
            let (_, mut reader) =
                crate::compress::decoder(std::io::BufReader::new(&blob[..])).unwrap();
            let mut tar = Vec::new();
            reader.read_to_end(&mut tar).unwrap();
            assert_eq!(d.diff_id, sha(&tar));
            assert_eq!(d.uncompressed_size, tar.len() as u64);
            assert_eq!(tar.len() % RECORD, 0);
        }
    }

    #[test]
    fn bytes_do_not_depend_on_the_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("src"));
        for compression in [Compression::Gzip, Compression::Zstd] {
            let one = build(
                &dir.path().join("src"),
                &dir.path().join("one"),
                compression,
                1,
            );
            let two = build(
                &dir.path().join("src"),
                &dir.path().join("two"),
                compression,
                2,
            );
            let four = build(
                &dir.path().join("src"),
                &dir.path().join("four"),
                compression,
                4,
            );
            assert_eq!(one, two);
            assert_eq!(one, four);
            assert_eq!(
                std::fs::read(dir.path().join("one")).unwrap(),
                std::fs::read(dir.path().join("four")).unwrap()
            );
        }
    }

    #[test]
    fn gnu_tar_lists_entries_in_sort_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let out = dir.path().join("layer.tar");
        build(&src, &out, Compression::None, 1);
        let ours = Command::new("tar").arg("-tf").arg(&out).output().unwrap();
        assert!(
            ours.status.success(),
            "{}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let gnu = Command::new("tar")
            .args(["--sort=name", "--format=posix", "-cf", "-", "-C"])
            .arg(&src)
            .arg(".")
            .output()
            .unwrap();
        let listed = Command::new("tar")
            .arg("-tf")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(&gnu.stdout)?;
                child.wait_with_output()
            })
            .unwrap();
        let expected: Vec<String> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .filter(|l| *l != "./")
            .map(|l| l.trim_start_matches("./").to_owned())
            .collect();
        let got: Vec<String> = String::from_utf8(ours.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn an_output_inside_the_source_does_not_swallow_its_own_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let inside = build(&src, &src.join("layer.tar"), Compression::None, 1);
        std::fs::remove_file(src.join("layer.tar")).unwrap();
        let outside = build(&src, &dir.path().join("layer.tar"), Compression::None, 1);
        assert_eq!(inside.diff_id, outside.diff_id);
    }

    #[test]
    fn only_random_looking_chunks_are_stored() {
        let mut random = vec![0u8; CHUNK];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for b in random.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        assert!(looks_incompressible(&random));
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .copied()
            .cycle()
            .take(CHUNK)
            .collect();
        assert!(!looks_incompressible(&text));
        // One compressible stretch as long as the gap between samples is enough.
        let mut mixed = random.clone();
        mixed[CHUNK / 2..CHUNK / 2 + 70_000].copy_from_slice(&text[..70_000]);
        assert!(!looks_incompressible(&mixed));
        assert!(!looks_incompressible(&random[..1000]));
    }

    #[test]
    fn a_missing_source_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let options = BuildOptions::default();
        let err = build_from_dir(
            &dir.path().join("nope"),
            &dir.path().join("out"),
            &options,
            &no_check,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_failing_check_stops_the_build_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("src"));
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let stop = || -> Result<()> { Err(Error::Interrupted) };
        let err = build_from_dir(
            &dir.path().join("src"),
            &out_dir.join("l"),
            &BuildOptions::default(),
            &stop,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err}");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);
    }
}

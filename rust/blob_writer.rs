//! Turning a stream of tar entries into a finished layer blob, in one pass.
//!
//! [`LayerWriter`] is what every producer of layers uses (building from a directory, and later
//! diffing, flattening, committing): it takes headers and bodies, and hands back the blob's
//! digest, diff_id and sizes. The tar stream is cut into fixed 1 MiB chunks that flow through a
//! bounded pipeline of threads:
//!
//! ```text
//! caller (headers + bodies) ──chunks──> hasher (diff_id) ──> sink
//!   sink = writer                                   (plain tar: digest == diff_id)
//!        | N libdeflate workers -> ordered collector (gzip: one member per chunk, digest)
//!        | libzstd multi-threaded encoder           (zstd, digest)
//! ```
//!
//! Chunk buffers come from a fixed pool, so memory stays at a few MiB whatever the layer size,
//! and chunk boundaries sit at fixed offsets of the tar stream, so the compressed bytes never
//! depend on the number of threads. The blob is written to a temp file beside its destination
//! and renamed into place by [`LayerWriter::finish`]; dropped unfinished, it leaves nothing.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread;

use crate::compress::Compression;
use crate::digest::{Digester, HashingWriter};
use crate::error::{Error, Result};
use crate::pagebuf::PageBuf;
use crate::tar::header::{self, HeaderSpec};
use crate::tar::{BLOCK, RECORD};

/// Bytes of uncompressed tar per chunk: the unit of hashing hand-off and of parallel gzip.
pub const CHUNK: usize = 1 << 20;

/// What a finished layer is: everything a manifest and a config need to reference it.
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
    data: PageBuf,
    len: usize,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// Writes one layer blob from a stream of entries. See the module documentation.
pub struct LayerWriter {
    chunker: Option<Chunker>,
    sink: Option<thread::JoinHandle<Result<Summary>>>,
    tmp: Option<tempfile::NamedTempFile>,
    out: PathBuf,
    compression: Compression,
    head: Vec<u8>,
}

impl LayerWriter {
    /// Starts a blob that will appear at `out` when finished. `level` defaults to the codec's
    /// default; `threads` (compression workers) to every core.
    pub fn create(
        out: &Path,
        compression: Compression,
        level: Option<i32>,
        threads: Option<usize>,
    ) -> Result<Self> {
        let level = compression.check_level(level.unwrap_or(compression.default_level()))?;
        let threads = threads
            .unwrap_or_else(|| {
                thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1);
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

        let pool_size = 4 + 2 * threads;
        let (free_tx, free_rx) = sync_channel::<PageBuf>(pool_size);
        for _ in 0..pool_size {
            free_tx.send(PageBuf::new(CHUNK)).expect("pool has room");
        }
        let (full_tx, full_rx) = sync_channel::<Chunk>(2);
        let sink_out = out.to_path_buf();
        // The sink holds the only senders of the pool: if it dies, a producer waiting for a
        // free buffer wakes up with an error instead of waiting forever.
        let sink = thread::Builder::new()
            .name("layercore-sink".into())
            .spawn(move || {
                sink(
                    full_rx,
                    free_tx,
                    file,
                    &sink_out,
                    compression,
                    level,
                    threads,
                )
            })
            .map_err(|e| Error::io(out, "cannot start a thread", e))?;
        Ok(LayerWriter {
            chunker: Some(Chunker {
                cur: None,
                free: free_rx,
                full: full_tx,
                total: 0,
            }),
            sink: Some(sink),
            tmp: Some(tmp),
            out: out.to_path_buf(),
            compression,
            head: Vec::with_capacity(4 * BLOCK),
        })
    }

    /// (device, inode) of the temp file, so a walk of a tree that contains it can skip it.
    pub fn temp_identity(&self) -> Result<(u64, u64)> {
        let tmp = self.tmp.as_ref().expect("present until finished");
        let meta = tmp
            .as_file()
            .metadata()
            .map_err(|e| Error::io(tmp.path(), "cannot stat", e))?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Bytes of tar stream written so far.
    pub fn position(&self) -> u64 {
        self.chunker.as_ref().map_or(0, |c| c.total)
    }

    /// Appends an entry whose body is `spec.size` bytes pulled from `fill` (which returns how
    /// many bytes it put in the buffer, 0 at its end). A body that ends early is the error
    /// `short(bytes_missing)`.
    pub fn append(
        &mut self,
        spec: &HeaderSpec<'_>,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
        short: &dyn Fn(u64) -> Error,
    ) -> Result<()> {
        let result = self.append_inner(spec, fill, short);
        result.map_err(|e| self.cause(e))
    }

    /// Appends an entry without a body (directory, link, device, whiteout...).
    pub fn append_empty(&mut self, spec: &HeaderSpec<'_>) -> Result<()> {
        debug_assert_eq!(spec.size, 0);
        self.append(spec, &mut |_| Ok(0), &|_| unreachable!("no body"))
    }

    /// Appends a regular file whose body is read from `file`; `path` names it in errors.
    pub fn append_file(
        &mut self,
        spec: &HeaderSpec<'_>,
        file: &mut File,
        path: &Path,
    ) -> Result<()> {
        let size = spec.size;
        self.append(
            spec,
            &mut |buf| loop {
                match file.read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io(path, "cannot read", e)),
                }
            },
            &|left| Error::Changed {
                path: path.to_path_buf(),
                detail: format!("file shrank: {left} of {size} bytes left unread"),
            },
        )
    }

    fn append_inner(
        &mut self,
        spec: &HeaderSpec<'_>,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
        short: &dyn Fn(u64) -> Error,
    ) -> Result<()> {
        self.head.clear();
        header::encode(spec, &mut self.head);
        let chunker = self.chunker.as_mut().expect("present until finished");
        chunker.write(&self.head)?;
        if spec.size > 0 {
            chunker.fill(spec.size, fill, short)?;
            chunker.zeros(header::padding(spec.size))?;
        }
        Ok(())
    }

    /// When the pipeline stopped, the sink's own error is the one to report.
    fn cause(&mut self, err: Error) -> Error {
        if !is_closed(&err) {
            return err;
        }
        self.chunker = None;
        match self
            .sink
            .take()
            .map(|h| h.join().expect("sink thread panicked"))
        {
            Some(Err(e)) => e,
            _ => err,
        }
    }

    /// Ends the archive (two zero blocks, padding to a whole record), waits for the pipeline,
    /// and renames the blob into place.
    pub fn finish(mut self) -> Result<LayerDescriptor> {
        let mut chunker = self.chunker.take().expect("present until finished");
        let end = chunker.total + 2 * BLOCK as u64;
        let padded = end.div_ceil(RECORD as u64) * RECORD as u64;
        let shipped = chunker
            .zeros((padded - chunker.total) as usize)
            .and_then(|()| chunker.finish());
        let joined = self
            .sink
            .take()
            .expect("present until finished")
            .join()
            .expect("sink thread panicked");
        let summary = match (shipped, joined) {
            (_, Err(e)) => return Err(e),
            (Err(e), _) => return Err(e),
            (Ok(total), Ok(summary)) => {
                debug_assert_eq!(total, summary.uncompressed_size);
                summary
            }
        };
        let tmp = self.tmp.take().expect("present until finished");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(tmp.path(), "cannot chmod", e))?;
        tmp.persist(&self.out).map_err(|e| {
            Error::io(
                &self.out,
                "cannot rename the finished layer into place",
                e.error,
            )
        })?;
        Ok(LayerDescriptor {
            compression: self.compression,
            digest: summary.digest,
            diff_id: summary.diff_id,
            size: summary.size,
            uncompressed_size: summary.uncompressed_size,
            warnings: Vec::new(),
        })
    }
}

impl Drop for LayerWriter {
    /// An unfinished writer stops its threads and deletes its temp file.
    fn drop(&mut self) {
        self.chunker = None;
        if let Some(sink) = self.sink.take() {
            let _ = sink.join();
        }
    }
}

struct Summary {
    digest: String,
    diff_id: String,
    size: u64,
    uncompressed_size: u64,
}

const PIPE_CLOSED: &str = "layer pipeline stopped";

/// The error a stage sees when another stage of a pipeline stopped.
pub(crate) fn closed() -> Error {
    Error::Io {
        path: PathBuf::new(),
        what: PIPE_CLOSED,
        source: io::ErrorKind::BrokenPipe.into(),
    }
}

/// Whether `e` only says that another stage of a pipeline stopped (its own error is the cause).
pub(crate) fn is_closed(e: &Error) -> bool {
    matches!(
        e,
        Error::Io {
            what: PIPE_CLOSED,
            ..
        }
    )
}

/// Cuts the tar stream into fixed-size chunks taken from the pool.
struct Chunker {
    cur: Option<Chunk>,
    free: Receiver<PageBuf>,
    full: SyncSender<Chunk>,
    total: u64,
}

impl Chunker {
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

    /// Pulls exactly `size` bytes from `fill` straight into the chunk buffers (no copy through
    /// an intermediate buffer: a file body is `read` into the chunk itself).
    fn fill(
        &mut self,
        size: u64,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
        short: &dyn Fn(u64) -> Error,
    ) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let chunk = self.current()?;
            let want = ((CHUNK - chunk.len) as u64).min(left) as usize;
            let got = fill(&mut chunk.data[chunk.len..chunk.len + want])?;
            if got == 0 {
                return Err(short(left));
            }
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

/// Hashes the tar stream (diff_id) and hands it to the compressor/writer for `compression`.
fn sink(
    full: Receiver<Chunk>,
    free: SyncSender<PageBuf>,
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
    free: SyncSender<PageBuf>,
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
    free: SyncSender<PageBuf>,
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
    free: SyncSender<PageBuf>,
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
}

//! Opening an existing layer blob: detect its compression, compute both content addresses in one
//! pass, validate the tar inside, check them against recorded digests, and stream its entries.
//!
//! The compressed stream is decoded here rather than with [`crate::compress::decoder`] for two
//! reasons: [`EntryIter`] must be `Send` (it lives inside a Python object), and a layer reader
//! must reject what general decoders let through or blur: bytes after the last gzip member or
//! zstd frame that do not start another one, and a stream cut short inside a frame.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use flate2::bufread::GzDecoder;
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use crate::compress::{self, Bounded, Compression, GZIP_MAGIC, ZSTD_MAGIC};
use crate::digest::{parse_sha256, Digester, HashingReader};
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::pagebuf::PageBufReader;
use crate::tar::reader::TarReader;

/// Read size for the blob file; the tar reader has its own buffer of the same size.
const BUFFER_SIZE: usize = 256 * 1024;

/// What one pass over a layer blob established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// How the blob is stored, from its magic number.
    pub compression: Compression,
    /// sha256 of the blob as stored (the manifest's layer digest).
    pub digest: String,
    /// sha256 of the uncompressed tar stream (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// Bytes of the blob as stored.
    pub size: u64,
    /// Bytes of the uncompressed tar stream.
    pub uncompressed_size: u64,
}

/// Reads a layer blob once: hashes the stored bytes (digest) and the decompressed tar stream
/// (diff_id), and parses every tar header, so a blob that is described is also a valid layer.
///
/// Errors: [`Error::NotFound`] if there is no such file; [`Error::Truncated`] or
/// [`Error::Corrupt`] for a damaged gzip/zstd stream (bytes after it included) or tar stream;
/// [`Error::Unsupported`] for entries a layer cannot hold (GNU sparse files, ...).
pub fn describe(path: &Path) -> Result<LayerInfo> {
    scan(path, |_| Ok(()))
}

/// [`describe`], handing every entry to `each` as its header is read: one pass over the blob
/// that both lists and hashes it (one decompression, where listing and hashing separately
/// would take two). An error from `each` stops the scan and is returned.
pub fn scan(path: &Path, each: impl FnMut(Entry) -> Result<()>) -> Result<LayerInfo> {
    scan_with(path, each, None)
}

/// Where a gzip member starts: at byte `stored` of the blob, which is byte `stream` of the
/// uncompressed tar stream. A reader can start decompressing there instead of at the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeekPoint {
    pub stored: u64,
    pub stream: u64,
}

/// [`scan`], also returning the gzip members a reader can start at, at least [`SEEK_SPACING`]
/// stream bytes apart (empty for a plain or zstd blob, or a gzip blob of one member).
pub fn scan_seekable(
    path: &Path,
    each: impl FnMut(Entry) -> Result<()>,
) -> Result<(LayerInfo, Vec<SeekPoint>)> {
    let points = Arc::new(Mutex::new(Vec::new()));
    let info = scan_with(path, each, Some(Arc::clone(&points)))?;
    // The decoder (holding the other handle) is gone with the scan.
    let points = std::mem::take(&mut *points.lock().expect("the decoder is gone"));
    Ok((info, points))
}

/// [`scan`]; a gzip decoder records its seek points in `points` when given.
fn scan_with(
    path: &Path,
    mut each: impl FnMut(Entry) -> Result<()>,
    points: Option<SeekPoints>,
) -> Result<LayerInfo> {
    let file = open(path)?;
    let mut stored =
        PageBufReader::with_capacity(BUFFER_SIZE, HashingReader::new(SourceFile(file)));
    let (compression, stream) = decode(&mut stored, path, points)?;
    // A plain tar is its own uncompressed stream: one hash serves as both digests.
    let digester = (compression != Compression::None).then(Digester::new);
    let mut tar = TarReader::new(
        HashStream {
            inner: stream,
            digester,
        },
        path.to_path_buf(),
    );
    while let Some(entry) = tar.next_entry()? {
        each(entry)?;
    }
    let uncompressed_size = tar.position();
    let HashStream { inner, digester } = tar.into_inner();
    drop(inner);
    // The tar reader read its stream to the end, and the decoders read the file to its end
    // before reporting theirs, so the stored digester has seen every byte of the file.
    let (_, stored_digester) = stored.into_inner().into_parts();
    let size = stored_digester.len();
    let digest = stored_digester.finish();
    let diff_id = match digester {
        Some(d) => d.finish(),
        None => digest.clone(),
    };
    Ok(LayerInfo {
        compression,
        digest,
        diff_id,
        size,
        uncompressed_size,
    })
}

/// [`describe`], then checks the digests the caller recorded for the blob: the stored bytes
/// against `digest` first, then the tar stream against `diff_id`; the first that differs is an
/// [`Error::DigestMismatch`] (`what` is `"digest"` or `"diff_id"`). Malformed expected values
/// are rejected before the file is read.
pub fn verify(path: &Path, digest: Option<&str>, diff_id: Option<&str>) -> Result<LayerInfo> {
    for expected in [digest, diff_id].into_iter().flatten() {
        parse_sha256(expected)?;
    }
    let info = match (describe(path), digest) {
        (Ok(info), _) => info,
        // A damaged blob that was recorded under some digest: that it is not the recorded blob
        // is the finding that matters (and the cheaper one to act on), so it takes precedence.
        (Err(err @ (Error::Corrupt { .. } | Error::Truncated { .. })), Some(expected)) => {
            let (actual, _) = crate::digest::sha256_file(path)?;
            if actual != expected {
                return Err(Error::DigestMismatch {
                    path: path.to_path_buf(),
                    what: "digest",
                    expected: expected.to_owned(),
                    actual,
                });
            }
            return Err(err);
        }
        (Err(err), _) => return Err(err),
    };
    for (what, expected, actual) in [
        ("digest", digest, &info.digest),
        ("diff_id", diff_id, &info.diff_id),
    ] {
        if let Some(expected) = expected {
            if expected != actual {
                return Err(Error::DigestMismatch {
                    path: path.to_path_buf(),
                    what,
                    expected: expected.to_owned(),
                    actual: actual.clone(),
                });
            }
        }
    }
    Ok(info)
}

/// The entries of a layer blob, streamed in archive order; owns its file, so it can be kept
/// anywhere (a Python object holds one between `__next__` calls) and moved between threads.
///
/// Yields `Err` at most once, then ends. Ending without an error means the whole blob was read
/// and was a valid layer, as [`describe`] would have found.
pub struct EntryIter {
    tar: TarReader<Box<dyn Read + Send>>,
    compression: Compression,
}

impl EntryIter {
    /// Opens `path` and detects its compression; reading starts with the first `next`.
    pub fn open(path: &Path) -> Result<EntryIter> {
        let file = open(path)?;
        let stored = PageBufReader::with_capacity(BUFFER_SIZE, SourceFile(file));
        let (compression, stream) = decode(stored, path, None)?;
        Ok(EntryIter {
            tar: TarReader::new(stream, path.to_path_buf()),
            compression,
        })
    }

    /// How the blob is stored.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Reads the data of the entry last returned (see [`TarReader::read_data`]).
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.tar.read_data(buf)
    }
}

impl Iterator for EntryIter {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        self.tar.next_entry().transpose()
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, "cannot open", e))
}

/// Detects the compression from the first bytes of `stored` and returns the uncompressed stream,
/// whose errors are classified for [`TarReader`]: I/O errors of the file pass through as they
/// are, a stream that ends inside a member or frame is `UnexpectedEof`, anything else the
/// decoder rejects is `InvalidData`.
fn decode<'a, R: BufRead + Send + 'a>(
    mut stored: R,
    path: &Path,
    points: Option<SeekPoints>,
) -> Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let magic = stored
        .fill_buf()
        .map_err(|e| Error::io(path, "cannot read", untag(e)))?;
    let compression = Compression::detect(magic);
    // A plain tar is bounded by its file; a compressed one by the decompression limit.
    let limit = match compression {
        Compression::None => u64::MAX,
        _ => compress::max_decompressed_size()?,
    };
    let stream: Box<dyn Read + Send + 'a> = match compression {
        Compression::None => Box::new(Classified {
            inner: stored,
            codec: "tar",
        }),
        Compression::Gzip => Box::new(Bounded::new(
            Classified {
                inner: GzipMembers::new(stored, points),
                codec: "gzip",
            },
            limit,
            "gzip",
        )),
        Compression::Zstd => {
            let frames = ZstdFrames::new(stored).map_err(|e| Error::io(path, "cannot read", e))?;
            Box::new(Bounded::new(
                Classified {
                    inner: frames,
                    codec: "zstd",
                },
                limit,
                "zstd",
            ))
        }
    };
    Ok((compression, stream))
}

/// A read error of the blob file itself, told apart from the decoders' complaints about the
/// bytes they were given (the decoders pass it through unchanged).
#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

/// The blob file, its read errors tagged as [`SourceError`].
struct SourceFile(File);

impl Read for SourceFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), SourceError(e))),
                ok => return ok,
            }
        }
    }
}

/// The original error if `e` is a tagged [`SourceError`], else `e`.
fn untag(e: io::Error) -> io::Error {
    if !e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
        return e;
    }
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<SourceError>()) {
        Some(Ok(source)) => source.0,
        _ => io::Error::from(kind),
    }
}

/// Classifies the errors of a decoded stream (see [`decode`]).
struct Classified<R> {
    inner: R,
    codec: &'static str,
}

impl<R: Read> Read for Classified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
                return untag(e);
            }
            match e.kind() {
                io::ErrorKind::Interrupted => e,
                io::ErrorKind::UnexpectedEof => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the {} stream ends early ({e})", self.codec),
                ),
                _ => io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} stream: {e}", self.codec),
                ),
            }
        })
    }
}

/// True if `head` (possibly shorter than `magic`) could be the start of `magic`.
fn could_start_with(head: &[u8], magic: &[u8]) -> bool {
    let n = head.len().min(magic.len());
    head[..n] == magic[..n]
}

/// A gzip file read whole: one or more members (RFC 1952 §2.2; our writer, pigz and BGZF write
/// many). Bytes after a member that do not start another are an `InvalidData` error, not
/// silently ignored; the stream reports its end only once the file is read to its end.
struct GzipMembers<R: BufRead> {
    state: GzipState<Counted<R>>,
    /// Stream bytes returned so far.
    out: u64,
    points: Option<SeekPoints>,
}

/// The seek points a scan collects (shared with the decoder, which is boxed away from it).
type SeekPoints = Arc<Mutex<Vec<SeekPoint>>>;

/// Seek points are kept at least this many stream bytes apart: at most this much is decoded
/// and skipped to reach an entry, and a 1 GB layer keeps about 250 points.
pub const SEEK_SPACING: u64 = 4 << 20;

enum GzipState<R: BufRead> {
    Member(Box<GzDecoder<R>>),
    Between(R),
    /// Only while switching states.
    Switching,
}

impl<R: BufRead> GzipMembers<R> {
    fn new(stored: R, points: Option<SeekPoints>) -> Self {
        GzipMembers {
            state: GzipState::Between(Counted {
                inner: stored,
                consumed: 0,
            }),
            out: 0,
            points,
        }
    }

    /// A member starts at byte `stored` of the blob: noted if it is far enough from the last.
    fn member_starts(&self, stored: u64) {
        let Some(points) = &self.points else { return };
        let mut points = points.lock().expect("only this decoder writes the points");
        let last = points.last().map_or(0, |p| p.stream);
        if self.out >= last + SEEK_SPACING {
            points.push(SeekPoint {
                stored,
                stream: self.out,
            });
        }
    }
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.state {
                GzipState::Member(member) => {
                    let n = member.read(buf)?;
                    if n > 0 {
                        self.out += n as u64;
                        return Ok(n);
                    }
                    if let GzipState::Member(member) =
                        std::mem::replace(&mut self.state, GzipState::Switching)
                    {
                        self.state = GzipState::Between(member.into_inner());
                    }
                }
                GzipState::Between(stored) => {
                    let head = stored.fill_buf()?;
                    if head.is_empty() {
                        return Ok(0);
                    }
                    if !could_start_with(head, GZIP_MAGIC) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "garbage after the last gzip member (bytes that do not start another \
                             member)",
                        ));
                    }
                    let at = stored.consumed;
                    self.member_starts(at);
                    if let GzipState::Between(stored) =
                        std::mem::replace(&mut self.state, GzipState::Switching)
                    {
                        self.state = GzipState::Member(Box::new(GzDecoder::new(stored)));
                    }
                }
                GzipState::Switching => unreachable!("state is restored before returning"),
            }
        }
    }
}

/// A buffered reader that counts the bytes consumed from it.
struct Counted<R> {
    inner: R,
    consumed: u64,
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
        self.consumed += amount as u64;
    }
}

/// A zstd file read whole: one or more frames (skippable frames included), decoded with one
/// reused context. Bytes after a frame that do not start another are an `InvalidData` error; a
/// file that ends inside a frame is `UnexpectedEof` (zstd itself cannot tell that from a
/// pause in the input).
struct ZstdFrames<R> {
    stored: R,
    decoder: zstd::stream::raw::Decoder<'static>,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(stored: R) -> io::Result<Self> {
        Ok(ZstdFrames {
            stored,
            decoder: zstd::stream::raw::Decoder::new()?,
            in_frame: false,
        })
    }
}

/// Whether `head` could begin a zstd frame: the frame magic or a skippable-frame magic
/// (`0x184D2A5?`, little-endian).
fn could_start_zstd_frame(head: &[u8]) -> bool {
    could_start_with(head, ZSTD_MAGIC)
        || (head[0] & 0xf0 == 0x50 && could_start_with(&head[1..], &[0x2a, 0x4d, 0x18]))
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let input = self.stored.fill_buf()?;
            if !self.in_frame {
                if input.is_empty() {
                    return Ok(0);
                }
                if !could_start_zstd_frame(input) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "garbage after the last zstd frame (bytes that do not start another frame)",
                    ));
                }
                self.decoder.reinit()?;
                self.in_frame = true;
            }
            let at_eof = input.is_empty();
            let mut src = InBuffer::around(input);
            let mut dst = OutBuffer::around(buf);
            // 0 once a frame is completely decoded and flushed.
            let hint = self.decoder.run(&mut src, &mut dst)?;
            let (consumed, written) = (src.pos(), dst.pos());
            self.stored.consume(consumed);
            if hint == 0 {
                self.in_frame = false;
            }
            if written > 0 {
                return Ok(written);
            }
            if at_eof && self.in_frame {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ends inside a zstd frame",
                ));
            }
        }
    }
}

/// The decoded stream, hashed on the way to the tar reader when it differs from the stored one.
struct HashStream<R> {
    inner: R,
    digester: Option<Digester>,
}

impl<R: Read> Read for HashStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(d) = &mut self.digester {
            d.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    use super::*;

    fn sha256(bytes: &[u8]) -> String {
        let mut d = Digester::new();
        d.update(bytes);
        d.finish()
    }

    fn run(cmd: &mut Command) -> Vec<u8> {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Pipes `input` through a compressor command, returning its stdout.
    fn filter(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        fs::write(&path, input).unwrap();
        run(Command::new(program)
            .args(args)
            .arg(&path)
            .stdin(Stdio::null()))
    }

    fn gzip(input: &[u8]) -> Vec<u8> {
        filter("gzip", &["-n", "-c"], input)
    }

    fn zstd(input: &[u8]) -> Vec<u8> {
        filter("zstd", &["-q", "-c"], input)
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    /// A GNU tar (posix format) layer with a directory, a few files (one of 600 KB, half of it
    /// compressible) and a symlink.
    fn layer_tar() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/hostname"), b"layer\n").unwrap();
        let mut big = noise(300_000, 5);
        big.extend(std::iter::repeat_n(b'z', 300_000));
        fs::write(src.join("big"), big).unwrap();
        fs::write(src.join(".wh.old"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", src.join("link")).unwrap();
        let out = dir.path().join("layer.tar");
        run(Command::new("tar")
            .args(["--format=posix", "--sort=name", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg("."));
        fs::read(out).unwrap()
    }

    /// Writes `bytes` as a blob in a fresh temp dir.
    fn blob(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    fn describe_bytes(bytes: &[u8]) -> Result<LayerInfo> {
        let (_dir, path) = blob(bytes);
        describe(&path)
    }

    fn check(stored: &[u8], tar: &[u8], compression: Compression) {
        let info = describe_bytes(stored).unwrap();
        assert_eq!(
            info,
            LayerInfo {
                compression,
                digest: sha256(stored),
                diff_id: sha256(tar),
                size: stored.len() as u64,
                uncompressed_size: tar.len() as u64,
            }
        );
    }

    fn assert_truncated(result: Result<LayerInfo>, path: &Path) {
        match result {
            Err(Error::Truncated { path: at, detail }) => {
                assert_eq!(at, path);
                assert!(!detail.is_empty());
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    fn assert_corrupt(result: Result<LayerInfo>, path: &Path, needle: &str) {
        match result {
            Err(Error::Corrupt {
                path: at, detail, ..
            }) => {
                assert_eq!(at, path);
                assert!(
                    detail.contains(needle),
                    "{detail:?} should mention {needle:?}"
                );
            }
            other => panic!("expected Corrupt ({needle}), got {other:?}"),
        }
    }

    fn truncated(bytes: &[u8]) {
        let (_dir, path) = blob(bytes);
        assert_truncated(describe(&path), &path);
    }

    fn corrupt(bytes: &[u8], needle: &str) {
        let (_dir, path) = blob(bytes);
        assert_corrupt(describe(&path), &path, needle);
    }

    #[test]
    fn a_plain_tar_has_one_digest_for_both() {
        let tar = layer_tar();
        check(&tar, &tar, Compression::None);
        let info = describe_bytes(&tar).unwrap();
        assert_eq!(info.digest, info.diff_id);
    }

    #[test]
    fn gzip_from_gzip_and_pigz() {
        let tar = layer_tar();
        check(&gzip(&tar), &tar, Compression::Gzip);
        check(
            &filter("pigz", &["-c", "-p", "4", "-b", "128"], &tar),
            &tar,
            Compression::Gzip,
        );
    }

    #[test]
    fn multi_member_gzip_is_read_whole() {
        let tar = layer_tar();
        let (a, b) = tar.split_at(123_457);
        let two = [gzip(a), gzip(b)].concat();
        check(&two, &tar, Compression::Gzip);
        // Many small members, the last one empty.
        let many: Vec<u8> = tar
            .chunks(50_000)
            .map(gzip)
            .chain([gzip(b"")])
            .flatten()
            .collect();
        check(&many, &tar, Compression::Gzip);
    }

    #[test]
    fn zstd_from_the_cli_single_and_multi_frame() {
        let tar = layer_tar();
        check(&zstd(&tar), &tar, Compression::Zstd);
        let (a, b) = tar.split_at(200_001);
        check(&[zstd(a), zstd(b)].concat(), &tar, Compression::Zstd);
        // A skippable frame (magic 0x184D2A53, 4 bytes of payload) between and after frames.
        let skippable = [&[0x53, 0x2a, 0x4d, 0x18, 4, 0, 0, 0][..], b"meta"].concat();
        let with_skippable = [zstd(a), skippable.clone(), zstd(b), skippable].concat();
        check(&with_skippable, &tar, Compression::Zstd);
    }

    #[test]
    fn truncated_gzip_is_truncated() {
        let tar = layer_tar();
        let gz = gzip(&tar);
        for cut in [5, 20, gz.len() / 2, gz.len() - 8, gz.len() - 1] {
            truncated(&gz[..cut]);
        }
        // Cut inside the second member.
        let two = [gzip(&tar[..100_000]), gzip(&tar[100_000..])].concat();
        truncated(&two[..two.len() - 100]);
    }

    #[test]
    fn truncated_zstd_is_truncated_not_short() {
        let tar = layer_tar();
        let zst = zstd(&tar);
        for cut in [3, 10, zst.len() / 2, zst.len() - 4, zst.len() - 1] {
            truncated(&zst[..cut]);
        }
    }

    #[test]
    fn damaged_streams_are_corrupt() {
        let tar = layer_tar();
        let mut gz = gzip(&tar);
        let crc = gz.len() - 8;
        gz[crc] ^= 0xff;
        corrupt(&gz, "gzip stream");
        let mut zst = zstd(&tar);
        let checksum = zst.len() - 2;
        zst[checksum] ^= 0xff;
        corrupt(&zst, "zstd stream");
        let mut gz = gzip(&tar);
        gz[2] = 7; // compression method
        corrupt(&gz, "gzip stream");
    }

    #[test]
    fn garbage_after_the_compressed_stream_is_corrupt() {
        let tar = layer_tar();
        let gz = gzip(&tar);
        for garbage in [&b"garbage after the member"[..], b"x", b"\0", &[0u8; 1024]] {
            corrupt(
                &[&gz[..], garbage].concat(),
                "garbage after the last gzip member",
            );
        }
        let zst = zstd(&tar);
        for garbage in [&b"garbage after the frame"[..], b"x", &[0u8; 1024]] {
            corrupt(
                &[&zst[..], garbage].concat(),
                "garbage after the last zstd frame",
            );
        }
    }

    #[test]
    fn tar_errors_inside_a_compressed_stream_are_reported() {
        let tar = layer_tar();
        let mut bad = tar.clone();
        bad[2] ^= 1; // first header's checksum no longer matches
        corrupt(&gzip(&bad), "checksum mismatch");
        corrupt(&zstd(&bad), "checksum mismatch");
        let with_garbage = [&tar[..], b"trailing"].concat();
        corrupt(&gzip(&with_garbage), "garbage after the end of archive");
        truncated(&gzip(&tar[..tar.len() / 2]));
    }

    #[test]
    fn missing_and_unreadable_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        match describe(&missing) {
            Err(Error::NotFound { path }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            EntryIter::open(&missing),
            Err(Error::NotFound { .. })
        ));
        match describe(dir.path()) {
            Err(Error::Io { path, .. }) => assert_eq!(path, dir.path()),
            other => panic!("a directory is not a blob: {other:?}"),
        }
    }

    #[test]
    fn an_empty_file_is_a_truncated_layer() {
        assert!(matches!(describe_bytes(b""), Err(Error::Truncated { .. })));
    }

    #[test]
    fn verify_checks_digest_then_diff_id() {
        let tar = layer_tar();
        let gz = gzip(&tar);
        let (_dir, path) = blob(&gz);
        let (digest, diff_id) = (sha256(&gz), sha256(&tar));
        let wrong = sha256(b"something else");

        let info = verify(&path, Some(&digest), Some(&diff_id)).unwrap();
        assert_eq!(info, describe(&path).unwrap());
        assert_eq!(verify(&path, None, None).unwrap(), info);
        assert_eq!(verify(&path, None, Some(&diff_id)).unwrap(), info);

        for (d, i, what, expected) in [
            (Some(&wrong), Some(&diff_id), "digest", &wrong),
            (Some(&digest), Some(&wrong), "diff_id", &wrong),
            (None, Some(&digest), "diff_id", &digest),
            (Some(&wrong), Some(&wrong), "digest", &wrong),
        ] {
            match verify(&path, d.map(|s| s.as_str()), i.map(|s| s.as_str())) {
                Err(Error::DigestMismatch {
                    path: at,
                    what: w,
                    expected: e,
                    actual,
                }) => {
                    assert_eq!((at.as_path(), w, &e), (path.as_path(), what, expected));
                    assert_eq!(
                        actual,
                        if what == "digest" { &digest } else { &diff_id }.clone()
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            verify(&path, Some("sha256:abc"), None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(
            matches!(
                verify(&path.with_extension("missing"), Some("md5:00"), None),
                Err(Error::InvalidArgument(_))
            ),
            "malformed digests are rejected before the file is opened"
        );
    }

    fn all_entries(path: &Path) -> Vec<(Entry, Vec<u8>)> {
        let mut iter = EntryIter::open(path).unwrap();
        let mut out = Vec::new();
        while let Some(entry) = iter.next() {
            let entry = entry.unwrap();
            let mut data = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = iter.read_data(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            out.push((entry, data));
        }
        assert!(iter.next().is_none());
        out
    }

    #[test]
    fn entries_are_the_same_for_every_compression() {
        let tar = layer_tar();
        let (_d1, plain) = blob(&tar);
        let (_d2, gz) = blob(&gzip(&tar));
        let (_d3, zst) = blob(&zstd(&tar));
        let expected = all_entries(&plain);
        let paths: Vec<&[u8]> = expected.iter().map(|(e, _)| e.path.as_slice()).collect();
        assert_eq!(
            paths,
            [&b".wh.old"[..], b"big", b"etc", b"etc/hostname", b"link"]
        );
        for (entry, data) in &expected {
            let at = entry.offset as usize;
            assert_eq!(&tar[at..at + data.len()], &data[..]);
        }
        assert_eq!(expected[1].1.len(), 600_000);
        assert_eq!(expected[0].0.kind, crate::entry::EntryKind::Whiteout);
        assert_eq!(all_entries(&gz), expected);
        assert_eq!(all_entries(&zst), expected);
        assert_eq!(
            EntryIter::open(&gz).unwrap().compression(),
            Compression::Gzip
        );
        assert_eq!(
            EntryIter::open(&zst).unwrap().compression(),
            Compression::Zstd
        );
        assert_eq!(
            EntryIter::open(&plain).unwrap().compression(),
            Compression::None
        );
    }

    #[test]
    fn entry_iter_yields_one_error_then_ends() {
        let tar = layer_tar();
        let gz = gzip(&tar);
        let (_dir, path) = blob(&gz[..gz.len() * 3 / 4]);
        let mut iter = EntryIter::open(&path).unwrap();
        let results: Vec<Result<Entry>> = iter.by_ref().collect();
        let (last, entries) = results.split_last().unwrap();
        assert!(entries.iter().all(|r| r.is_ok()));
        assert!(matches!(last, Err(Error::Truncated { .. })), "{last:?}");
        assert!(iter.next().is_none());
    }

    #[test]
    fn entry_iter_can_move_between_threads() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<EntryIter>();
        let tar = layer_tar();
        let (_dir, path) = blob(&zstd(&tar));
        let iter = EntryIter::open(&path).unwrap();
        let entries = std::thread::spawn(move || iter.collect::<Result<Vec<_>>>())
            .join()
            .unwrap();
        assert_eq!(entries.unwrap().len(), 5);
    }

    #[test]
    fn file_read_errors_are_told_apart_from_decoder_errors() {
        let tagged = io::Error::new(
            io::ErrorKind::PermissionDenied,
            SourceError(io::Error::from_raw_os_error(libc::EIO)),
        );
        let mut classified = Classified {
            inner: FailWith(Some(tagged)),
            codec: "gzip",
        };
        let e = classified.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "the file's own error comes back: {e}"
        );

        let decoder = io::Error::new(io::ErrorKind::InvalidInput, "corrupt deflate stream");
        let mut classified = Classified {
            inner: FailWith(Some(decoder)),
            codec: "gzip",
        };
        let e = classified.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string()
                .contains("gzip stream: corrupt deflate stream"),
            "{e}"
        );
    }

    struct FailWith(Option<io::Error>);

    impl Read for FailWith {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(self.0.take().expect("read once"))
        }
    }
}

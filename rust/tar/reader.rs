//! A streaming tar reader over any [`Read`]: ustar, GNU, PAX and v7 headers; whiteout and opaque
//! classification; the data offset of every entry; strict errors.
//!
//! Written by hand rather than on top of tar-rs because a layer reader has to promise things a
//! general tar library does not: it consumes the stream to its very end (so a hash over the
//! stream is the whole layer's diff_id), it rejects anything but zeros after the end-of-archive
//! marker, and every failure is an [`Error`] of the right kind naming the archive. The stream is
//! never seeked (it is usually a decompressor), so skipping data means reading and discarding it
//! through one large buffer.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::BLOCK;
use crate::entry::{split_parent, whiteout_kind, Entry, EntryKind, WHITEOUT_PREFIX};
use crate::error::{Error, Result};
use crate::pagebuf::PageBuf;

/// Read size of the internal buffer: large enough that skipping multi-GB entries costs few calls
/// into a decompressor, small enough to be irrelevant next to it.
const BUFFER_SIZE: usize = 256 * 1024;

/// The largest PAX or GNU long-name header accepted. Real ones are a few hundred bytes (xattr
/// values are at most 64 KiB on Linux); the limit stops a forged size field from allocating
/// gigabytes.
const MAX_EXTENDED_HEADER: u64 = 16 << 20;

// Field positions in a ustar / GNU / v7 header block.
const NAME: Range<usize> = 0..100;
const MODE: Range<usize> = 100..108;
const UID: Range<usize> = 108..116;
const GID: Range<usize> = 116..124;
const SIZE: Range<usize> = 124..136;
const MTIME: Range<usize> = 136..148;
const CHECKSUM: Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: Range<usize> = 157..257;
const MAGIC: Range<usize> = 257..263;
const VERSION: Range<usize> = 263..265;
const UNAME: Range<usize> = 265..297;
const GNAME: Range<usize> = 297..329;
const DEVMAJOR: Range<usize> = 329..337;
const DEVMINOR: Range<usize> = 337..345;
const PREFIX: Range<usize> = 345..500;
/// star (Schily tar) shortens the ustar prefix to make room for atime/ctime and marks its
/// headers with `tar\0` in the last four bytes.
const STAR_PREFIX: Range<usize> = 345..476;
const STAR_TRAILER: Range<usize> = 508..512;

/// Which header layout a block uses; decides which fields exist beyond the v7 ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

impl Format {
    fn of(block: &[u8; BLOCK]) -> Self {
        let magic = &block[MAGIC];
        if magic == b"ustar\0" {
            if &block[STAR_TRAILER] == b"tar\0" {
                Format::Star
            } else {
                Format::Ustar
            }
        } else if magic == b"ustar " && &block[VERSION] == b" \0" {
            Format::Gnu
        } else {
            Format::V7
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Between entries or inside one.
    Entries,
    /// The end of the stream was reached cleanly.
    End,
    /// An error was returned; the reader yields nothing more.
    Failed,
}

/// A PAX record value and the stream offset it was read at (for error messages).
#[derive(Clone)]
struct Record {
    value: Vec<u8>,
    offset: u64,
}

/// Extended headers (`x`, `L`, `K`) seen since the last entry; they all describe the next one.
#[derive(Default)]
struct Pending {
    records: Vec<(Vec<u8>, Record)>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    /// Offset of the first of them: an archive must not end between it and its entry.
    first_offset: Option<u64>,
}

/// Streams the entries of an uncompressed tar stream.
///
/// Promises: entries come in archive order with normalised paths (see [`normalize_path`]); the
/// archive root (`./`) is skipped; [`Entry::offset`] is the position of the entry's data in the
/// stream; when [`TarReader::next_entry`] returns `Ok(None)` every byte of the stream has been
/// read, so a hashing reader underneath has seen the whole archive. Errors from the inner reader
/// of kind `UnexpectedEof` are reported as [`Error::Truncated`] and of kind `InvalidData` as
/// [`Error::Corrupt`] (that is how a decompressor underneath reports a damaged stream); other
/// I/O errors as [`Error::Io`]. After an error the reader is fused: it yields no more entries.
pub struct TarReader<R: Read> {
    input: Input<R>,
    label: PathBuf,
    /// Records of `g` headers so far, defaults for every later entry.
    globals: BTreeMap<Vec<u8>, Record>,
    /// Bytes of the current entry's data not yet read or skipped.
    data_left: u64,
    /// The part of `data_left` that [`TarReader::read_data`] hands out (the entry's `size`).
    readable_left: u64,
    /// Zero bytes that pad the current entry's data to a whole block.
    padding_left: u64,
    /// Path of the current entry, for messages about its data.
    current: Vec<u8>,
    state: State,
}

impl<R: Read> TarReader<R> {
    /// Starts reading `reader` at its current position, which counts as offset 0. `label` (the
    /// layer file, usually) is the path every error names.
    pub fn new(reader: R, label: PathBuf) -> Self {
        TarReader {
            input: Input::new(reader),
            label,
            globals: BTreeMap::new(),
            data_left: 0,
            readable_left: 0,
            padding_left: 0,
            current: Vec::new(),
            state: State::Entries,
        }
    }

    /// The next entry, after skipping whatever of the previous entry's data was not read.
    /// `Ok(None)` at the end of the archive: the first zero block (the rest of the stream must
    /// then be zeros too, and is read to its end). A stream that stops at a header boundary
    /// without that marker is truncated: every tar writer (GNU, bsdtar, Go, Python) writes it,
    /// and without it a layer cut at a block boundary would pass for a whole one.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.state != State::Entries {
            return Ok(None);
        }
        let result = self.advance();
        match &result {
            Ok(Some(_)) => {}
            Ok(None) => self.state = State::End,
            Err(_) => self.state = State::Failed,
        }
        result
    }

    /// Reads the current entry's data into `buf`; 0 at its end (always 0 for entries whose
    /// `size` is 0: directories, links, devices). Optional: `next_entry` skips what is left.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.state != State::Entries || self.readable_left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.readable_left).unwrap_or(usize::MAX));
        let n = match self.input.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) => {
                self.state = State::Failed;
                return Err(self.read_error(e));
            }
        };
        if n == 0 {
            self.state = State::Failed;
            return Err(self.truncated_in_data(self.data_left + self.padding_left));
        }
        self.readable_left -= n as u64;
        self.data_left -= n as u64;
        Ok(n)
    }

    /// Bytes of the tar stream consumed so far. Right after `next_entry` returns an entry this
    /// is its `offset`; after the end, the length of the whole stream.
    pub fn position(&self) -> u64 {
        self.input.consumed
    }

    /// The inner reader. Bytes it returned that the tar reader has buffered but not consumed
    /// are lost; after `next_entry` returned `Ok(None)` there are none.
    pub fn into_inner(self) -> R {
        self.input.inner
    }

    fn advance(&mut self) -> Result<Option<Entry>> {
        self.skip_current()?;
        let mut pending = Pending::default();
        loop {
            let offset = self.input.consumed;
            let mut block = [0u8; BLOCK];
            let got = self
                .input
                .read_full(&mut block)
                .map_err(|e| self.read_error(e))?;
            if got == 0 {
                if let Some(at) = pending.first_offset {
                    return Err(Error::truncated(
                        &self.label,
                        format!(
                            "the archive ends after the extended header at byte {at}, \
                             before the entry it describes"
                        ),
                    ));
                }
                return Err(Error::truncated(
                    &self.label,
                    format!(
                        "the archive ends at byte {offset} without the end-of-archive marker \
                         (a zero block)"
                    ),
                ));
            }
            if got < BLOCK {
                return Err(Error::truncated(
                    &self.label,
                    format!(
                        "the archive ends inside the header block at byte {offset} \
                         ({got} of {BLOCK} bytes present)"
                    ),
                ));
            }
            if block.iter().all(|&b| b == 0) {
                if let Some(at) = pending.first_offset {
                    return Err(Error::corrupt(
                        &self.label,
                        offset,
                        format!(
                            "end-of-archive marker right after the extended header at byte \
                             {at}, which describes an entry that never comes"
                        ),
                    ));
                }
                self.drain_after_end()?;
                return Ok(None);
            }
            self.check_checksum(&block, offset)?;
            let typeflag = block[TYPEFLAG];
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    let size = self.header_u64(&block, SIZE, offset, "size")?;
                    let data_offset = self.input.consumed;
                    let data = self.read_extended(size, offset)?;
                    match typeflag {
                        b'x' => {
                            pending.first_offset.get_or_insert(offset);
                            pending.records.extend(self.parse_pax(&data, data_offset)?);
                        }
                        b'g' => {
                            // An empty value deletes the global default (POSIX pax).
                            for (key, record) in self.parse_pax(&data, data_offset)? {
                                if record.value.is_empty() {
                                    self.globals.remove(&key);
                                } else {
                                    self.globals.insert(key, record);
                                }
                            }
                        }
                        b'L' => {
                            pending.first_offset.get_or_insert(offset);
                            pending.long_name = Some(until_nul(&data).to_vec());
                        }
                        _ => {
                            pending.first_offset.get_or_insert(offset);
                            pending.long_link = Some(until_nul(&data).to_vec());
                        }
                    }
                }
                _ => {
                    if let Some(entry) = self.entry_from(&block, offset, pending)? {
                        return Ok(Some(entry));
                    }
                    // The archive root (`./`): not an entry of the changeset.
                    self.skip_current()?;
                    pending = Pending::default();
                }
            }
        }
    }

    /// Builds the entry a (non-extended) header block describes, applying the pending extended
    /// headers and the global defaults, and sets up its data. `None` for the archive root.
    fn entry_from(
        &mut self,
        block: &[u8; BLOCK],
        offset: u64,
        pending: Pending,
    ) -> Result<Option<Entry>> {
        let format = Format::of(block);
        let mut pax = PaxOverrides::default();
        let records = self
            .globals
            .iter()
            .chain(pending.records.iter().map(|(k, r)| (k, r)));
        for (key, record) in records {
            pax.apply(key, &record.value).map_err(|detail| {
                Error::corrupt(&self.label, record.offset, format!("PAX record: {detail}"))
            })?;
        }

        let raw_name = match (pax.path.take(), pending.long_name) {
            (Some(path), _) | (None, Some(path)) => path,
            (None, None) => {
                let name = until_nul(&block[NAME]);
                let prefix = match format {
                    Format::Ustar => until_nul(&block[PREFIX]),
                    Format::Star => until_nul(&block[STAR_PREFIX]),
                    Format::V7 | Format::Gnu => &[],
                };
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    [prefix, b"/", name].concat()
                }
            }
        };

        let typeflag = block[TYPEFLAG];
        let kind = match typeflag {
            b'0' | b'7' => EntryKind::File,
            // Old (v7-era) archives mark directories only by the trailing slash.
            0 if raw_name.ends_with(b"/") => EntryKind::Dir,
            0 => EntryKind::File,
            b'1' => EntryKind::Hardlink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::Char,
            b'4' => EntryKind::Block,
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            other => {
                return Err(Error::Unsupported {
                    path: self.label.clone(),
                    detail: format!(
                        "entry '{}' at byte {offset}: {} is not supported in a layer",
                        show(&raw_name),
                        typeflag_name(other)
                    ),
                })
            }
        };
        if pax.sparse {
            let name = pax.sparse_name.as_deref().unwrap_or(&raw_name);
            return Err(Error::Unsupported {
                path: self.label.clone(),
                detail: format!(
                    "entry '{}' at byte {offset}: a GNU sparse file (GNU.sparse.* PAX records) \
                     is not supported in a layer",
                    show(name)
                ),
            });
        }

        let size = match pax.size {
            Some(size) => size,
            None => self.header_u64(block, SIZE, offset, "size")?,
        };
        let path = normalize_path(&raw_name);
        if path.is_empty() {
            if kind == EntryKind::Dir {
                self.start_data(b".".to_vec(), size, 0);
                return Ok(None);
            }
            return Err(Error::corrupt(
                &self.label,
                offset,
                format!(
                    "a {} entry has an empty name ('{}')",
                    kind.as_str(),
                    show(&raw_name)
                ),
            ));
        }
        if split_parent(&path).1 == WHITEOUT_PREFIX {
            return Err(Error::corrupt(
                &self.label,
                offset,
                format!(
                    "entry '{}': a whiteout must name a file, '.wh.' alone names nothing \
                     (OCI image-spec layer.md)",
                    show(&path)
                ),
            ));
        }
        let kind = match kind {
            EntryKind::File => whiteout_kind(&path).unwrap_or(EntryKind::File),
            other => other,
        };

        let mode = self.header_u64(block, MODE, offset, "mode")? & 0o7777;
        let uid = match pax.uid {
            Some(uid) => uid,
            None => self.header_u64(block, UID, offset, "uid")?,
        };
        let gid = match pax.gid {
            Some(gid) => gid,
            None => self.header_u64(block, GID, offset, "gid")?,
        };
        let mtime = match pax.mtime {
            Some(mtime) => mtime,
            None => self.header_i64(block, MTIME, offset, "mtime")?,
        };
        let has_names = format != Format::V7;
        let uname = match pax.uname.take() {
            Some(name) => name,
            None if has_names => until_nul(&block[UNAME]).to_vec(),
            None => Vec::new(),
        };
        let gname = match pax.gname.take() {
            Some(name) => name,
            None if has_names => until_nul(&block[GNAME]).to_vec(),
            None => Vec::new(),
        };
        // Device numbers are read only where they mean something: writers fill them with
        // anything (NULs, zeros, spaces) for other kinds.
        let (devmajor, devminor) =
            if has_names && matches!(kind, EntryKind::Char | EntryKind::Block) {
                (
                    self.header_u32(block, DEVMAJOR, offset, "devmajor")?,
                    self.header_u32(block, DEVMINOR, offset, "devminor")?,
                )
            } else {
                (0, 0)
            };
        let linkname = match kind {
            EntryKind::Hardlink | EntryKind::Symlink => {
                let raw = match (pax.linkpath.take(), pending.long_link) {
                    (Some(link), _) | (None, Some(link)) => link,
                    (None, None) => until_nul(&block[LINKNAME]).to_vec(),
                };
                if kind == EntryKind::Symlink {
                    Some(raw)
                } else {
                    let target = normalize_path(&raw);
                    if target.is_empty() {
                        return Err(Error::corrupt(
                            &self.label,
                            offset,
                            format!(
                                "hardlink '{}' has no target ('{}')",
                                show(&path),
                                show(&raw)
                            ),
                        ));
                    }
                    Some(target)
                }
            }
            _ => None,
        };
        let carries_data = matches!(
            kind,
            EntryKind::File | EntryKind::Whiteout | EntryKind::Opaque
        );
        let entry_size = if carries_data { size } else { 0 };

        self.start_data(path.clone(), size, entry_size);
        Ok(Some(Entry {
            path,
            kind,
            mode: mode as u32,
            uid,
            gid,
            uname: String::from_utf8_lossy(&uname).into_owned(),
            gname: String::from_utf8_lossy(&gname).into_owned(),
            size: entry_size,
            mtime,
            linkname,
            devmajor,
            devminor,
            xattrs: pax.xattrs(),
            offset: self.input.consumed,
        }))
    }

    /// Records that `size` bytes of data (plus padding) follow for the entry `path`, of which
    /// `readable` are handed out by `read_data`. Every kind's declared data is skipped, even
    /// where the entry reports size 0, so that the next header is found where the writer put it.
    fn start_data(&mut self, path: Vec<u8>, size: u64, readable: u64) {
        self.current = path;
        self.data_left = size;
        self.readable_left = readable;
        self.padding_left = padding(size);
    }

    /// Skips the unread data and padding of the current entry.
    fn skip_current(&mut self) -> Result<()> {
        let left = self.data_left + self.padding_left;
        if left == 0 {
            return Ok(());
        }
        let skipped = self.input.skip(left).map_err(|e| self.read_error(e))?;
        if skipped < left {
            return Err(self.truncated_in_data(left - skipped));
        }
        self.data_left = 0;
        self.readable_left = 0;
        self.padding_left = 0;
        Ok(())
    }

    /// Reads the data and padding of an extended header (`x`, `g`, `L`, `K`) at `offset`.
    fn read_extended(&mut self, size: u64, offset: u64) -> Result<Vec<u8>> {
        if size > MAX_EXTENDED_HEADER {
            return Err(Error::Unsupported {
                path: self.label.clone(),
                detail: format!(
                    "the extended header at byte {offset} declares {size} bytes, more than the \
                     {MAX_EXTENDED_HEADER} this reader accepts"
                ),
            });
        }
        let mut data = vec![0u8; size as usize];
        let got = self
            .input
            .read_full(&mut data)
            .map_err(|e| self.read_error(e))?;
        let pad = padding(size);
        let skipped = if got == data.len() {
            self.input.skip(pad).map_err(|e| self.read_error(e))?
        } else {
            0
        };
        if got < data.len() || skipped < pad {
            return Err(Error::truncated(
                &self.label,
                format!("the archive ends inside the extended header at byte {offset}"),
            ));
        }
        Ok(data)
    }

    /// Reads the rest of the stream after the first zero block: only zeros may follow.
    fn drain_after_end(&mut self) -> Result<()> {
        loop {
            let offset = self.input.consumed;
            let chunk = match self.input.fill() {
                Ok(chunk) => chunk,
                Err(e) => return Err(read_error(&self.label, offset, e)),
            };
            if chunk.is_empty() {
                return Ok(());
            }
            if let Some(i) = chunk.iter().position(|&b| b != 0) {
                return Err(Error::corrupt(
                    &self.label,
                    offset + i as u64,
                    format!(
                        "garbage after the end of archive: byte 0x{:02x} where only zero padding \
                         may follow the end-of-archive marker",
                        chunk[i]
                    ),
                ));
            }
            let n = chunk.len();
            self.input.consume(n);
        }
    }

    fn check_checksum(&self, block: &[u8; BLOCK], offset: u64) -> Result<()> {
        let stored = parse_number(&block[CHECKSUM]).map_err(|detail| {
            Error::corrupt(
                &self.label,
                offset,
                format!("not a tar header: the checksum field is invalid ({detail})"),
            )
        })?;
        // The checksum is taken with the checksum field itself read as spaces. Historic
        // writers summed signed chars; GNU tar accepts either sum, and so do we.
        let mut unsigned: i64 = 0;
        let mut signed: i64 = 0;
        for (i, &b) in block.iter().enumerate() {
            let b = if CHECKSUM.contains(&i) { b' ' } else { b };
            unsigned += i64::from(b);
            signed += i64::from(b as i8);
        }
        if stored == unsigned || stored == signed {
            Ok(())
        } else {
            Err(Error::corrupt(
                &self.label,
                offset,
                format!(
                    "header checksum mismatch: the header records {stored:o}, its bytes sum to \
                     {unsigned:o} (octal)"
                ),
            ))
        }
    }

    fn header_i64(
        &self,
        block: &[u8; BLOCK],
        field: Range<usize>,
        offset: u64,
        name: &str,
    ) -> Result<i64> {
        let start = field.start;
        parse_number(&block[field]).map_err(|detail| {
            Error::corrupt(
                &self.label,
                offset + start as u64,
                format!("invalid {name} field: {detail}"),
            )
        })
    }

    fn header_u64(
        &self,
        block: &[u8; BLOCK],
        field: Range<usize>,
        offset: u64,
        name: &str,
    ) -> Result<u64> {
        let start = field.start;
        let value = self.header_i64(block, field, offset, name)?;
        u64::try_from(value).map_err(|_| {
            Error::corrupt(
                &self.label,
                offset + start as u64,
                format!("invalid {name} field: {value} is negative"),
            )
        })
    }

    fn header_u32(
        &self,
        block: &[u8; BLOCK],
        field: Range<usize>,
        offset: u64,
        name: &str,
    ) -> Result<u32> {
        let start = field.start;
        let value = self.header_u64(block, field, offset, name)?;
        u32::try_from(value).map_err(|_| {
            Error::corrupt(
                &self.label,
                offset + start as u64,
                format!("invalid {name} field: {value} does not fit in 32 bits"),
            )
        })
    }

    /// Splits PAX extended-header data (`"%d %s=%s\n"` records, the length counting the whole
    /// record) into keywords and values.
    fn parse_pax(&self, data: &[u8], base: u64) -> Result<Vec<(Vec<u8>, Record)>> {
        let mut records = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let at = base + pos as u64;
            let corrupt = |detail: String| Error::corrupt(&self.label, at, detail);
            let rest = &data[pos..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 || rest.get(digits) != Some(&b' ') {
                return Err(corrupt(format!(
                    "PAX record does not start with a decimal length and a space: '{}'",
                    show(&rest[..rest.len().min(32)])
                )));
            }
            let len = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&len| len > digits + 1 && len <= rest.len())
                .ok_or_else(|| {
                    corrupt(format!(
                        "PAX record length {} does not fit the {} bytes left in the header",
                        show(&rest[..digits]),
                        rest.len()
                    ))
                })?;
            let record = &rest[digits + 1..len];
            let Some(body) = record.strip_suffix(b"\n") else {
                return Err(corrupt(format!(
                    "PAX record '{}' does not end in a newline (is its length wrong?)",
                    show(&rest[..len])
                )));
            };
            let Some(eq) = body.iter().position(|&b| b == b'=') else {
                return Err(corrupt(format!("PAX record '{}' has no '='", show(body))));
            };
            if eq == 0 {
                return Err(corrupt(format!(
                    "PAX record '{}' has an empty keyword",
                    show(body)
                )));
            }
            records.push((
                body[..eq].to_vec(),
                Record {
                    value: body[eq + 1..].to_vec(),
                    offset: at,
                },
            ));
            pos += len;
        }
        Ok(records)
    }

    fn read_error(&self, e: io::Error) -> Error {
        read_error(&self.label, self.input.consumed, e)
    }

    fn truncated_in_data(&self, missing: u64) -> Error {
        Error::truncated(
            &self.label,
            format!(
                "the archive ends inside the data of '{}' ({missing} bytes of data and padding \
                 missing)",
                show(&self.current)
            ),
        )
    }
}

/// Maps an error of the inner reader; see [`TarReader`] for the kinds.
fn read_error(label: &Path, offset: u64, e: io::Error) -> Error {
    if let Some(too_large) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<crate::compress::TooLarge>())
    {
        return Error::Unsupported {
            path: label.to_path_buf(),
            detail: too_large.to_string(),
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::truncated(label, e.to_string()),
        io::ErrorKind::InvalidData => Error::corrupt(label, offset, e.to_string()),
        _ => Error::io(label, "cannot read", e),
    }
}

/// What the PAX records of an entry (global defaults first, then its own) say about it.
#[derive(Default)]
struct PaxOverrides {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    uname: Option<Vec<u8>>,
    gname: Option<Vec<u8>>,
    schily_xattrs: BTreeMap<String, Vec<u8>>,
    libarchive_xattrs: BTreeMap<String, Vec<u8>>,
    sparse: bool,
    sparse_name: Option<Vec<u8>>,
}

impl PaxOverrides {
    /// Applies one record. An empty value for a header field means "use the header's own
    /// field" (POSIX pax); an empty xattr value is an empty xattr. Keywords an entry has no
    /// use for (atime, ctime, comment, hdrcharset: values are kept as bytes anyway) are ignored.
    fn apply(&mut self, key: &[u8], value: &[u8]) -> std::result::Result<(), String> {
        let given = !value.is_empty();
        match key {
            b"path" => self.path = given.then(|| value.to_vec()),
            b"linkpath" => self.linkpath = given.then(|| value.to_vec()),
            b"uname" => self.uname = given.then(|| value.to_vec()),
            b"gname" => self.gname = given.then(|| value.to_vec()),
            b"size" => self.size = given.then(|| parse_decimal(key, value)).transpose()?,
            b"uid" => self.uid = given.then(|| parse_decimal(key, value)).transpose()?,
            b"gid" => self.gid = given.then(|| parse_decimal(key, value)).transpose()?,
            b"mtime" => self.mtime = given.then(|| parse_pax_time(value)).transpose()?,
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    let name = xattr_name(&decode_schily_name(name), key)?;
                    self.schily_xattrs.insert(name, value.to_vec());
                } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                    let name = xattr_name(&url_decode(name).ok_or_else(|| bad(key, value))?, key)?;
                    let value = base64_decode(value).ok_or_else(|| bad(key, value))?;
                    self.libarchive_xattrs.insert(name, value);
                } else if let Some(field) = key.strip_prefix(b"GNU.sparse.") {
                    self.sparse = true;
                    if field == b"name" {
                        self.sparse_name = Some(value.to_vec());
                    }
                }
            }
        }
        Ok(())
    }

    /// The xattrs sorted by name; where bsdtar wrote both spellings, SCHILY's wins.
    fn xattrs(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut all = std::mem::take(&mut self.libarchive_xattrs);
        all.append(&mut self.schily_xattrs);
        all.into_iter().collect()
    }
}

fn bad(key: &[u8], value: &[u8]) -> String {
    format!("{}={} is not valid", show(key), show(value))
}

fn xattr_name(name: &[u8], key: &[u8]) -> std::result::Result<String, String> {
    if name.is_empty() {
        return Err(format!("{} names no xattr", show(key)));
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// GNU tar and bsdtar write `=` and `%` in xattr names as `%3D` and `%25` (a PAX keyword cannot
/// hold `=`); this undoes exactly that, as GNU tar does, and nothing else.
fn decode_schily_name(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        match &name[i..] {
            [b'%', b'3', b'D', ..] => {
                out.push(b'=');
                i += 3;
            }
            [b'%', b'2', b'5', ..] => {
                out.push(b'%');
                i += 3;
            }
            [b, ..] => {
                out.push(*b);
                i += 1;
            }
            [] => unreachable!("loop condition"),
        }
    }
    out
}

/// Full `%XX` decoding, as libarchive encodes `LIBARCHIVE.xattr.` names.
fn url_decode(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Standard-alphabet base64, padded or not (libarchive writes it without padding).
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let text = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A PAX decimal integer (`size`, `uid`, `gid`): digits only.
fn parse_decimal(key: &[u8], value: &[u8]) -> std::result::Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(key, value))
}

/// A PAX time (`-?digits(.digits)?`), floored to whole seconds: `-1.5` is `-2`.
fn parse_pax_time(value: &[u8]) -> std::result::Result<i64, String> {
    let invalid = || bad(b"mtime", value);
    let (negative, unsigned) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (whole, fraction) = match unsigned.iter().position(|&b| b == b'.') {
        Some(dot) => (&unsigned[..dot], &unsigned[dot + 1..]),
        None => (unsigned, &[][..]),
    };
    if whole.is_empty()
        || !whole.iter().all(u8::is_ascii_digit)
        || !fraction.iter().all(u8::is_ascii_digit)
    {
        return Err(invalid());
    }
    let seconds: i64 = std::str::from_utf8(whole)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    if !negative {
        return Ok(seconds);
    }
    let below = fraction.iter().any(|&b| b != b'0');
    Ok(-seconds - i64::from(below))
}

/// Parses a numeric header field: base-256 when the first byte has its high bit set (GNU, star;
/// `0x80` positive, `0xff` negative), else octal, read as GNU tar does: leading spaces, digits,
/// then the end of the field, a NUL or a space. An empty field is 0.
fn parse_number(field: &[u8]) -> std::result::Result<i64, String> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        return parse_base256(field);
    }
    let mut i = field.iter().take_while(|&&b| b == b' ').count();
    let mut value: i64 = 0;
    while let Some(&b) = field.get(i).filter(|b| (b'0'..=b'7').contains(b)) {
        // At most 12 digits (36 bits): no overflow.
        value = value * 8 + i64::from(b - b'0');
        i += 1;
    }
    match field.get(i) {
        None | Some(0) | Some(b' ') => Ok(value),
        Some(_) => Err(format!("'{}' is not an octal number", field.escape_ascii())),
    }
}

fn parse_base256(field: &[u8]) -> std::result::Result<i64, String> {
    // Two's complement: for a negative number every byte is inverted, so `!x` gives it back.
    let invert = if field[0] & 0x40 != 0 { 0xff } else { 0 };
    let mut x: u64 = 0;
    for (i, &b) in field.iter().enumerate() {
        let mut c = b ^ invert;
        if i == 0 {
            c &= 0x7f;
        }
        if x >> 56 != 0 {
            return Err("base-256 number does not fit in 64 bits".into());
        }
        x = (x << 8) | u64::from(c);
    }
    if x >> 63 != 0 {
        return Err("base-256 number does not fit in 64 bits".into());
    }
    Ok(if invert == 0xff {
        !(x as i64)
    } else {
        x as i64
    })
}

/// Normalises an archive member name to the form of [`Entry::path`]: leading `/` and `./` runs
/// removed, `//` runs collapsed, `.` components dropped, no trailing `/`. `..` components are kept
/// as they are: rejecting them is the job of whoever writes to disk. The archive root (`./`, `.`,
/// `/`) becomes the empty path.
pub fn normalize_path(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for part in raw.split(|&b| b == b'/') {
        if part.is_empty() || part == b"." {
            continue;
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    out
}

/// Zero bytes that pad `size` bytes of data to a whole block.
fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn until_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

/// A name for messages: as text when it is UTF-8, else with the odd bytes escaped.
fn show(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) => s.to_owned(),
        Err(_) => name.escape_ascii().to_string(),
    }
}

fn typeflag_name(typeflag: u8) -> String {
    match typeflag {
        b'S' => "a GNU sparse file (typeflag 'S')".into(),
        b'D' => "a GNU incremental-dump directory (typeflag 'D')".into(),
        b'V' => "a GNU volume label (typeflag 'V')".into(),
        b'M' => "a GNU multi-volume continuation (typeflag 'M')".into(),
        b if b.is_ascii_graphic() => format!("typeflag '{}'", b as char),
        b => format!("typeflag 0x{b:02x}"),
    }
}

/// The buffered front of the stream, counting consumed bytes.
struct Input<R> {
    inner: R,
    buf: PageBuf,
    start: usize,
    end: usize,
    consumed: u64,
}

impl<R: Read> Input<R> {
    fn new(inner: R) -> Self {
        Input {
            inner,
            buf: PageBuf::new(BUFFER_SIZE),
            start: 0,
            end: 0,
            consumed: 0,
        }
    }

    /// The buffered bytes, refilled when empty; empty only at the end of the stream.
    fn fill(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.end = read_retrying(&mut self.inner, &mut self.buf)?;
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.consumed += n as u64;
    }

    /// Fills `out` completely unless the stream ends first; returns the bytes copied.
    fn read_full(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < out.len() {
            let available = self.fill()?;
            if available.is_empty() {
                break;
            }
            let n = available.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&available[..n]);
            self.consume(n);
            done += n;
        }
        Ok(done)
    }

    /// Reads and discards up to `n` bytes; returns how many there were.
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let mut done = 0;
        while done < n {
            let available = self.fill()?.len();
            if available == 0 {
                break;
            }
            let step = available.min(usize::try_from(n - done).unwrap_or(usize::MAX));
            self.consume(step);
            done += step as u64;
        }
        Ok(done)
    }

    /// One read: from the buffer, or straight into `out` when the buffer is empty and `out` is
    /// at least as large (no point copying twice).
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end && out.len() >= self.buf.len() {
            let n = read_retrying(&mut self.inner, out)?;
            self.consumed += n as u64;
            return Ok(n);
        }
        let available = self.fill()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

fn read_retrying<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::Command;

    use super::*;

    // ----- helpers -----

    fn label() -> PathBuf {
        PathBuf::from("/layers/test.tar")
    }

    /// Every entry with its data read through `read_data` in `chunk`-sized reads; also checks
    /// that the whole stream was consumed.
    fn read_all_with(bytes: &[u8], chunk: usize) -> Result<Vec<(Entry, Vec<u8>)>> {
        let mut reader = TarReader::new(bytes, label());
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        while let Some(entry) = reader.next_entry()? {
            let mut data = Vec::new();
            loop {
                let n = reader.read_data(&mut buf)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            out.push((entry, data));
        }
        assert_eq!(
            reader.position(),
            bytes.len() as u64,
            "the whole stream is consumed"
        );
        Ok(out)
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>> {
        read_all_with(bytes, 1000)
    }

    /// Every entry, data skipped.
    fn entries(bytes: &[u8]) -> Result<Vec<Entry>> {
        let mut reader = TarReader::new(bytes, label());
        let mut out = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            out.push(entry);
        }
        Ok(out)
    }

    fn find<'a>(all: &'a [(Entry, Vec<u8>)], path: &[u8]) -> &'a (Entry, Vec<u8>) {
        all.iter()
            .find(|(e, _)| e.path == path)
            .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(path)))
    }

    fn run(cmd: &mut Command) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn python(script: &str, args: &[&Path]) {
        run(Command::new("python3").arg("-c").arg(script).args(args));
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        python(
            &format!(
                "import os, sys; os.setxattr(sys.argv[1], {name:?}, bytes.fromhex({hex:?}), \
                 follow_symlinks=False)"
            ),
            &[path],
        );
    }

    /// Deterministic incompressible-ish bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    fn assert_corrupt(result: Result<impl std::fmt::Debug>, offset: u64, needle: &str) {
        match result {
            Err(Error::Corrupt {
                path,
                offset: at,
                detail,
            }) => {
                assert_eq!(path, label());
                assert_eq!(at, offset, "offset of: {detail}");
                assert!(
                    detail.contains(needle),
                    "{detail:?} should mention {needle:?}"
                );
            }
            other => panic!("expected Corrupt at {offset} ({needle}), got {other:?}"),
        }
    }

    fn assert_truncated(result: Result<impl std::fmt::Debug>, needle: &str) {
        match result {
            Err(Error::Truncated { path, detail }) => {
                assert_eq!(path, label());
                assert!(
                    detail.contains(needle),
                    "{detail:?} should mention {needle:?}"
                );
            }
            other => panic!("expected Truncated ({needle}), got {other:?}"),
        }
    }

    // ----- hand-made archives -----

    fn put(field: &mut [u8], value: &[u8]) {
        field[..value.len()].copy_from_slice(value);
    }

    /// `%0*o\0` filling the field, as Python's tarfile writes it.
    fn put_octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        put(field, text.as_bytes());
    }

    fn seal(block: &mut [u8; BLOCK]) {
        block[CHECKSUM].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        put(&mut block[CHECKSUM], format!("{sum:06o}\0").as_bytes());
    }

    /// A ustar header; `tweak` edits it before the checksum is set.
    fn header_with(
        name: &[u8],
        typeflag: u8,
        size: u64,
        tweak: impl FnOnce(&mut [u8; BLOCK]),
    ) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        put(&mut b[NAME], name);
        put_octal(&mut b[MODE], 0o644);
        put_octal(&mut b[UID], 1000);
        put_octal(&mut b[GID], 1001);
        put_octal(&mut b[SIZE], size);
        put_octal(&mut b[MTIME], 1_600_000_000);
        b[TYPEFLAG] = typeflag;
        put(&mut b[MAGIC], b"ustar\0");
        put(&mut b[VERSION], b"00");
        put(&mut b[UNAME], b"alice");
        put(&mut b[GNAME], b"staff");
        tweak(&mut b);
        seal(&mut b);
        b
    }

    fn header(name: &[u8], typeflag: u8, size: u64) -> [u8; BLOCK] {
        header_with(name, typeflag, size, |_| {})
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        out.resize(data.len() + padding(data.len() as u64) as usize, 0);
        out
    }

    /// A member: header and data.
    fn member(name: &[u8], typeflag: u8, data: &[u8]) -> Vec<u8> {
        let mut out = header(name, typeflag, data.len() as u64).to_vec();
        out.extend(padded(data));
        out
    }

    fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
        member(name, b'0', data)
    }

    /// One PAX record with its self-counting length.
    fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let body = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        [len.to_string().as_bytes(), b" ", key, b"=", value, b"\n"].concat()
    }

    fn extended(typeflag: u8, data: &[u8]) -> Vec<u8> {
        member(b"././@PaxHeader", typeflag, data)
    }

    fn pax(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| record(k, v)).collect();
        extended(b'x', &data)
    }

    fn end() -> Vec<u8> {
        vec![0u8; 2 * BLOCK]
    }

    fn archive(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    // ----- unit pieces -----

    #[test]
    fn paths_are_normalised() {
        for (raw, want) in [
            (&b"./etc/passwd"[..], &b"etc/passwd"[..]),
            (b"/etc/", b"etc"),
            (b"///a//b///", b"a/b"),
            (b"././a/./b", b"a/b"),
            (b".//./a", b"a"),
            (b"a/../b", b"a/../b"),
            (b"..", b".."),
            (b"./", b""),
            (b".", b""),
            (b"/", b""),
            (b"", b""),
            (b"caf\xe9/", b"caf\xe9"),
        ] {
            assert_eq!(
                normalize_path(raw),
                want,
                "{:?}",
                raw.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn numeric_fields_parse_like_gnu_tar() {
        assert_eq!(parse_number(b"0000644\0"), Ok(0o644));
        assert_eq!(parse_number(b"   644 \0"), Ok(0o644));
        assert_eq!(parse_number(b"644\0junk"), Ok(0o644));
        assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0"), Ok(0));
        assert_eq!(parse_number(b"        "), Ok(0));
        assert_eq!(parse_number(b"77777777777\0"), Ok(0o77777777777));
        assert!(parse_number(b"00006x4\0").is_err());
        assert!(parse_number(b"0000009\0").is_err());
        assert!(parse_number(b"-0000001").is_err());
        // base-256: 0x80 marks a positive number, 0xff a negative one (two's complement).
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(10u64 << 30).to_be_bytes());
        assert_eq!(parse_number(&big), Ok(10 << 30));
        assert_eq!(parse_number(&[0xff; 12]), Ok(-1));
        let mut minus_two = [0xff; 12];
        minus_two[11] = 0xfe;
        assert_eq!(parse_number(&minus_two), Ok(-2));
        let mut too_big = [0u8; 12];
        too_big[0] = 0x80;
        too_big[3] = 1;
        assert!(parse_number(&too_big).is_err());
    }

    #[test]
    fn pax_times_are_floored_to_seconds() {
        assert_eq!(parse_pax_time(b"1700000000.123"), Ok(1_700_000_000));
        assert_eq!(parse_pax_time(b"1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_pax_time(b"1700000000."), Ok(1_700_000_000));
        assert_eq!(parse_pax_time(b"-1.5"), Ok(-2));
        assert_eq!(parse_pax_time(b"-1.000"), Ok(-1));
        assert_eq!(parse_pax_time(b"-7"), Ok(-7));
        for bad in [
            &b""[..],
            b"x",
            b".5",
            b"1.2.3",
            b"+5",
            b"1e9",
            b"--1",
            b"99999999999999999999",
        ] {
            assert!(parse_pax_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn libarchive_encodings_decode() {
        assert_eq!(base64_decode(b"dmE9bHVlCg").unwrap(), b"va=lue\n");
        assert_eq!(base64_decode(b"dmE9bHVlCg==").unwrap(), b"va=lue\n");
        assert_eq!(base64_decode(b"AP8").unwrap(), [0x00, 0xff]);
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert!(base64_decode(b"A").is_none());
        assert!(base64_decode(b"AP8*").is_none());
        assert_eq!(url_decode(b"user.a%3Db%25").unwrap(), b"user.a=b%");
        assert_eq!(url_decode(b"user.%e9").unwrap(), b"user.\xe9");
        assert!(url_decode(b"user.%4").is_none());
        assert!(url_decode(b"user.%zz").is_none());
        assert_eq!(decode_schily_name(b"user.a%3Db%25c%41"), b"user.a=b%c%41");
    }

    // ----- archives written by real tools -----

    /// What the tool-made archives hold, as (path, kind).
    fn build_tree(src: &Path, long_names: bool) -> Vec<(Vec<u8>, EntryKind)> {
        use EntryKind::*;
        let mut want: Vec<(Vec<u8>, EntryKind)> = Vec::new();
        let mut add = |p: &[u8], k| want.push((p.to_vec(), k));
        let at = |p: &[u8]| src.join(OsStr::from_bytes(p));

        fs::create_dir(at(b"d")).unwrap();
        add(b"d", Dir);
        fs::write(at(b"d/file.txt"), b"hello\n").unwrap();
        add(b"d/file.txt", File);
        fs::hard_link(at(b"d/file.txt"), at(b"d/hard")).unwrap();
        add(b"d/hard", Hardlink);
        fs::write(at(b"d/.wh..wh..opq"), b"").unwrap();
        add(b"d/.wh..wh..opq", Opaque);
        fs::write(at(b".wh.gone"), b"").unwrap();
        add(b".wh.gone", Whiteout);
        fs::write(at(b"empty"), b"").unwrap();
        add(b"empty", File);
        fs::write(at(b"big.bin"), noise(300_001, 1)).unwrap();
        add(b"big.bin", File);
        fs::write(at(b"caf\xe9"), b"latin-1 name").unwrap();
        add(b"caf\xe9", File);
        std::os::unix::fs::symlink("/etc/passwd", at(b"abs")).unwrap();
        add(b"abs", Symlink);
        run(Command::new("mkfifo").arg(at(b"fifo")));
        add(b"fifo", Fifo);
        // A path over 100 bytes that ustar can still split into prefix + name.
        let deep = [b"long/".as_slice(), &[b'b'; 60], b"/", &[b'c'; 80]].concat();
        fs::create_dir(at(b"long")).unwrap();
        add(b"long", Dir);
        fs::create_dir(at(&deep[..65])).unwrap();
        add(&deep[..65], Dir);
        fs::write(at(&deep), b"deep").unwrap();
        add(&deep, File);
        fs::set_permissions(at(b"d/file.txt"), fs::Permissions::from_mode(0o4751)).unwrap();
        if long_names {
            let name = [b"d/".as_slice(), &[b'e'; 150]].concat();
            fs::write(at(&name), b"long basename").unwrap();
            add(&name, File);
            let target = String::from_utf8([b'x'; 150].to_vec()).unwrap();
            std::os::unix::fs::symlink(&target, at(b"longlink")).unwrap();
            add(b"longlink", Symlink);
        }
        want.sort_by(|a, b| a.0.cmp(&b.0));
        want
    }

    use std::os::unix::fs::PermissionsExt;

    /// Checks a tool-made archive of `build_tree` against the tree itself.
    fn check_against_tree(bytes: &[u8], src: &Path, want: &[(Vec<u8>, EntryKind)]) {
        for chunk in [1000, 1 << 20] {
            let all = read_all_with(bytes, chunk).unwrap();
            let mut got: Vec<(Vec<u8>, EntryKind)> =
                all.iter().map(|(e, _)| (e.path.clone(), e.kind)).collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got, want);
            for (entry, data) in &all {
                let on_disk = src.join(OsStr::from_bytes(&entry.path));
                let meta = fs::symlink_metadata(&on_disk).unwrap();
                let name = String::from_utf8_lossy(&entry.path);
                assert_eq!(entry.mtime, meta.mtime(), "{name}");
                assert_eq!(entry.uid, u64::from(meta.uid()), "{name}");
                assert_eq!(entry.gid, u64::from(meta.gid()), "{name}");
                if meta.uid() == 0 {
                    assert_eq!(entry.uname, "root", "{name}");
                }
                if entry.kind != EntryKind::Symlink {
                    assert_eq!(entry.mode, meta.mode() & 0o7777, "{name}");
                }
                match entry.kind {
                    EntryKind::File | EntryKind::Whiteout | EntryKind::Opaque => {
                        let content = fs::read(&on_disk).unwrap();
                        assert_eq!(entry.size, content.len() as u64, "{name}");
                        assert_eq!(data, &content, "{name}");
                        let start = entry.offset as usize;
                        assert_eq!(&bytes[start..start + content.len()], &content[..], "{name}");
                        assert_eq!(entry.linkname, None);
                    }
                    EntryKind::Symlink => {
                        let target = fs::read_link(&on_disk).unwrap();
                        assert_eq!(
                            entry.linkname.as_deref(),
                            Some(target.as_os_str().as_bytes())
                        );
                        assert_eq!(entry.size, 0);
                    }
                    EntryKind::Hardlink => {
                        assert_eq!(entry.linkname.as_deref(), Some(&b"d/file.txt"[..]));
                        assert_eq!(entry.size, 0);
                        assert!(data.is_empty());
                    }
                    _ => {
                        assert_eq!(entry.size, 0, "{name}");
                        assert_eq!(entry.linkname, None);
                    }
                }
                assert_eq!(entry.offset % BLOCK as u64, 0);
            }
            assert_eq!(find(&all, b"d/file.txt").0.mode, 0o4751);
        }
    }

    fn gnu_tar(format: &str, long_names: bool) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        let want = build_tree(&src, long_names);
        let out = dir.path().join("out.tar");
        run(Command::new("tar")
            .arg(format!("--format={format}"))
            .args(["--sort=name", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg("."));
        let bytes = fs::read(&out).unwrap();
        check_against_tree(&bytes, &src, &want);
    }

    #[test]
    fn gnu_tar_gnu_format() {
        gnu_tar("gnu", true);
    }

    #[test]
    fn gnu_tar_posix_format() {
        gnu_tar("posix", true);
    }

    #[test]
    fn gnu_tar_ustar_format_uses_the_prefix_field() {
        gnu_tar("ustar", false);
    }

    #[test]
    fn gnu_tar_ustar_prefix_is_really_used() {
        // The deep name of build_tree must come from prefix + name in a ustar header.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        build_tree(&src, false);
        let out = dir.path().join("out.tar");
        run(Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg("long"));
        let bytes = fs::read(&out).unwrap();
        let all = entries(&bytes).unwrap();
        let deep = all
            .iter()
            .find(|e| e.path.len() > 100)
            .expect("the deep file");
        let header = &bytes[deep.offset as usize - BLOCK..deep.offset as usize];
        assert_ne!(
            until_nul(&header[PREFIX]),
            b"",
            "GNU tar split the name into the prefix"
        );
        assert_eq!(deep.path.len(), 5 + 60 + 1 + 80);
    }

    #[test]
    fn tar_rs_agrees_on_gnu_tar_archives() {
        for format in ["gnu", "posix"] {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            fs::create_dir(&src).unwrap();
            build_tree(&src, true);
            let out = dir.path().join("out.tar");
            run(Command::new("tar")
                .arg(format!("--format={format}"))
                .args(["--sort=name", "-cf"])
                .arg(&out)
                .arg("-C")
                .arg(&src)
                .arg("."));
            let bytes = fs::read(&out).unwrap();

            let mut theirs = Vec::new();
            let mut archive = ::tar::Archive::new(&bytes[..]);
            for entry in archive.entries().unwrap() {
                let entry = entry.unwrap();
                let path = normalize_path(&entry.path_bytes());
                if path.is_empty() {
                    continue;
                }
                let kind = match entry.header().entry_type() {
                    ::tar::EntryType::Regular => whiteout_kind(&path).unwrap_or(EntryKind::File),
                    ::tar::EntryType::Directory => EntryKind::Dir,
                    ::tar::EntryType::Symlink => EntryKind::Symlink,
                    ::tar::EntryType::Link => EntryKind::Hardlink,
                    ::tar::EntryType::Fifo => EntryKind::Fifo,
                    other => panic!("unexpected {other:?}"),
                };
                let link = entry.link_name_bytes().map(|l| l.into_owned());
                let link = match kind {
                    EntryKind::Hardlink => link.map(|l| normalize_path(&l)),
                    _ => link,
                };
                theirs.push((path, kind, entry.size(), entry.raw_file_position(), link));
            }
            let ours: Vec<_> = entries(&bytes)
                .unwrap()
                .into_iter()
                .map(|e| (e.path, e.kind, e.size, e.offset, e.linkname))
                .collect();
            assert_eq!(ours, theirs, "{format}");
        }
    }

    #[test]
    fn bsdtar_pax_with_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), b"x").unwrap();
        set_xattr(&src.join("f"), "user.test", b"va=lue\n");
        set_xattr(&src.join("f"), "user.a=b", b"\x00\xff");
        fs::write(src.join(OsStr::from_bytes(b"caf\xe9")), b"y").unwrap();
        let out = dir.path().join("out.tar");
        run(Command::new("bsdtar")
            .args(["--format=pax", "--xattrs", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg("."));
        let bytes = fs::read(&out).unwrap();
        // bsdtar writes each xattr twice; both spellings are in this archive.
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("LIBARCHIVE.xattr.user.test=dmE9bHVlCg"));
        assert!(text.contains("SCHILY.xattr.user.a%3Db="));
        assert!(text.contains("hdrcharset=BINARY"));

        let all = read_all(&bytes).unwrap();
        let (f, data) = find(&all, b"f");
        assert_eq!(data, b"x");
        let user: Vec<_> = f
            .xattrs
            .iter()
            .filter(|(k, _)| k.starts_with("user."))
            .cloned()
            .collect();
        assert_eq!(
            user,
            vec![
                ("user.a=b".to_string(), b"\x00\xff".to_vec()),
                ("user.test".into(), b"va=lue\n".to_vec())
            ]
        );
        assert_eq!(find(&all, b"caf\xe9").1, b"y");
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn gnu_tar_posix_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), b"x").unwrap();
        set_xattr(&src.join("f"), "user.a=b%", b"\x00\xff");
        let out = dir.path().join("out.tar");
        run(Command::new("tar")
            .args([
                "--format=posix",
                "--xattrs",
                "--xattrs-include=user.*",
                "-cf",
            ])
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg("f"));
        let all = read_all(&fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            all[0].0.xattrs,
            vec![("user.a=b%".to_string(), b"\x00\xff".to_vec())]
        );
    }

    const PYTHON_ARCHIVE: &str = r#"
import io, sys, tarfile
fmt = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}[sys.argv[2]]
long_name = "d/" + "n" * 150
def add(name, type=tarfile.REGTYPE, data=b"", **kw):
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.size = len(data)
    ti.mtime = kw.pop("mtime", 1600000000)
    for k, v in kw.items():
        setattr(ti, k, v)
    tar.addfile(ti, io.BytesIO(data) if data else None)
with tarfile.open(sys.argv[1], "w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
    add("d/", tarfile.DIRTYPE, mode=0o755)
    add(long_name, data=b"long", mode=0o600, uid=2097157, gid=7, uname="\u00fcser", gname="grp")
    add("sl", tarfile.SYMTYPE, linkname="/" + "t" * 150)
    add("hl", tarfile.LNKTYPE, linkname=long_name)
    add("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
    add("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=16)
    add("fifo", tarfile.FIFOTYPE)
    add("caf\udce9", data=b"latin-1")
    add("old", data=b"o", mtime=-1)
    add(".wh.gone")
    add("d/.wh..wh..opq")
    if fmt == tarfile.PAX_FORMAT:
        add("frac", data=b"f", mtime=1700000000.75)
        add("negfrac", mtime=-1.5)
        ti = tarfile.TarInfo("x")
        ti.pax_headers = {"SCHILY.xattr.user.k": "v", "SCHILY.xattr.security.capability": "\x01\x02"}
        tar.addfile(ti)
"#;

    fn python_archive(format: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.tar");
        run(Command::new("python3")
            .arg("-c")
            .arg(PYTHON_ARCHIVE)
            .arg(&out)
            .arg(format));
        fs::read(&out).unwrap()
    }

    fn check_python_archive(bytes: &[u8]) -> Vec<(Entry, Vec<u8>)> {
        let all = read_all(bytes).unwrap();
        let long_name = [b"d/".as_slice(), &[b'n'; 150]].concat();
        let (d, _) = find(&all, b"d");
        assert_eq!((d.kind, d.mode), (EntryKind::Dir, 0o755));
        let (long, data) = find(&all, &long_name);
        assert_eq!(long.kind, EntryKind::File);
        assert_eq!(data, b"long");
        assert_eq!(&bytes[long.offset as usize..][..4], b"long");
        assert_eq!((long.uid, long.gid, long.mode), (2097157, 7, 0o600));
        assert_eq!(
            (long.uname.as_str(), long.gname.as_str()),
            ("\u{fc}ser", "grp")
        );
        let (sl, _) = find(&all, b"sl");
        let target = [b"/".as_slice(), &[b't'; 150]].concat();
        assert_eq!(
            (sl.kind, sl.linkname.as_deref()),
            (EntryKind::Symlink, Some(&target[..]))
        );
        let (hl, _) = find(&all, b"hl");
        assert_eq!(
            (hl.kind, hl.linkname.as_deref()),
            (EntryKind::Hardlink, Some(&long_name[..]))
        );
        let (null, _) = find(&all, b"dev/null");
        assert_eq!(
            (null.kind, null.devmajor, null.devminor, null.mode),
            (EntryKind::Char, 1, 3, 0o666)
        );
        let (sda, _) = find(&all, b"dev/sda");
        assert_eq!(
            (sda.kind, sda.devmajor, sda.devminor),
            (EntryKind::Block, 8, 16)
        );
        assert_eq!(find(&all, b"fifo").0.kind, EntryKind::Fifo);
        assert_eq!(find(&all, b"caf\xe9").1, b"latin-1");
        let (old, data) = find(&all, b"old");
        assert_eq!((old.mtime, data.as_slice()), (-1, &b"o"[..]));
        assert_eq!(find(&all, b".wh.gone").0.kind, EntryKind::Whiteout);
        assert_eq!(find(&all, b"d/.wh..wh..opq").0.kind, EntryKind::Opaque);
        assert_eq!(long.mtime, 1_600_000_000);
        all
    }

    #[test]
    fn python_tarfile_gnu_format() {
        let bytes = python_archive("gnu");
        assert!(
            bytes.windows(13).any(|w| w == b"././@LongLink"),
            "uses GNU long names"
        );
        let all = check_python_archive(&bytes);
        assert_eq!(all.len(), 11);
    }

    #[test]
    fn python_tarfile_pax_format() {
        let bytes = python_archive("pax");
        let all = check_python_archive(&bytes);
        assert_eq!(all.len(), 14);
        assert_eq!(find(&all, b"frac").0.mtime, 1_700_000_000);
        assert_eq!(find(&all, b"negfrac").0.mtime, -2);
        assert_eq!(
            find(&all, b"x").0.xattrs,
            vec![
                ("security.capability".to_string(), b"\x01\x02".to_vec()),
                ("user.k".to_string(), b"v".to_vec())
            ]
        );
    }

    // ----- hand-made archives: formats -----

    #[test]
    fn the_archive_root_is_not_an_entry() {
        let bytes = archive(&[
            header(b"./", b'5', 0).to_vec(),
            header(b".", b'5', 0).to_vec(),
            member(b"/", b'5', b"ignored data of a root directory"),
            file(b"./a", b"1"),
            end(),
        ]);
        let all = read_all(&bytes).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.path, b"a");
        // Three root headers, the root's data block, a's header.
        assert_eq!(all[0].0.offset, 5 * BLOCK as u64);
    }

    #[test]
    fn a_file_without_a_name_is_corrupt() {
        assert_corrupt(
            entries(&archive(&[file(b"./", b""), end()])),
            0,
            "empty name",
        );
    }

    #[test]
    fn entry_fields_come_from_a_ustar_header() {
        let bytes = archive(&[
            header_with(b"name", b'0', 3, |b| {
                put(&mut b[PREFIX], b"some/prefix");
                put_octal(&mut b[MODE], 0o100755);
            })
            .to_vec(),
            padded(b"abc"),
            end(),
        ]);
        let all = read_all(&bytes).unwrap();
        let (e, data) = &all[0];
        assert_eq!(
            e,
            &Entry {
                path: b"some/prefix/name".to_vec(),
                kind: EntryKind::File,
                mode: 0o755,
                uid: 1000,
                gid: 1001,
                uname: "alice".into(),
                gname: "staff".into(),
                size: 3,
                mtime: 1_600_000_000,
                linkname: None,
                devmajor: 0,
                devminor: 0,
                xattrs: vec![],
                offset: 512,
            }
        );
        assert_eq!(data, b"abc");
    }

    #[test]
    fn star_headers_use_the_short_prefix() {
        let bytes = archive(&[
            header_with(b"name", b'0', 0, |b| {
                put(&mut b[STAR_PREFIX], b"star/prefix");
                put(&mut b[476..488], b"00000000000\0"); // atime, not part of the name
                put(&mut b[STAR_TRAILER], b"tar\0");
            })
            .to_vec(),
            end(),
        ]);
        assert_eq!(entries(&bytes).unwrap()[0].path, b"star/prefix/name");
    }

    #[test]
    fn gnu_headers_do_not_have_a_prefix() {
        let bytes = archive(&[
            header_with(b"name", b'0', 0, |b| {
                put(&mut b[MAGIC], b"ustar ");
                put(&mut b[VERSION], b" \0");
                put(&mut b[PREFIX], b"00000000000\0"); // GNU keeps atime here
            })
            .to_vec(),
            end(),
        ]);
        assert_eq!(entries(&bytes).unwrap()[0].path, b"name");
    }

    #[test]
    fn v7_headers_mark_directories_by_a_trailing_slash() {
        let v7 = |name: &[u8], typeflag: u8| {
            header_with(name, typeflag, 0, |b| {
                b[MAGIC.start..].fill(0);
            })
            .to_vec()
        };
        let bytes = archive(&[
            v7(b"dir/", 0),
            v7(b"dir/file", 0),
            v7(b"dir/link", b'2'),
            end(),
        ]);
        let all = entries(&bytes).unwrap();
        let kinds: Vec<_> = all.iter().map(|e| (e.path.clone(), e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (b"dir".to_vec(), EntryKind::Dir),
                (b"dir/file".to_vec(), EntryKind::File),
                (b"dir/link".to_vec(), EntryKind::Symlink)
            ]
        );
        assert_eq!(all[0].uname, "", "v7 has no user names");
        assert_eq!(all[2].linkname.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn typeflag_7_is_a_regular_file() {
        let all = read_all(&archive(&[member(b"c", b'7', b"contig"), end()])).unwrap();
        assert_eq!(
            (all[0].0.kind, all[0].1.as_slice()),
            (EntryKind::File, &b"contig"[..])
        );
    }

    #[test]
    fn base256_fields_are_read() {
        let bytes = archive(&[
            header_with(b"f", b'0', 0, |b| {
                b[SIZE].fill(0);
                b[SIZE.start] = 0x80;
                b[SIZE.end - 1] = 5;
                b[MTIME].fill(0xff); // -1
                b[UID].fill(0);
                b[UID.start] = 0x80;
                b[UID.end - 4..UID.end].copy_from_slice(&4_000_000_000u32.to_be_bytes());
            })
            .to_vec(),
            padded(b"12345"),
            end(),
        ]);
        let all = read_all(&bytes).unwrap();
        assert_eq!(all[0].1, b"12345");
        assert_eq!((all[0].0.mtime, all[0].0.uid), (-1, 4_000_000_000));
    }

    #[test]
    fn data_of_non_regular_entries_is_skipped_but_not_reported() {
        let bytes = archive(&[
            member(b"dir/", b'5', b"some directory data"),
            header_with(b"link", b'1', 700, |b| put(&mut b[LINKNAME], b"a")).to_vec(),
            padded(&[7u8; 700]),
            file(b"after", b"ok"),
            end(),
        ]);
        let all = read_all(&bytes).unwrap();
        assert_eq!((all[0].0.size, all[0].1.len()), (0, 0));
        assert_eq!((all[1].0.size, all[1].1.len()), (0, 0));
        assert_eq!(all[1].0.linkname.as_deref(), Some(&b"a"[..]));
        assert_eq!(all[2].1, b"ok");
    }

    #[test]
    fn hardlink_targets_are_normalised_and_symlink_targets_kept() {
        let bytes = archive(&[
            header_with(b"./h", b'1', 0, |b| put(&mut b[LINKNAME], b"./a//b/")).to_vec(),
            header_with(b"./s", b'2', 0, |b| put(&mut b[LINKNAME], b"/abs//x/")).to_vec(),
            end(),
        ]);
        let all = entries(&bytes).unwrap();
        assert_eq!(all[0].linkname.as_deref(), Some(&b"a/b"[..]));
        assert_eq!(all[1].linkname.as_deref(), Some(&b"/abs//x/"[..]));
        let bad = archive(&[
            header_with(b"h", b'1', 0, |b| put(&mut b[LINKNAME], b"./")).to_vec(),
            end(),
        ]);
        assert_corrupt(entries(&bad), 0, "no target");
    }

    #[test]
    fn signed_checksums_are_accepted() {
        let mut block = header(b"caf\xe9\xff", b'0', 0);
        block[CHECKSUM].fill(b' ');
        let signed: i64 = block.iter().map(|&b| i64::from(b as i8)).sum();
        put(&mut block[CHECKSUM], format!("{signed:06o}\0").as_bytes());
        assert_ne!(signed, block.iter().map(|&b| i64::from(b)).sum::<i64>());
        let all = entries(&archive(&[block.to_vec(), end()])).unwrap();
        assert_eq!(all[0].path, b"caf\xe9\xff");
    }

    // ----- PAX -----

    #[test]
    fn pax_records_override_the_header() {
        let bytes = archive(&[
            pax(&[
                (b"path", b"./pax/name"),
                (b"uid", b"4294967296"),
                (b"gid", b"12"),
                (b"uname", b"\xc3\xbcser"),
                (b"gname", b"g"),
                (b"mtime", b"1700000000.999999999"),
                (b"atime", b"1.5"),
                (b"comment", b"anything"),
                (b"hdrcharset", b"BINARY"),
                (b"SCHILY.xattr.user.b", b"2"),
                (b"SCHILY.xattr.user.a", b"1\n="),
                (b"SCHILY.xattr.user.empty", b""),
            ]),
            file(b"ustar-name", b"data"),
            end(),
        ]);
        let all = read_all(&bytes).unwrap();
        let (e, data) = &all[0];
        assert_eq!(e.path, b"pax/name");
        assert_eq!((e.uid, e.gid), (1 << 32, 12));
        assert_eq!((e.uname.as_str(), e.gname.as_str()), ("\u{fc}ser", "g"));
        assert_eq!(e.mtime, 1_700_000_000);
        assert_eq!(
            e.xattrs,
            vec![
                ("user.a".to_string(), b"1\n=".to_vec()),
                ("user.b".to_string(), b"2".to_vec()),
                ("user.empty".to_string(), vec![]),
            ]
        );
        assert_eq!(data, b"data");
        assert_eq!(e.offset, 3 * BLOCK as u64);
    }

    #[test]
    fn pax_linkpath_and_gnu_long_link() {
        let long_target = vec![b'l'; 300];
        let bytes = archive(&[
            pax(&[(b"linkpath", &long_target)]),
            header(b"s", b'2', 0).to_vec(),
            extended(b'K', &[long_target.as_slice(), b"\0"].concat()),
            extended(b'L', &[vec![b'n'; 200].as_slice(), b"\0"].concat()),
            header(b"trunc", b'2', 0).to_vec(),
            end(),
        ]);
        let all = entries(&bytes).unwrap();
        assert_eq!(all[0].linkname.as_deref(), Some(&long_target[..]));
        assert_eq!(all[1].path, vec![b'n'; 200]);
        assert_eq!(all[1].linkname.as_deref(), Some(&long_target[..]));
    }

    #[test]
    fn pax_records_apply_to_one_entry_only() {
        let bytes = archive(&[
            pax(&[(b"path", b"first")]),
            file(b"a", b""),
            file(b"b", b""),
            end(),
        ]);
        let paths: Vec<_> = entries(&bytes)
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, vec![b"first".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn pax_size_wins_over_the_header_size() {
        let bytes = archive(&[
            pax(&[(b"size", b"600")]),
            header(b"f", b'0', 0).to_vec(),
            padded(&[9u8; 600]),
            end(),
        ]);
        let all = read_all(&bytes).unwrap();
        assert_eq!((all[0].0.size, all[0].1.len()), (600, 600));
    }

    #[test]
    fn global_headers_are_defaults_for_later_entries() {
        let bytes = archive(&[
            file(b"before", b""),
            extended(
                b'g',
                &[
                    record(b"uname", b"global"),
                    record(b"mtime", b"5"),
                    record(b"comment", b"git"),
                ]
                .concat(),
            ),
            file(b"a", b""),
            pax(&[(b"uname", b"local")]),
            file(b"b", b""),
            pax(&[(b"uname", b"")]), // empty: back to the header field
            file(b"c", b""),
            extended(b'g', &record(b"uname", b"")), // empty: the default is deleted
            file(b"d", b""),
            end(),
        ]);
        let got: Vec<_> = entries(&bytes)
            .unwrap()
            .into_iter()
            .map(|e| (e.uname, e.mtime))
            .collect();
        assert_eq!(
            got,
            vec![
                ("alice".to_string(), 1_600_000_000),
                ("global".to_string(), 5),
                ("local".to_string(), 5),
                ("alice".to_string(), 5),
                ("alice".to_string(), 5),
            ]
        );
    }

    #[test]
    fn a_global_header_alone_is_an_empty_archive() {
        // `git archive` of an empty tree writes just this.
        let bytes = archive(&[extended(b'g', &record(b"comment", b"0123abcd")), end()]);
        assert!(entries(&bytes).unwrap().is_empty());
    }

    #[test]
    fn libarchive_xattrs_are_decoded_and_schily_wins() {
        let bytes = archive(&[
            pax(&[
                (b"LIBARCHIVE.xattr.user.a%3Db", b"AP8"),
                (b"LIBARCHIVE.xattr.user.both", b"bGli"), // "lib"
                (b"SCHILY.xattr.user.both", b"schily"),
            ]),
            file(b"f", b""),
            end(),
        ]);
        assert_eq!(
            entries(&bytes).unwrap()[0].xattrs,
            vec![
                ("user.a=b".to_string(), vec![0x00, 0xff]),
                ("user.both".to_string(), b"schily".to_vec())
            ]
        );
        let bad = archive(&[
            pax(&[(b"LIBARCHIVE.xattr.user.x", b"!!")]),
            file(b"f", b""),
            end(),
        ]);
        assert_corrupt(entries(&bad), BLOCK as u64, "LIBARCHIVE.xattr.user.x");
    }

    #[test]
    fn bad_pax_records_are_corrupt() {
        let at = BLOCK as u64;
        for (data, needle) in [
            (b"99 path=a\n".to_vec(), "length 99"),
            (b"5 path=abc\n".to_vec(), "newline"),
            (b"0 path=abc\n".to_vec(), "length 0"),
            (b"path=abc\n".to_vec(), "decimal length"),
            (b"12 path=abc".to_vec(), "length 12"),
            (b"11 path=abcd".to_vec(), "newline"),
            (b"12 pathabcd\n".to_vec(), "no '='"),
            (b"7 =abc\n".to_vec(), "empty keyword"),
        ] {
            let bytes = archive(&[extended(b'x', &data), file(b"f", b""), end()]);
            assert_corrupt(entries(&bytes), at, needle);
        }
        // The second record's offset is reported.
        let data = [record(b"path", b"ok"), b"5 xy\n".to_vec()].concat();
        let bytes = archive(&[extended(b'x', &data), file(b"f", b""), end()]);
        assert_corrupt(
            entries(&bytes),
            at + record(b"path", b"ok").len() as u64,
            "no '='",
        );
        for (key, value) in [
            (&b"size"[..], &b"-1"[..]),
            (b"uid", b"1.5"),
            (b"mtime", b"soon"),
            (b"gid", b" 1"),
        ] {
            let bytes = archive(&[pax(&[(key, value)]), file(b"f", b""), end()]);
            assert_corrupt(entries(&bytes), at, std::str::from_utf8(key).unwrap());
        }
    }

    #[test]
    fn a_huge_pax_size_on_a_short_stream_is_truncated() {
        // An 8 GiB+ file cannot be written in a test; a PAX size that the stream cannot hold
        // must fail at the end of the stream, not be believed.
        let bytes = archive(&[
            pax(&[(b"size", b"10737418240")]),
            header(b"big", b'0', 0).to_vec(),
            vec![7u8; 1000],
        ]);
        let mut reader = TarReader::new(&bytes[..], label());
        let entry = reader.next_entry().unwrap().unwrap();
        assert_eq!(entry.size, 10 << 30);
        let mut buf = vec![0u8; 4096];
        let mut total = 0;
        let err = loop {
            match reader.read_data(&mut buf) {
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert_eq!(total, 1000);
        assert_truncated(Err::<(), _>(err), "'big'");

        let mut reader = TarReader::new(&bytes[..], label());
        reader.next_entry().unwrap().unwrap();
        assert_truncated(reader.next_entry(), "inside the data of 'big'");
        assert!(
            reader.next_entry().unwrap().is_none(),
            "fused after an error"
        );
    }

    #[test]
    fn huge_extended_headers_are_refused_without_allocating() {
        let mut block = header(b"././@PaxHeader", b'x', 0);
        block[SIZE].fill(0);
        block[SIZE.start] = 0x80;
        block[SIZE.end - 5] = 0x10; // 64 GiB
        seal(&mut block);
        match entries(&archive(&[block.to_vec(), end()])) {
            Err(Error::Unsupported { path, detail }) => {
                assert_eq!(path, label());
                assert!(detail.contains("extended header"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gnu_sparse_files_are_unsupported() {
        let bytes = archive(&[header(b"sparse", b'S', 0).to_vec(), end()]);
        match entries(&bytes) {
            Err(Error::Unsupported { path, detail }) => {
                assert_eq!(path, label());
                assert!(
                    detail.contains("'sparse'") && detail.contains("sparse file"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
        let bytes = archive(&[
            pax(&[
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.name", b"real/name"),
            ]),
            header(b"GNUSparseFile.0/name", b'0', 0).to_vec(),
            end(),
        ]);
        match entries(&bytes) {
            Err(Error::Unsupported { detail, .. }) => {
                assert!(detail.contains("'real/name'"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        let bytes = archive(&[header(b"weird", b'Z', 0).to_vec(), end()]);
        match entries(&bytes) {
            Err(Error::Unsupported { detail, .. }) => {
                assert!(
                    detail.contains("'weird'") && detail.contains("typeflag 'Z'"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    // ----- whiteouts -----

    #[test]
    fn whiteouts_and_opaque_markers_are_classified() {
        let bytes = archive(&[
            file(b".wh.gone", b""),
            file(b"d/.wh..wh..opq", b""),
            file(b"d/.wh..opq", b""), // a whiteout of ".opq", not an opaque marker
            file(b"d/x.wh.y", b""),
            header(b"dir/.wh.z/", b'5', 0).to_vec(), // not a regular file: kind unchanged
            end(),
        ]);
        let kinds: Vec<_> = entries(&bytes)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        use EntryKind::*;
        assert_eq!(kinds, vec![Whiteout, Opaque, Whiteout, File, Dir]);
    }

    #[test]
    fn a_bare_whiteout_is_corrupt() {
        for name in [&b".wh."[..], b"d/.wh.", b"./d/.wh./"] {
            let bytes = archive(&[file(b"ok", b"1"), file(name, b""), end()]);
            assert_corrupt(
                entries(&bytes),
                2 * BLOCK as u64,
                "whiteout must name a file",
            );
        }
    }

    // ----- structural errors -----

    fn simple() -> Vec<u8> {
        archive(&[file(b"a", &[1u8; 1000]), file(b"b", b"bb"), end()])
    }

    #[test]
    fn checksum_corruption_is_reported_at_its_header() {
        let mut bytes = simple();
        bytes[3] ^= 1; // first header's name
        assert_corrupt(entries(&bytes), 0, "checksum mismatch");
        let mut bytes = simple();
        bytes[3 * BLOCK + 10] ^= 0x40; // second header
        assert_corrupt(entries(&bytes), 3 * BLOCK as u64, "checksum mismatch");
        let mut bytes = simple();
        bytes[CHECKSUM.start] = b'x';
        assert_corrupt(entries(&bytes), 0, "checksum field");
    }

    #[test]
    fn not_a_tar_is_corrupt() {
        assert_corrupt(entries(&noise(4096, 3)), 0, "");
        assert_corrupt(entries(&[b'A'; 1024]), 0, "");
    }

    #[test]
    fn invalid_octal_fields_are_corrupt() {
        for (field, name) in [
            (MODE, "mode"),
            (UID, "uid"),
            (GID, "gid"),
            (SIZE, "size"),
            (MTIME, "mtime"),
        ] {
            let start = field.start;
            let block = header_with(b"f", b'0', 0, |b| put(&mut b[field], b"12x4"));
            assert_corrupt(
                entries(&archive(&[block.to_vec(), end()])),
                start as u64,
                name,
            );
        }
        let block = header_with(b"dev", b'3', 0, |b| put(&mut b[DEVMAJOR], b"9999999\0"));
        assert_corrupt(
            entries(&archive(&[block.to_vec(), end()])),
            DEVMAJOR.start as u64,
            "devmajor",
        );
        // Device fields of other kinds are not read at all.
        let block = header_with(b"f", b'0', 0, |b| put(&mut b[DEVMAJOR], b"garbage!"));
        assert!(entries(&archive(&[block.to_vec(), end()])).is_ok());
        let block = header_with(b"f", b'0', 0, |b| b[SIZE].fill(0xff));
        assert_corrupt(
            entries(&archive(&[block.to_vec(), end()])),
            SIZE.start as u64,
            "negative",
        );
    }

    #[test]
    fn truncation_inside_a_header_or_data_is_reported() {
        let bytes = simple();
        // a's data is bytes 512..1512, padding to 1536, b's header 1536..2048.
        for cut in [100, 511, 1600, 2047] {
            assert_truncated(entries(&bytes[..cut]), "header block");
        }
        for cut in [513, 1511, 1512, 1535] {
            assert_truncated(entries(&bytes[..cut]), "inside the data of 'a'");
            assert_truncated(read_all(&bytes[..cut]), "'a'");
        }
        let with_pax = archive(&[pax(&[(b"path", b"p")]), file(b"f", b"")]);
        assert_truncated(entries(&with_pax[..2 * BLOCK]), "after the extended header");
        assert_truncated(
            entries(&with_pax[..BLOCK + 3]),
            "inside the extended header",
        );
        assert_corrupt(
            entries(&[&with_pax[..2 * BLOCK], &end()[..]].concat()),
            2 * BLOCK as u64,
            "end-of-archive marker",
        );
    }

    #[test]
    fn a_missing_end_of_archive_marker_is_truncation() {
        let bytes = simple();
        let without_end = &bytes[..bytes.len() - 2 * BLOCK];
        assert!(matches!(
            read_all(without_end),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(read_all(&[]), Err(Error::Truncated { .. })));
        // One zero block is a marker (GNU tar reads such archives without complaint).
        let one_zero_block = &bytes[..bytes.len() - BLOCK];
        assert_eq!(read_all(one_zero_block).unwrap().len(), 2);
        // Zeros up to any length are padding: GNU tar fills the last 10 KiB record.
        let mut record_padded = bytes.clone();
        record_padded.resize(10240 + 7, 0);
        assert_eq!(read_all(&record_padded).unwrap().len(), 2);
    }

    #[test]
    fn garbage_after_the_end_is_corrupt() {
        let bytes = simple();
        let end_at = bytes.len() as u64 - 2 * BLOCK as u64;
        assert_corrupt(
            entries(&[&bytes[..], b"x"].concat()),
            bytes.len() as u64,
            "garbage after the end",
        );
        let mut second_block_dirty = bytes.clone();
        second_block_dirty[end_at as usize + BLOCK + 17] = 1;
        assert_corrupt(
            entries(&second_block_dirty),
            end_at + BLOCK as u64 + 17,
            "garbage",
        );
        // A concatenated second archive is garbage too: the first zero block ends the archive.
        let twice = [&bytes[..], &bytes[..]].concat();
        assert_corrupt(entries(&twice), bytes.len() as u64, "garbage");
        // Far behind, past the reader's buffer.
        let mut far = bytes.clone();
        far.resize(600_000, 0);
        far.push(0xff);
        assert_corrupt(entries(&far), 600_000, "0xff");
    }

    // ----- reading mechanics -----

    /// Returns at most one byte per read, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(out)) => {
                    *out = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn short_reads_give_the_same_entries() {
        let bytes = python_archive("pax");
        let mut reader = TarReader::new(Trickle(&bytes), label());
        let mut trickled = Vec::new();
        while let Some(entry) = reader.next_entry().unwrap() {
            let mut data = Vec::new();
            let mut buf = [0u8; 3];
            loop {
                let n = reader.read_data(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            trickled.push((entry, data));
        }
        assert_eq!(reader.position(), bytes.len() as u64);
        assert_eq!(trickled, read_all(&bytes).unwrap());
    }

    #[test]
    fn data_can_be_read_in_part_and_the_rest_is_skipped() {
        let big = noise(700_000, 9);
        let bytes = archive(&[file(b"big", &big), file(b"small", b"s"), end()]);
        let mut reader = TarReader::new(&bytes[..], label());
        let e = reader.next_entry().unwrap().unwrap();
        let mut buf = vec![0u8; 300_000]; // larger than the reader's buffer: read directly
        let n = reader.read_data(&mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(&buf[..n], &big[..n]);
        assert_eq!(reader.position(), e.offset + n as u64);
        let next = reader.next_entry().unwrap().unwrap();
        assert_eq!(next.path, b"small");
        assert_eq!(reader.position(), next.offset);
        let mut one = [0u8; 10];
        assert_eq!(reader.read_data(&mut one).unwrap(), 1);
        assert_eq!(reader.read_data(&mut one).unwrap(), 0);
        assert!(reader.next_entry().unwrap().is_none());
        assert!(reader.next_entry().unwrap().is_none());
        assert_eq!(reader.position(), bytes.len() as u64);
        assert_eq!(reader.into_inner().len(), 0);
    }

    /// Fails with `kind` after `ok` bytes.
    struct Failing<'a> {
        ok: &'a [u8],
        kind: io::ErrorKind,
    }

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.ok.is_empty() {
                return Err(io::Error::new(self.kind, "decoder says no"));
            }
            let n = self.ok.len().min(buf.len());
            buf[..n].copy_from_slice(&self.ok[..n]);
            self.ok = &self.ok[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_decompression_limit_is_a_policy_refusal_naming_the_layer() {
        let bytes = simple();
        let bounded = crate::compress::Bounded::new(&bytes[..], BLOCK as u64 + 10, "gzip");
        let mut reader = TarReader::new(bounded, label());
        let err = loop {
            match reader.next_entry() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the limit is below the archive's size"),
                Err(e) => break e,
            }
        };
        match err {
            Error::Unsupported { path, detail } => {
                assert_eq!(path, label());
                assert!(
                    detail.contains(&format!("more than {} bytes", BLOCK + 10)),
                    "{detail}"
                );
                assert!(
                    detail.contains("LAYERCORE_MAX_DECOMPRESSED_SIZE"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inner_reader_errors_are_classified() {
        let bytes = simple();
        let read = |kind| {
            let mut reader = TarReader::new(
                Failing {
                    ok: &bytes[..BLOCK + 10],
                    kind,
                },
                label(),
            );
            reader.next_entry().unwrap().unwrap();
            reader.next_entry()
        };
        assert_truncated(read(io::ErrorKind::UnexpectedEof), "decoder says no");
        assert_corrupt(
            read(io::ErrorKind::InvalidData),
            BLOCK as u64 + 10,
            "decoder says no",
        );
        match read(io::ErrorKind::PermissionDenied) {
            Err(Error::Io { path, source, .. }) => {
                assert_eq!(path, label());
                assert_eq!(source.kind(), io::ErrorKind::PermissionDenied);
            }
            other => panic!("{other:?}"),
        }
    }
}

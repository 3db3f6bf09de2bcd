//! Reading files into page-aligned buffers.
//!
//! The kernel copies page cache into a user buffer (and back, for writes) with `rep movsb`,
//! which slows down fourfold when the destination sits exactly 16 bytes past the source within
//! a page: each store lands just ahead of the loads that follow it (4K aliasing). That is what
//! a buffer `malloc` serves from `mmap` (16 bytes past a page boundary) meets when it reads a
//! file from a page-aligned offset. 1 MiB `pread`s of a cached file, in Rust, on this machine:
//!
//! | buffer start minus file offset, modulo 4096 | read speed |
//! |---------------------------------------------|------------|
//! | 0                                           | 5.5–7.0 GB/s |
//! | 16 (a `Vec` from `mmap`, aligned offset)    | 1.5–1.6 GB/s |
//! | 32, 64, 128, 512, 1024, 2048, 3584, 4080     | 6.6–6.9 GB/s |
//!
//! Whether a `Vec` lands there depends on the process's history (glibc serves large buffers
//! from the heap, at other offsets, once its mmap threshold has grown), so this showed up as
//! the occasional slow run rather than as a steady cost. Buffers that read file data are
//! therefore [`PageBuf`]s: they start on a page boundary, and tar positions inside them are
//! multiples of 512, never 16 from the file's page offset.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::FileExt;

/// The alignment of reads into a [`PageBuf`].
pub const PAGE: usize = 4096;

/// A heap buffer whose first byte sits on a page boundary. It derefs to its bytes.
pub struct PageBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageBuf {
    pub fn empty() -> PageBuf {
        PageBuf {
            storage: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// `len` zeroed bytes, the first on a page boundary.
    pub fn new(len: usize) -> PageBuf {
        let storage = vec![0u8; len + PAGE];
        let start = storage.as_ptr().align_offset(PAGE);
        PageBuf {
            storage,
            start,
            len,
        }
    }

    /// Room for [`read_page_aligned`] to read `len` bytes from any offset: `len` plus the page
    /// the read starts in.
    pub fn for_reads(len: usize) -> PageBuf {
        PageBuf::new(len + PAGE)
    }
}

impl Deref for PageBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// `std::io::BufReader` over a [`PageBuf`]: refills start on a page boundary of the buffer, so
/// a file read from a page-aligned position is copied at full speed whatever `malloc` returned.
pub struct PageBufReader<R> {
    inner: R,
    buf: PageBuf,
    pos: usize,
    filled: usize,
}

impl<R: Read> PageBufReader<R> {
    pub fn with_capacity(capacity: usize, inner: R) -> PageBufReader<R> {
        PageBufReader {
            inner,
            buf: PageBuf::new(capacity),
            pos: 0,
            filled: 0,
        }
    }

    /// The reader, dropping whatever is buffered.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for PageBufReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // As BufReader does: a read at least as large as the buffer bypasses an empty buffer.
        if self.pos == self.filled && out.len() >= self.buf.len() {
            return self.inner.read(out);
        }
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for PageBufReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled {
            self.filled = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.filled);
    }
}

/// Reads at most `want` bytes of `src` from `at` with one `pread` that starts at the page
/// boundary at or before `at`, into `buf` (a [`PageBuf`] of at least `want` + [`PAGE`]
/// bytes, see [`PageBuf::for_reads`]); returns where in `buf` the bytes from `at` on are, empty at the end of the file.
///
/// The kernel then copies page cache into `buf` with both sides equally aligned (see the
/// module notes).
pub fn read_page_aligned(
    src: &File,
    buf: &mut [u8],
    at: u64,
    want: usize,
) -> io::Result<std::ops::Range<usize>> {
    let skew = (at % PAGE as u64) as usize;
    let ask = (skew + want).min(buf.len());
    let n = src.read_at(&mut buf[..ask], at - skew as u64)?;
    Ok(skew.min(n)..n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_aligned_reads_return_the_bytes_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * PAGE + 100)
            .map(|i| (i * 31 + i / 251) as u8)
            .collect();
        let path = dir.path().join("src");
        std::fs::write(&path, &data).unwrap();
        let src = File::open(&path).unwrap();
        let mut buf = PageBuf::for_reads(2 * PAGE);
        assert_eq!(buf.as_ptr() as usize % PAGE, 0);
        for at in [0, 1, 511, 4095, 4096, 4097, 3 * PAGE + 99] {
            for want in [1, 100, PAGE, 2 * PAGE] {
                let got = read_page_aligned(&src, &mut buf, at as u64, want).unwrap();
                // One pread may return less than asked only at the end of the file.
                let end = (at + want).min(data.len());
                assert_eq!(&buf[got], &data[at..end], "at {at}, want {want}");
            }
        }
        let got = read_page_aligned(&src, &mut buf, data.len() as u64, 10).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn buffers_start_on_a_page_boundary() {
        for len in [1, 100, PAGE, 1 << 20] {
            let mut held = Vec::new();
            for _ in 0..4 {
                let buf = PageBuf::new(len);
                assert_eq!(buf.as_ptr() as usize % PAGE, 0);
                assert_eq!(buf.len(), len);
                assert!(buf.iter().all(|&b| b == 0));
                held.push(buf);
            }
        }
        assert!(PageBuf::empty().is_empty());
    }

    #[test]
    fn the_reader_reads_like_bufreader() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        // Small reads come from the buffer, reads as large as it bypass it when it is empty,
        // and fill_buf/consume walk the same stream.
        let mut r = PageBufReader::with_capacity(4096, &data[..]);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        let n = r.read(&mut small).unwrap();
        got.extend_from_slice(&small[..n]);
        let head = r.fill_buf().unwrap().len();
        assert_eq!(head, 4096 - n);
        r.consume(10);
        got.extend_from_slice(&data[got.len()..got.len() + 10]);
        let mut big = vec![0u8; 10_000];
        loop {
            let n = r.read(&mut big).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&big[..n]);
        }
        assert_eq!(got, data);
        assert!(r.fill_buf().unwrap().is_empty());
        assert!(r.into_inner().is_empty());
    }
}

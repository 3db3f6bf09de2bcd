//! SHA-256 content addresses: `diff_id`, `digest` and `chain_id`, all written `sha256:<64 hex>`.
//!
//! The `sha2` crate picks the SHA-NI instructions at run time where the CPU has them; the
//! `big files` benchmark compares its throughput with `openssl dgst -sha256` on the same bytes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::pagebuf::{read_page_aligned, PageBuf};

/// Formats a raw SHA-256 as `sha256:<hex>`.
pub fn format_sha256(raw: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(7 + raw.len() * 2);
    s.push_str("sha256:");
    for b in raw {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Checks that `s` is `sha256:` followed by 64 lowercase hex digits.
pub fn parse_sha256(s: &str) -> Result<&str> {
    match s.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(Error::InvalidArgument(format!(
            "{s:?} is not a digest: expected 'sha256:' followed by 64 lowercase hex digits"
        ))),
    }
}

/// An incremental SHA-256 (`update` as often as needed, then `digest`).
#[derive(Clone, Default)]
pub struct Digester {
    inner: Sha256,
    len: u64,
}

impl Digester {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything hashed so far; the digester can keep going.
    pub fn digest(&self) -> String {
        format_sha256(&self.inner.clone().finalize())
    }

    pub fn hexdigest(&self) -> String {
        self.digest()[7..].to_owned()
    }

    pub fn finish(self) -> String {
        format_sha256(&self.inner.finalize())
    }
}

/// A writer that hashes every byte it passes on and counts them.
pub struct HashingWriter<W> {
    inner: W,
    digester: Digester,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            digester: Digester::new(),
        }
    }

    pub fn into_parts(self) -> (W, Digester) {
        (self.inner, self.digester)
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.digester.update(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    digester: Digester,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            digester: Digester::new(),
        }
    }

    pub fn digester(&self) -> &Digester {
        &self.digester
    }

    pub fn into_parts(self) -> (R, Digester) {
        (self.inner, self.digester)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n]);
        Ok(n)
    }
}

/// The SHA-256 of a file's bytes and its length.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    let mut digester = Digester::new();
    let mut buf = PageBuf::for_reads(1 << 20);
    loop {
        let got = match read_page_aligned(&file, &mut buf, digester.len(), 1 << 20) {
            Ok(got) if got.is_empty() => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, "cannot read", e)),
        };
        digester.update(&buf[got]);
    }
    let len = digester.len();
    Ok((digester.finish(), len))
}

/// The chain_id of a stack of layers, bottom first (OCI image-spec config.md):
/// `chain_id(L0) = diff_id(L0)`, `chain_id(L0..Ln) = sha256(chain_id(L0..Ln-1) + " " + diff_id(Ln))`.
pub fn chain_id<S: AsRef<str>>(diff_ids: &[S]) -> Result<String> {
    let mut iter = diff_ids.iter();
    let first = iter
        .next()
        .ok_or_else(|| Error::InvalidArgument("chain_id of an empty stack is undefined".into()))?;
    parse_sha256(first.as_ref())?;
    let mut chain = first.as_ref().to_owned();
    for diff_id in iter {
        parse_sha256(diff_id.as_ref())?;
        let mut d = Digester::new();
        d.update(chain.as_bytes());
        d.update(b" ");
        d.update(diff_id.as_ref().as_bytes());
        chain = d.finish();
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_has_the_well_known_digest() {
        assert_eq!(
            Digester::new().finish(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chain_id_of_one_layer_is_its_diff_id() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(chain_id(&[d]).unwrap(), d);
    }

    #[test]
    fn chain_id_hashes_the_two_strings_joined_by_one_space() {
        let a = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let b = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
        let mut d = Digester::new();
        d.update(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(&[a, b]).unwrap(), d.finish());
    }

    #[test]
    fn malformed_digests_are_rejected() {
        assert!(chain_id(&["sha256:xyz"]).is_err());
        assert!(chain_id::<&str>(&[]).is_err());
        assert!(parse_sha256("sha512:00").is_err());
    }
}

//! Layer blob compression: detection by magic number, streaming decoders, and the parallel,
//! thread-count-independent encoders used by the layer writer.

use std::io::{self, BufRead, Read};

use crate::error::{Error, Result};

/// How a layer blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
pub const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// Parses the Python-facing name: `"gzip"`, `"zstd"`, or `"none"`/`""` for a plain tar.
    pub fn parse(name: Option<&str>) -> Result<Self> {
        match name {
            None | Some("none") | Some("") | Some("tar") => Ok(Compression::None),
            Some("gzip") | Some("gz") => Ok(Compression::Gzip),
            Some("zstd") | Some("zst") => Ok(Compression::Zstd),
            Some(other) => Err(Error::InvalidArgument(format!(
                "unknown compression {other:?}: expected 'gzip', 'zstd' or None"
            ))),
        }
    }

    /// `None` for a plain tar, else `"gzip"` / `"zstd"`.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        }
    }

    /// The OCI media type of a layer blob stored this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The default level: fast, since layers are written far more often than they are tuned.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 3,
        }
    }

    /// Checks a caller's level against what the codec accepts.
    pub fn check_level(self, level: i32) -> Result<i32> {
        let ok = match self {
            Compression::None => true,
            Compression::Gzip => (0..=12).contains(&level),
            Compression::Zstd => (1..=22).contains(&level),
        };
        if ok {
            Ok(level)
        } else {
            Err(Error::InvalidArgument(format!(
                "compression level {level} is out of range for {} (gzip: 0-12, zstd: 1-22)",
                self.name().unwrap_or("tar")
            )))
        }
    }

    /// Detects the compression from the first bytes of a blob; anything else is taken as tar.
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if magic.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// The environment variable that bounds how many bytes a gzip or zstd layer may decompress to.
pub const MAX_DECOMPRESSED_ENV: &str = "LAYERCORE_MAX_DECOMPRESSED_SIZE";

/// The bound when [`MAX_DECOMPRESSED_ENV`] is unset: 256 GiB, far above any real layer, far
/// below what a decompression bomb (a 1 MB zstd blob can claim terabytes) would produce.
pub const DEFAULT_MAX_DECOMPRESSED: u64 = 256 << 30;

/// The most bytes a compressed layer may decompress to: [`MAX_DECOMPRESSED_ENV`] (bytes, or a
/// number with a `K`, `M`, `G` or `T` suffix, binary) if set, else [`DEFAULT_MAX_DECOMPRESSED`].
/// Read at every open, so a process can change it between reads.
pub fn max_decompressed_size() -> Result<u64> {
    let Ok(text) = std::env::var(MAX_DECOMPRESSED_ENV) else {
        return Ok(DEFAULT_MAX_DECOMPRESSED);
    };
    parse_size(text.trim()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{MAX_DECOMPRESSED_ENV}={text:?} is not a size (bytes, or a number with K, M, G or T)"
        ))
    })
}

fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&text[..text.len() - 1], 10),
        b'M' => (&text[..text.len() - 1], 20),
        b'G' => (&text[..text.len() - 1], 30),
        b'T' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// A decompressed stream that grew past [`max_decompressed_size`]: carried inside an
/// `io::Error` so the tar reader can report it as the policy refusal it is, not as corruption.
#[derive(Debug)]
pub struct TooLarge {
    pub codec: &'static str,
    pub limit: u64,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} stream decompresses to more than {} bytes, the limit on a layer's \
             uncompressed size (a decompression bomb?); set {MAX_DECOMPRESSED_ENV} higher to \
             read it",
            self.codec, self.limit
        )
    }
}

impl std::error::Error for TooLarge {}

/// A decompressed stream that fails with [`TooLarge`] once it has produced more than `limit`
/// bytes (exactly `limit` is allowed).
pub struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
    codec: &'static str,
}

impl<R: Read> Bounded<R> {
    pub fn new(inner: R, limit: u64, codec: &'static str) -> Self {
        Bounded {
            inner,
            left: limit,
            limit,
            codec,
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Ask for one byte more than is allowed, so a stream of exactly `limit` bytes passes.
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(io::Error::other(TooLarge {
                codec: self.codec,
                limit: self.limit,
            }));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Wraps `reader` (positioned at the start of a blob) in the decoder its magic number calls for.
/// Multi-member gzip (our own output, pigz, BGZF) is read whole.
pub fn decoder<'a, R: BufRead + 'a>(
    mut reader: R,
) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let magic = reader.fill_buf()?;
    let compression = Compression::detect(magic);
    let boxed: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
    };
    Ok((compression, boxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("3M"), Some(3 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn bounded_allows_the_limit_and_refuses_one_byte_more() {
        let data = vec![7u8; 1000];
        let mut out = Vec::new();
        Bounded::new(&data[..], 1000, "gzip")
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 1000);
        let err = Bounded::new(&data[..], 999, "zstd")
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        let too_large = err.get_ref().unwrap().downcast_ref::<TooLarge>().unwrap();
        assert_eq!(too_large.limit, 999);
        let text = err.to_string();
        assert!(
            text.contains("zstd") && text.contains("999") && text.contains(MAX_DECOMPRESSED_ENV)
        );
    }
}

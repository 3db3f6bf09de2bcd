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

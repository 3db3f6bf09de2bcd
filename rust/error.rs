//! Errors are values with a kind and the path that caused them.
//!
//! The Python bindings map each variant to one class of `layercore.errors`, so a Python caller can
//! tell a missing source from a corrupt archive from a digest mismatch without parsing messages.

use std::io;
use std::path::{Path, PathBuf};

/// Every failure the engine reports. Each variant names the file (or archive entry) at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source directory or layer file does not exist.
    #[error("{}: does not exist", path.display())]
    NotFound { path: PathBuf },

    /// A file could not be read or written (permissions, I/O error, vanished mid-walk).
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },

    /// A file changed between the walk and the read, so its tar entry would be wrong.
    #[error("{}: changed while the layer was being written ({detail})", path.display())]
    Changed { path: PathBuf, detail: String },

    /// The archive is not a valid tar stream (bad checksum, bad PAX record, garbage, ...).
    #[error("{}: corrupt archive at byte {offset} of the tar stream: {detail}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },

    /// The archive (or its gzip/zstd stream) ends before it should.
    #[error("{}: truncated archive: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },

    /// Recomputed bytes do not match the digest they were recorded under.
    #[error("{}: {what} mismatch: expected {expected}, got {actual}", path.display())]
    DigestMismatch {
        path: PathBuf,
        what: &'static str,
        expected: String,
        actual: String,
    },

    /// A source entry that a layer cannot represent, or that the caller's policy rejects.
    #[error("{}: {detail}", path.display())]
    Unsupported { path: PathBuf, detail: String },

    /// A bad argument (unknown compression, malformed digest string, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// The caller asked to stop (Ctrl-C in Python).
    #[error("interrupted")]
    Interrupted,

    /// A request could not be made or its reply not received (refused, reset, timed out, TLS).
    /// `transferred` counts the body bytes this attempt moved before it failed; `retriable`
    /// is false where another try cannot help (a TLS or URL error).
    #[error("{url}: {detail}")]
    Network {
        url: String,
        detail: String,
        transferred: u64,
        retriable: bool,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`; `ENOENT` becomes [`Error::NotFound`].
    pub fn io(path: impl AsRef<Path>, what: &'static str, source: io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        if source.kind() == io::ErrorKind::NotFound {
            Error::NotFound { path }
        } else {
            Error::Io { path, what, source }
        }
    }

    pub fn corrupt(path: impl AsRef<Path>, offset: u64, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            offset,
            detail: detail.into(),
        }
    }

    pub fn truncated(path: impl AsRef<Path>, detail: impl Into<String>) -> Self {
        Error::Truncated {
            path: path.as_ref().to_path_buf(),
            detail: detail.into(),
        }
    }

    /// The path this error is about, if it has one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::NotFound { path }
            | Error::Io { path, .. }
            | Error::Changed { path, .. }
            | Error::Corrupt { path, .. }
            | Error::Truncated { path, .. }
            | Error::DigestMismatch { path, .. }
            | Error::Unsupported { path, .. } => Some(path),
            Error::InvalidArgument(_) | Error::Interrupted | Error::Network { .. } => None,
        }
    }
}

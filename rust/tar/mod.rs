//! The tar codec. The writer emits exactly the bytes Python's `tarfile` writes in PAX format for
//! the same metadata (so the pure-Python twin is a byte-for-byte oracle); the reader accepts
//! ustar, GNU (long names), PAX (ours, GNU tar's and bsdtar's) and v7 archives.

pub mod header;
pub mod reader;

pub const BLOCK: usize = 512;
/// Archives are padded to a multiple of this many bytes, as GNU tar and Python's tarfile do.
pub const RECORD: usize = BLOCK * 20;

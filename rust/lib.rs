//! layercore's engine: builds, reads, stacks and merges OCI image layers.
//!
//! A plain Rust library (`cargo test` needs no Python); the PyO3 bindings live in `py/` behind
//! the `python` feature, which maturin turns on.

pub mod apply;
pub mod blob_copy;
pub mod blob_writer;
pub mod checksum;
pub mod compress;
pub mod diff;
pub mod digest;
pub mod entry;
pub mod error;
pub mod flatten;
pub mod http;
pub mod index;
pub mod layer;
pub mod overlay;
pub mod pagebuf;
pub mod parallel;
pub mod sandbox;
pub mod tar;
pub mod walk;
pub mod writer;

#[cfg(feature = "python")]
mod py;

pub use compress::Compression;
pub use digest::{chain_id, sha256_file, Digester};
pub use entry::{Entry, EntryKind};
pub use error::{Error, Result};

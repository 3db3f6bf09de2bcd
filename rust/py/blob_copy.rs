//! Bindings for `blob_copy`: the store's and the transports' one way to move blob bytes.

use std::path::PathBuf;

use pyo3::prelude::*;

use super::{detached, to_pyerr};
use crate::blob_copy::{self, CopyOptions};
use crate::error::Error;

/// Python ints may be negative; a byte position may not.
fn position(name: &str, value: i64) -> PyResult<u64> {
    u64::try_from(value).map_err(|_| {
        to_pyerr(Error::InvalidArgument(format!(
            "{name} must be at least 0, got {value}"
        )))
    })
}

/// Copies bytes `[offset, offset+length)` of `src` (to its end when `length` is None) into the
/// new file `dest` (O_EXCL, mode 0644, fsync'd unless `sync` is false); returns `(digest or None, size)`. With `verify`
/// the sha256 is computed while copying and checked against `expected_digest` when given.
// A Python signature of keyword options, as the other bindings have.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (src, dest, *, offset=0, length=None, expected_digest=None, verify=true, sync=true))]
fn copy_blob(
    py: Python<'_>,
    src: PathBuf,
    dest: PathBuf,
    offset: i64,
    length: Option<i64>,
    expected_digest: Option<String>,
    verify: bool,
    sync: bool,
) -> PyResult<(Option<String>, u64)> {
    let offset = position("offset", offset)?;
    let length = length.map(|l| position("length", l)).transpose()?;
    let copied = detached(py, |check| {
        let options = CopyOptions {
            offset,
            length,
            expected_digest: expected_digest.as_deref(),
            verify,
            sync,
        };
        blob_copy::copy_blob(&src, &dest, &options, check)
    })?;
    Ok((copied.digest, copied.size))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(copy_blob, m)?)?;
    Ok(())
}

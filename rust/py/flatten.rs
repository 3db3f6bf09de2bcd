//! Bindings for flattening a stack and squashing a range of it (`layercore.flatten`).

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::{descriptor, detached, to_pyerr};
use crate::compress::Compression;
use crate::flatten::{self, FlattenOptions, LayerDescriptor};

fn options(
    compression: Option<&str>,
    level: Option<i32>,
    threads: Option<usize>,
    source_date_epoch: Option<i64>,
) -> PyResult<FlattenOptions> {
    Ok(FlattenOptions {
        compression: Compression::parse(compression).map_err(to_pyerr)?,
        level,
        threads,
        source_date_epoch,
    })
}

fn to_dict<'py>(py: Python<'py>, d: &LayerDescriptor) -> PyResult<Bound<'py, PyDict>> {
    descriptor(
        py,
        d.compression,
        &d.digest,
        &d.diff_id,
        d.size,
        d.uncompressed_size,
    )
}

/// Writes one layer equal to the merged view of the layer blobs `paths` (bottom first);
/// returns its descriptor (the keys `build_layer_from_dir` returns).
#[pyfunction]
#[pyo3(signature = (paths, out, *, compression, level=None, threads=None, source_date_epoch=None))]
fn flatten_layers<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    out: PathBuf,
    compression: Option<&str>,
    level: Option<i32>,
    threads: Option<usize>,
    source_date_epoch: Option<i64>,
) -> PyResult<Bound<'py, PyDict>> {
    let options = options(compression, level, threads, source_date_epoch)?;
    let d = detached(py, |check| flatten::flatten(&paths, &out, &options, check))?;
    to_dict(py, &d)
}

/// Merges `paths[start:end]` into one layer that, stacked on `paths[:start]`, shows what the
/// range showed, with only the whiteouts still needed; returns its descriptor.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (paths, start, end, out, *, compression, level=None, threads=None,
                    source_date_epoch=None))]
fn squash_layers<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    start: usize,
    end: usize,
    out: PathBuf,
    compression: Option<&str>,
    level: Option<i32>,
    threads: Option<usize>,
    source_date_epoch: Option<i64>,
) -> PyResult<Bound<'py, PyDict>> {
    let options = options(compression, level, threads, source_date_epoch)?;
    let d = detached(py, |check| {
        flatten::squash(&paths, start, end, &out, &options, check)
    })?;
    to_dict(py, &d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(flatten_layers, m)?)?;
    m.add_function(wrap_pyfunction!(squash_layers, m)?)?;
    Ok(())
}

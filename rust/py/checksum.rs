//! Bindings for the content checksum of build sources (`layercore.build.context` wraps them).
//! The hashing runs without the GIL.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::detached;
use crate::checksum;

/// The records of `sources` (`(path, name)` pairs), in order, and the counts
/// (`hashed`, `cached`, `hashed_bytes`); `cache` is the stat cache file.
#[pyfunction]
#[pyo3(signature = (sources, *, cache=None, workers=None))]
fn checksum_sources<'py>(
    py: Python<'py>,
    sources: Vec<(PathBuf, String)>,
    cache: Option<PathBuf>,
    workers: Option<usize>,
) -> PyResult<(Vec<Bound<'py, PyDict>>, Bound<'py, PyDict>)> {
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let (records, stats) = detached(py, |check| {
        checksum::checksum_sources(&sources, cache.as_deref(), workers, check)
    })?;
    let mut out = Vec::with_capacity(records.len());
    for r in &records {
        let d = PyDict::new(py);
        d.set_item("name", &r.name)?;
        d.set_item("kind", r.kind)?;
        d.set_item("mode", r.mode)?;
        d.set_item("uid", r.uid)?;
        d.set_item("gid", r.gid)?;
        d.set_item("size", r.size)?;
        d.set_item("link", PyBytes::new(py, &r.link))?;
        d.set_item("content", r.content.as_deref())?;
        let xattrs = PyDict::new(py);
        for (k, v) in &r.xattrs {
            xattrs.set_item(k, PyBytes::new(py, v))?;
        }
        d.set_item("xattrs", xattrs)?;
        d.set_item("canonical", r.canonical())?;
        out.push(d);
    }
    let s = PyDict::new(py);
    s.set_item("hashed", stats.hashed)?;
    s.set_item("cached", stats.cached)?;
    s.set_item("hashed_bytes", stats.hashed_bytes)?;
    Ok((out, s))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(checksum_sources, m)?)?;
    Ok(())
}

//! Bindings for the content checksum of build sources (`layercore.build.checksum` wraps them).
//! Trees are walked holding the GIL (their `skip` callbacks are Python); the reading and
//! hashing run without it.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::{detached, to_pyerr};
use crate::checksum;
use crate::error::Error;

/// A selection's checksum: its digest and counts at once, its records when asked for.
#[pyclass(frozen, module = "layercore._core", name = "Checksum")]
pub struct PyChecksum {
    inner: checksum::Checksum,
}

#[pymethods]
impl PyChecksum {
    #[getter]
    fn digest(&self) -> &str {
        &self.inner.digest
    }
    #[getter]
    fn hashed(&self) -> u64 {
        self.inner.stats.hashed
    }
    #[getter]
    fn cached(&self) -> u64 {
        self.inner.stats.cached
    }
    #[getter]
    fn hashed_bytes(&self) -> u64 {
        self.inner.stats.hashed_bytes
    }
    fn __len__(&self) -> usize {
        self.inner.records.len()
    }

    /// Each record as a dict: name, kind, mode, uid, gid, size, link, xattrs, content,
    /// canonical.
    fn records<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mut out = Vec::with_capacity(self.inner.records.len());
        for r in &self.inner.records {
            let d = PyDict::new(py);
            d.set_item("name", OsStr::from_bytes(&r.name))?;
            d.set_item("kind", r.kind)?;
            d.set_item("mode", r.mode)?;
            d.set_item("uid", r.uid)?;
            d.set_item("gid", r.gid)?;
            d.set_item("size", r.size)?;
            d.set_item("link", PyBytes::new(py, &r.link))?;
            d.set_item("content", r.content())?;
            let xattrs = PyDict::new(py);
            for (k, v) in &r.xattrs {
                xattrs.set_item(k, PyBytes::new(py, v))?;
            }
            d.set_item("xattrs", xattrs)?;
            d.set_item("canonical", r.canonical())?;
            out.push(d);
        }
        Ok(out)
    }
}

/// `checksum::walk` with a Python `skip(name, is_dir)`; its exception is raised as is.
fn walk_with<'py>(
    py: Python<'py>,
    root: &Path,
    skip: Option<&Bound<'py, PyAny>>,
) -> PyResult<Vec<(PathBuf, Vec<u8>)>> {
    let raised: RefCell<Option<PyErr>> = RefCell::new(None);
    let mut ask = |name: &[u8], is_dir: bool| -> crate::error::Result<bool> {
        let Some(skip) = skip else {
            return Ok(false);
        };
        py.check_signals()
            .and_then(|()| skip.call1((OsStr::from_bytes(name), is_dir)))
            .and_then(|r| r.is_truthy())
            .map_err(|e| {
                *raised.borrow_mut() = Some(e);
                Error::Interrupted
            })
    };
    let found = checksum::walk(root, &mut ask);
    if let Some(e) = raised.into_inner() {
        return Err(e);
    }
    found.map_err(to_pyerr)
}

/// Everything below `root` (names relative to it, in byte order, not following symlinks);
/// `skip(name, is_dir)` leaves entries out.
#[pyfunction]
#[pyo3(signature = (root, skip=None))]
fn walk_tree<'py>(
    py: Python<'py>,
    root: PathBuf,
    skip: Option<Bound<'py, PyAny>>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    walk_with(py, &root, skip.as_ref())?
        .into_iter()
        .map(|(_, name)| Ok(OsStr::from_bytes(&name).into_pyobject(py)?.into_any()))
        .collect()
}

/// One source as Python passes it: path, name, whether it is a tree, the tree's `skip`.
type SourceArg<'py> = (
    PathBuf,
    Bound<'py, PyBytes>,
    bool,
    Option<Bound<'py, PyAny>>,
);

/// The checksum of `sources`, each `(path, name, is_tree, skip)`: a tree stands for what is
/// below `path` (named `name/inner`, or `inner` when `name` is empty; `skip(inner, is_dir)`
/// leaves entries out); records are in name order. `cache` is the stat cache file.
#[pyfunction]
#[pyo3(signature = (sources, *, cache=None, workers=None))]
fn checksum_sources<'py>(
    py: Python<'py>,
    sources: Vec<SourceArg<'py>>,
    cache: Option<PathBuf>,
    workers: Option<usize>,
) -> PyResult<PyChecksum> {
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mut entries: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for (path, name, tree, skip) in &sources {
        let name = name.as_bytes();
        if !tree {
            entries.push((path.clone(), name.to_vec()));
            continue;
        }
        for (found, inner) in walk_with(py, path, skip.as_ref())? {
            let mut full = name.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(&inner);
            entries.push((found, full));
        }
    }
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    let inner = detached(py, |check| {
        checksum::checksum_sources(&entries, cache.as_deref(), workers, check)
    })?;
    Ok(PyChecksum { inner })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyChecksum>()?;
    m.add_function(wrap_pyfunction!(checksum_sources, m)?)?;
    m.add_function(wrap_pyfunction!(walk_tree, m)?)?;
    Ok(())
}

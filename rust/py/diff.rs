//! Bindings for changeset layers: the diff of two trees, and an overlayfs upper directory.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::stack::PyStackView;
use super::{build_options, built, detached, to_pyerr};
use crate::diff::{self, Compare, DiffOptions};
use crate::writer::BuildOptions;

/// Writes the changeset from the tree `lower` to the tree `upper` as a layer at `out`; returns
/// its descriptor and the warnings (skipped sockets). See `layercore.diff.from_diff`.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (lower, upper, out, *, compression, level, threads, owner, source_date_epoch, compare))]
fn diff_dirs<'py>(
    py: Python<'py>,
    lower: PathBuf,
    upper: PathBuf,
    out: PathBuf,
    compression: Option<&str>,
    level: Option<i32>,
    threads: Option<usize>,
    owner: &str,
    source_date_epoch: Option<i64>,
    compare: &str,
) -> PyResult<(Bound<'py, PyDict>, Vec<String>)> {
    let base = build_options(compression, level, source_date_epoch, owner, threads)?;
    let options = diff_options(base, compare)?;
    let d = detached(py, |check| {
        diff::diff_dirs(&lower, &upper, &out, &options, check)
    })?;
    built(py, d)
}

fn diff_options(base: BuildOptions, compare: &str) -> PyResult<DiffOptions> {
    Ok(DiffOptions {
        compression: base.compression,
        level: base.level,
        threads: base.threads,
        owner: base.owner,
        source_date_epoch: base.source_date_epoch,
        compare: Compare::parse(compare).map_err(to_pyerr)?,
    })
}

/// Writes the changeset from the merged view of a stack to the tree `upper` as a layer at
/// `out`, without extracting the stack; returns its descriptor and the warnings. See
/// `layercore.diff.from_diff`.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (stack, upper, out, *, compression, level, threads, owner, source_date_epoch, compare))]
fn diff_stack_dir<'py>(
    py: Python<'py>,
    stack: PyRef<'py, PyStackView>,
    upper: PathBuf,
    out: PathBuf,
    compression: Option<&str>,
    level: Option<i32>,
    threads: Option<usize>,
    owner: &str,
    source_date_epoch: Option<i64>,
    compare: &str,
) -> PyResult<(Bound<'py, PyDict>, Vec<String>)> {
    let base = build_options(compression, level, source_date_epoch, owner, threads)?;
    let options = diff_options(base, compare)?;
    let view = stack.view().clone();
    drop(stack);
    let d = detached(py, |check| {
        diff::diff_stack_dir(&view, &upper, &out, &options, check)
    })?;
    built(py, d)
}

/// Writes an overlayfs upper directory as a layer at `out` (whiteout devices and opaque
/// directories converted to OCI whiteouts); returns its descriptor and the warnings. `lower`,
/// the stack below the upper dir, gives the owners of the "inherit" policy.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (upper, out, *, compression, level, threads, owner, source_date_epoch, lower=None))]
fn overlay_upper_to_layer<'py>(
    py: Python<'py>,
    upper: PathBuf,
    out: PathBuf,
    compression: Option<&str>,
    level: Option<i32>,
    threads: Option<usize>,
    owner: &str,
    source_date_epoch: Option<i64>,
    lower: Option<PyRef<'py, PyStackView>>,
) -> PyResult<(Bound<'py, PyDict>, Vec<String>)> {
    let options = build_options(compression, level, source_date_epoch, owner, threads)?;
    let view = lower.map(|l| l.view().clone());
    let d = detached(py, |check| {
        diff::from_overlay_upper(&upper, &out, &options, view.as_deref(), check)
    })?;
    built(py, d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(diff_dirs, m)?)?;
    m.add_function(wrap_pyfunction!(diff_stack_dir, m)?)?;
    m.add_function(wrap_pyfunction!(overlay_upper_to_layer, m)?)?;
    Ok(())
}

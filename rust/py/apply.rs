//! Bindings for applying a layer onto a directory and extracting a stack into a new one
//! (`layercore.extract` wraps them). The engine call runs without the GIL.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::{detached, to_pyerr};
use crate::apply::{self, ApplyOptions, ApplyReport, DevicePolicy, OverlayXattrs};

fn report<'py>(py: Python<'py>, r: &ApplyReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("layers", r.layers)?;
    d.set_item("entries", r.entries)?;
    d.set_item("bytes", r.bytes)?;
    d.set_item("removed", r.removed)?;
    d.set_item("warnings", r.warnings.clone())?;
    Ok(d)
}

fn options(devices: &str, overlay: Option<&str>) -> PyResult<ApplyOptions> {
    Ok(ApplyOptions {
        devices: DevicePolicy::parse(devices).map_err(to_pyerr)?,
        overlay: overlay
            .map(OverlayXattrs::parse)
            .transpose()
            .map_err(to_pyerr)?,
    })
}

/// Applies one layer blob onto the existing directory `dest`; returns the report
/// (`layers`, `entries`, `bytes`, `removed`, `warnings`).
#[pyfunction]
#[pyo3(signature = (blob, dest, *, devices="skip"))]
fn apply_layer<'py>(
    py: Python<'py>,
    blob: PathBuf,
    dest: PathBuf,
    devices: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let options = options(devices, None)?;
    let r = detached(py, |check| {
        apply::apply_layer(&blob, &dest, &options, check)
    })?;
    report(py, &r)
}

/// Extracts layer blobs, bottom first, into `dest` (empty or missing); returns the report of
/// all layers together. With `overlay` ("trusted" or "user"), writes them in overlayfs
/// lower-directory form (whiteout devices, opaque xattrs in that namespace).
#[pyfunction]
#[pyo3(signature = (blobs, dest, *, devices="skip", overlay=None))]
fn extract_layers<'py>(
    py: Python<'py>,
    blobs: Vec<PathBuf>,
    dest: PathBuf,
    devices: &str,
    overlay: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let options = options(devices, overlay)?;
    let r = detached(py, |check| {
        apply::extract_stack(&blobs, &dest, &options, check)
    })?;
    report(py, &r)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(apply_layer, m)?)?;
    m.add_function(wrap_pyfunction!(extract_layers, m)?)?;
    Ok(())
}

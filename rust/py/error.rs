//! Maps engine errors onto the `layercore.errors` classes.
//!
//! The classes are defined in Python so they can also derive from `OSError`/`ValueError`; the
//! bindings look them up once and raise them with the message and the path at fault.

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::Error;

fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("layercore.errors")?.getattr(name)
}

/// Converts an engine error into the Python exception a caller can catch by kind.
pub fn to_pyerr(err: Error) -> PyErr {
    Python::attach(|py| match build(py, &err) {
        Ok(e) => e,
        Err(lookup) => PyRuntimeError::new_err(format!("{err} (while raising it: {lookup})")),
    })
}

fn build(py: Python<'_>, err: &Error) -> PyResult<PyErr> {
    let path = err.path().map(|p| p.as_os_str().to_owned());
    let (name, message) = match err {
        Error::NotFound { .. } => ("SourceNotFoundError", "does not exist".to_owned()),
        Error::Io { what, source, .. } => ("LayerIOError", format!("{what}: {source}")),
        Error::Changed { detail, .. } => (
            "SourceChangedError",
            format!("changed while the layer was being written ({detail})"),
        ),
        Error::Corrupt { offset, detail, .. } => (
            "CorruptLayerError",
            format!("corrupt archive at byte {offset} of the tar stream: {detail}"),
        ),
        Error::Truncated { detail, .. } => (
            "TruncatedLayerError",
            format!("truncated archive: {detail}"),
        ),
        Error::DigestMismatch {
            what,
            expected,
            actual,
            ..
        } => {
            let kwargs = PyDict::new(py);
            kwargs.set_item("what", *what)?;
            kwargs.set_item("expected", expected)?;
            kwargs.set_item("actual", actual)?;
            let message = format!("{what} mismatch: expected {expected}, got {actual}");
            let value = class(py, "DigestMismatchError")?.call((message, path), Some(&kwargs))?;
            return Ok(PyErr::from_value(value));
        }
        Error::Unsupported { detail, .. } => ("UnsupportedEntryError", detail.clone()),
        Error::InvalidArgument(msg) => return Ok(PyValueError::new_err(msg.clone())),
        Error::Interrupted => return Ok(PyKeyboardInterrupt::new_err("interrupted")),
        Error::Network {
            url,
            detail,
            transferred,
            retriable,
        } => {
            let kwargs = PyDict::new(py);
            kwargs.set_item("transferred", *transferred)?;
            kwargs.set_item("retriable", *retriable)?;
            let value = class(py, "NetworkError")?.call((detail, url), Some(&kwargs))?;
            return Ok(PyErr::from_value(value));
        }
    };
    let value = class(py, name)?.call1((message, path))?;
    Ok(PyErr::from_value(value))
}

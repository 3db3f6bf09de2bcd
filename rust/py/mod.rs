//! The PyO3 bindings: argument conversion, GIL release around every heavy call, error mapping.
//! Nothing here decides layer semantics; that is the engine's job.

mod apply;
mod blob_copy;
mod checksum;
mod diff;
mod error;
mod flatten;
mod http;
mod sandbox;
mod stack;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::compress::Compression;
use crate::digest;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::layer;
use crate::walk::Owner;
use crate::writer::{self, BuildOptions};

pub(crate) use error::to_pyerr;

/// Runs `f` without the GIL; `f` gets a check that raises `KeyboardInterrupt` on Ctrl-C.
pub(crate) fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&(dyn Fn() -> Result<()> + Sync)) -> Result<T> + Send,
) -> PyResult<T> {
    let check = || -> Result<()> {
        Python::attach(|py| py.check_signals()).map_err(|_| Error::Interrupted)
    };
    py.detach(|| f(&check)).map_err(to_pyerr)
}

pub(crate) fn descriptor<'py>(
    py: Python<'py>,
    compression: Compression,
    digest: &str,
    diff_id: &str,
    size: u64,
    uncompressed_size: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("compression", compression.name())?;
    d.set_item("media_type", compression.media_type())?;
    d.set_item("digest", digest)?;
    d.set_item("diff_id", diff_id)?;
    d.set_item("size", size)?;
    d.set_item("uncompressed_size", uncompressed_size)?;
    Ok(d)
}

/// Checks and converts the options every layer-building call shares.
pub(crate) fn build_options(
    compression: Option<&str>,
    level: Option<i32>,
    source_date_epoch: Option<i64>,
    owner: &str,
    threads: Option<usize>,
) -> PyResult<BuildOptions> {
    if threads == Some(0) {
        return Err(to_pyerr(Error::InvalidArgument(
            "threads must be at least 1".into(),
        )));
    }
    Ok(BuildOptions {
        compression: Compression::parse(compression).map_err(to_pyerr)?,
        level,
        source_date_epoch,
        owner: Owner::parse(owner).map_err(to_pyerr)?,
        threads,
        placement: writer::Placement::default(),
    })
}

/// Builds a layer from a directory; returns its descriptor and the warnings of the walk.
/// (The arguments mirror `Layer.from_dir` one to one.)
/// `chown` (uid, gid) overrides `owner`; `under` and `under_dirs` (mode, uid, gid, mtime per
/// component) and `chmod` are the [`writer::Placement`].
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (src, out, *, compression, level, source_date_epoch, owner, threads, chown=None, under=None, under_dirs=Vec::new(), chmod=None))]
fn build_layer_from_dir<'py>(
    py: Python<'py>,
    src: PathBuf,
    out: PathBuf,
    compression: Option<&str>,
    level: Option<i32>,
    source_date_epoch: Option<i64>,
    owner: &str,
    threads: Option<usize>,
    chown: Option<(u64, u64)>,
    under: Option<&str>,
    under_dirs: Vec<(u32, u64, u64, i64)>,
    chmod: Option<u32>,
) -> PyResult<(Bound<'py, PyDict>, Vec<String>)> {
    let mut options = build_options(compression, level, source_date_epoch, owner, threads)?;
    if let Some((uid, gid)) = chown {
        options.owner = Owner::Fixed { uid, gid };
    }
    options.placement = writer::Placement {
        prefix: under.unwrap_or_default().as_bytes().to_vec(),
        dirs: under_dirs
            .into_iter()
            .map(|(mode, uid, gid, mtime)| writer::PlacedDir {
                mode,
                uid,
                gid,
                mtime,
            })
            .collect(),
        mode: chmod,
    };
    let d = detached(py, |check| {
        writer::build_from_dir(&src, &out, &options, check)
    })?;
    built(py, d)
}

/// What every layer-producing call returns to Python: the descriptor dict and the warnings.
pub(crate) fn built<'py>(
    py: Python<'py>,
    d: crate::blob_writer::LayerDescriptor,
) -> PyResult<(Bound<'py, PyDict>, Vec<String>)> {
    let dict = descriptor(
        py,
        d.compression,
        &d.digest,
        &d.diff_id,
        d.size,
        d.uncompressed_size,
    )?;
    Ok((dict, d.warnings))
}

/// Reads a layer blob once: both digests, sizes, compression; validates the tar structure.
#[pyfunction]
fn describe_layer<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let info = detached(py, |_| layer::describe(&path))?;
    descriptor(
        py,
        info.compression,
        &info.digest,
        &info.diff_id,
        info.size,
        info.uncompressed_size,
    )
}

/// Recomputes both digests of a blob and raises `DigestMismatchError` if either differs.
#[pyfunction]
#[pyo3(signature = (path, digest=None, diff_id=None))]
fn verify_layer<'py>(
    py: Python<'py>,
    path: PathBuf,
    digest: Option<String>,
    diff_id: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let info = detached(py, |_| {
        layer::verify(&path, digest.as_deref(), diff_id.as_deref())
    })?;
    descriptor(
        py,
        info.compression,
        &info.digest,
        &info.diff_id,
        info.size,
        info.uncompressed_size,
    )
}

/// The sha256 of a file, `sha256:<hex>`.
#[pyfunction]
fn sha256_file(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    detached(py, |_| digest::sha256_file(&path).map(|(d, _)| d))
}

/// The chain_id of a stack of diff_ids, bottom first.
#[pyfunction]
fn chain_id(diff_ids: Vec<String>) -> PyResult<String> {
    digest::chain_id(&diff_ids).map_err(to_pyerr)
}

/// One layer entry; `layercore.Entry` re-exports this class.
#[pyclass(frozen, module = "layercore._core", name = "Entry")]
pub(crate) struct PyEntry {
    pub(crate) inner: Entry,
    /// In a merged view, the index (bottom = 0) of the layer that provides the entry.
    pub(crate) layer: Option<usize>,
}

#[pymethods]
impl PyEntry {
    /// Path relative to the layer root (no leading `./`, no trailing `/`); undecodable bytes
    /// are surrogate-escaped like `os.fsdecode`.
    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(OsStr::from_bytes(&self.inner.path)
            .into_pyobject(py)?
            .into_any())
    }
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.as_str()
    }
    #[getter]
    fn mode(&self) -> u32 {
        self.inner.mode
    }
    #[getter]
    fn uid(&self) -> u64 {
        self.inner.uid
    }
    #[getter]
    fn gid(&self) -> u64 {
        self.inner.gid
    }
    #[getter]
    fn uname(&self) -> &str {
        &self.inner.uname
    }
    #[getter]
    fn gname(&self) -> &str {
        &self.inner.gname
    }
    #[getter]
    fn size(&self) -> u64 {
        self.inner.size
    }
    #[getter]
    fn mtime(&self) -> i64 {
        self.inner.mtime
    }
    #[getter]
    fn linkname<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.inner.linkname {
            Some(l) => Ok(Some(OsStr::from_bytes(l).into_pyobject(py)?.into_any())),
            None => Ok(None),
        }
    }
    #[getter]
    fn devmajor(&self) -> u32 {
        self.inner.devmajor
    }
    #[getter]
    fn devminor(&self) -> u32 {
        self.inner.devminor
    }
    #[getter]
    fn xattrs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.inner.xattrs {
            d.set_item(k, PyBytes::new(py, v))?;
        }
        Ok(d)
    }
    #[getter]
    fn offset(&self) -> u64 {
        self.inner.offset
    }
    /// The stack layer (bottom = 0) that provides this entry; None outside a merged view.
    #[getter]
    fn layer(&self) -> Option<usize> {
        self.layer
    }

    fn __repr__(&self) -> String {
        format!(
            "Entry(path={:?}, kind={:?}, mode=0o{:o}, size={})",
            String::from_utf8_lossy(&self.inner.path),
            self.inner.kind.as_str(),
            self.inner.mode,
            self.inner.size
        )
    }
}

/// Streams the entries of a layer blob.
#[pyclass(module = "layercore._core", name = "EntryIterator")]
struct PyEntryIterator {
    inner: Mutex<Option<layer::EntryIter>>,
}

#[pymethods]
impl PyEntryIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self) -> PyResult<Option<PyEntry>> {
        let mut guard = self.inner.lock().expect("entry iterator lock");
        let Some(iter) = guard.as_mut() else {
            return Ok(None);
        };
        match iter.next() {
            Some(Ok(entry)) => Ok(Some(PyEntry {
                inner: entry,
                layer: None,
            })),
            Some(Err(e)) => {
                *guard = None;
                Err(to_pyerr(e))
            }
            None => {
                *guard = None;
                Ok(None)
            }
        }
    }
}

#[pyfunction]
fn open_entries(py: Python<'_>, path: PathBuf) -> PyResult<PyEntryIterator> {
    let iter = detached(py, |_| layer::EntryIter::open(&path))?;
    Ok(PyEntryIterator {
        inner: Mutex::new(Some(iter)),
    })
}

/// An incremental sha256: `update(data)` as often as needed, then `digest()` or `hexdigest()`.
#[pyclass(module = "layercore._core", name = "Digester")]
struct PyDigester {
    inner: Mutex<digest::Digester>,
}

#[pymethods]
impl PyDigester {
    #[new]
    #[pyo3(signature = (data=None))]
    fn new(py: Python<'_>, data: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let d = PyDigester {
            inner: Mutex::new(digest::Digester::new()),
        };
        if let Some(data) = data {
            d.update(py, data)?;
        }
        Ok(d)
    }

    /// Adds bytes (anything with the buffer protocol). Large updates run without the GIL.
    fn update(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut inner = self.inner.lock().expect("digester lock");
        if let Ok(bytes) = data.cast::<PyBytes>() {
            let slice = bytes.as_bytes();
            if slice.len() >= 1 << 16 {
                let mut local = inner.clone();
                py.detach(|| local.update(slice));
                *inner = local;
            } else {
                inner.update(slice);
            }
            return Ok(());
        }
        let buffer = PyBuffer::<u8>::get(data)?;
        let bytes = buffer.to_vec(py)?;
        inner.update(&bytes);
        Ok(())
    }

    /// `sha256:<hex>` of everything so far.
    fn digest(&self) -> String {
        self.inner.lock().expect("digester lock").digest()
    }

    fn hexdigest(&self) -> String {
        self.inner.lock().expect("digester lock").hexdigest()
    }

    /// Bytes hashed so far.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.lock().expect("digester lock").len()
    }

    fn copy(&self) -> Self {
        PyDigester {
            inner: Mutex::new(self.inner.lock().expect("digester lock").clone()),
        }
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // `layercore.build_info()` reports these; benchmarks refuse debug builds by checking the profile.
    m.add("rustc_version", env!("LAYERCORE_RUSTC_VERSION"))?;
    m.add("target", env!("LAYERCORE_TARGET"))?;
    m.add(
        "build_profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add("CHUNK_SIZE", writer::CHUNK)?;
    m.add_function(wrap_pyfunction!(build_layer_from_dir, m)?)?;
    m.add_function(wrap_pyfunction!(describe_layer, m)?)?;
    m.add_function(wrap_pyfunction!(verify_layer, m)?)?;
    m.add_function(wrap_pyfunction!(open_entries, m)?)?;
    m.add_function(wrap_pyfunction!(sha256_file, m)?)?;
    m.add_function(wrap_pyfunction!(chain_id, m)?)?;
    m.add_class::<PyEntry>()?;
    m.add_class::<PyEntryIterator>()?;
    m.add_class::<PyDigester>()?;
    stack::register(m)?;
    flatten::register(m)?;
    apply::register(m)?;
    diff::register(m)?;
    blob_copy::register(m)?;
    checksum::register(m)?;
    http::register(m)?;
    sandbox::register(m)?;
    Ok(())
}

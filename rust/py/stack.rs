//! Bindings of the merged view ([`crate::overlay`]): `StackView` and its walk iterator.
//! Paths come in as `str` (surrogate-escaped bytes allowed, as `os.fsencode` takes them),
//! `bytes` or `os.PathLike`; the engine normalises them. Index building, merging and reads run
//! without the GIL; lookups are a hash probe each and keep it (releasing it would cost more).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use super::{descriptor, detached, to_pyerr, PyEntry};
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::index::{self, LayerIndex};
use crate::overlay::MergedView;

/// The merged view of a stack of layer blobs (bottom first); `layercore.Stack` wraps it.
///
/// Lookups intern their results: the `Entry` object made for a path is kept (entries are
/// immutable) and handed out again by later lookups of that path, so repeated lookups cost a
/// hash probe and a reference count. The cost is one pointer per visible path once anything
/// was looked up, plus the entries looked up. `walk` does not intern (it would keep every
/// entry of the stack alive as Python objects).
#[pyclass(frozen, module = "layercore._core", name = "StackView")]
pub(crate) struct PyStackView {
    view: Arc<MergedView>,
    interned: OnceLock<Box<[OnceLock<Py<PyEntry>>]>>,
    /// Where the layers' cached indexes live (`None`: beside their blobs).
    index_dir: Option<PathBuf>,
}

/// The bytes of a path argument.
fn path_bytes<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(s) = obj.cast::<PyString>() {
        if let Ok(text) = s.to_str() {
            return Ok(Cow::Borrowed(text.as_bytes()));
        }
        // Lone surrogates: bytes that were not UTF-8, escaped the way `os.fsdecode` does.
        let encoded = s.call_method1("encode", ("utf-8", "surrogateescape"))?;
        return Ok(Cow::Owned(encoded.cast::<PyBytes>()?.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    let fspath = obj.py().import("os")?.call_method1("fsencode", (obj,))?;
    Ok(Cow::Owned(fspath.cast::<PyBytes>()?.as_bytes().to_vec()))
}

fn entry_object<'py>(py: Python<'py>, layer: usize, entry: &Entry) -> PyResult<Bound<'py, PyAny>> {
    Ok(Bound::new(
        py,
        PyEntry {
            inner: entry.clone(),
            layer: Some(layer),
        },
    )?
    .into_any())
}

fn name_object<'py>(py: Python<'py>, name: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    Ok(OsStr::from_bytes(name).into_pyobject(py)?.into_any())
}

/// Writes `dest` atomically (temp file beside it, renamed into place once complete).
fn write_atomically(dest: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<u64>) -> Result<u64> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".layercore-read-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, "cannot create a temp file in", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, tmp);
    let n = fill(&mut out)?;
    let tmp = out
        .into_inner()
        .map_err(|e| Error::io(dest, "cannot write", e.into_error()))?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io(tmp.path(), "cannot chmod", e))?;
    tmp.persist(dest)
        .map_err(|e| Error::io(dest, "cannot rename into place", e.error))?;
    Ok(n)
}

#[pymethods]
impl PyStackView {
    /// Indexes the blobs (or loads their fresh cached indexes) in parallel, then merges them.
    /// Cached indexes live beside their blobs, or in `index_dir` when given; with
    /// `save_index`, indexes that had to be built are cached there.
    #[new]
    #[pyo3(signature = (blobs, *, save_index = false, index_dir = None))]
    fn new(
        py: Python<'_>,
        blobs: Vec<PathBuf>,
        save_index: bool,
        index_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let view = detached(py, |check| {
            let layers = index::open_all(&blobs, index_dir.as_deref(), save_index, check)?;
            Ok(MergedView::new(layers))
        })?;
        Ok(PyStackView {
            view: Arc::new(view),
            interned: OnceLock::new(),
            index_dir,
        })
    }

    /// One descriptor per layer, bottom first (the keys of `describe_layer`, plus `path`).
    fn descriptors<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.view
            .layers()
            .iter()
            .map(|layer| {
                let info = layer.info();
                let d = descriptor(
                    py,
                    info.compression,
                    &info.digest,
                    &info.diff_id,
                    info.size,
                    info.uncompressed_size,
                )?;
                d.set_item("path", layer.blob())?;
                Ok(d)
            })
            .collect()
    }

    /// The diff_ids of the layers, bottom first.
    #[getter]
    fn diff_ids(&self) -> Vec<String> {
        self.view
            .layers()
            .iter()
            .map(|l| l.diff_id().to_owned())
            .collect()
    }

    /// The chain_id of the stack; `ValueError` for an empty stack.
    #[getter]
    fn chain_id(&self) -> PyResult<String> {
        self.view.chain_id().map_err(to_pyerr)
    }

    /// Number of visible paths.
    fn __len__(&self) -> usize {
        self.view.len()
    }

    /// The visible entry at `path` (its `layer` set), or None.
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        path: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.view.position(&path_bytes(path)?) {
            Some(v) => self.interned_entry(py, v).map(Some),
            None => Ok(None),
        }
    }

    /// `lookup` for each path of an iterable, in one call: a list of Entry or None.
    fn lookup_many<'py>(
        &self,
        py: Python<'py>,
        paths: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        // Batches big enough for the engine to overlap the memory latency of the lookups.
        const BATCH: usize = 256;
        let mut out: Vec<Bound<'py, PyAny>> = Vec::new();
        let mut items: Vec<Bound<'py, PyAny>> = Vec::with_capacity(BATCH);
        let mut found = Vec::with_capacity(BATCH);
        let none = py.None().into_bound(py);
        let mut flush = |items: &mut Vec<Bound<'py, PyAny>>| -> PyResult<()> {
            {
                let keys = items.iter().map(path_bytes).collect::<PyResult<Vec<_>>>()?;
                found.clear();
                self.view.positions(&keys, &mut found);
            }
            for v in &found {
                out.push(match v {
                    Some(v) => self.interned_entry(py, *v)?,
                    None => none.clone(),
                });
            }
            items.clear();
            Ok(())
        };
        if let Ok(list) = paths.cast::<PyList>() {
            for item in list.iter() {
                items.push(item);
                if items.len() == BATCH {
                    flush(&mut items)?;
                }
            }
        } else {
            for item in paths.try_iter()? {
                items.push(item?);
                if items.len() == BATCH {
                    flush(&mut items)?;
                }
            }
        }
        flush(&mut items)?;
        PyList::new(py, out)
    }

    /// Sorted names of the visible children of directory `path` (`""` is the root).
    #[pyo3(signature = (path = None))]
    fn listdir<'py>(
        &self,
        py: Python<'py>,
        path: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let path = match path {
            Some(p) => path_bytes(p)?,
            None => Cow::Borrowed(&b""[..]),
        };
        let names = self.view.listdir(&path).map_err(to_pyerr)?;
        names.into_iter().map(|n| name_object(py, n)).collect()
    }

    /// Every visible entry in walk order (depth first, names sorted by bytes).
    fn walk(&self) -> PyStackWalk {
        PyStackWalk {
            view: Arc::clone(&self.view),
            next: 0,
        }
    }

    /// The body of the regular file at `path` (symlinks followed inside the stack).
    fn read<'py>(
        &self,
        py: Python<'py>,
        path: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let path = path_bytes(path)?.into_owned();
        let view = &*self.view;
        let data = detached(py, |_| view.read(&path))?;
        Ok(PyBytes::new(py, &data))
    }

    /// Streams the body of the regular file at `path` into the file `dest` (written atomically);
    /// returns its size.
    fn read_into(&self, py: Python<'_>, path: &Bound<'_, PyAny>, dest: PathBuf) -> PyResult<u64> {
        let path = path_bytes(path)?.into_owned();
        let view = &*self.view;
        detached(py, |_| {
            // Resolve first: a missing path must not leave a temp file behind or touch `dest`.
            view.open_file(&path)?;
            write_atomically(&dest, |out| view.read_into(&path, out))
        })
    }

    /// `(layer, change)` for each layer that touched `path`, bottom to top; change is
    /// "added", "modified", "deleted" or "hidden".
    fn history(&self, path: &Bound<'_, PyAny>) -> PyResult<Vec<(usize, &'static str)>> {
        let path = path_bytes(path)?;
        Ok(self
            .view
            .history(&path)
            .into_iter()
            .map(|(k, c)| (k, c.as_str()))
            .collect())
    }

    /// Writes every layer's index where the view looks for it (`<blob>.lcidx`, or
    /// `<index_dir>/<blob file name>.lcidx`); returns the files written.
    fn save_indexes(&self, py: Python<'_>) -> PyResult<Vec<PathBuf>> {
        let view = &*self.view;
        let index_dir = self.index_dir.as_deref();
        detached(py, |_| {
            let mut written: Vec<PathBuf> = Vec::new();
            for layer in view.layers() {
                let path = LayerIndex::index_path(layer.blob(), index_dir);
                if !written.contains(&path) {
                    layer.save(&path)?;
                    written.push(path);
                }
            }
            Ok(written)
        })
    }
}

impl PyStackView {
    /// The merged view, for other bindings that work on a stack without extracting it
    /// (`diff_stack_dir`).
    pub(crate) fn view(&self) -> &Arc<MergedView> {
        &self.view
    }

    /// The interned `Entry` object of walk position `v`.
    fn interned_entry<'py>(&self, py: Python<'py>, v: usize) -> PyResult<Bound<'py, PyAny>> {
        let table = self.interned.get_or_init(|| {
            (0..self.view.len())
                .map(|_| OnceLock::new())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        let cell = &table[v];
        if let Some(entry) = cell.get() {
            return Ok(entry.bind(py).clone().into_any());
        }
        let (k, e) = self.view.get(v).expect("a position the view returned");
        let made = Py::new(
            py,
            PyEntry {
                inner: e.clone(),
                layer: Some(k),
            },
        )?;
        // Another thread may have won the race: hand out the object that was kept.
        Ok(cell.get_or_init(|| made).bind(py).clone().into_any())
    }
}

/// Iterates the visible entries of a `StackView` in walk order.
#[pyclass(module = "layercore._core", name = "StackWalk")]
struct PyStackWalk {
    view: Arc<MergedView>,
    next: usize,
}

#[pymethods]
impl PyStackWalk {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.view.get(self.next) {
            Some((k, e)) => {
                self.next += 1;
                entry_object(py, k, e).map(Some)
            }
            None => Ok(None),
        }
    }

    fn __length_hint__(&self) -> usize {
        self.view.len().saturating_sub(self.next)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStackView>()?;
    m.add_class::<PyStackWalk>()?;
    Ok(())
}

//! Bindings for `http`: the registry client's transport. Every call releases the GIL, so
//! `jobs` Python threads move blobs at once; blob bytes go between socket and file in Rust.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{detached, to_pyerr};
use crate::error::Error;
use crate::http::{Client, ClientOptions, Counter, Reply, MAX_SMALL_BODY};

/// Bytes moved so far by the transfers it is passed to; read `value` from any thread.
#[pyclass(frozen, module = "layercore._core", name = "TransferCounter")]
#[derive(Default)]
struct PyCounter {
    inner: Counter,
}

#[pymethods]
impl PyCounter {
    #[new]
    fn new() -> Self {
        PyCounter::default()
    }

    #[getter]
    fn value(&self) -> u64 {
        self.inner.get()
    }
}

/// A registry's answer: status, headers (in order, names lowercase), the body when read, the
/// URL that answered; for a download also the finished file's digest and size.
#[pyclass(frozen, module = "layercore._core", name = "HttpReply")]
struct PyReply {
    #[pyo3(get)]
    status: u16,
    #[pyo3(get)]
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    #[pyo3(get)]
    url: String,
    #[pyo3(get)]
    digest: Option<String>,
    #[pyo3(get)]
    size: u64,
    #[pyo3(get)]
    resumed_from: u64,
}

impl PyReply {
    fn from_reply(reply: Reply) -> Self {
        PyReply {
            status: reply.status,
            headers: reply.headers,
            body: reply.body,
            url: reply.url,
            digest: None,
            size: 0,
            resumed_from: 0,
        }
    }
}

#[pymethods]
impl PyReply {
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.body)
    }

    /// The first header of that name, case-insensitive.
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn __repr__(&self) -> String {
        format!("HttpReply(status={}, url={:?})", self.status, self.url)
    }
}

/// One registry's connections (pooled, keep-alive, rustls with the system's roots).
#[pyclass(frozen, module = "layercore._core", name = "HttpClient")]
struct PyClient {
    inner: Client,
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        to_pyerr(Error::InvalidArgument(format!(
            "{name} must be a positive number of seconds, got {value}"
        )))
    })
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(signature = (
        *,
        insecure=false,
        ca_pem=Vec::new(),
        user_agent=None,
        connect_timeout=30.0,
        io_timeout=60.0,
        request_timeout=120.0,
        min_rate=1024,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        insecure: bool,
        ca_pem: Vec<Vec<u8>>,
        user_agent: Option<String>,
        connect_timeout: f64,
        io_timeout: f64,
        request_timeout: f64,
        min_rate: u64,
    ) -> PyResult<Self> {
        let mut options = ClientOptions {
            insecure,
            ca_pem,
            connect_timeout: seconds("connect_timeout", connect_timeout)?,
            io_timeout: seconds("io_timeout", io_timeout)?,
            request_timeout: seconds("request_timeout", request_timeout)?,
            min_rate,
            ..ClientOptions::default()
        };
        if let Some(agent) = user_agent {
            options.user_agent = agent;
        }
        Ok(PyClient {
            inner: Client::new(&options).map_err(to_pyerr)?,
        })
    }

    /// A request with a small body (or none); the reply's body is read up to `max_body` bytes.
    #[pyo3(signature = (method, url, headers=Vec::new(), body=None, *, max_body=MAX_SMALL_BODY))]
    fn request(
        &self,
        py: Python<'_>,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
        max_body: u64,
    ) -> PyResult<PyReply> {
        let client = self.inner.clone();
        let reply = detached(py, |_| {
            client.send(&method, &url, &headers, body.as_deref(), max_body)
        })?;
        Ok(PyReply::from_reply(reply))
    }

    /// GETs a blob into `dest`, resuming from what `dest` already holds (see the engine's
    /// `Client::download`).
    #[pyo3(signature = (url, headers, dest, *, expected_digest=None, max_size=None, counter=None))]
    #[allow(clippy::too_many_arguments)]
    fn download(
        &self,
        py: Python<'_>,
        url: String,
        headers: Vec<(String, String)>,
        dest: PathBuf,
        expected_digest: Option<String>,
        max_size: Option<u64>,
        counter: Option<PyRef<'_, PyCounter>>,
    ) -> PyResult<PyReply> {
        let client = self.inner.clone();
        let counter = counter.map(|c| c.inner.clone()).unwrap_or_default();
        let got = detached(py, |check| {
            client.download(
                &url,
                &headers,
                &dest,
                expected_digest.as_deref(),
                max_size,
                &counter,
                check,
            )
        })?;
        let mut reply = PyReply::from_reply(got.reply);
        reply.digest = got.digest;
        reply.size = got.size;
        reply.resumed_from = got.resumed_from;
        Ok(reply)
    }

    /// Sends bytes `[offset, offset+length)` of `src` as a request body (a blob upload's PUT
    /// or PATCH) and reads the small reply.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (method, url, headers, src, offset, length, *, counter=None))]
    fn upload(
        &self,
        py: Python<'_>,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        src: PathBuf,
        offset: u64,
        length: u64,
        counter: Option<PyRef<'_, PyCounter>>,
    ) -> PyResult<PyReply> {
        let client = self.inner.clone();
        let counter = counter.map(|c| c.inner.clone()).unwrap_or_default();
        let reply = detached(py, |check| {
            client.upload(
                &method, &url, &headers, &src, offset, length, &counter, check,
            )
        })?;
        Ok(PyReply::from_reply(reply))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyClient>()?;
    m.add_class::<PyReply>()?;
    m.add_class::<PyCounter>()?;
    Ok(())
}

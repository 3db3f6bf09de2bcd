//! HTTP for registry transfers: one ureq agent (rustls, pooled keep-alive connections) per
//! registry, and blob bodies streamed between the socket and a file.
//!
//! The protocol (auth, retries, which request to make next) is decided by the caller; this
//! module moves bytes. A blob download is hashed as it arrives and appended to a partial file
//! that survives a dropped connection, so the next attempt resumes with a `Range` request. An
//! upload streams a slice of a file as the request body. Nothing here holds a blob in memory:
//! the buffer is 256 KiB whatever the size.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ureq::http::{Method, Request};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::ResponseExt;

use crate::digest::Digester;
use crate::error::{Error, Result};

const BUF_SIZE: usize = 256 * 1024;
/// How many bytes pass between two checks for Ctrl-C.
const CHECK_EVERY: u64 = 16 * 1024 * 1024;
/// Error bodies and small replies (manifests, tokens) are read up to this size.
pub const MAX_SMALL_BODY: u64 = 8 * 1024 * 1024;

/// How a [`Client`] connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Accept any TLS certificate (`--insecure`; plain HTTP is the caller's choice of URL).
    pub insecure: bool,
    /// PEM files of further CAs to trust, besides the system's roots (a `certs.d` `ca.crt`).
    pub ca_pem: Vec<Vec<u8>>,
    pub user_agent: String,
    pub connect_timeout: Duration,
    /// The longest wait for one read or write on a connection.
    pub io_timeout: Duration,
    /// The longest a request with a small reply (an API call, a manifest, a token) may take
    /// in all, and the longest wait for the head of a blob transfer's reply: a registry that
    /// trickles a byte at a time (slow loris) cannot hold a request open for ever.
    pub request_timeout: Duration,
    /// The slowest a blob body may arrive: fewer than `min_rate * io_timeout` bytes in any
    /// `io_timeout` window fails the download (as curl's `--speed-limit`/`--speed-time`).
    pub min_rate: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            ca_pem: Vec::new(),
            user_agent: format!("layercore/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            min_rate: 1024,
        }
    }
}

/// A reply: status, headers in the order received, and the body when it was read.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The URL that answered, after any redirects.
    pub url: String,
}

impl Reply {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What [`Client::download`] did.
#[derive(Debug, Clone)]
pub struct Download {
    /// The registry's answer; on a success its body is empty (the bytes went to the file).
    pub reply: Reply,
    /// `sha256:<hex>` and size of the whole file, set when the download completed.
    pub digest: Option<String>,
    pub size: u64,
    /// The bytes of an earlier attempt that this one kept (0 when it started afresh).
    pub resumed_from: u64,
}

/// Bytes moved so far, readable from another thread while a transfer runs (progress bars).
#[derive(Debug, Default, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn new() -> Self {
        Counter::default()
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// An HTTP client for one registry. Cheap to share between threads: requests made at once run
/// on separate pooled connections.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    request_timeout: Duration,
    io_timeout: Duration,
    min_rate: u64,
}

fn system_roots() -> &'static [Certificate<'static>] {
    static ROOTS: OnceLock<Vec<Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect()
    })
}

impl Client {
    pub fn new(options: &ClientOptions) -> Result<Self> {
        let mut roots: Vec<Certificate<'static>> = system_roots().to_vec();
        for pem in &options.ca_pem {
            let before = roots.len();
            for item in ureq::tls::parse_pem(pem) {
                match item {
                    Ok(PemItem::Certificate(cert)) => roots.push(cert.to_owned()),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(Error::InvalidArgument(format!(
                            "a CA certificate is not valid PEM: {e}"
                        )))
                    }
                }
            }
            if roots.len() == before {
                return Err(Error::InvalidArgument(
                    "a CA file holds no PEM certificate".to_owned(),
                ));
            }
        }
        // With no system roots found (a bare container), Mozilla's bundled roots still let
        // public registries work.
        let root_certs = if roots.is_empty() {
            RootCerts::WebPki
        } else {
            RootCerts::new_with_certs(&roots)
        };
        let tls = TlsConfig::builder()
            .root_certs(root_certs)
            .disable_verification(options.insecure)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(options.user_agent.as_str())
            .tls_config(tls)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_per_read(Some(options.io_timeout))
            .timeout_per_write(Some(options.io_timeout))
            .max_idle_connections_per_host(16)
            .max_redirects(10)
            .build();
        Ok(Client {
            agent: config.into(),
            request_timeout: options.request_timeout,
            io_timeout: options.io_timeout,
            min_rate: options.min_rate,
        })
    }

    fn request(&self, method: &str, url: &str, headers: &[(String, String)]) -> Result<Builder> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::InvalidArgument(format!("not an HTTP method: {method:?}")))?;
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        Ok(Builder {
            builder,
            url: url.to_owned(),
        })
    }

    /// Sends a request with a small body (or none) and reads a reply of at most `max_body`
    /// bytes: the API calls, manifests and tokens.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
        max_body: u64,
    ) -> Result<Reply> {
        let req = self.request(method, url, headers)?;
        let url = req.url.clone();
        let whole = Some(self.request_timeout);
        let response = match body {
            Some(data) => {
                let request = self.agent.configure_request(req.build(data)?);
                self.agent.run(request.timeout_global(whole).build())
            }
            None => {
                let request = self.agent.configure_request(req.build(())?);
                self.agent.run(request.timeout_global(whole).build())
            }
        }
        .map_err(|e| network(&url, &e, 0))?;
        read_reply(response, &url, max_body)
    }

    /// GETs a blob into `dest`, hashing it as it arrives.
    ///
    /// If `dest` already holds the start of the blob (an earlier attempt that was cut off),
    /// only the rest is asked for, with `Range`; a registry that answers with the whole blob
    /// instead starts it afresh. A connection dropped mid-body leaves what arrived in `dest`
    /// and returns [`Error::Network`], so calling again resumes. With `expected` the finished
    /// file must hash to it, else it is removed and [`Error::DigestMismatch`] returned. A
    /// reply other than 200/206 is returned with its (small) body and `dest` untouched.
    ///
    /// With `max_size` (the descriptor's size) a body that grows past it (a reply that never
    /// ends) is cut off, `dest` removed, and [`Error::DigestMismatch`] (`what` `"size"`)
    /// returned. The reply's head must arrive within the request timeout, and the body at
    /// no less than the minimum rate (see [`ClientOptions`]).
    #[allow(clippy::too_many_arguments)]
    pub fn download(
        &self,
        url: &str,
        headers: &[(String, String)],
        dest: &Path,
        expected: Option<&str>,
        max_size: Option<u64>,
        counter: &Counter,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<Download> {
        let have = match std::fs::metadata(dest) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::io(dest, "cannot read the partial download", e)),
        };
        let mut headers = headers.to_vec();
        if have > 0 {
            headers.push(("Range".to_owned(), format!("bytes={have}-")));
        }
        let req = self.request("GET", url, &headers)?;
        let request = self
            .agent
            .configure_request(req.build(())?)
            .timeout_recv_response(Some(self.request_timeout))
            .build();
        let response = self.agent.run(request).map_err(|e| network(url, &e, 0))?;
        let status = response.status().as_u16();
        let resumed = status == 206 && have > 0 && range_starts_at(&response, have);
        if status == 416 && have > 0 {
            // The partial file may already be whole; the hash decides.
            let reply = read_reply(response, url, MAX_SMALL_BODY)?;
            let (digest, size) = crate::digest::sha256_file(dest)?;
            if expected.map_or(true, |want| want == digest) {
                counter.add(0);
                return Ok(Download {
                    reply,
                    digest: Some(digest),
                    size,
                    resumed_from: size,
                });
            }
            remove(dest)?;
            return Err(mismatch(dest, expected.unwrap_or_default(), &digest));
        }
        if !(status == 200 || resumed) {
            return Ok(Download {
                reply: read_reply(response, url, MAX_SMALL_BODY)?,
                digest: None,
                size: 0,
                resumed_from: 0,
            });
        }
        let reply = head_of(&response, url);
        let mut hasher = Digester::new();
        let mut file = if resumed {
            let mut f = OpenOptions::new()
                .read(true)
                .append(true)
                .open(dest)
                .map_err(|e| Error::io(dest, "cannot open the partial download", e))?;
            hash_prefix(&mut f, dest, &mut hasher)?;
            f
        } else {
            File::create(dest).map_err(|e| Error::io(dest, "cannot create the download", e))?
        };
        let resumed_from = if resumed { have } else { 0 };
        let mut body = response.into_body().into_reader();
        let pace = Pace {
            window: self.io_timeout,
            min_rate: self.min_rate,
            max_size: max_size.map(|m| m.saturating_sub(resumed_from)),
        };
        let received = pipelined_receive(
            &mut body, &mut file, hasher, dest, url, counter, check, &pace,
        );
        let hasher = match received {
            Err(e @ Error::DigestMismatch { .. }) => {
                drop(file);
                remove(dest)?;
                return Err(e);
            }
            other => other?,
        };
        drop(file);
        let size = hasher.len();
        let digest = hasher.finish();
        if let Some(want) = expected {
            if want != digest {
                remove(dest)?;
                return Err(mismatch(dest, want, &digest));
            }
        }
        Ok(Download {
            reply,
            digest: Some(digest),
            size,
            resumed_from,
        })
    }

    /// Sends `length` bytes of `src` from `offset` as the body of a `method` request (a blob
    /// upload's PUT or PATCH), with `Content-Length` set, and reads the small reply. A
    /// connection lost mid-body returns [`Error::Network`]; the registry, not this count,
    /// says how much it kept.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        src: &Path,
        offset: u64,
        length: u64,
        counter: &Counter,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<Reply> {
        let mut file = File::open(src).map_err(|e| Error::io(src, "cannot open the blob", e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(src, "cannot read the blob", e))?
            .len();
        if offset.checked_add(length).map_or(true, |end| end > size) {
            return Err(Error::InvalidArgument(format!(
                "{}: bytes {offset}..{} are beyond its {size} bytes",
                src.display(),
                offset.saturating_add(length)
            )));
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(src, "cannot read the blob", e))?;
        let mut headers = headers.to_vec();
        headers.push(("Content-Length".to_owned(), length.to_string()));
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push((
                "Content-Type".to_owned(),
                "application/octet-stream".to_owned(),
            ));
        }
        let req = self.request(method, url, &headers)?;
        let mut reader = CountingReader {
            inner: file.take(length),
            path: src.to_path_buf(),
            counter,
            moved: 0,
            since_check: 0,
            check,
            stopped: None,
        };
        let result = self
            .agent
            .run(req.build(ureq::SendBody::from_reader(&mut reader))?);
        if let Some(err) = reader.stopped.take() {
            return Err(err);
        }
        let response = result.map_err(|e| network(url, &e, reader.moved))?;
        read_reply(response, url, MAX_SMALL_BODY)
    }
}

struct Builder {
    builder: ureq::http::request::Builder,
    url: String,
}

impl Builder {
    fn build<B>(self, body: B) -> Result<Request<B>> {
        self.builder
            .body(body)
            .map_err(|e| Error::InvalidArgument(format!("{}: not a valid request: {e}", self.url)))
    }
}

/// The request body of an upload: counts what leaves, checks for Ctrl-C, and keeps the first
/// file error so it is reported as such rather than as a network failure.
struct CountingReader<'a> {
    inner: io::Take<File>,
    path: PathBuf,
    counter: &'a Counter,
    moved: u64,
    since_check: u64,
    check: &'a dyn Fn() -> Result<()>,
    stopped: Option<Error>,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                let kind = e.kind();
                self.stopped = Some(Error::io(&self.path, "cannot read the blob", e));
                return Err(io::Error::new(kind, "blob read failed"));
            }
        };
        if n == 0 && self.inner.limit() > 0 {
            self.stopped = Some(Error::Truncated {
                path: self.path.clone(),
                detail: "the blob shrank while it was being uploaded".to_owned(),
            });
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob shrank"));
        }
        self.moved += n as u64;
        self.counter.add(n as u64);
        self.since_check += n as u64;
        if self.since_check >= CHECK_EVERY {
            self.since_check = 0;
            if let Err(e) = (self.check)() {
                self.stopped = Some(e);
                return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
            }
        }
        Ok(n)
    }
}

fn head_of(response: &ureq::http::Response<ureq::Body>, url: &str) -> Reply {
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let final_url = response.get_uri().to_string();
    Reply {
        status: response.status().as_u16(),
        headers,
        body: Vec::new(),
        url: if final_url.is_empty() {
            url.to_owned()
        } else {
            final_url
        },
    }
}

fn read_reply(response: ureq::http::Response<ureq::Body>, url: &str, max: u64) -> Result<Reply> {
    let mut reply = head_of(&response, url);
    let mut body = Vec::new();
    response
        .into_body()
        .into_with_config()
        .limit(max)
        .reader()
        .read_to_end(&mut body)
        .map_err(|e| {
            let too_large = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<ureq::Error>())
                .is_some_and(|inner| matches!(inner, ureq::Error::BodyExceedsLimit(_)));
            Error::Network {
                url: url.to_owned(),
                detail: if too_large {
                    format!("the reply is larger than the {max} bytes accepted")
                } else {
                    format!("cannot read the reply (at most {max} bytes are read): {e}")
                },
                transferred: 0,
                // Asking again brings the same oversized reply.
                retriable: !too_large,
            }
        })?;
    reply.body = body;
    Ok(reply)
}

fn range_starts_at(response: &ureq::http::Response<ureq::Body>, start: u64) -> bool {
    let Some(value) = response.headers().get("content-range") else {
        return false;
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    value
        .strip_prefix("bytes ")
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.trim().parse::<u64>().ok())
        == Some(start)
}

fn hash_prefix(file: &mut File, path: &Path, hasher: &mut Digester) -> Result<()> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, "cannot read the partial download", e))?;
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(path, "cannot read the partial download", e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Buffers in flight between the receiving thread and the hashing one.
const PIPELINE_BUFFERS: usize = 4;
const PIPELINE_BUF: usize = 1 << 20;

/// Receives the body into `file` on this thread while another hashes what has arrived: the
/// socket read and file write (kernel copies) overlap the SHA-256. Done one after the other
/// on one thread, a 1 GB pull over loopback took 1.3 s against curl's 0.98 s (hash ~0.6 s);
/// `benches/test_registry.py::test_one_big_blob_pull` measures it against curl. Memory stays
/// at `PIPELINE_BUFFERS` buffers whatever the blob's size. On a connection loss what arrived
/// is in `file` (hashed or not, the next attempt re-hashes the prefix) and the error says how
/// many bytes this attempt moved.
/// How a blob body must arrive: at least `min_rate` bytes a second over every `window`, and
/// (when known) no more than `max_size` bytes.
struct Pace {
    window: Duration,
    min_rate: u64,
    max_size: Option<u64>,
}

#[allow(clippy::too_many_arguments)]
fn pipelined_receive(
    body: &mut dyn Read,
    file: &mut File,
    hasher: Digester,
    dest: &Path,
    url: &str,
    counter: &Counter,
    check: &dyn Fn() -> Result<()>,
    pace: &Pace,
) -> Result<Digester> {
    use std::sync::mpsc::sync_channel;
    let (to_hasher, filled) = sync_channel::<(Vec<u8>, usize)>(PIPELINE_BUFFERS);
    let (to_reader, empty) = sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
    for _ in 0..PIPELINE_BUFFERS {
        to_reader
            .send(vec![0u8; PIPELINE_BUF])
            .expect("the pool channel has room for every buffer");
    }
    std::thread::scope(|scope| {
        let hashing = scope.spawn(move || {
            let mut hasher = hasher;
            for (buf, n) in filled {
                hasher.update(&buf[..n]);
                // The receiver may have stopped; its buffers are no longer wanted then.
                let _ = to_reader.send(buf);
            }
            hasher
        });
        let received = (|| -> Result<()> {
            let mut moved = 0u64;
            let mut since_check = 0u64;
            let min_in_window = pace.min_rate.saturating_mul(pace.window.as_secs().max(1));
            let mut window_start = std::time::Instant::now();
            let mut window_bytes = 0u64;
            loop {
                let mut buf = empty
                    .recv()
                    .expect("the hashing thread returns every buffer");
                let n = loop {
                    match body.read(&mut buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Err(Error::Network {
                                url: url.to_owned(),
                                detail: format!("connection lost while receiving the body: {e}"),
                                transferred: moved,
                                retriable: true,
                            })
                        }
                    }
                };
                if n == 0 {
                    return Ok(());
                }
                if let Some(max) = pace.max_size {
                    if moved + n as u64 > max {
                        return Err(Error::DigestMismatch {
                            path: dest.to_path_buf(),
                            what: "size",
                            expected: max.to_string(),
                            actual: format!("more than {max} bytes (the reply did not end)"),
                        });
                    }
                }
                window_bytes += n as u64;
                if window_start.elapsed() >= pace.window {
                    if window_bytes < min_in_window {
                        return Err(Error::Network {
                            url: url.to_owned(),
                            detail: format!(
                                "the blob arrives too slowly: {window_bytes} bytes in {:.0} s, \
                                 below {} bytes/s",
                                window_start.elapsed().as_secs_f64(),
                                pace.min_rate
                            ),
                            transferred: moved,
                            retriable: false,
                        });
                    }
                    window_start = std::time::Instant::now();
                    window_bytes = 0;
                }
                file.write_all(&buf[..n])
                    .map_err(|e| Error::io(dest, "cannot write the download", e))?;
                moved += n as u64;
                counter.add(n as u64);
                to_hasher
                    .send((buf, n))
                    .expect("the hashing thread runs until the channel closes");
                since_check += n as u64;
                if since_check >= CHECK_EVERY {
                    since_check = 0;
                    check()?;
                }
            }
        })();
        drop(to_hasher);
        let hasher = hashing.join().expect("the hashing thread does not panic");
        received.map(|()| hasher)
    })
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, "cannot remove the download", e)),
    }
}

fn mismatch(path: &Path, expected: &str, actual: &str) -> Error {
    Error::DigestMismatch {
        path: path.to_path_buf(),
        what: "digest",
        expected: expected.to_owned(),
        actual: actual.to_owned(),
    }
}

/// A ureq failure as a network error; TLS and malformed-request errors are not worth a retry.
fn network(url: &str, err: &ureq::Error, transferred: u64) -> Error {
    use ureq::Error as E;
    let retriable = !matches!(
        err,
        E::BadUri(_)
            | E::Http(_)
            | E::Tls(_)
            | E::Pem(_)
            | E::Rustls(_)
            | E::InvalidProxyUrl
            | E::TooManyRedirects
            | E::RedirectFailed
    );
    let detail = match err {
        E::HostNotFound => "host not found".to_owned(),
        E::ConnectionFailed => "cannot connect".to_owned(),
        E::Io(e) => format!("connection failed: {e}"),
        E::Timeout(t) => format!("timed out ({t})"),
        E::Rustls(e) => format!("TLS failed: {e}"),
        other => other.to_string(),
    };
    Error::Network {
        url: url.to_owned(),
        detail,
        transferred,
        retriable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::thread;

    /// A one-connection-per-request HTTP server answering from `respond(request head, body)`.
    fn serve(
        replies: usize,
        respond: impl Fn(&str, &[u8]) -> Vec<u8> + Send + 'static,
    ) -> (String, thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..replies {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = io::BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    head.push_str(&line);
                }
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let mut out = stream;
                out.write_all(&respond(&head, &body)).unwrap();
                seen.push(head);
            }
            seen
        });
        (url, handle)
    }

    fn ok(body: &[u8], extra: &str) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn no_check() -> Result<()> {
        Ok(())
    }

    #[test]
    fn a_body_longer_than_the_descriptor_is_cut_off_and_removed() {
        let (url, server) = serve(1, |_, _| ok(&[b'x'; 10_000], ""));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob");
        let client = Client::new(&ClientOptions::default()).unwrap();
        let err = client
            .download(
                &url,
                &[],
                &dest,
                None,
                Some(1000),
                &Counter::new(),
                &no_check,
            )
            .unwrap_err();
        match err {
            Error::DigestMismatch { what, expected, .. } => {
                assert_eq!((what, expected.as_str()), ("size", "1000"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!dest.exists());
        server.join().unwrap();
    }

    #[test]
    fn a_trickled_reply_ends_at_the_request_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            for byte in b"HTTP/1.1 200 OK\r\nX-Pad: "
                .iter()
                .chain([b'p'; 1000].iter())
            {
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        let client = Client::new(&ClientOptions {
            io_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_millis(1500),
            ..ClientOptions::default()
        })
        .unwrap();
        let started = std::time::Instant::now();
        let err = client
            .send("GET", &url, &[], None, MAX_SMALL_BODY)
            .unwrap_err();
        assert!(matches!(err, Error::Network { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(4));
        server.join().unwrap();
    }

    #[test]
    fn download_hashes_and_resumes_with_range() {
        let blob: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let expected = crate::digest::format_sha256(&{
            use sha2::Digest;
            sha2::Sha256::digest(&blob)
        });
        let served = blob.clone();
        let (url, server) = serve(2, move |head, _| {
            let range = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("range:"));
            if let Some(line) = range {
                let start: usize = line["range: bytes=".len()..]
                    .trim()
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                let mut r = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes \
                     {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    served.len() - start,
                    served.len() - 1,
                    served.len()
                )
                .into_bytes();
                r.extend_from_slice(&served[start..]);
                r
            } else {
                // Claims the whole blob, sends 300 000 bytes, and hangs up.
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    served.len()
                )
                .into_bytes();
                r.extend_from_slice(&served[..300_000]);
                r
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob.partial");
        let client = Client::new(&ClientOptions::default()).unwrap();
        let counter = Counter::new();
        let first = client.download(&url, &[], &dest, Some(&expected), None, &counter, &no_check);
        match first {
            Err(Error::Network {
                transferred,
                retriable,
                ..
            }) => {
                assert_eq!(transferred, 300_000);
                assert!(retriable);
            }
            other => panic!("expected a network error, got {other:?}"),
        }
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 300_000);
        let done = client
            .download(&url, &[], &dest, Some(&expected), None, &counter, &no_check)
            .unwrap();
        assert_eq!(done.digest.as_deref(), Some(expected.as_str()));
        assert_eq!(done.size, 1_000_000);
        assert_eq!(done.resumed_from, 300_000);
        assert_eq!(done.reply.status, 206);
        assert_eq!(counter.get(), 1_000_000);
        assert_eq!(std::fs::read(&dest).unwrap(), blob);
        let heads = server.join().unwrap();
        assert!(heads[1]
            .to_ascii_lowercase()
            .contains("range: bytes=300000-"));
    }

    #[test]
    fn download_of_wrong_bytes_leaves_nothing() {
        let (url, _server) = serve(1, |_, _| ok(b"not the blob", ""));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob.partial");
        let client = Client::new(&ClientOptions::default()).unwrap();
        let want = format!("sha256:{}", "0".repeat(64));
        let err = client
            .download(
                &url,
                &[],
                &dest,
                Some(&want),
                None,
                &Counter::new(),
                &no_check,
            )
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
        assert!(!dest.exists());
    }

    #[test]
    fn download_error_status_keeps_the_file() {
        let (url, _server) = serve(1, |_, _| {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
                .to_vec()
        });
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob.partial");
        std::fs::write(&dest, b"abc").unwrap();
        let client = Client::new(&ClientOptions::default()).unwrap();
        let got = client
            .download(&url, &[], &dest, None, None, &Counter::new(), &no_check)
            .unwrap();
        assert_eq!(got.reply.status, 404);
        assert_eq!(got.reply.body, b"not found");
        assert!(got.digest.is_none());
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
    }

    #[test]
    fn upload_sends_a_slice_with_its_length() {
        let (url, server) = serve(1, |_, body| {
            ok(
                b"",
                &format!("X-Got: {}\r\n", String::from_utf8_lossy(body)),
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("blob");
        std::fs::write(&src, b"0123456789").unwrap();
        let client = Client::new(&ClientOptions::default()).unwrap();
        let counter = Counter::new();
        let reply = client
            .upload("PATCH", &url, &[], &src, 3, 4, &counter, &no_check)
            .unwrap();
        assert_eq!(reply.header("x-got"), Some("3456"));
        assert_eq!(counter.get(), 4);
        let heads = server.join().unwrap();
        assert!(heads[0].starts_with("PATCH / HTTP/1.1"));
        assert!(heads[0].to_ascii_lowercase().contains("content-length: 4"));
        let err = client
            .upload("PUT", &url, &[], &src, 8, 4, &counter, &no_check)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }

    #[test]
    fn send_reads_small_replies_and_reports_refused_connections() {
        let (url, server) = serve(1, |head, body| {
            assert!(head.starts_with("PUT /v2/x HTTP/1.1"));
            ok(body, "Docker-Content-Digest: sha256:abc\r\n")
        });
        let client = Client::new(&ClientOptions::default()).unwrap();
        let reply = client
            .send(
                "PUT",
                &format!("{url}/v2/x"),
                &[("Content-Type".into(), "a/b".into())],
                Some(b"{}"),
                MAX_SMALL_BODY,
            )
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"{}");
        assert_eq!(reply.header("docker-content-digest"), Some("sha256:abc"));
        server.join().unwrap();
        // Nothing listens there any more.
        let err = client
            .send("GET", &url, &[], None, MAX_SMALL_BODY)
            .unwrap_err();
        match err {
            Error::Network { retriable, .. } => assert!(retriable),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let options = ClientOptions {
            ca_pem: vec![b"nothing here".to_vec()],
            ..ClientOptions::default()
        };
        assert!(matches!(
            Client::new(&options),
            Err(Error::InvalidArgument(_))
        ));
    }
}

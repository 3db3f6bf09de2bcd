//! What the fuzz targets share: turning fuzz input into layer blobs on disk, the errors the
//! engine may return for hostile input, and a comparable listing of a merged view.
//!
//! Input format (also what `fuzz/seeds.py` writes): one or more layers separated by
//! [`LAYER_SEPARATOR`]; each layer is a mode byte (`% 3`: 0 = the bytes are the blob as they
//! are, whatever their compression; 1 = gzip them first; 2 = zstd them first) and the bytes.
//! Compressing in the harness lets the fuzzer mutate the tar inside a gzip or zstd blob, which it
//! could not do through the compressed bytes; mode 0 still feeds it raw gzip/zstd streams.

use std::io::Write;
use std::path::{Path, PathBuf};

use _core::error::Error;
use _core::index::LayerIndex;
use _core::overlay::MergedView;
use _core::EntryKind;

/// Separates the layers of one fuzz input.
pub const LAYER_SEPARATOR: &[u8] = b"\n--LCFUZZ-LAYER--\n";

/// A directory outside every scratch directory that layers may aim absolute symlinks at (the
/// seeds do); the apply targets check that it stays as it was created.
pub const ABSOLUTE_SENTINEL: &str = "/dev/shm/layercore-fuzz-sentinel";

/// A fresh scratch directory, on tmpfs when there is one (the targets write many small files).
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("lcfuzz").tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::Builder::new().prefix("lcfuzz").tempdir().unwrap()
}

/// The layers of one fuzz input (at most `max`; the rest is ignored), as blob bytes.
pub fn layers(data: &[u8], max: usize) -> Vec<Vec<u8>> {
    split(data, LAYER_SEPARATOR)
        .into_iter()
        .take(max)
        .map(blob_bytes)
        .collect()
}

/// One layer's blob bytes from its mode byte and body (see the module docs).
pub fn blob_bytes(data: &[u8]) -> Vec<u8> {
    let Some((&mode, body)) = data.split_first() else {
        return Vec::new();
    };
    match mode % 3 {
        1 => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(body).unwrap();
            enc.finish().unwrap()
        }
        2 => zstd::encode_all(body, 1).unwrap(),
        _ => body.to_vec(),
    }
}

/// Writes `bytes` as `dir/name` and returns its path.
pub fn write_blob(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
        parts.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    parts.push(rest);
    parts
}

/// The contract for hostile input: a typed error about the input (corrupt, truncated,
/// unsupported, not found or an I/O error of the scratch file system), never one that only a
/// caller's mistake or a cancellation could cause.
pub fn expect_input_error(e: &Error) {
    match e {
        Error::Corrupt { .. }
        | Error::Truncated { .. }
        | Error::Unsupported { .. }
        | Error::NotFound { .. }
        | Error::Io { .. }
        | Error::Changed { .. } => {}
        Error::DigestMismatch { .. }
        | Error::InvalidArgument(_)
        | Error::Interrupted
        | Error::Network { .. } => panic!("unexpected error kind for hostile input: {e:?}"),
    }
}

/// The merged view as lines that two equal trees share whatever their archive form: path, kind
/// and what tar extraction would make of it. Files and hardlinks both read as `file` with their
/// body (a hardlink in one form may carry the body in another); modes of files are left out for
/// the same reason (a hardlink name takes its inode's), and mtimes everywhere (implied
/// directories). A hardlink whose body cannot be read names its target's kind instead.
pub fn listing(view: &MergedView) -> Vec<String> {
    view.walk()
        .map(|(k, e)| {
            let path = e.path.escape_ascii();
            let link = || e.linkname.as_deref().unwrap_or_default().escape_ascii();
            match e.kind {
                EntryKind::Dir => format!("{path}/ dir {:o} {}:{}", e.mode, e.uid, e.gid),
                EntryKind::File | EntryKind::Hardlink => match view.read(&e.path) {
                    Ok(body) => format!("{path} file {}", body.escape_ascii()),
                    Err(err) => format!("{path} unreadable {} (layer {k})", kind_of(&err)),
                },
                EntryKind::Symlink => format!("{path} -> {}", link()),
                EntryKind::Char | EntryKind::Block => {
                    format!("{path} {} {}:{}", e.kind.as_str(), e.devmajor, e.devminor)
                }
                EntryKind::Fifo => format!("{path} fifo"),
                EntryKind::Whiteout | EntryKind::Opaque => {
                    panic!("a merged view shows a marker: {path}")
                }
            }
        })
        .collect()
}

fn kind_of(e: &Error) -> &'static str {
    match e {
        Error::Corrupt { .. } => "corrupt",
        Error::Unsupported { .. } => "unsupported",
        _ => "other",
    }
}

/// Indexes every blob; `None` when one of them is not a valid layer.
pub fn index_all(blobs: &[PathBuf]) -> Option<Vec<std::sync::Arc<LayerIndex>>> {
    let mut out = Vec::new();
    for blob in blobs {
        match LayerIndex::build(blob) {
            Ok(index) => out.push(std::sync::Arc::new(index)),
            Err(e) => {
                expect_input_error(&e);
                return None;
            }
        }
    }
    Some(out)
}

/// Makes the absolute sentinel (once per process; every exec then checks it).
pub fn ensure_absolute_sentinel() {
    static MADE: std::sync::Once = std::sync::Once::new();
    MADE.call_once(|| {
        let _ = std::fs::remove_dir_all(ABSOLUTE_SENTINEL);
        make_sentinel(Path::new(ABSOLUTE_SENTINEL));
    });
}

/// Panics if anything below `dir` differs from the one file `keep` holding `sentinel`, or if
/// that file gained links or changed mode.
pub fn check_sentinel(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("keep")],
        "something was created in {}",
        dir.display()
    );
    let keep = dir.join("keep");
    let meta = std::fs::symlink_metadata(&keep).unwrap();
    assert!(meta.is_file(), "{} was replaced", keep.display());
    assert_eq!(meta.nlink(), 1, "{} was hardlinked", keep.display());
    assert_eq!(
        meta.mode() & 0o7777,
        0o644,
        "{} changed mode",
        keep.display()
    );
    assert_eq!(
        meta.uid(),
        unsafe { libc::getuid() },
        "{} changed owner",
        keep.display()
    );
    assert_eq!(std::fs::read(&keep).unwrap(), b"sentinel");
}

/// The sentinel's file, made with a known mode.
pub fn make_sentinel(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let keep = dir.join("keep");
    std::fs::write(&keep, b"sentinel").unwrap();
    std::fs::set_permissions(&keep, std::fs::Permissions::from_mode(0o644)).unwrap();
}

pub fn no_check() -> _core::Result<()> {
    Ok(())
}

//! The sorted walk of a source directory that feeds the layer writer.
//!
//! Order is GNU `tar --sort=name`: depth-first, each directory followed by its contents, names
//! within one directory sorted by bytes. Nothing is followed: every entry is `lstat`ed, symlinks
//! are reported as symlinks. Regular files with more than one link become hardlinks to the first
//! path of their inode in walk order, so a layer carries each body once.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::entry::EntryKind;
use crate::error::{Error, Result};

/// Who the entries of a layer belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// uid = gid = 0 and no user/group names: what an image build normally wants.
    Root,
    /// The files' own uid/gid, and their names from the passwd/group databases.
    Keep,
}

impl Owner {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "root" => Ok(Owner::Root),
            "keep" => Ok(Owner::Keep),
            other => Err(Error::InvalidArgument(format!(
                "unknown owner policy {other:?}: expected 'root' or 'keep'"
            ))),
        }
    }
}

/// What the walk applies to every entry's metadata.
#[derive(Clone, Copy, Debug)]
pub struct WalkOptions {
    pub owner: Owner,
    /// mtimes later than this are clamped to it (reproducible builds, `SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    /// An inode (dev, ino) to leave out: the writer's own temp file when the output directory
    /// lies inside the source.
    pub exclude: Option<(u64, u64)>,
}

/// One source entry with its metadata already normalised for the archive.
#[derive(Clone, Debug)]
pub struct SourceEntry {
    /// Path relative to the source root, `/`-separated, without a trailing slash.
    pub rel: Vec<u8>,
    /// Where to read the body from.
    pub abs: PathBuf,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    /// Body length for regular files, 0 otherwise.
    pub size: u64,
    pub mtime: i64,
    /// Symlink target, or for a hardlink the path of the entry that carries the body.
    pub linkname: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Identity of the inode at walk time, to notice a file swapped before it is read.
    pub dev: u64,
    pub ino: u64,
}

/// xattrs that describe the host, not the image: left out of layers.
const HOST_XATTRS: &[&str] = &["security.selinux"];

/// Walks `root`, calling `emit` for every entry in archive order and `warn` for entries a layer
/// cannot carry (sockets). The root directory itself is not emitted.
pub fn walk(
    root: &Path,
    options: &WalkOptions,
    emit: &mut dyn FnMut(SourceEntry) -> Result<()>,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    let meta = fs::metadata(root).map_err(|e| Error::io(root, "cannot stat source", e))?;
    if !meta.is_dir() {
        return Err(Error::Unsupported {
            path: root.to_path_buf(),
            detail: "source is not a directory".into(),
        });
    }
    let mut walker = Walker {
        options: *options,
        first_link: HashMap::new(),
        users: HashMap::new(),
        groups: HashMap::new(),
        emit,
        warn,
    };
    walker.dir(root, &mut Vec::new())
}

struct Walker<'a> {
    options: WalkOptions,
    first_link: HashMap<(u64, u64), Vec<u8>>,
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
    emit: &'a mut dyn FnMut(SourceEntry) -> Result<()>,
    warn: &'a mut dyn FnMut(String),
}

impl Walker<'_> {
    /// Emits the children of `dir` (whose relative path is `rel`), recursing into directories.
    fn dir(&mut self, dir: &Path, rel: &mut Vec<u8>) -> Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| Error::io(dir, "cannot list directory", e))? {
            let item = item.map_err(|e| Error::io(dir, "cannot list directory", e))?;
            names.push(item.file_name().as_bytes().to_vec());
        }
        names.sort_unstable();
        for name in names {
            let abs = dir.join(OsStr::from_bytes(&name));
            let base_len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            let is_dir = self.entry(&abs, rel)?;
            if is_dir {
                self.dir(&abs, rel)?;
            }
            rel.truncate(base_len);
        }
        Ok(())
    }

    /// Emits one entry; returns whether it is a directory to descend into.
    fn entry(&mut self, abs: &Path, rel: &[u8]) -> Result<bool> {
        let meta = fs::symlink_metadata(abs).map_err(|e| Error::io(abs, "cannot stat", e))?;
        if self.options.exclude == Some((meta.dev(), meta.ino())) {
            return Ok(false);
        }
        let ft = meta.file_type();
        let mut linkname = Vec::new();
        let mut size = 0;
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            match self.first_link.get(&key) {
                Some(first) if meta.nlink() > 1 => {
                    linkname = first.clone();
                    EntryKind::Hardlink
                }
                _ => {
                    if meta.nlink() > 1 {
                        self.first_link.insert(key, rel.to_vec());
                    }
                    size = meta.len();
                    EntryKind::File
                }
            }
        } else if ft.is_symlink() {
            let target =
                fs::read_link(abs).map_err(|e| Error::io(abs, "cannot read symlink", e))?;
            linkname = target.into_os_string().into_vec();
            EntryKind::Symlink
        } else if ft.is_char_device() {
            EntryKind::Char
        } else if ft.is_block_device() {
            EntryKind::Block
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            (self.warn)(format!(
                "{}: socket skipped (a layer cannot carry sockets)",
                abs.display()
            ));
            return Ok(false);
        };
        let (devmajor, devminor) = match kind {
            EntryKind::Char | EntryKind::Block => {
                let rdev = meta.rdev();
                (libc::major(rdev), libc::minor(rdev))
            }
            _ => (0, 0),
        };
        let (uid, gid, uname, gname) = match self.options.owner {
            Owner::Root => (0, 0, Vec::new(), Vec::new()),
            Owner::Keep => {
                let uname = self
                    .users
                    .entry(meta.uid())
                    .or_insert_with(|| user_name(meta.uid()))
                    .clone();
                let gname = self
                    .groups
                    .entry(meta.gid())
                    .or_insert_with(|| group_name(meta.gid()))
                    .clone();
                (meta.uid() as u64, meta.gid() as u64, uname, gname)
            }
        };
        let mut mtime = meta.mtime();
        if let Some(epoch) = self.options.source_date_epoch {
            mtime = mtime.min(epoch);
        }
        let xattrs = read_xattrs(abs)?;
        (self.emit)(SourceEntry {
            rel: rel.to_vec(),
            abs: abs.to_path_buf(),
            kind,
            mode: meta.mode() & 0o7777,
            uid,
            gid,
            uname,
            gname,
            size,
            mtime,
            linkname,
            devmajor,
            devminor,
            xattrs,
            dev: meta.dev(),
            ino: meta.ino(),
        })?;
        Ok(kind == EntryKind::Dir)
    }
}

trait IntoVec {
    fn into_vec(self) -> Vec<u8>;
}

impl IntoVec for std::ffi::OsString {
    fn into_vec(self) -> Vec<u8> {
        std::os::unix::ffi::OsStringExt::into_vec(self)
    }
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Unsupported {
        path: path.to_path_buf(),
        detail: "path contains a NUL byte".into(),
    })
}

/// The extended attributes of `path` (not following a symlink), sorted by name, host labels
/// left out.
pub fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let c = cpath(path)?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: the buffer pointer and length describe a live, writable allocation.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(Error::io(path, "cannot list xattrs", err)),
        }
    };
    let mut out = Vec::new();
    for raw in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(raw).map_err(|_| Error::Unsupported {
            path: path.to_path_buf(),
            detail: format!("xattr name {:?} is not UTF-8", String::from_utf8_lossy(raw)),
        })?;
        if HOST_XATTRS.contains(&name) {
            continue;
        }
        let cname = CString::new(raw).expect("split on NUL");
        let mut value = vec![0u8; 256];
        loop {
            // SAFETY: as above; `cname` is NUL-terminated.
            let n = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            if n >= 0 {
                value.truncate(n as usize);
                out.push((name.to_owned(), std::mem::take(&mut value)));
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ERANGE) => value.resize(value.len() * 4, 0),
                // Removed between the listing and the read: it is simply not there any more.
                Some(libc::ENODATA) => break,
                _ => return Err(Error::io(path, "cannot read xattr", err)),
            }
        }
    }
    out.sort();
    Ok(out)
}

fn user_name(uid: u32) -> Vec<u8> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed passwd is a valid out-parameter; getpwuid_r fills it from `buf`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Vec::new();
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    unsafe { CStr::from_ptr(pwd.pw_name) }.to_bytes().to_vec()
}

fn group_name(gid: u32) -> Vec<u8> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: as in `user_name`.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Vec::new();
    }
    // SAFETY: on success gr_name points to a NUL-terminated string inside `buf`.
    unsafe { CStr::from_ptr(grp.gr_name) }.to_bytes().to_vec()
}

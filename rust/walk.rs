//! The sorted walk of a source directory that feeds the layer writer.
//!
//! Order is GNU `tar --sort=name`: depth-first, each directory followed by its contents, names
//! within one directory sorted by bytes. Nothing is followed: every entry is `lstat`ed, symlinks
//! are reported as symlinks. Regular files with more than one link become hardlinks to the first
//! path of their inode in walk order, so a layer carries each body once.
//!
//! Every system call is made relative to an open directory (`fstatat`, `openat`, `readlinkat`)
//! rather than by full path: on a tree of small files, resolving full paths again and again was
//! the largest cost after hashing (see the `tar+diff_id/small` benchmark). The same holds for the
//! writer, which opens bodies with [`SourceEntry::open`].

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::entry::EntryKind;
use crate::error::{Error, Result};

/// Who the entries of a layer belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// uid = gid = 0 and no user/group names: what an image build normally wants.
    Root,
    /// The files' own uid/gid, and their names from the passwd/group databases.
    Keep,
    /// The files' own uid/gid without names (a build step's changes: names are the image's
    /// business, not the host's).
    Numeric,
    /// This uid and gid for every entry, without names (`COPY --chown=1000:1000`).
    Fixed { uid: u64, gid: u64 },
    /// As `Root` for a tree alone; a diff against a stack gives each path the owner the stack
    /// has for it. What a step run by a user who is not root means: every file it touched
    /// belongs to that user on disk, whatever owner the image gave it.
    Inherit,
}

impl Owner {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "root" => Ok(Owner::Root),
            "keep" => Ok(Owner::Keep),
            "numeric" => Ok(Owner::Numeric),
            "inherit" => Ok(Owner::Inherit),
            other => Err(Error::InvalidArgument(format!(
                "unknown owner policy {other:?}: expected 'root', 'keep', 'numeric' or 'inherit'"
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
#[derive(Debug)]
pub struct SourceEntry {
    /// Path relative to the source root, `/`-separated, without a trailing slash.
    pub rel: Vec<u8>,
    /// Where the basename starts in `rel`.
    name_start: usize,
    /// The directory holding the entry, open; bodies are opened relative to it.
    parent: Arc<OwnedFd>,
    /// The source root, for error messages.
    root: Arc<PathBuf>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    /// Body length for regular files, 0 otherwise.
    pub size: u64,
    pub mtime: i64,
    /// The sub-second part of the unclamped mtime (`st_mtime_nsec`), for telling changed files
    /// apart when diffing two trees (the archive itself carries whole seconds only).
    pub mtime_nsec: u32,
    /// Symlink target, or for a hardlink the path of the entry that carries the body.
    pub linkname: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
    /// Extended attributes, sorted. For regular files that carry a body they are read by
    /// [`SourceEntry::open`] from the open file instead (one system call, no path lookup).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Identity of the inode at walk time, to notice a file swapped before it is read.
    pub dev: u64,
    pub ino: u64,
}

impl SourceEntry {
    /// The entry's full path, for messages.
    pub fn path(&self) -> PathBuf {
        self.root.join(std::ffi::OsStr::from_bytes(&self.rel))
    }

    fn name(&self) -> &[u8] {
        &self.rel[self.name_start..]
    }

    /// The open directory holding the entry and the entry's name in it, for `*at` system calls
    /// that need no path lookup from the root (the differ reads file xattrs this way).
    pub fn parent_and_name(&self) -> (std::os::fd::BorrowedFd<'_>, &[u8]) {
        use std::os::fd::AsFd;
        (self.parent.as_fd(), self.name())
    }

    /// Opens a regular file's body, checks it is still the inode the walk saw, and reads its
    /// xattrs into `self.xattrs`.
    pub fn open(&mut self) -> Result<File> {
        let name = cstring(self.name(), || self.path())?;
        // SAFETY: `parent` is an open directory descriptor and `name` is NUL-terminated.
        let fd = unsafe {
            libc::openat(
                self.parent.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOENT) => Error::Changed {
                    path: self.path(),
                    detail: "replaced or removed after the walk".into(),
                },
                _ => Error::io(self.path(), "cannot open", err),
            });
        }
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = file
            .metadata()
            .map_err(|e| Error::io(self.path(), "cannot stat", e))?;
        use std::os::unix::fs::MetadataExt;
        if meta.ino() != self.ino || meta.dev() != self.dev {
            return Err(Error::Changed {
                path: self.path(),
                detail: "replaced after the walk".into(),
            });
        }
        if meta.len() != self.size {
            return Err(Error::Changed {
                path: self.path(),
                detail: format!("size changed from {} to {} bytes", self.size, meta.len()),
            });
        }
        self.xattrs = read_xattrs(XattrTarget::Fd(file.as_raw_fd()), || self.path())?;
        Ok(file)
    }
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
    let c = cstring(root.as_os_str().as_bytes(), || root.to_path_buf())?;
    // SAFETY: `c` is NUL-terminated; the result is checked before use.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOTDIR) {
            return Err(Error::Unsupported {
                path: root.to_path_buf(),
                detail: "source is not a directory".into(),
            });
        }
        return Err(Error::io(root, "cannot open source", err));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let root_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut walker = Walker {
        root: Arc::new(root.to_path_buf()),
        options: *options,
        first_link: HashMap::new(),
        users: HashMap::new(),
        groups: HashMap::new(),
        emit,
        warn,
    };
    walker.dir(&root_fd, &mut Vec::new())
}

struct Walker<'a> {
    root: Arc<PathBuf>,
    options: WalkOptions,
    first_link: HashMap<(u64, u64), Vec<u8>>,
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
    emit: &'a mut dyn FnMut(SourceEntry) -> Result<()>,
    warn: &'a mut dyn FnMut(String),
}

impl Walker<'_> {
    fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.as_ref().clone()
        } else {
            self.root.join(std::ffi::OsStr::from_bytes(rel))
        }
    }

    /// Emits the children of the open directory `dir` (whose relative path is `rel`),
    /// recursing into directories.
    fn dir(&mut self, dir: &Arc<OwnedFd>, rel: &mut Vec<u8>) -> Result<()> {
        let mut names = list_dir(dir.as_raw_fd())
            .map_err(|e| Error::io(self.path(rel), "cannot list directory", e))?;
        names.sort_unstable();
        for name in names {
            let base_len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            let name_start = rel.len();
            rel.extend_from_slice(name.to_bytes());
            if let Some(child) = self.entry(dir, &name, rel, name_start)? {
                self.dir(&child, rel)?;
            }
            rel.truncate(base_len);
        }
        Ok(())
    }

    /// Emits one entry; returns the open directory to descend into, if it is one.
    fn entry(
        &mut self,
        parent: &Arc<OwnedFd>,
        name: &CStr,
        rel: &[u8],
        name_start: usize,
    ) -> Result<Option<Arc<OwnedFd>>> {
        let st = stat_at(parent.as_raw_fd(), name)
            .map_err(|e| Error::io(self.path(rel), "cannot stat", e))?;
        let (dev, ino) = (st.st_dev, st.st_ino);
        if self.options.exclude == Some((dev, ino)) {
            return Ok(None);
        }
        let mut linkname = Vec::new();
        let mut size = 0;
        let mut xattrs = Vec::new();
        let mut child = None;
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                // SAFETY: `name` is NUL-terminated; the result is checked.
                let fd = unsafe {
                    libc::openat(
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return Err(Error::io(
                        self.path(rel),
                        "cannot open directory",
                        io::Error::last_os_error(),
                    ));
                }
                // SAFETY: fresh descriptor, owned by nobody else.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                xattrs = read_xattrs(XattrTarget::Fd(fd.as_raw_fd()), || self.path(rel))?;
                child = Some(Arc::new(fd));
                EntryKind::Dir
            }
            libc::S_IFREG => {
                let key = (dev, ino);
                match self.first_link.get(&key) {
                    Some(first) if st.st_nlink > 1 => {
                        linkname = first.clone();
                        xattrs =
                            read_xattrs(XattrTarget::Path(&self.path(rel)), || self.path(rel))?;
                        EntryKind::Hardlink
                    }
                    _ => {
                        if st.st_nlink > 1 {
                            self.first_link.insert(key, rel.to_vec());
                        }
                        size = st.st_size as u64;
                        EntryKind::File
                    }
                }
            }
            libc::S_IFLNK => {
                linkname = read_link_at(parent.as_raw_fd(), name, st.st_size as usize)
                    .map_err(|e| Error::io(self.path(rel), "cannot read symlink", e))?;
                xattrs = read_xattrs(XattrTarget::Path(&self.path(rel)), || self.path(rel))?;
                EntryKind::Symlink
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                xattrs = read_xattrs(XattrTarget::Path(&self.path(rel)), || self.path(rel))?;
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFCHR => EntryKind::Char,
                    libc::S_IFBLK => EntryKind::Block,
                    _ => EntryKind::Fifo,
                }
            }
            _ => {
                let message = format!(
                    "{}: socket skipped (a layer cannot carry sockets)",
                    self.path(rel).display()
                );
                (self.warn)(message);
                return Ok(None);
            }
        };
        let (devmajor, devminor) = match kind {
            EntryKind::Char | EntryKind::Block => {
                (libc::major(st.st_rdev), libc::minor(st.st_rdev))
            }
            _ => (0, 0),
        };
        let (uid, gid, uname, gname) = match self.options.owner {
            Owner::Root | Owner::Inherit => (0, 0, Vec::new(), Vec::new()),
            Owner::Fixed { uid, gid } => (uid, gid, Vec::new(), Vec::new()),
            Owner::Numeric => (st.st_uid as u64, st.st_gid as u64, Vec::new(), Vec::new()),
            Owner::Keep => {
                let uname = self
                    .users
                    .entry(st.st_uid)
                    .or_insert_with(|| user_name(st.st_uid))
                    .clone();
                let gname = self
                    .groups
                    .entry(st.st_gid)
                    .or_insert_with(|| group_name(st.st_gid))
                    .clone();
                (st.st_uid as u64, st.st_gid as u64, uname, gname)
            }
        };
        let mut mtime = st.st_mtime;
        if let Some(epoch) = self.options.source_date_epoch {
            mtime = mtime.min(epoch);
        }
        (self.emit)(SourceEntry {
            rel: rel.to_vec(),
            name_start,
            parent: Arc::clone(parent),
            root: Arc::clone(&self.root),
            kind,
            mode: st.st_mode & 0o7777,
            uid,
            gid,
            uname,
            gname,
            size,
            mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            linkname,
            devmajor,
            devminor,
            xattrs,
            dev,
            ino,
        })?;
        Ok(child)
    }
}

fn cstring(bytes: &[u8], path: impl FnOnce() -> PathBuf) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::Unsupported {
        path: path(),
        detail: "path contains a NUL byte".into(),
    })
}

/// The names in an open directory, without `.` and `..`.
pub(crate) fn list_dir(fd: RawFd) -> io::Result<Vec<CString>> {
    // fdopendir takes ownership of its descriptor: give it a duplicate.
    // SAFETY: `fd` is an open directory descriptor.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is ours; on failure we close it ourselves.
    let dirp = unsafe { libc::fdopendir(dup) };
    if dirp.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(err);
    }
    // A fresh duplicate shares the file offset: start from the beginning.
    // SAFETY: `dirp` is a valid DIR stream.
    unsafe { libc::rewinddir(dirp) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir returns NULL with errno set on error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dirp` is a valid DIR stream used by this thread only.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let errno = unsafe { *libc::__errno_location() };
            break if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(errno))
            };
        }
        // SAFETY: d_name is a NUL-terminated string inside the entry readdir returned.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: `dirp` is valid and closed once; this also closes `dup`.
    unsafe { libc::closedir(dirp) };
    result.map(|()| names)
}

fn stat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat64> {
    // SAFETY: an all-zero stat64 is a valid out-parameter.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated, `st` is writable.
    let rc = unsafe { libc::fstatat64(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn read_link_at(dir: RawFd, name: &CStr, hint: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; hint.max(64) + 1];
    loop {
        // SAFETY: the buffer pointer and length describe a live, writable allocation.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        // Possibly cut: the link grew since the stat. Try again with more room.
        buf.resize(buf.len() * 2, 0);
    }
}

/// What to read extended attributes from.
pub enum XattrTarget<'a> {
    /// An open file or directory.
    Fd(RawFd),
    /// A path, not following a final symlink.
    Path(&'a Path),
}

/// The extended attributes of `target`, sorted by name, host labels left out.
pub fn read_xattrs(
    target: XattrTarget<'_>,
    path: impl Fn() -> PathBuf,
) -> Result<Vec<(String, Vec<u8>)>> {
    let cpath = match target {
        XattrTarget::Path(p) => Some(cstring(p.as_os_str().as_bytes(), &path)?),
        XattrTarget::Fd(_) => None,
    };
    let list = |buf: &mut [u8]| -> isize {
        // SAFETY: the buffer pointer and length describe a live, writable allocation.
        unsafe {
            match (&target, &cpath) {
                (XattrTarget::Fd(fd), _) => {
                    libc::flistxattr(*fd, buf.as_mut_ptr().cast(), buf.len())
                }
                (_, Some(c)) => libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
                _ => unreachable!("a path target always has its C string"),
            }
        }
    };
    let get = |name: &CStr, buf: &mut [u8]| -> isize {
        // SAFETY: as above; `name` is NUL-terminated.
        unsafe {
            match (&target, &cpath) {
                (XattrTarget::Fd(fd), _) => {
                    libc::fgetxattr(*fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                }
                (_, Some(c)) => libc::lgetxattr(
                    c.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
                _ => unreachable!("a path target always has its C string"),
            }
        }
    };
    let mut names = [0u8; 256];
    let mut heap = Vec::new();
    let n = list(&mut names);
    let listed: &[u8] = if n >= 0 {
        &names[..n as usize]
    } else {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Some(libc::ERANGE) => {
                heap.resize(64 * 1024, 0);
                let n = list(&mut heap);
                if n < 0 {
                    return Err(Error::io(
                        path(),
                        "cannot list xattrs",
                        io::Error::last_os_error(),
                    ));
                }
                &heap[..n as usize]
            }
            _ => return Err(Error::io(path(), "cannot list xattrs", err)),
        }
    };
    let mut out = Vec::new();
    for raw in listed.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(raw).map_err(|_| Error::Unsupported {
            path: path(),
            detail: format!("xattr name {:?} is not UTF-8", String::from_utf8_lossy(raw)),
        })?;
        if HOST_XATTRS.contains(&name) {
            continue;
        }
        let cname = CString::new(raw).expect("split on NUL");
        let mut value = vec![0u8; 256];
        loop {
            let n = get(&cname, &mut value);
            if n >= 0 {
                value.truncate(n as usize);
                out.push((name.to_owned(), std::mem::take(&mut value)));
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ERANGE) => value.resize(value.len() * 4, 0),
                // Removed between the listing and the read: it is simply not there any more.
                Some(libc::ENODATA) => break,
                _ => return Err(Error::io(path(), "cannot read xattr", err)),
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

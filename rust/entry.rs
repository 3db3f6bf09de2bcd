//! One entry of a layer changeset, as read from (or written to) a tar stream.

/// What an entry is. `Whiteout` and `Opaque` are regular files by tar type, recognised by name
/// (`.wh.NAME` and `.wh..wh..opq`, OCI image-spec layer.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    Whiteout,
    Opaque,
}

impl EntryKind {
    /// The name the Python API uses (`entry.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::Char => "char",
            EntryKind::Block => "block",
            EntryKind::Fifo => "fifo",
            EntryKind::Whiteout => "whiteout",
            EntryKind::Opaque => "opaque",
        }
    }
}

/// The prefix that marks a whiteout entry.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The basename of an opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// One changeset entry. Paths are relative to the layer root, without a leading `./` or `/` and
/// without a trailing `/` (`etc`, `etc/passwd`); bytes, because Linux names need not be UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: String,
    pub gname: String,
    /// Bytes of data that follow the header (0 for everything but regular files).
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Symlink target or hardlink target path, verbatim.
    pub linkname: Option<Vec<u8>>,
    pub devmajor: u32,
    pub devminor: u32,
    /// Extended attributes (`SCHILY.xattr.NAME`), sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Offset of the entry's data in the uncompressed tar stream.
    pub offset: u64,
}

/// Splits a normalised path into (parent, basename); the parent of a top-level name is empty.
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Classifies a regular-file name as whiteout, opaque marker, or neither.
pub fn whiteout_kind(path: &[u8]) -> Option<EntryKind> {
    let (_, base) = split_parent(path);
    if base == OPAQUE_MARKER {
        Some(EntryKind::Opaque)
    } else if base.starts_with(WHITEOUT_PREFIX) {
        Some(EntryKind::Whiteout)
    } else {
        None
    }
}

//! Building a layer from a directory: the sorted walk feeding a [`LayerWriter`].
//!
//! ```text
//! walker thread ──batches of entries──> producer (this thread) ──> LayerWriter pipeline
//!   fstatat/openat relative to             headers; bodies read straight
//!   open directories                       into the writer's chunks
//! ```

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

use crate::blob_writer::{closed, is_closed, LayerWriter};
pub use crate::blob_writer::{LayerDescriptor, CHUNK};
use crate::compress::Compression;
use crate::entry::EntryKind;
use crate::error::{Error, Result};
use crate::tar::header::{self, HeaderSpec};
use crate::walk::{self, Owner, SourceEntry, WalkOptions};

/// How to build a layer.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub compression: Compression,
    /// Codec level; `None` takes [`Compression::default_level`].
    pub level: Option<i32>,
    pub source_date_epoch: Option<i64>,
    pub owner: Owner,
    /// Compression threads; `None` uses every core.
    pub threads: Option<usize>,
    /// Where the tree goes in the layer, and what its entries' modes become.
    pub placement: Placement,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Gzip,
            level: None,
            source_date_epoch: None,
            owner: Owner::Root,
            threads: None,
            placement: Placement::default(),
        }
    }
}

/// A directory entry the layer carries before the walked tree: one of the directories the
/// tree is placed under, with the attributes it is to have when extracted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedDir {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
}

/// Puts the walked tree under a directory of the layer (what `COPY src /app/` needs): every
/// entry `x` becomes `prefix/x`, hardlink targets too; the prefix's directories are written
/// first, one [`PlacedDir`] per component; `mode` replaces the permission bits of every walked
/// entry but symlinks (`COPY --chmod`).
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// `/`-separated, relative, without `.`, `..` or empty components; empty for the root.
    pub prefix: Vec<u8>,
    /// One per component of `prefix`, outermost first.
    pub dirs: Vec<PlacedDir>,
    pub mode: Option<u32>,
}

impl Placement {
    /// Checks the prefix is a clean relative path with one directory per component.
    pub fn validate(&self) -> Result<()> {
        let components: Vec<&[u8]> = if self.prefix.is_empty() {
            Vec::new()
        } else {
            self.prefix.split(|&b| b == b'/').collect()
        };
        if components
            .iter()
            .any(|c| c.is_empty() || *c == b"." || *c == b"..")
        {
            return Err(Error::InvalidArgument(format!(
                "the prefix {:?} is not a clean relative path",
                String::from_utf8_lossy(&self.prefix)
            )));
        }
        if components.len() != self.dirs.len() {
            return Err(Error::InvalidArgument(format!(
                "the prefix {:?} has {} components but {} directories were given for them",
                String::from_utf8_lossy(&self.prefix),
                components.len(),
                self.dirs.len()
            )));
        }
        if let Some(mode) = self.mode {
            if mode > 0o7777 {
                return Err(Error::InvalidArgument(format!(
                    "mode {mode:o} has bits beyond 07777"
                )));
            }
        }
        Ok(())
    }
}

enum WalkEvent {
    Entry(SourceEntry),
    Warning(String),
}

/// Entries cross from the walker to the producer in batches: one channel operation (and at
/// most one thread wake-up) per batch instead of per entry. Every entry in flight holds its
/// parent directory open, so batch size times channel depth bounds the open descriptors.
const WALK_BATCH: usize = 64;
const WALK_BATCHES_IN_FLIGHT: usize = 4;

/// Builds a layer from the directory `src` into the file `out`.
///
/// The blob is written to a temporary file beside `out` and renamed into place only when the
/// whole layer is written; on any error nothing is left behind. `check` is called between
/// batches of entries; an error from it (Ctrl-C) stops the build.
pub fn build_from_dir(
    src: &Path,
    out: &Path,
    options: &BuildOptions,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<LayerDescriptor> {
    options.placement.validate()?;
    // Fail on a missing or non-directory source before creating anything.
    let meta = std::fs::metadata(src).map_err(|e| Error::io(src, "cannot stat source", e))?;
    if !meta.is_dir() {
        return Err(Error::Unsupported {
            path: src.to_path_buf(),
            detail: "source is not a directory".into(),
        });
    }
    let mut writer = LayerWriter::create(out, options.compression, options.level, options.threads)?;
    let walk_options = WalkOptions {
        owner: options.owner,
        source_date_epoch: options.source_date_epoch,
        exclude: Some(writer.temp_identity()?),
    };
    let (walk_tx, walk_rx) = sync_channel::<Vec<WalkEvent>>(WALK_BATCHES_IN_FLIGHT);
    let (produced, walked) = thread::scope(|scope| {
        let walker = thread::Builder::new()
            .name("layercore-walk".into())
            .stack_size(16 << 20)
            .spawn_scoped(scope, move || {
                let mut batch = Vec::with_capacity(WALK_BATCH);
                let mut warnings = Vec::new();
                let walked = walk::walk(
                    src,
                    &walk_options,
                    &mut |entry| {
                        batch.push(WalkEvent::Entry(entry));
                        if batch.len() == WALK_BATCH {
                            let full =
                                std::mem::replace(&mut batch, Vec::with_capacity(WALK_BATCH));
                            // A closed channel means the producer stopped; its error wins.
                            walk_tx.send(full).map_err(|_| closed())?;
                        }
                        Ok(())
                    },
                    &mut |w| warnings.push(w),
                );
                batch.extend(warnings.into_iter().map(WalkEvent::Warning));
                if walked.is_ok() && !batch.is_empty() {
                    let _ = walk_tx.send(batch);
                }
                walked
            })
            .expect("spawn walker");
        let produced = produce(
            walk_rx,
            &mut writer,
            &options.placement,
            options.source_date_epoch,
            check,
        );
        (produced, walker.join().expect("walker thread panicked"))
    });
    // The first real failure wins: a walk error ends the entry stream early, so it must win
    // over a producer that saw a normal end; a producer error makes the walker see a closed
    // channel.
    let warnings = match (walked, produced) {
        (Err(e), _) if !is_closed(&e) => return Err(e),
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok(warnings)) => warnings,
    };
    let mut descriptor = writer.finish()?;
    descriptor.warnings = warnings;
    Ok(descriptor)
}

/// Turns walk entries into tar entries; returns the walk's warnings.
fn produce(
    walk_rx: Receiver<Vec<WalkEvent>>,
    writer: &mut LayerWriter,
    placement: &Placement,
    source_date_epoch: Option<i64>,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let mut name = Vec::new();
    // The directories the tree is placed under come first, outermost first; their mtimes are
    // clamped to SOURCE_DATE_EPOCH as the walk clamps every other entry's.
    let mut base = Vec::new();
    if !placement.prefix.is_empty() {
        for (component, dir) in placement.prefix.split(|&b| b == b'/').zip(&placement.dirs) {
            base.extend_from_slice(component);
            base.push(b'/');
            let spec = HeaderSpec {
                name: &base,
                typeflag: header::DIRTYPE,
                mode: dir.mode,
                uid: dir.uid,
                gid: dir.gid,
                size: 0,
                mtime: source_date_epoch.map_or(dir.mtime, |epoch| dir.mtime.min(epoch)),
                linkname: b"",
                uname: b"",
                gname: b"",
                devmajor: 0,
                devminor: 0,
                xattrs: &[],
            };
            writer.append_empty(&spec)?;
        }
    }
    let mut linkname = Vec::new();
    for batch in walk_rx {
        check()?;
        for event in batch {
            let mut entry = match event {
                WalkEvent::Entry(e) => e,
                WalkEvent::Warning(w) => {
                    warnings.push(w);
                    continue;
                }
            };
            name.clear();
            name.extend_from_slice(&base);
            name.extend_from_slice(&entry.rel);
            if entry.kind == EntryKind::Dir {
                name.push(b'/');
            }
            linkname.clear();
            if entry.kind == EntryKind::Hardlink {
                linkname.extend_from_slice(&base);
            }
            linkname.extend_from_slice(&entry.linkname);
            let mode = match placement.mode {
                Some(mode) if entry.kind != EntryKind::Symlink => mode,
                _ => entry.mode,
            };
            let typeflag = match entry.kind {
                EntryKind::File | EntryKind::Whiteout | EntryKind::Opaque => header::REGTYPE,
                EntryKind::Hardlink => header::LNKTYPE,
                EntryKind::Symlink => header::SYMTYPE,
                EntryKind::Char => header::CHRTYPE,
                EntryKind::Block => header::BLKTYPE,
                EntryKind::Dir => header::DIRTYPE,
                EntryKind::Fifo => header::FIFOTYPE,
            };
            // Open (and read the xattrs) before writing the header, so a vanished file fails
            // cleanly.
            let mut body = if entry.kind == EntryKind::File {
                Some(entry.open()?)
            } else {
                None
            };
            let spec = HeaderSpec {
                name: &name,
                typeflag,
                mode,
                uid: entry.uid,
                gid: entry.gid,
                size: entry.size,
                mtime: entry.mtime,
                linkname: &linkname,
                uname: &entry.uname,
                gname: &entry.gname,
                devmajor: entry.devmajor,
                devminor: entry.devminor,
                xattrs: &entry.xattrs,
            };
            match body.as_mut() {
                Some(file) => writer.append_file(&spec, file, &entry.path())?,
                None => writer.append_empty(&spec)?,
            }
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digester;
    use crate::tar::RECORD;
    use std::io::Read;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    fn no_check() -> Result<()> {
        Ok(())
    }

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("a/deep/er")).unwrap();
        std::fs::create_dir_all(root.join("a-b")).unwrap();
        std::fs::write(root.join("a/x"), b"hello").unwrap();
        std::fs::write(
            root.join("a/deep/er/big"),
            vec![7u8; 3 * crate::blob_writer::CHUNK + 17],
        )
        .unwrap();
        std::fs::write(root.join("a-b/y"), b"").unwrap();
        std::fs::hard_link(root.join("a/x"), root.join("a-b/x-link")).unwrap();
        symlink("/usr/lib64", root.join("lib64")).unwrap();
        let long = "n".repeat(150);
        std::fs::write(root.join("a").join(long), b"long").unwrap();
    }

    fn build(src: &Path, out: &Path, compression: Compression, threads: usize) -> LayerDescriptor {
        let options = BuildOptions {
            compression,
            threads: Some(threads),
            ..BuildOptions::default()
        };
        build_from_dir(src, out, &options, &no_check).unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        let mut d = Digester::new();
        d.update(bytes);
        d.finish()
    }

    /// (name, typeflag, mode, uid, gid, mtime, linkname) of every entry of a plain tar layer.
    fn headers(out: &Path) -> Vec<(String, u8, u32, u64, u64, i64, String)> {
        let mut rows = Vec::new();
        crate::layer::scan(out, |e| {
            rows.push((
                String::from_utf8_lossy(&e.path).into_owned(),
                e.kind as u8,
                e.mode,
                e.uid,
                e.gid,
                e.mtime,
                String::from_utf8_lossy(e.linkname.as_deref().unwrap_or_default()).into_owned(),
            ));
            Ok(())
        })
        .unwrap();
        rows
    }

    #[test]
    fn placement_dirs_are_clamped_to_the_epoch_like_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let out = dir.path().join("placed.tar");
        let placed = |mtime| PlacedDir {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime,
        };
        let options = BuildOptions {
            compression: Compression::None,
            source_date_epoch: Some(1000),
            placement: Placement {
                prefix: b"a/b".to_vec(),
                dirs: vec![placed(5), placed(2_000_000_000)],
                mode: None,
            },
            ..BuildOptions::default()
        };
        build_from_dir(&src, &out, &options, &no_check).unwrap();
        let rows = headers(&out);
        assert_eq!((rows[0].0.as_str(), rows[0].5), ("a", 5));
        assert_eq!((rows[1].0.as_str(), rows[1].5), ("a/b", 1000));
    }

    #[test]
    fn placement_puts_the_tree_under_its_directories() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let out = dir.path().join("placed.tar");
        let options = BuildOptions {
            compression: Compression::None,
            source_date_epoch: Some(1000),
            owner: Owner::Fixed {
                uid: 1000,
                gid: 100,
            },
            placement: Placement {
                prefix: b"srv/app".to_vec(),
                dirs: vec![
                    PlacedDir {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: 5,
                    },
                    PlacedDir {
                        mode: 0o750,
                        uid: 1000,
                        gid: 100,
                        mtime: 6,
                    },
                ],
                mode: Some(0o640),
            },
            ..BuildOptions::default()
        };
        build_from_dir(&src, &out, &options, &no_check).unwrap();
        let rows = headers(&out);
        let plain = dir.path().join("plain.tar");
        build(&src, &plain, Compression::None, 1);
        let unplaced = headers(&plain);
        assert_eq!(rows.len(), unplaced.len() + 2);
        assert_eq!(rows[0].0, "srv");
        assert_eq!((rows[0].2, rows[0].3, rows[0].5), (0o755, 0, 5));
        assert_eq!(rows[1].0, "srv/app");
        assert_eq!(
            (rows[1].2, rows[1].3, rows[1].4, rows[1].5),
            (0o750, 1000, 100, 6)
        );
        for (placed, plain) in rows[2..].iter().zip(&unplaced) {
            assert_eq!(placed.0, format!("srv/app/{}", plain.0));
            assert_eq!((placed.3, placed.4), (1000, 100));
            assert_eq!(placed.5, plain.5.min(1000));
            match plain.1 {
                k if k == EntryKind::Symlink as u8 => {
                    assert_eq!(placed.6, plain.6); // a symlink's target is left alone
                }
                k if k == EntryKind::Hardlink as u8 => {
                    assert_eq!(placed.6, format!("srv/app/{}", plain.6));
                    assert_eq!(placed.2, 0o640);
                }
                _ => assert_eq!(placed.2, 0o640),
            }
        }
        // GNU tar extracts it: the hardlink's target resolves inside the placed tree.
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let done = Command::new("tar")
            .arg("-xf")
            .arg(&out)
            .arg("-C")
            .arg(&x)
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert_eq!(
            std::fs::read(x.join("srv/app/a-b/x-link")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn placement_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let dirs = |n: usize| {
            vec![
                PlacedDir {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                };
                n
            ]
        };
        for (prefix, count, mode) in [
            (&b"a/../b"[..], 3, None),
            (b"/abs", 2, None),
            (b"a//b", 3, None),
            (b"a/b", 1, None),
            (b"a", 1, Some(0o17777)),
        ] {
            let options = BuildOptions {
                placement: Placement {
                    prefix: prefix.to_vec(),
                    dirs: dirs(count),
                    mode,
                },
                ..BuildOptions::default()
            };
            let out = dir.path().join("bad");
            let err = build_from_dir(&src, &out, &options, &no_check).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
            assert!(!out.exists());
        }
    }

    #[test]
    fn digests_describe_the_bytes_written() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("src"));
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let out = dir.path().join(format!("layer-{compression:?}"));
            let d = build(&dir.path().join("src"), &out, compression, 2);
            let blob = std::fs::read(&out).unwrap();
            assert_eq!(d.digest, sha(&blob));
            assert_eq!(d.size, blob.len() as u64);
            let (_, mut reader) =
                crate::compress::decoder(std::io::BufReader::new(&blob[..])).unwrap();
            let mut tar = Vec::new();
            reader.read_to_end(&mut tar).unwrap();
            assert_eq!(d.diff_id, sha(&tar));
            assert_eq!(d.uncompressed_size, tar.len() as u64);
            assert_eq!(tar.len() % RECORD, 0);
        }
    }

    #[test]
    fn bytes_do_not_depend_on_the_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("src"));
        for compression in [Compression::Gzip, Compression::Zstd] {
            let one = build(
                &dir.path().join("src"),
                &dir.path().join("one"),
                compression,
                1,
            );
            let two = build(
                &dir.path().join("src"),
                &dir.path().join("two"),
                compression,
                2,
            );
            let four = build(
                &dir.path().join("src"),
                &dir.path().join("four"),
                compression,
                4,
            );
            assert_eq!(one, two);
            assert_eq!(one, four);
            assert_eq!(
                std::fs::read(dir.path().join("one")).unwrap(),
                std::fs::read(dir.path().join("four")).unwrap()
            );
        }
    }

    #[test]
    fn gnu_tar_lists_entries_in_sort_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let out = dir.path().join("layer.tar");
        build(&src, &out, Compression::None, 1);
        let ours = Command::new("tar").arg("-tf").arg(&out).output().unwrap();
        assert!(
            ours.status.success(),
            "{}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let gnu = Command::new("tar")
            .args(["--sort=name", "--format=posix", "-cf", "-", "-C"])
            .arg(&src)
            .arg(".")
            .output()
            .unwrap();
        let listed = Command::new("tar")
            .arg("-tf")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(&gnu.stdout)?;
                child.wait_with_output()
            })
            .unwrap();
        let expected: Vec<String> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .filter(|l| *l != "./")
            .map(|l| l.trim_start_matches("./").to_owned())
            .collect();
        let got: Vec<String> = String::from_utf8(ours.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn an_output_inside_the_source_does_not_swallow_its_own_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let inside = build(&src, &src.join("layer.tar"), Compression::None, 1);
        std::fs::remove_file(src.join("layer.tar")).unwrap();
        let outside = build(&src, &dir.path().join("layer.tar"), Compression::None, 1);
        assert_eq!(inside.diff_id, outside.diff_id);
    }

    #[test]
    fn a_missing_source_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let options = BuildOptions::default();
        let err = build_from_dir(
            &dir.path().join("nope"),
            &dir.path().join("out"),
            &options,
            &no_check,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_failing_check_stops_the_build_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("src"));
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let stop = || -> Result<()> { Err(Error::Interrupted) };
        let err = build_from_dir(
            &dir.path().join("src"),
            &out_dir.join("l"),
            &BuildOptions::default(),
            &stop,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err}");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);
    }
}

//! Applying a layer (plain, gzip or zstd) onto a directory, twice (the second time over what
//! the first wrote), and checking that nothing is created, changed or linked outside it.
//!
//! The scratch directory holds `root/` (the destination) and `outside/` (a sentinel: one file,
//! `keep`). `root/` starts with the lower content a hostile layer would aim at: `up ->
//! ../outside`, `abs -> <scratch>/outside`, `shm -> /dev/shm/layercore-fuzz-sentinel` (a
//! second sentinel at a fixed path, so seeds can name it in absolute symlink targets), and a
//! real directory `dir/` with a file. After each apply: the scratch directory holds only
//! `root` and `outside`, and both sentinels hold only `keep`, unchanged, with one link. The
//! apply itself must return a report or a typed input error.
#![no_main]

use std::os::unix::fs::symlink;
use std::path::Path;

use _core::apply::{apply_layer, ApplyOptions};
use layercore_fuzz::{
    check_sentinel, ensure_absolute_sentinel, expect_input_error, layers, make_sentinel, no_check,
    scratch, write_blob, ABSOLUTE_SENTINEL,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(blob) = layers(data, 1).pop() else {
        return;
    };
    ensure_absolute_sentinel();
    let scratch = scratch();
    let top = scratch.path();
    let root = top.join("root");
    let outside = top.join("outside");
    make_sentinel(&outside);
    std::fs::create_dir_all(root.join("dir")).unwrap();
    std::fs::write(root.join("dir/file"), b"lower").unwrap();
    symlink("../outside", root.join("up")).unwrap();
    symlink(&outside, root.join("abs")).unwrap();
    symlink(ABSOLUTE_SENTINEL, root.join("shm")).unwrap();
    // The blob lives beside the sentinels, not in the tree, and is removed before the check.
    let blob_dir = tempfile::tempdir_in(top).unwrap();
    let path = write_blob(blob_dir.path(), "layer", &blob);

    for _ in 0..2 {
        let result = apply_layer(&path, &root, &ApplyOptions::default(), &no_check);
        check_contained(top, &outside);
        if let Err(e) = result {
            expect_input_error(&e);
            break;
        }
    }
    drop(blob_dir);
    check_contained(top, &outside);
    // The tree must be removable as the caller's own (no directory left without permissions
    // that root could not remove anyway; this catches escapes via odd file types too).
    std::fs::remove_dir_all(&root).unwrap();
});

fn check_contained(top: &Path, outside: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(top)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".tmp"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "root"],
        "something was created beside the destination"
    );
    check_sentinel(outside);
    check_sentinel(Path::new(ABSOLUTE_SENTINEL));
}

//! Overlay-upper conversion: a layer (plain, gzip or zstd) is extracted in overlayfs form
//! (whiteouts as 0/0 character devices, opaque directories as `user.overlay.opaque=y`) into an
//! empty directory, which is then converted back into a layer with `from_overlay_upper`.
//!
//! Checks: both steps return a result or a typed input error; when both succeed, the new layer
//! is valid and, as one layer, shows the same merged view as the original (paths, kinds,
//! bodies, directory modes and numeric owners, link targets, device numbers), and carries the same
//! whiteouts and opaque directories as far as the original's own entries do not hide them.
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use _core::apply::{apply_layer, ApplyOptions, OverlayXattrs};
use _core::diff::from_overlay_upper;
use _core::index::LayerIndex;
use _core::overlay::MergedView;
use _core::walk::Owner;
use _core::writer::BuildOptions;
use _core::{Compression, EntryKind};
use layercore_fuzz::{expect_input_error, layers, listing, no_check, scratch, write_blob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(blob) = layers(data, 1).pop() else {
        return;
    };
    let dir = scratch();
    let path = write_blob(dir.path(), "layer", &blob);
    let original = match LayerIndex::build(&path) {
        Ok(index) => index,
        Err(e) => {
            expect_input_error(&e);
            return;
        }
    };
    // A character device 0/0 is how overlayfs spells a whiteout: one in the layer cannot come
    // back from the upper dir as a device (docs/RELIABILITY.md, Fuzzing: left open).
    if original.visible().iter().any(|&i| {
        let e = original.entry(i);
        e.kind == EntryKind::Char && e.devmajor == 0 && e.devminor == 0
    }) {
        return;
    }
    let upper = dir.path().join("upper");
    std::fs::create_dir(&upper).unwrap();
    let options = ApplyOptions {
        overlay: Some(OverlayXattrs::User),
        ..ApplyOptions::default()
    };
    if let Err(e) = apply_layer(&path, &upper, &options, &no_check) {
        expect_input_error(&e);
        return;
    }
    let out = dir.path().join("converted");
    // The files' own ids (apply, as root, gave them the entries' ids): the default, `Root`,
    // would write 0:0 and the owners could not be compared.
    let build = BuildOptions {
        compression: Compression::None,
        threads: Some(1),
        owner: Owner::Numeric,
        ..BuildOptions::default()
    };
    if let Err(e) = from_overlay_upper(&upper, &out, &build, None, &no_check) {
        expect_input_error(&e);
        return;
    }
    let converted = LayerIndex::build(&out).expect("from_overlay_upper wrote an unreadable layer");
    let markers = |index: &LayerIndex| -> BTreeSet<Vec<u8>> {
        let visible: BTreeSet<&[u8]> = index
            .visible()
            .iter()
            .map(|&i| index.entry(i).path.as_slice())
            .collect();
        index
            .whiteouts()
            .filter(|p| !visible.contains(p))
            .map(|p| [b"wh ", p].concat())
            .chain(index.opaque_dirs().map(|p| [b"opq ", p].concat()))
            .collect()
    };
    let (want_markers, got_markers) = (markers(&original), markers(&converted));
    let want = listing(&MergedView::new(vec![Arc::new(original)]));
    let got = listing(&MergedView::new(vec![Arc::new(converted)]));
    assert_eq!(got, want, "the converted upper shows another tree");
    assert_eq!(
        got_markers, want_markers,
        "the converted upper hides other paths"
    );
});

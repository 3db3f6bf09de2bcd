//! Flattening a stack of one to three layers (each plain, gzip or zstd), checked against the
//! merged view of the same stack.
//!
//! Checks: flatten returns a descriptor or a typed input error; when it succeeds, every input
//! layer is indexable, the output is a valid layer without whiteouts, and the output's entries
//! (as one layer) list exactly what the merged view of the inputs lists: paths, kinds, file
//! bodies, directory modes and owners, symlink targets, device numbers.
#![no_main]

use std::sync::Arc;

use _core::flatten::{flatten, FlattenOptions};
use _core::index::LayerIndex;
use _core::overlay::MergedView;
use _core::Compression;
use layercore_fuzz::{
    expect_input_error, index_all, layers, listing, no_check, scratch, write_blob,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let blobs = layers(data, 3);
    let dir = scratch();
    let paths: Vec<_> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| write_blob(dir.path(), &format!("layer{i}"), b))
        .collect();
    let out = dir.path().join("flat");
    let options = FlattenOptions {
        compression: Compression::None,
        threads: Some(1),
        ..FlattenOptions::default()
    };
    if let Err(e) = flatten(&paths, &out, &options, &no_check) {
        expect_input_error(&e);
        assert!(!out.exists(), "flatten failed but left its output");
        return;
    }
    let inputs = index_all(&paths).expect("flatten accepted a layer the index rejects");
    let flat = LayerIndex::build(&out).expect("flatten wrote an unreadable layer");
    assert_eq!(flat.whiteouts().count(), 0, "flatten wrote a whiteout");
    assert_eq!(
        flat.opaque_dirs().count(),
        0,
        "flatten wrote an opaque marker"
    );
    let merged = listing(&MergedView::new(inputs));
    let flattened = listing(&MergedView::new(vec![Arc::new(flat)]));
    assert_eq!(flattened, merged, "flatten differs from the merged view");
});

//! The layer index of one blob: plain tar, gzip or zstd (see `layercore_fuzz` for the input
//! form: the harness can compress the fuzzed tar itself).
//!
//! Checks: a typed input error or an index; an index agrees with the entry iterator (same
//! archive entries, in order); it survives a save/load round trip; the lookup structures agree
//! with the entries (every visible path is found, the merged view of the one layer lists it).
#![no_main]

use std::sync::Arc;

use _core::index::LayerIndex;
use _core::layer::EntryIter;
use _core::overlay::MergedView;
use layercore_fuzz::{expect_input_error, layers, listing, scratch, write_blob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(blob) = layers(data, 1).pop() else {
        return;
    };
    let dir = scratch();
    let path = write_blob(dir.path(), "blob", &blob);
    let iterated: Result<Vec<_>, _> = EntryIter::open(&path).and_then(|iter| iter.collect());
    let index = match LayerIndex::build(&path) {
        Ok(index) => index,
        Err(e) => {
            expect_input_error(&e);
            return;
        }
    };
    let iterated = iterated.expect("the index accepted a blob the entry iterator rejects");
    let archive: Vec<_> = index
        .entries()
        .iter()
        .enumerate()
        .filter(|(i, _)| !index.is_implied(*i as u32))
        .map(|(_, e)| e.clone())
        .collect();
    assert_eq!(archive, iterated, "index entries differ from the archive's");

    for &i in index.visible() {
        let e = index.entry(i);
        assert!(
            index.get(&e.path).is_some(),
            "visible entry not found by get"
        );
    }

    let saved = dir.path().join("blob.lcidx");
    index.save(&saved).unwrap();
    let loaded = LayerIndex::load(&saved, &path)
        .unwrap()
        .expect("a fresh index file was not accepted");
    assert_eq!(
        loaded.entries(),
        index.entries(),
        "save/load changed the entries"
    );
    assert_eq!(loaded.visible(), index.visible());
    assert_eq!(loaded.diff_id(), index.diff_id());

    let view = MergedView::new(vec![Arc::new(index)]);
    let _ = listing(&view);
});

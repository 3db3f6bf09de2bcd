//! The streaming tar reader on arbitrary bytes (an uncompressed stream).
//!
//! Checks the reader's promises: every error is corrupt, truncated or unsupported (an
//! in-memory stream has no I/O errors); paths come normalised and non-empty; `read_data` hands
//! out exactly `size` bytes, in any chunking; after the end every byte has been consumed; after
//! an error the reader is fused.
#![no_main]

use std::path::PathBuf;

use _core::error::Error;
use _core::tar::reader::{normalize_path, TarReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read chunk size, so short reads at every offset get exercised.
    let (chunk, stream) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c) % 97 + 1, rest),
        None => (1, data),
    };
    let mut reader = TarReader::new(stream, PathBuf::from("fuzz.tar"));
    let mut buf = vec![0u8; chunk];
    loop {
        match reader.next_entry() {
            Ok(Some(entry)) => {
                assert!(!entry.path.is_empty(), "an entry with an empty path");
                assert_eq!(
                    normalize_path(&entry.path),
                    entry.path,
                    "path not normalised"
                );
                assert_eq!(
                    entry.offset,
                    reader.position(),
                    "offset is not the data position"
                );
                // Read only part of some bodies: next_entry must skip the rest.
                let read_all = entry.path.len() % 2 == 0;
                let mut got = 0u64;
                loop {
                    match reader.read_data(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            got += n as u64;
                            assert!(got <= entry.size, "read_data past the entry's size");
                            if !read_all {
                                break;
                            }
                        }
                        Err(e) => {
                            expect_stream_error(&e);
                            assert!(matches!(reader.next_entry(), Ok(None)), "not fused");
                            return;
                        }
                    }
                }
                if read_all {
                    assert_eq!(got, entry.size, "read_data gave fewer bytes than the size");
                }
            }
            Ok(None) => {
                assert_eq!(
                    reader.position(),
                    stream.len() as u64,
                    "end before the stream's end"
                );
                assert!(matches!(reader.next_entry(), Ok(None)));
                return;
            }
            Err(e) => {
                expect_stream_error(&e);
                assert!(
                    matches!(reader.next_entry(), Ok(None)),
                    "not fused after an error"
                );
                return;
            }
        }
    }
});

fn expect_stream_error(e: &Error) {
    assert!(
        matches!(
            e,
            Error::Corrupt { .. } | Error::Truncated { .. } | Error::Unsupported { .. }
        ),
        "unexpected error kind from an in-memory stream: {e:?}"
    );
}

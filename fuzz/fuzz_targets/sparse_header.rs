//! The binary header parsers (VMDK4, COWD, seSparse, stream markers): never panic, and a
//! parsed VMDK4 header survives serialize/parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdk::format::cowd_header::CowdHeader;
use vmdk::format::grain_entry::{GrainCoding, GrainEntry, SparseFlavor};
use vmdk::format::marker::{GrainMarker, MetadataMarker};
use vmdk::format::sesparse_header::{self, SeSparseConstHeader};
use vmdk::format::sparse_header::SparseHeader;

fuzz_target!(|data: &[u8]| {
    let _ = vmdk::probe(data);
    if let Ok(h) = SparseHeader::parse(data) {
        if h.validate().is_ok() {
            let _ = h.gd_entries();
        }
        let _ = h.compressed();
        let _ = h.newline_bytes_ok();
        let again = SparseHeader::parse(&h.serialize()).expect("reparse");
        assert_eq!(again, h);
    }
    if let Ok(h) = CowdHeader::parse(data) {
        let _ = h.validate();
    }
    if let Ok(h) = SeSparseConstHeader::parse(data) {
        let again = SeSparseConstHeader::parse(&h.serialize()).expect("reparse");
        assert_eq!(again, h);
    }
    let _ = sesparse_header::check_volatile_header(data);
    let se = GrainCoding {
        flavor: SparseFlavor::SeSparse,
        zero_grain: true,
        compressed: false,
        grain_size: 4096,
        gt_entries: 4096,
        table_area: 1 << 20,
        grain_area: 1 << 30,
    };
    for c in data.chunks_exact(8) {
        let v = u64::from_le_bytes(c.try_into().unwrap());
        let _ = se.decode_directory(v);
        if let Ok(e) = se.decode(v) {
            if e != GrainEntry::Zero {
                assert_eq!(se.encode(e), Ok(v));
            }
        }
    }
    let _ = GrainMarker::parse(data);
    let _ = MetadataMarker::parse(data);
});

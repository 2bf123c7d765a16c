//! The binary header parsers (VMDK4, COWD, seSparse, stream markers): never panic, and a
//! parsed VMDK4 header survives serialize/parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdk::format::cowd_header::CowdHeader;
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
    for c in data.chunks_exact(8) {
        let v = u64::from_le_bytes(c.try_into().unwrap());
        let _ = sesparse_header::decode_gd_entry(v);
        if let Ok(sesparse_header::SeSparseGtEntry::Allocated(i)) =
            sesparse_header::decode_gt_entry(v)
        {
            assert_eq!(
                sesparse_header::decode_gt_entry(sesparse_header::encode_gt_allocated(i)),
                Ok(sesparse_header::SeSparseGtEntry::Allocated(i))
            );
        }
    }
    let _ = GrainMarker::parse(data);
    let _ = MetadataMarker::parse(data);
});

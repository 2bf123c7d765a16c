//! Descriptor parsing: never panics, and whatever parses survives a serialize/parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdk::format::descriptor::Descriptor;

fuzz_target!(|data: &[u8]| {
    let probed = Descriptor::probe(data);
    if let Ok(d) = Descriptor::parse(data) {
        let text = d.serialize();
        let again = Descriptor::parse(text.as_bytes())
            .unwrap_or_else(|e| panic!("reparse failed: {e}\n{text}"));
        assert_eq!(again, d, "round trip changed the descriptor:\n{text}");
        assert!(Descriptor::probe(text.as_bytes()), "probe rejects:\n{text}");
        let _ = d.total_sectors();
    }
    let _ = probed;
});

//! Port lists as typed by users: parsing never panics, and a parsed spec
//! prints to text that parses back to the same set.
#![no_main]
use libfuzzer_sys::fuzz_target;
use udpreach_wire::PortSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = text.parse::<PortSpec>() {
        let shown = spec.to_string();
        let again: PortSpec = shown.parse().expect("display output parses");
        assert_eq!(again, spec);
        assert_eq!(spec.iter().count(), spec.len());
    }
});

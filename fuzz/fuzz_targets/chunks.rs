//! Frame chunks from a peer: reassembly never panics and never grows past the largest frame.
#![no_main]
use ipop_agent::{
    chunk::{MAX_WHOLE, Reassembly},
    tap::{VNET_HDR_LEN, vnet_hdr_ok},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembly::default();
    // The input as a sequence of length-prefixed chunks.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (chunk, more) = tail.split_at((len as usize).min(tail.len()));
        if let Ok(Some(whole)) = r.push(chunk) {
            assert!(whole.len() <= MAX_WHOLE);
            if let Some((hdr, frame)) = whole.split_first_chunk::<VNET_HDR_LEN>() {
                let _ = vnet_hdr_ok(hdr, frame.len());
            }
        }
        rest = more;
    }
});

//! ARP frame parsing: never panics; whatever parses rebuilds to the same fields.
#![no_main]
use ipop_common::arp::{ArpFrame, build};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ArpFrame::parse(data) {
        let arp = frame.arp();
        let rebuilt = build(frame.eth_dst(), frame.eth_src(), &arp);
        assert_eq!(ArpFrame::parse(&rebuilt).unwrap().arp(), arp);
        let _ = (arp.is_probe(), arp.is_gratuitous(), arp.reply_from([2, 0, 0, 0, 0, 1]));
    }
});

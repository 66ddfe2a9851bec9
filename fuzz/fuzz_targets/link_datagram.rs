//! Link datagrams, before and after decryption: parsing never panics, nothing forged
//! authenticates, and what a member seals opens to the same bytes exactly once.
#![no_main]
use std::sync::{Mutex, OnceLock};

use ipop_agent::{
    session::{self, Identity, Opener, Sealer},
    wire::{Datagram, Inner},
};
use libfuzzer_sys::fuzz_target;

fn pair() -> &'static Mutex<(Sealer, Opener)> {
    static PAIR: OnceLock<Mutex<(Sealer, Opener)>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let (a, b) = (Identity::generate(), Identity::generate());
        let psk = session::overlay_psk("fuzz", "fuzz secret");
        let (init, m1) = session::initiate(&a, &b.public, &psk, 1).unwrap();
        let (sb, m2, _) = session::respond(&b, &a.public, &psk, &m1[1..], None).unwrap();
        let sa = init.finish(&m2[1..]).unwrap();
        let (sealer, _) = sa.split();
        let (_, opener) = sb.split();
        Mutex::new((sealer, opener))
    })
}

fuzz_target!(|data: &[u8]| {
    let (sealer, opener) = &mut *pair().lock().unwrap();
    let mut out = Vec::new();
    // Arbitrary bytes as a datagram: parse, and try to open; random bytes never authenticate.
    match Datagram::parse(data) {
        Ok(Datagram::Transport { counter, sealed } | Datagram::Indexed { counter, sealed, .. }) => {
            assert!(opener.open(counter, sealed, &mut out).is_err(), "a forged datagram authenticated");
        }
        _ => {}
    }
    // Arbitrary bytes as a payload: seal, open, compare, and a replay is refused.
    let mut dg = Vec::new();
    if sealer.seal(Inner::Rpc, data, &mut dg).is_ok() {
        let Ok(Datagram::Transport { counter, sealed }) = Datagram::parse(&dg) else {
            panic!("sealed datagram does not parse")
        };
        assert_eq!(opener.open(counter, sealed, &mut out), Ok(Inner::Rpc));
        assert_eq!(out, data);
        assert!(opener.open(counter, sealed, &mut out).is_err(), "replay accepted");
    }
    // The same through the data socket's indexed form, the payload split in two parts.
    dg.clear();
    let (head, tail) = data.split_at(data.len() / 2);
    if sealer.seal_indexed(9, Inner::Ethernet, &[head, tail], &mut dg).is_ok() {
        let Ok(Datagram::Indexed { index: 9, counter, sealed }) = Datagram::parse(&dg) else {
            panic!("sealed indexed datagram does not parse")
        };
        assert_eq!(opener.open(counter, sealed, &mut out), Ok(Inner::Ethernet));
        assert_eq!(out, data);
    }
});

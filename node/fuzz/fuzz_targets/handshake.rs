//! Fuzzes the replication handshake as an acceptor and as a dialer sees it: nothing a
//! peer sends before it is authenticated may panic the node, be accepted, or make it
//! allocate beyond the handshake frame limit.
//!
//! The first input byte picks a mode:
//! - even: the rest is handshake message 1 (the body of the dialer's first frame), given
//!   to `handshake::respond` with the cluster key;
//! - odd: the rest is handshake message 2, given to a dialer's `Initiator::finish`.
//!
//! The acceptor's frame header check (`wire::check_handshake_header`) runs first on the
//! leading 8 bytes, as on the socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tribe_node::handshake::{respond, Initiator, HANDSHAKE_MAX_FRAME, INIT_TYPE};
use tribe_node::keyring::KeySet;
use tribe_node::wire::{check_handshake_header, Hello, HEADER_LEN};

fn keys() -> KeySet {
    KeySet::parse(b"fuzzing-cluster-key-0123456789").expect("a valid key")
}

fn me() -> Hello {
    Hello {
        cluster: "tribe".into(),
        node_id: "fuzz".into(),
        incarnation: 1,
        addr: "127.0.0.1:4000".parse().expect("an address"),
        nonce: [0; 16],
        ready: true,
        versions: tribe_node::wire::Versions::CURRENT,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if rest.len() >= HEADER_LEN {
        let header: [u8; HEADER_LEN] = rest[..HEADER_LEN].try_into().expect("8 bytes");
        if let Ok(len) = check_handshake_header(&header, INIT_TYPE, HANDSHAKE_MAX_FRAME) {
            assert!(len <= HANDSHAKE_MAX_FRAME);
        }
    }
    let k = keys();
    if mode % 2 == 0 {
        // Without the key, no input can produce a valid message 1 (the fuzzer cannot
        // find one by chance), so every input is refused.
        assert!(respond(&k, "tribe", rest, &me()).is_err());
    } else {
        let (initiator, _) = Initiator::start(&k, "tribe");
        assert!(initiator.finish(rest).is_err());
    }
});

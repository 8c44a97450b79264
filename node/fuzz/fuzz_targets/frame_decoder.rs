//! Fuzzes the replication frame decoder: nothing from the network may panic the node or
//! make it allocate without bound.
//!
//! The first input byte picks a mode:
//! - even: the rest is a raw byte stream from a peer, fed to `FrameDecoder` in chunks
//!   whose sizes come from the input too (so "need more bytes" and "bad bytes" paths are
//!   both exercised), then end of stream;
//! - odd: the rest is a type byte and a body, framed and *correctly sealed* with the
//!   connection key, so the fuzzer reaches the body decoders behind the AEAD check. A body
//!   that decodes must re-encode to a frame that decodes to the same message.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};
use tribe_node::handshake::{FrameCipher, AEAD_TAG_LEN as TAG_LEN};
use tribe_node::wire::{FrameDecoder, FrameEncoder, Outgoing, HEADER_LEN};

/// A small limit, so oversized length prefixes are easy to reach.
const MAX_FRAME: usize = 64 * 1024;

/// One direction's cipher (both ends start from the same key and counter).
fn key() -> FrameCipher {
    FrameCipher::new(&[0x5a; 32])
}

fn stream(data: &[u8]) {
    let mut dec = FrameDecoder::new(key(), MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut i = 0;
    while i < data.len() {
        // Each chunk: a length byte (1..=64), then that many bytes of the stream.
        let n = data[i] as usize % 64 + 1;
        let end = (i + 1 + n).min(data.len());
        buf.extend_from_slice(&data[i + 1..end]);
        i = end;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return, // the node closes the connection here
            }
        }
        // Waiting for a frame never reserves more than the frame limit allows.
        assert!(
            buf.capacity() <= 4 * (HEADER_LEN + MAX_FRAME + TAG_LEN) + 2 * data.len(),
            "buffer grew to {} bytes",
            buf.capacity()
        );
    }
    let _ = dec.decode_eof(&mut buf);
}

fn tagged_body(data: &[u8]) {
    let Some((&ty, body)) = data.split_first() else {
        return;
    };
    let ty = ty % 16; // mostly valid types, some not
    let mut frame = BytesMut::new();
    let mut enc = FrameEncoder::new(key());
    enc.encode(
        Outgoing {
            ty,
            body: Bytes::copy_from_slice(body),
        },
        &mut frame,
    )
    .expect("encoding to memory");
    let mut dec = FrameDecoder::new(key(), MAX_FRAME);
    let Ok(Some(msg)) = dec.decode(&mut frame) else {
        return;
    };
    // Whatever decodes re-encodes to something that decodes to the same message.
    let mut again = BytesMut::new();
    let mut enc = FrameEncoder::new(key());
    enc.encode(msg.outgoing(), &mut again).expect("re-encoding");
    let mut dec = FrameDecoder::new(key(), usize::MAX);
    let back = dec
        .decode(&mut again)
        .expect("a re-encoded message decodes")
        .expect("a whole frame");
    assert_eq!(back, msg);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => stream(rest),
        Some((_, rest)) => tagged_body(rest),
        None => {}
    }
});

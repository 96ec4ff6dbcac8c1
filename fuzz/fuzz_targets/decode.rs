//! The packet decoder on arbitrary bytes: the first packet picks the
//! protocol version (as on a real connection), then packets are decoded
//! until the bytes run out or one is rejected. It must never panic, loop or
//! allocate beyond the packet size limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use roomq::protocol::Codec;

fuzz_target!(|data: &[u8]| {
    let mut codec = Codec::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    for _ in 0..1024 {
        match codec.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});

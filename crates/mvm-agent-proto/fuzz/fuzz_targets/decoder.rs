//! Fuzz the frame decoder: arbitrary bytes, fed in arbitrary pieces, must
//! never panic; every frame decoded must re-encode to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvm_agent_proto::{FrameDecoder, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut d = FrameDecoder::new();
    for chunk in rest.chunks(step) {
        d.feed(chunk);
        while let Some(r) = d.next_frame() {
            match r {
                Ok(frame) => {
                    let mut out = Vec::new();
                    // JSON payloads may re-encode differently (whitespace,
                    // key order), so only check that encoding succeeds.
                    encode(&frame, &mut out).expect("a decoded frame re-encodes");
                }
                Err(_) => return,
            }
        }
    }
});

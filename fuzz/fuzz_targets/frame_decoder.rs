//! Fuzz target: arbitrary bytes through the frame decoder, the PDU decoder
//! and the encoder. Invariants checked: nothing panics, the decoder never
//! consumes past a frame, and a decoded PDU re-encodes to a fixed point.
//!
//! Run with a nightly toolchain: `cargo fuzz run frame_decoder` from the
//! repository root.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern::smpp::frame::{Frame, FrameDecoder};
use tern::smpp::pdu::{Header, Pdu};

fuzz_target!(|data: &[u8]| {
    // The first octet picks the read size, so split frames are exercised too.
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let decoder = FrameDecoder::new(4096);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            let declared = Header::parse(&buf).map(|h| h.command_length as usize);
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert_eq!(Some(before - buf.len()), declared, "consumed one frame");
                    if let Frame::Pdu(pdu) = frame {
                        let wire = pdu.to_bytes().expect("a decoded PDU is encodable");
                        let again = Pdu::decode(wire.clone()).expect("re-encoding decodes");
                        assert_eq!(again.to_bytes().expect("encodable"), wire);
                    }
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "nothing consumed while waiting");
                    break;
                }
                Err(_) => {
                    assert_eq!(buf.len(), before, "nothing consumed on a framing error");
                    return;
                }
            }
        }
    }
});

//! Property tests for SMPP text encodings, segmentation and reassembly: what
//! goes out in parts comes back whole and identical, parts fit an SMS, and no
//! input bytes make decoding or parsing panic.

use proptest::prelude::*;
use tern::smpp::segment::{
    parse_udh, segment, segment_text, Carriage, ConcatReference, Offered, Part, PartInfo,
    Reassembler, ReassemblyLimits, Segment,
};
use tern::smpp::text::{self, gsm, DataCoding, DefaultAlphabet, Encoding};

/// Every character of the GSM 03.38 default alphabet and its extension table.
fn gsm_alphabet() -> Vec<char> {
    let mut chars = Vec::new();
    for septet in (0u8..128).filter(|&s| s != gsm::ESCAPE) {
        let mut decoded = String::new();
        gsm::decode_unpacked_into(&[septet], &mut decoded);
        chars.extend(decoded.chars());
    }
    chars.extend(gsm::EXTENSION.iter().map(|(_, ch)| *ch));
    chars
}

fn gsm_text() -> impl Strategy<Value = String> {
    let alphabet = gsm_alphabet();
    // Bias towards extension characters so boundaries land on escapes often.
    let extension: Vec<char> = gsm::EXTENSION.iter().map(|(_, ch)| *ch).collect();
    let ch = prop_oneof![
        3 => proptest::sample::select(alphabet),
        1 => proptest::sample::select(extension),
    ];
    proptest::collection::vec(ch, 0..900).prop_map(|chars| chars.into_iter().collect())
}

fn unicode_text() -> impl Strategy<Value = String> {
    // Mix astral characters in so surrogate pairs meet part boundaries.
    let ch = prop_oneof![
        2 => any::<char>(),
        1 => proptest::char::range('\u{1F600}', '\u{1F64F}'),
        1 => proptest::char::range('a', 'z'),
    ];
    proptest::collection::vec(ch, 0..500).prop_map(|chars| chars.into_iter().collect())
}

fn carriage() -> impl Strategy<Value = Carriage> {
    prop_oneof![
        any::<u8>().prop_map(|r| Carriage::Udh(ConcatReference::Eight(r))),
        any::<u16>().prop_map(|r| Carriage::Udh(ConcatReference::Sixteen(r))),
        any::<u16>().prop_map(|reference| Carriage::Sar { reference }),
    ]
}

/// Where a segment's part info and body come from under each carriage.
fn part_of(segment: &Segment) -> (Option<PartInfo>, &[u8]) {
    if segment.udhi {
        let (udh, body) = parse_udh(&segment.bytes).expect("we write valid UDHs");
        (udh.concat, body)
    } else {
        (segment.sar, &segment.bytes)
    }
}

/// Feeds the parts in the order `order_keys` sorts them, sending the parts
/// `duplicate` marks twice, and returns the reassembled message.
fn reassemble(segments: &[Segment], order_keys: &[u32], duplicate: &[bool]) -> Vec<u8> {
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_by_key(|&i| order_keys.get(i).copied().unwrap_or(0));
    let mut reassembler = Reassembler::new(ReassemblyLimits::default());
    let mut complete = None;
    for (step, &index) in order.iter().enumerate() {
        let (info, body) = part_of(&segments[index]);
        let Some(info) = info else {
            assert_eq!(segments.len(), 1, "only a single part lacks part info");
            return body.to_vec();
        };
        let part = Part {
            source: b"src",
            destination: b"dst",
            info,
            body,
        };
        // The last part completes the message; a copy after it would start a new one.
        let last = step + 1 == order.len();
        let times = if !last && duplicate.get(index).copied().unwrap_or(false) {
            2
        } else {
            1
        };
        for attempt in 0..times {
            match reassembler
                .offer(part, step as u64)
                .expect("valid parts are accepted")
            {
                Offered::Complete(bytes) => {
                    assert!(complete.is_none(), "completed twice");
                    assert_eq!(step + 1, order.len(), "completed before the last part");
                    complete = Some(bytes);
                }
                Offered::Incomplete { received, total } => {
                    assert_eq!(usize::from(received), step + 1);
                    assert_eq!(usize::from(total), segments.len());
                }
                Offered::Duplicate => assert_eq!(attempt, 1, "a first offer was a duplicate"),
            }
        }
    }
    assert_eq!(reassembler.pending_bytes(), 0);
    complete.expect("every part was offered")
}

fn check_sizes(segments: &[Segment], encoding: Encoding) {
    for segment in segments {
        assert!(
            segment.air_octets(encoding) <= 140,
            "{} octets on the air",
            segment.air_octets(encoding)
        );
        assert!(
            segment.bytes.len() <= 254,
            "short_message holds at most 254 octets"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn gsm_text_survives_segmentation(
        text in gsm_text(),
        carriage in carriage(),
        order_keys in proptest::collection::vec(any::<u32>(), 8),
        duplicate in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let septets = text::encode(DataCoding::plain(Encoding::Gsm7), &text).expect("GSM text");
        prop_assert_eq!(gsm::septet_count(&text), Ok(septets.len()));
        let segments = segment(Encoding::Gsm7, &septets, carriage).expect("under 255 parts");
        check_sizes(&segments, Encoding::Gsm7);
        for segment in &segments {
            let (_, body) = part_of(segment);
            // No part ends inside an escape pair: each decodes on its own.
            let mut alone = String::new();
            prop_assert!(gsm::decode_unpacked_into(body, &mut alone).is_clean());
        }
        let whole = reassemble(&segments, &order_keys, &duplicate);
        prop_assert_eq!(text::decode(DataCoding::plain(Encoding::Gsm7), &whole), Ok(text));
    }

    #[test]
    fn any_text_survives_segmentation_as_ucs2(
        text in unicode_text(),
        carriage in carriage(),
        order_keys in proptest::collection::vec(any::<u32>(), 16),
        duplicate in proptest::collection::vec(any::<bool>(), 16),
    ) {
        let units = text::encode(DataCoding::plain(Encoding::Ucs2), &text).expect("UCS-2 takes anything");
        let segments = segment(Encoding::Ucs2, &units, carriage).expect("under 255 parts");
        check_sizes(&segments, Encoding::Ucs2);
        for segment in &segments {
            let (_, body) = part_of(segment);
            // No part ends inside a surrogate pair: each decodes on its own.
            let mut alone = String::new();
            prop_assert!(text::ucs2::decode_into(body, &mut alone).is_clean());
        }
        let whole = reassemble(&segments, &order_keys, &duplicate);
        prop_assert_eq!(text::decode(DataCoding::plain(Encoding::Ucs2), &whole), Ok(text));
    }

    #[test]
    fn segment_text_round_trips_in_the_chosen_encoding(
        text in prop_oneof![gsm_text(), unicode_text()],
        allow_latin1 in any::<bool>(),
        carriage in carriage(),
    ) {
        let (choice, segments) = segment_text(&text, allow_latin1, carriage).expect("under 255 parts");
        check_sizes(&segments, choice.encoding);
        let whole = reassemble(&segments, &[], &[]);
        prop_assert_eq!(text::decode(DataCoding::plain(choice.encoding), &whole), Ok(text));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        data_coding in any::<u8>(),
        fill_bits in 0u8..8,
    ) {
        for default in [DefaultAlphabet::Gsm7, DefaultAlphabet::Latin1, DefaultAlphabet::Ascii] {
            if let Ok(coding) = DataCoding::from_smpp(data_coding, default) {
                let _ = text::decode(coding, &bytes);
            }
        }
        for encoding in [Encoding::Gsm7, Encoding::Ucs2, Encoding::Latin1, Encoding::Ascii, Encoding::Binary] {
            let mut out = String::new();
            let _ = text::decode_into(encoding, &bytes, &mut out);
        }
        let mut septets = Vec::new();
        let unpacked = gsm::unpack_septets(&bytes, fill_bits, None, &mut septets);
        prop_assert_eq!(unpacked, septets.len());
        let _ = parse_udh(&bytes);
    }

    #[test]
    fn packing_round_trips(
        septets in proptest::collection::vec(0u8..128, 0..400),
        fill_bits in 0u8..8,
    ) {
        let mut packed = Vec::new();
        gsm::pack_septets(&septets, fill_bits, &mut packed);
        prop_assert_eq!(packed.len(), gsm::packed_len(septets.len(), fill_bits));
        let mut unpacked = Vec::new();
        gsm::unpack_septets(&packed, fill_bits, Some(septets.len()), &mut unpacked);
        prop_assert_eq!(unpacked, septets);
    }

    #[test]
    fn reassembler_stays_within_its_caps(
        offers in proptest::collection::vec(
            (0u16..4, 0u8..5, 0u8..6, 0usize..40, 0u64..50, any::<bool>()),
            0..200,
        ),
    ) {
        let limits = ReassemblyLimits { max_pending_messages: 3, max_pending_bytes: 200, expiry_ms: 100 };
        let mut reassembler = Reassembler::new(limits);
        let mut now_ms = 0u64;
        for (reference, total, seqnum, len, advance_ms, other_source) in offers {
            now_ms += advance_ms;
            let body = vec![seqnum; len];
            let source: &[u8] = if other_source { b"b" } else { b"a" };
            let info = PartInfo { reference, total, seqnum };
            let _ = reassembler.offer(Part { source, destination: b"d", info, body: &body }, now_ms);
            prop_assert!(reassembler.pending_messages() <= 3);
            prop_assert!(reassembler.pending_bytes() <= 200);
        }
        reassembler.expire(now_ms + 100);
        prop_assert_eq!((reassembler.pending_messages(), reassembler.pending_bytes()), (0, 0));
    }
}

//! GSM 03.38 (3GPP TS 23.038) default alphabet and its basic-character-set
//! extension table: Unicode to septets and back, and 7-bit packing.
//!
//! Owns: the alphabet tables, the escape rules, septet counting and the bit
//! packing of TP-UD (with the fill bits that follow a UDH).
//! Must not touch: data_coding values, segmentation or PDU fields; callers
//! (`text`, `segment`) decide where septets go.
//!
//! SMPP carries data_coding 0 "unpacked": one septet per octet. Packing is only
//! needed where we build or read an air-interface TP-UD ourselves.

use super::{DecodeReport, Encoding, TextError};

/// Escape to the extension table.
pub const ESCAPE: u8 = 0x1B;

/// The septet used in place of an unmappable character in lossy mode.
pub const QUESTION_MARK: u8 = 0x3F;

/// Septets 0x00..=0x7F of the default alphabet. 0x1B (escape) decodes to a
/// space only when it is a second escape (see `decode_unpacked_into`).
const BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', ' ', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: (septet after the escape, character).
pub const EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{000C}'),
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// How an ASCII character encodes: a basic septet, an extension septet (after
/// an escape), or not at all. Packed into one byte so the hot path is a single
/// table load: 0x00..=0x7F basic, 0x80 | code extension, 0xFF unmappable.
const ASCII_UNMAPPABLE: u8 = 0xFF;
const ASCII_EXTENSION_FLAG: u8 = 0x80;

const ASCII_TO_GSM: [u8; 128] = build_ascii_table();

const fn build_ascii_table() -> [u8; 128] {
    let mut table = [ASCII_UNMAPPABLE; 128];
    let mut septet = 0;
    while septet < 128 {
        let ch = BASIC[septet] as u32;
        // The escape slot decodes to a space but must never be produced for one.
        if ch < 128 && septet != ESCAPE as usize {
            table[ch as usize] = septet as u8;
        }
        septet += 1;
    }
    let mut i = 0;
    while i < EXTENSION.len() {
        let (code, ch) = EXTENSION[i];
        if (ch as u32) < 128 {
            table[ch as usize] = ASCII_EXTENSION_FLAG | code;
        }
        i += 1;
    }
    table
}

/// One character's encoding in the default alphabet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Septets {
    Basic(u8),
    /// Costs two septets: the escape, then this code.
    Extension(u8),
}

impl Septets {
    pub fn count(self) -> usize {
        match self {
            Septets::Basic(_) => 1,
            Septets::Extension(_) => 2,
        }
    }
}

/// The septet(s) for `ch`, or None when the default alphabet lacks it.
#[inline]
pub fn septets_for(ch: char) -> Option<Septets> {
    let code = ch as u32;
    if code < 128 {
        let entry = ASCII_TO_GSM[code as usize];
        return match entry {
            ASCII_UNMAPPABLE => None,
            e if e & ASCII_EXTENSION_FLAG != 0 => Some(Septets::Extension(e & 0x7F)),
            e => Some(Septets::Basic(e)),
        };
    }
    let basic = match ch {
        '£' => 0x01,
        '¥' => 0x03,
        'è' => 0x04,
        'é' => 0x05,
        'ù' => 0x06,
        'ì' => 0x07,
        'ò' => 0x08,
        'Ç' => 0x09,
        'Ø' => 0x0B,
        'ø' => 0x0C,
        'Å' => 0x0E,
        'å' => 0x0F,
        'Δ' => 0x10,
        'Φ' => 0x12,
        'Γ' => 0x13,
        'Λ' => 0x14,
        'Ω' => 0x15,
        'Π' => 0x16,
        'Ψ' => 0x17,
        'Σ' => 0x18,
        'Θ' => 0x19,
        'Ξ' => 0x1A,
        'Æ' => 0x1C,
        'æ' => 0x1D,
        'ß' => 0x1E,
        'É' => 0x1F,
        '¤' => 0x24,
        '¡' => 0x40,
        'Ä' => 0x5B,
        'Ö' => 0x5C,
        'Ñ' => 0x5D,
        'Ü' => 0x5E,
        '§' => 0x5F,
        '¿' => 0x60,
        'ä' => 0x7B,
        'ö' => 0x7C,
        'ñ' => 0x7D,
        'ü' => 0x7E,
        'à' => 0x7F,
        '€' => return Some(Septets::Extension(0x65)),
        _ => return None,
    };
    Some(Septets::Basic(basic))
}

/// The character an extension code stands for, if the table defines it.
#[inline]
fn extension_char(code: u8) -> Option<char> {
    EXTENSION
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, ch)| *ch)
}

/// Septets `text` needs (extension characters count 2), or the first
/// character that has no mapping.
pub fn septet_count(text: &str) -> Result<usize, TextError> {
    let mut count = 0usize;
    for (byte_offset, ch) in text.char_indices() {
        match septets_for(ch) {
            Some(s) => count += s.count(),
            None => return Err(unmappable(ch, byte_offset)),
        }
    }
    Ok(count)
}

fn unmappable(ch: char, byte_offset: usize) -> TextError {
    TextError::Unmappable {
        ch,
        byte_offset,
        encoding: Encoding::Gsm7,
    }
}

/// Appends `text` as unpacked septets (one per octet) to `out`. On an
/// unmappable character `out` is left as it was and the error names it.
pub fn encode_unpacked_into(text: &str, out: &mut Vec<u8>) -> Result<(), TextError> {
    let start_len = out.len();
    out.reserve(text.len());
    for (byte_offset, ch) in text.char_indices() {
        match septets_for(ch) {
            Some(Septets::Basic(s)) => out.push(s),
            Some(Septets::Extension(s)) => out.extend_from_slice(&[ESCAPE, s]),
            None => {
                out.truncate(start_len);
                return Err(unmappable(ch, byte_offset));
            }
        }
    }
    Ok(())
}

/// Like `encode_unpacked_into`, substituting '?' for unmappable characters.
/// Returns how many characters were substituted.
pub fn encode_unpacked_lossy_into(text: &str, out: &mut Vec<u8>) -> usize {
    out.reserve(text.len());
    let mut substituted = 0;
    for ch in text.chars() {
        match septets_for(ch) {
            Some(Septets::Basic(s)) => out.push(s),
            Some(Septets::Extension(s)) => out.extend_from_slice(&[ESCAPE, s]),
            None => {
                out.push(QUESTION_MARK);
                substituted += 1;
            }
        }
    }
    substituted
}

/// Appends the text of unpacked septets to `out`.
///
/// Tolerant by design, since the bytes come from peers: an octet above 0x7F
/// becomes U+FFFD (counted in `replaced`); an escape followed by a code the
/// extension table lacks shows the basic character for that code, and a double
/// escape shows a space, both as TS 23.038 tells receivers to; a trailing lone
/// escape is dropped (counted in `trailing_bytes`).
pub fn decode_unpacked_into(septets: &[u8], out: &mut String) -> DecodeReport {
    let mut report = DecodeReport::default();
    out.reserve(septets.len());
    let mut iter = septets.iter();
    while let Some(&septet) = iter.next() {
        if septet == ESCAPE {
            match iter.next() {
                Some(&code) => match extension_char(code) {
                    Some(ch) => out.push(ch),
                    None => match BASIC.get(code as usize) {
                        Some(&ch) => out.push(ch),
                        None => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            report.replaced += 1;
                        }
                    },
                },
                None => report.trailing_bytes += 1,
            }
        } else {
            match BASIC.get(septet as usize) {
                Some(&ch) => out.push(ch),
                None => {
                    out.push(char::REPLACEMENT_CHARACTER);
                    report.replaced += 1;
                }
            }
        }
    }
    report
}

/// Fill bits that align the first septet after a UDH of `udh_octets` octets
/// (UDHL included) to a septet boundary of the TP-UD.
pub fn fill_bits_after_udh(udh_octets: usize) -> u8 {
    let used_bits = (udh_octets % 7) * 8;
    ((7 - used_bits % 7) % 7) as u8
}

/// Octets that `septets` septets occupy when packed after `fill_bits` fill bits.
pub fn packed_len(septets: usize, fill_bits: u8) -> usize {
    if septets == 0 {
        return 0;
    }
    (usize::from(fill_bits) + septets * 7).div_ceil(8)
}

/// Appends `septets` packed seven bits at a time, least significant bit first,
/// after `fill_bits` zero bits (0..=7; the fill after a UDH is 0..=6). Only the
/// low seven bits of each input octet are used.
pub fn pack_septets(septets: &[u8], fill_bits: u8, out: &mut Vec<u8>) {
    assert!(fill_bits < 8, "fill bits must be 0..=7, got {fill_bits}");
    if septets.is_empty() {
        return;
    }
    out.reserve(packed_len(septets.len(), fill_bits));
    // At most 7 bits wait in `pending` between septets, so 7 + 7 fit in a u32.
    let mut pending: u32 = 0;
    let mut pending_bits: u32 = u32::from(fill_bits);
    for &septet in septets {
        pending |= u32::from(septet & 0x7F) << pending_bits;
        pending_bits += 7;
        while pending_bits >= 8 {
            out.push(pending as u8);
            pending >>= 8;
            pending_bits -= 8;
        }
    }
    if pending_bits > 0 {
        out.push(pending as u8);
    }
}

/// Appends up to `septet_count` septets unpacked from `packed` (which starts
/// with `fill_bits` fill bits) to `out`; `None` takes every whole septet.
/// Returns the number of septets written, which is smaller than asked when
/// `packed` is too short.
pub fn unpack_septets(
    packed: &[u8],
    fill_bits: u8,
    septet_count: Option<usize>,
    out: &mut Vec<u8>,
) -> usize {
    assert!(fill_bits < 8, "fill bits must be 0..=7, got {fill_bits}");
    let available = (packed.len() * 8).saturating_sub(usize::from(fill_bits)) / 7;
    let wanted = septet_count.map_or(available, |n| n.min(available));
    out.reserve(wanted);
    let mut produced = 0;
    let mut pending: u32 = 0;
    let mut pending_bits: u32 = 0;
    let mut skip_bits = u32::from(fill_bits);
    for &octet in packed {
        if produced == wanted {
            break;
        }
        pending |= u32::from(octet) << pending_bits;
        pending_bits += 8;
        if skip_bits > 0 {
            pending >>= skip_bits;
            pending_bits -= skip_bits;
            skip_bits = 0;
        }
        while pending_bits >= 7 && produced < wanted {
            out.push((pending & 0x7F) as u8);
            pending >>= 7;
            pending_bits -= 7;
            produced += 1;
        }
    }
    debug_assert_eq!(produced, wanted, "available septets were miscounted");
    produced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_unpacked_into(text, &mut out).expect("test text is GSM");
        out
    }

    fn decode(septets: &[u8]) -> (String, DecodeReport) {
        let mut out = String::new();
        let report = decode_unpacked_into(septets, &mut out);
        (out, report)
    }

    #[test]
    fn every_basic_septet_round_trips() {
        for septet in 0u8..128 {
            if septet == ESCAPE {
                continue;
            }
            let (text, report) = decode(&[septet]);
            assert!(report.is_clean());
            assert_eq!(
                encode(&text),
                vec![septet],
                "septet {septet:#04x} ({text:?})"
            );
        }
    }

    #[test]
    fn every_extension_char_round_trips_and_costs_two() {
        for (code, ch) in EXTENSION {
            let text = ch.to_string();
            assert_eq!(encode(&text), vec![ESCAPE, code], "{ch:?}");
            assert_eq!(septet_count(&text), Ok(2), "{ch:?}");
            assert_eq!(decode(&[ESCAPE, code]).0, text);
        }
        let all = "^{}\\[~]|€\u{000C}";
        assert_eq!(septet_count(all), Ok(20));
    }

    #[test]
    fn ascii_specials_map_where_gsm_puts_them() {
        assert_eq!(encode("@$_"), vec![0x00, 0x02, 0x11]);
        assert_eq!(encode("¤"), vec![0x24]);
        assert_eq!(septet_count("Hello, world!"), Ok(13));
    }

    #[test]
    fn unmappable_reports_the_char_and_leaves_buffer_alone() {
        let mut out = vec![0xAA];
        let err = encode_unpacked_into("ab`c", &mut out).unwrap_err();
        assert_eq!(
            err,
            TextError::Unmappable {
                ch: '`',
                byte_offset: 2,
                encoding: Encoding::Gsm7
            }
        );
        assert_eq!(out, vec![0xAA]);
        assert!(septet_count("naïve").is_err());
        assert!(septet_count("😀").is_err());
    }

    #[test]
    fn lossy_substitutes_question_marks() {
        let mut out = Vec::new();
        assert_eq!(encode_unpacked_lossy_into("a😀b`€", &mut out), 2);
        assert_eq!(out, vec![0x61, 0x3F, 0x62, 0x3F, ESCAPE, 0x65]);
    }

    #[test]
    fn decoding_tolerates_odd_input() {
        assert_eq!(
            decode(&[0x41, ESCAPE]),
            (
                "A".to_string(),
                DecodeReport {
                    replaced: 0,
                    trailing_bytes: 1
                }
            )
        );
        // Unknown extension code shows the basic character; double escape a space.
        assert_eq!(decode(&[ESCAPE, 0x41]).0, "A");
        assert_eq!(decode(&[ESCAPE, ESCAPE]).0, " ");
        let (text, report) = decode(&[0x80, 0xFF, ESCAPE, 0x90]);
        assert_eq!(text, "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(report.replaced, 3);
    }

    #[test]
    fn fill_bits_match_ts_23_040() {
        assert_eq!(fill_bits_after_udh(6), 1);
        assert_eq!(fill_bits_after_udh(7), 0);
        assert_eq!(fill_bits_after_udh(0), 0);
        assert_eq!(fill_bits_after_udh(1), 6);
        assert_eq!(fill_bits_after_udh(12), 2);
    }

    #[test]
    fn packs_the_textbook_example() {
        // "hellohello" from the 3GPP examples.
        let mut packed = Vec::new();
        pack_septets(&encode("hellohello"), 0, &mut packed);
        assert_eq!(hex::encode(&packed), "e8329bfd4697d9ec37");
        let mut unpacked = Vec::new();
        assert_eq!(unpack_septets(&packed, 0, Some(10), &mut unpacked), 10);
        assert_eq!(decode(&unpacked).0, "hellohello");
    }

    #[test]
    fn pack_round_trips_with_every_fill() {
        let body: Vec<u8> = (0u8..128).chain(0u8..35).collect();
        for fill in 0u8..=7 {
            for len in [0usize, 1, 7, 8, 9, 153, body.len()] {
                let septets = &body[..len];
                let mut packed = Vec::new();
                pack_septets(septets, fill, &mut packed);
                assert_eq!(packed.len(), packed_len(len, fill), "fill {fill} len {len}");
                if len > 0 {
                    // The fill bits are zero.
                    assert_eq!(packed[0] & ((1u16 << fill) - 1) as u8, 0);
                }
                let mut unpacked = Vec::new();
                assert_eq!(unpack_septets(&packed, fill, Some(len), &mut unpacked), len);
                assert_eq!(unpacked, septets, "fill {fill} len {len}");
            }
        }
    }

    #[test]
    fn full_udh_segment_packs_into_134_octets() {
        assert_eq!(6 + packed_len(153, fill_bits_after_udh(6)), 140);
        assert_eq!(7 + packed_len(152, fill_bits_after_udh(7)), 140);
        assert_eq!(packed_len(160, 0), 140);
    }

    #[test]
    fn unpack_stops_at_available_septets() {
        let mut out = Vec::new();
        assert_eq!(unpack_septets(&[0xFF, 0xFF], 3, Some(10), &mut out), 1);
        assert_eq!(unpack_septets(&[], 0, None, &mut out), 0);
    }
}

//! UCS-2 as SMPP peers really use it (data_coding 8): UTF-16 big-endian, with
//! surrogate pairs for characters outside the Basic Multilingual Plane.
//!
//! Owns: the byte layout of UTF-16BE and the handling of broken input.
//! Must not touch: segmentation (which keeps pairs together, see `segment`).

use super::DecodeReport;

/// Code units `text` needs in UTF-16 (a surrogate pair counts 2).
pub fn unit_count(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// Appends `text` as UTF-16BE to `out`. Every string is representable.
pub fn encode_into(text: &str, out: &mut Vec<u8>) {
    out.reserve(text.len() * 2);
    let mut units = [0u16; 2];
    for ch in text.chars() {
        for unit in ch.encode_utf16(&mut units) {
            out.extend_from_slice(&unit.to_be_bytes());
        }
    }
}

/// Appends the text of UTF-16BE `bytes` to `out`. An unpaired surrogate
/// becomes U+FFFD (counted in `replaced`); an odd final octet is not decoded
/// (counted in `trailing_bytes`).
pub fn decode_into(bytes: &[u8], out: &mut String) -> DecodeReport {
    let mut report = DecodeReport {
        replaced: 0,
        trailing_bytes: bytes.len() % 2,
    };
    out.reserve(bytes.len());
    let units = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    for decoded in char::decode_utf16(units) {
        match decoded {
            Ok(ch) => out.push(ch),
            Err(_) => {
                out.push(char::REPLACEMENT_CHARACTER);
                report.replaced += 1;
            }
        }
    }
    report
}

/// True for the first half of a surrogate pair.
#[inline]
pub fn is_high_surrogate(unit: u16) -> bool {
    (0xD800..=0xDBFF).contains(&unit)
}

/// True for the second half of a surrogate pair.
#[inline]
pub fn is_low_surrogate(unit: u16) -> bool {
    (0xDC00..=0xDFFF).contains(&unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (String, DecodeReport) {
        let mut out = String::new();
        let report = decode_into(bytes, &mut out);
        (out, report)
    }

    #[test]
    fn encodes_big_endian_with_surrogate_pairs() {
        let mut out = Vec::new();
        encode_into("Aé😀", &mut out);
        assert_eq!(hex::encode(&out), "004100e9d83dde00");
        assert_eq!(unit_count("Aé😀"), 4);
        assert_eq!(decode(&out), ("Aé😀".to_string(), DecodeReport::default()));
    }

    #[test]
    fn unpaired_surrogates_become_replacement_chars() {
        // Lone high, lone low, high followed by a non-surrogate.
        let (text, report) = decode(&[0xD8, 0x3D, 0x00, 0x41, 0xDE, 0x00, 0xD8, 0x3D]);
        assert_eq!(text, "\u{FFFD}A\u{FFFD}\u{FFFD}");
        assert_eq!(report.replaced, 3);
    }

    #[test]
    fn odd_length_decodes_the_whole_units_and_reports() {
        let (text, report) = decode(&[0x00, 0x41, 0x00]);
        assert_eq!(text, "A");
        assert_eq!(report.trailing_bytes, 1);
        assert_eq!(decode(&[0x42]).1.trailing_bytes, 1);
    }
}

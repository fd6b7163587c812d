//! Text encodings of SMPP short messages: what a data_coding value means, and
//! conversion between Unicode and the octets SMPP carries.
//!
//! Owns: the data_coding → encoding mapping (with the per-connector meaning of
//! 0), GSM 03.38 (`gsm`), UCS-2/UTF-16BE (`ucs2`), Latin-1, IA5/ASCII, binary,
//! and the choice of the smallest encoding for a string.
//! Must not touch: PDU fields, TLVs, segmentation (`segment`) or I/O. Works on
//! plain bytes and strings so the codec, the HTTP API and connectors can share it.
//!
//! The hot path (a 160-character message) writes into caller-provided buffers
//! (`encode_into`, `decode_into`) and allocates nothing else.

pub mod gsm;
pub mod ucs2;

use crate::smpp::CommandStatus;

/// How the octets of a short message represent text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// GSM 03.38 default alphabet, unpacked (one septet per octet).
    Gsm7,
    /// IA5 / US-ASCII.
    Ascii,
    /// ISO-8859-1.
    Latin1,
    /// Octets with no text meaning.
    Binary,
    /// UTF-16 big-endian (peers call it UCS-2 but send surrogate pairs).
    Ucs2,
}

/// What data_coding 0 ("SMSC default alphabet") means on a given link. Peers
/// disagree, so each connector (and customer bind) is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DefaultAlphabet {
    #[default]
    Gsm7,
    Latin1,
    Ascii,
}

impl DefaultAlphabet {
    pub fn encoding(self) -> Encoding {
        match self {
            DefaultAlphabet::Gsm7 => Encoding::Gsm7,
            DefaultAlphabet::Latin1 => Encoding::Latin1,
            DefaultAlphabet::Ascii => Encoding::Ascii,
        }
    }
}

/// GSM message class (TS 23.038): 0 flash, 1 ME-specific, 2 SIM-specific,
/// 3 TE-specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageClass(u8);

impl MessageClass {
    pub const FLASH: MessageClass = MessageClass(0);
    pub const ME: MessageClass = MessageClass(1);
    pub const SIM: MessageClass = MessageClass(2);
    pub const TE: MessageClass = MessageClass(3);

    /// Class from the two low bits of a DCS.
    fn from_low_bits(dcs: u8) -> MessageClass {
        MessageClass(dcs & 0x03)
    }

    pub fn value(self) -> u8 {
        self.0
    }
}

/// A data_coding value understood: its encoding and message class, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataCoding {
    pub encoding: Encoding,
    pub message_class: Option<MessageClass>,
}

impl DataCoding {
    pub const fn plain(encoding: Encoding) -> DataCoding {
        DataCoding {
            encoding,
            message_class: None,
        }
    }

    /// Interprets an SMPP data_coding value. `default` says what 0 means on
    /// this link.
    ///
    /// Accepted: 0x00..=0x04 and 0x08 (SMPP 3.4); 0x10..=0x1F (TS 23.038
    /// general coding with a message class, the only way to send UCS-2 flash
    /// messages); 0xF0..=0xFF (message-class control; the reserved bit 3 is
    /// ignored, as peers set it). Everything else, including the compressed and
    /// message-waiting groups and the national character sets we do not
    /// convert (JIS, Cyrillic, Hebrew, KS C 5601), is `UnsupportedDataCoding`,
    /// which the server answers with ESME_RINVDCS.
    pub fn from_smpp(value: u8, default: DefaultAlphabet) -> Result<DataCoding, TextError> {
        let plain = |encoding| Ok(DataCoding::plain(encoding));
        let classed = |encoding| {
            Ok(DataCoding {
                encoding,
                message_class: Some(MessageClass::from_low_bits(value)),
            })
        };
        match value {
            0x00 => plain(default.encoding()),
            0x01 => plain(Encoding::Ascii),
            0x02 | 0x04 => plain(Encoding::Binary),
            0x03 => plain(Encoding::Latin1),
            0x08 => plain(Encoding::Ucs2),
            0x10..=0x1F => match (value >> 2) & 0x03 {
                0 => classed(Encoding::Gsm7),
                1 => classed(Encoding::Binary),
                2 => classed(Encoding::Ucs2),
                _ => Err(TextError::UnsupportedDataCoding(value)),
            },
            0xF0..=0xFF if value & 0x04 == 0 => classed(Encoding::Gsm7),
            0xF0..=0xFF => classed(Encoding::Binary),
            _ => Err(TextError::UnsupportedDataCoding(value)),
        }
    }

    /// The data_coding value to send for this coding on a link whose 0 means
    /// `default`.
    ///
    /// GSM text without a class on a link where 0 is not GSM goes out as 0xF1
    /// (class 1, what such peers expect). Latin-1 and ASCII have no way to
    /// carry a class, so it is dropped for them.
    pub fn to_smpp(self, default: DefaultAlphabet) -> u8 {
        match (self.encoding, self.message_class) {
            (encoding, None) if encoding == default.encoding() => 0x00,
            (Encoding::Gsm7, None) => 0xF1,
            (Encoding::Gsm7, Some(class)) => 0xF0 | class.value(),
            (Encoding::Ascii, _) => 0x01,
            (Encoding::Latin1, _) => 0x03,
            (Encoding::Binary, None) => 0x04,
            (Encoding::Binary, Some(class)) => 0xF4 | class.value(),
            (Encoding::Ucs2, None) => 0x08,
            (Encoding::Ucs2, Some(class)) => 0x18 | class.value(),
        }
    }
}

/// Why text could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("data_coding {0:#04x} is not supported")]
    UnsupportedDataCoding(u8),
    #[error("character {ch:?} at byte {byte_offset} has no mapping in {encoding:?}")]
    Unmappable {
        ch: char,
        byte_offset: usize,
        encoding: Encoding,
    },
    #[error("binary data has no text form")]
    NotText,
}

impl TextError {
    /// The command_status an SMPP request failing this way earns.
    pub fn command_status(&self) -> CommandStatus {
        CommandStatus::ESME_RINVDCS
    }
}

/// What a tolerant decode had to paper over. Decoding never fails on bad
/// bytes; callers that care (logs, metrics) read this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeReport {
    /// Characters shown as U+FFFD.
    pub replaced: usize,
    /// Octets at the end that made no whole character (an odd UCS-2 octet, a
    /// lone GSM escape).
    pub trailing_bytes: usize,
}

impl DecodeReport {
    pub fn is_clean(&self) -> bool {
        self.replaced == 0 && self.trailing_bytes == 0
    }
}

/// Appends the text of `bytes` to `out`. Fails only for binary data.
pub fn decode_into(
    encoding: Encoding,
    bytes: &[u8],
    out: &mut String,
) -> Result<DecodeReport, TextError> {
    match encoding {
        Encoding::Gsm7 => Ok(gsm::decode_unpacked_into(bytes, out)),
        Encoding::Ucs2 => Ok(ucs2::decode_into(bytes, out)),
        Encoding::Latin1 => {
            out.reserve(bytes.len() * 2);
            out.extend(bytes.iter().map(|&b| char::from(b)));
            Ok(DecodeReport::default())
        }
        Encoding::Ascii => {
            out.reserve(bytes.len());
            let mut report = DecodeReport::default();
            for &b in bytes {
                if b.is_ascii() {
                    out.push(char::from(b));
                } else {
                    out.push(char::REPLACEMENT_CHARACTER);
                    report.replaced += 1;
                }
            }
            Ok(report)
        }
        Encoding::Binary => Err(TextError::NotText),
    }
}

/// The text of `bytes` under `coding`; bad bytes become U+FFFD.
pub fn decode(coding: DataCoding, bytes: &[u8]) -> Result<String, TextError> {
    let mut out = String::new();
    decode_into(coding.encoding, bytes, &mut out)?;
    Ok(out)
}

/// Appends `text` encoded to `out`. On an unmappable character `out` is left
/// as it was and the error names the character.
pub fn encode_into(encoding: Encoding, text: &str, out: &mut Vec<u8>) -> Result<(), TextError> {
    match encoding {
        Encoding::Gsm7 => gsm::encode_unpacked_into(text, out),
        Encoding::Ucs2 => {
            ucs2::encode_into(text, out);
            Ok(())
        }
        Encoding::Latin1 | Encoding::Ascii => {
            let limit = octet_limit(encoding);
            let start_len = out.len();
            out.reserve(text.len());
            for (byte_offset, ch) in text.char_indices() {
                match u8::try_from(u32::from(ch)) {
                    Ok(b) if u32::from(b) <= limit => out.push(b),
                    _ => {
                        out.truncate(start_len);
                        return Err(TextError::Unmappable {
                            ch,
                            byte_offset,
                            encoding,
                        });
                    }
                }
            }
            Ok(())
        }
        Encoding::Binary => Err(TextError::NotText),
    }
}

/// Like `encode_into`, substituting '?' for unmappable characters. Returns how
/// many were substituted.
pub fn encode_lossy_into(
    encoding: Encoding,
    text: &str,
    out: &mut Vec<u8>,
) -> Result<usize, TextError> {
    match encoding {
        Encoding::Gsm7 => Ok(gsm::encode_unpacked_lossy_into(text, out)),
        Encoding::Ucs2 => {
            ucs2::encode_into(text, out);
            Ok(0)
        }
        Encoding::Latin1 | Encoding::Ascii => {
            let limit = octet_limit(encoding);
            out.reserve(text.len());
            let mut substituted = 0;
            for ch in text.chars() {
                match u8::try_from(u32::from(ch)) {
                    Ok(b) if u32::from(b) <= limit => out.push(b),
                    _ => {
                        out.push(b'?');
                        substituted += 1;
                    }
                }
            }
            Ok(substituted)
        }
        Encoding::Binary => Err(TextError::NotText),
    }
}

/// `text` encoded under `coding`.
pub fn encode(coding: DataCoding, text: &str) -> Result<Vec<u8>, TextError> {
    let mut out = Vec::new();
    encode_into(coding.encoding, text, &mut out)?;
    Ok(out)
}

fn octet_limit(encoding: Encoding) -> u32 {
    match encoding {
        Encoding::Ascii => 0x7F,
        _ => 0xFF,
    }
}

/// The encoding chosen for a string and its length in that encoding's units:
/// septets for GSM, octets for Latin-1, UTF-16 code units for UCS-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodingChoice {
    pub encoding: Encoding,
    pub units: usize,
}

/// The smallest encoding every character of `text` fits: GSM 03.38 when all
/// characters map (extension characters count 2 septets), else Latin-1 if
/// `allow_latin1` and every character is in it, else UCS-2. GSM wins over
/// Latin-1 even where Latin-1 would be shorter (a text full of `{`), because
/// handsets rarely support Latin-1.
pub fn smallest_encoding(text: &str, allow_latin1: bool) -> EncodingChoice {
    let mut septets = Some(0usize);
    let mut latin1 = allow_latin1;
    let mut utf16_units = 0usize;
    let mut chars = 0usize;
    for ch in text.chars() {
        chars += 1;
        utf16_units += ch.len_utf16();
        if let Some(count) = septets {
            septets = gsm::septets_for(ch).map(|s| count + s.count());
        }
        latin1 &= u32::from(ch) <= 0xFF;
    }
    match septets {
        Some(units) => EncodingChoice {
            encoding: Encoding::Gsm7,
            units,
        },
        None if latin1 => EncodingChoice {
            encoding: Encoding::Latin1,
            units: chars,
        },
        None => EncodingChoice {
            encoding: Encoding::Ucs2,
            units: utf16_units,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dcs(value: u8) -> Result<DataCoding, TextError> {
        DataCoding::from_smpp(value, DefaultAlphabet::Gsm7)
    }

    #[test]
    fn data_coding_values_map_as_smpp_says() {
        assert_eq!(dcs(0), Ok(DataCoding::plain(Encoding::Gsm7)));
        assert_eq!(dcs(1), Ok(DataCoding::plain(Encoding::Ascii)));
        assert_eq!(dcs(2), Ok(DataCoding::plain(Encoding::Binary)));
        assert_eq!(dcs(3), Ok(DataCoding::plain(Encoding::Latin1)));
        assert_eq!(dcs(4), Ok(DataCoding::plain(Encoding::Binary)));
        assert_eq!(dcs(8), Ok(DataCoding::plain(Encoding::Ucs2)));
        for unsupported in [
            5u8, 6, 7, 9, 0x0A, 0x0D, 0x0E, 0x0F, 0x1C, 0x20, 0x3F, 0xC0, 0xE8,
        ] {
            let err = dcs(unsupported).unwrap_err();
            assert_eq!(err, TextError::UnsupportedDataCoding(unsupported));
            assert_eq!(err.command_status(), CommandStatus::ESME_RINVDCS);
        }
    }

    #[test]
    fn default_alphabet_is_per_link() {
        assert_eq!(
            DataCoding::from_smpp(0, DefaultAlphabet::Latin1).map(|c| c.encoding),
            Ok(Encoding::Latin1)
        );
        assert_eq!(
            DataCoding::from_smpp(0, DefaultAlphabet::Ascii).map(|c| c.encoding),
            Ok(Encoding::Ascii)
        );
    }

    #[test]
    fn message_class_variants() {
        for value in 0xF0u8..=0xFF {
            let coding = dcs(value).expect("class control group is supported");
            let expected = if value & 0x04 == 0 {
                Encoding::Gsm7
            } else {
                Encoding::Binary
            };
            assert_eq!(coding.encoding, expected, "{value:#x}");
            assert_eq!(coding.message_class, Some(MessageClass(value & 3)));
        }
        assert_eq!(
            dcs(0x18),
            Ok(DataCoding {
                encoding: Encoding::Ucs2,
                message_class: Some(MessageClass::FLASH)
            })
        );
        assert_eq!(dcs(0x11).map(|c| c.encoding), Ok(Encoding::Gsm7));
        assert_eq!(dcs(0x15).map(|c| c.encoding), Ok(Encoding::Binary));
    }

    #[test]
    fn to_smpp_round_trips_through_from_smpp() {
        let defaults = [
            DefaultAlphabet::Gsm7,
            DefaultAlphabet::Latin1,
            DefaultAlphabet::Ascii,
        ];
        for default in defaults {
            for value in 0u8..=0xFF {
                let Ok(coding) = DataCoding::from_smpp(value, default) else {
                    continue;
                };
                let sent = coding.to_smpp(default);
                let back =
                    DataCoding::from_smpp(sent, default).expect("we only send supported values");
                assert_eq!(
                    back.encoding, coding.encoding,
                    "{value:#x} via {sent:#x} ({default:?})"
                );
                let expected_class = match (coding.encoding, coding.message_class) {
                    (Encoding::Latin1 | Encoding::Ascii, _) => None,
                    // GSM on a link whose 0 is not GSM gains class 1, which is the point.
                    (Encoding::Gsm7, None) if default != DefaultAlphabet::Gsm7 => {
                        Some(MessageClass::ME)
                    }
                    (_, class) => class,
                };
                assert_eq!(
                    back.message_class, expected_class,
                    "{value:#x} ({default:?})"
                );
            }
        }
        assert_eq!(
            DataCoding::plain(Encoding::Gsm7).to_smpp(DefaultAlphabet::Latin1),
            0xF1
        );
        assert_eq!(
            DataCoding::plain(Encoding::Ucs2).to_smpp(DefaultAlphabet::Gsm7),
            0x08
        );
    }

    #[test]
    fn latin1_and_ascii() {
        let latin1 = DataCoding::plain(Encoding::Latin1);
        assert_eq!(encode(latin1, "café ÿ"), Ok(b"caf\xe9 \xff".to_vec()));
        assert_eq!(decode(latin1, b"caf\xe9"), Ok("café".to_string()));
        assert_eq!(
            encode(latin1, "a€"),
            Err(TextError::Unmappable {
                ch: '€',
                byte_offset: 1,
                encoding: Encoding::Latin1
            })
        );
        let ascii = DataCoding::plain(Encoding::Ascii);
        assert_eq!(encode(ascii, "plain {text}"), Ok(b"plain {text}".to_vec()));
        assert!(encode(ascii, "é").is_err());
        let mut out = String::new();
        let report = decode_into(Encoding::Ascii, b"a\xe9", &mut out).expect("ascii decodes");
        assert_eq!((out.as_str(), report.replaced), ("a\u{FFFD}", 1));
        let mut bytes = Vec::new();
        assert_eq!(encode_lossy_into(Encoding::Ascii, "aé€", &mut bytes), Ok(2));
        assert_eq!(bytes, b"a??");
    }

    #[test]
    fn binary_is_not_text() {
        let binary = DataCoding::plain(Encoding::Binary);
        assert_eq!(decode(binary, b"\x00\x01"), Err(TextError::NotText));
        assert_eq!(encode(binary, "x"), Err(TextError::NotText));
    }

    #[test]
    fn smallest_encoding_prefers_gsm_then_ucs2() {
        assert_eq!(
            smallest_encoding("Price: 5€ [ok]", false),
            EncodingChoice {
                encoding: Encoding::Gsm7,
                units: 17
            }
        );
        assert_eq!(
            smallest_encoding("naïve", false),
            EncodingChoice {
                encoding: Encoding::Ucs2,
                units: 5
            }
        );
        assert_eq!(
            smallest_encoding("naïve", true),
            EncodingChoice {
                encoding: Encoding::Latin1,
                units: 5
            }
        );
        assert_eq!(
            smallest_encoding("naïve 😀", true),
            EncodingChoice {
                encoding: Encoding::Ucs2,
                units: 8
            }
        );
        assert_eq!(
            smallest_encoding("", false),
            EncodingChoice {
                encoding: Encoding::Gsm7,
                units: 0
            }
        );
    }

    #[test]
    fn hot_path_writes_into_the_callers_buffers() {
        let text = "x".repeat(160);
        let mut bytes = Vec::with_capacity(160);
        encode_into(Encoding::Gsm7, &text, &mut bytes).expect("gsm text");
        let capacity = bytes.capacity();
        let mut decoded = String::with_capacity(160);
        decode_into(Encoding::Gsm7, &bytes, &mut decoded).expect("gsm decodes");
        assert_eq!(decoded, text);
        assert_eq!(
            bytes.capacity(),
            capacity,
            "no regrowth for a full single part"
        );
    }
}

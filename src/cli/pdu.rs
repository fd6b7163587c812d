//! `tern pdu decode|encode`: reading PDUs pasted from logs and captures, and
//! building PDUs from JSON.
//!
//! Owns: hex input parsing (spaces, newlines, `0x`, colons, Wireshark hex
//! dumps), the human listing of a PDU, its JSON form with the decoded text,
//! and the exit codes. Must not touch: the codec itself (it uses
//! `smpp::pdu`, `smpp::frame` and `smpp::tlv` through their public API).

use std::io::Read;

use bytes::BytesMut;
use clap::Subcommand;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::smpp::frame::{Frame, FrameDecoder};
use crate::smpp::pdu::{Body, DecodeError, Header, Pdu, ESM_UDHI};
use crate::smpp::tlv::{Tlvs, TypedValue};
use crate::smpp::{CommandId, CommandStatus};

#[derive(Debug, Subcommand)]
pub enum PduCommand {
    /// Decode PDUs given as hex: every header and body field, every TLV, and the message text.
    #[command(after_help = "\
Input: the argument, or stdin when absent. Spaces, newlines, colons, `0x`
prefixes and Wireshark hex dumps (offset column and ASCII column) are ignored,
so a PDU can be pasted as it appears in a log or a capture. Several PDUs in a
row are decoded one after the other.

Exit status: 0 when every PDU decodes, 1 when one does not (the reason, the
command_status a peer should answer with and the byte offset are printed),
2 on unusable input.

Examples:
  tern pdu decode 00000010000000150000000000000001
  tern pdu decode '00 00 00 10 00 00 00 15 00 00 00 00 00 00 00 01'
  pbpaste | tern pdu decode --json
  tern pdu decode < capture.hex")]
    Decode {
        /// The PDU(s) in hex. Read from stdin when absent.
        hex: Option<String>,
        /// Print one JSON object per PDU (the same shape `pdu encode` reads).
        #[arg(long)]
        json: bool,
    },
    /// Encode PDUs given as JSON and print them as hex, one line per PDU.
    #[command(after_help = "\
Input: JSON objects (one, an array, or one per line) from the argument,
--json-file, or stdin. The shape is the one `tern pdu decode --json` prints: `command`,
`command_status` (a name like ESME_ROK or a number; default ESME_ROK),
`sequence_number`, and `body` with the specification's field names. Omitted
body fields are empty or zero. Octet strings (short_message) are hex; TLVs are
`{\"tag\": \"sar_msg_ref_num\" or \"0x020C\", \"value\": 1}` or `{\"tag\": ..., \"hex\": \"..\"}`.

Examples:
  tern pdu encode '{\"command\":\"enquire_link\",\"sequence_number\":1}'
  tern pdu encode '{\"command\":\"submit_sm\",\"sequence_number\":2,\"body\":{\"source_addr\":\"Tern\",\"source_addr_ton\":5,\"dest_addr_ton\":1,\"dest_addr_npi\":1,\"destination_addr\":\"447700900123\",\"short_message\":\"68656c6c6f\"}}'
  tern pdu decode --json 0000001000000015000000000000000a | tern pdu encode")]
    Encode {
        /// The PDU(s) as JSON. Read from --json-file or stdin when absent.
        json: Option<String>,
        /// Read the JSON from this file.
        #[arg(long, value_name = "F", conflicts_with = "json")]
        json_file: Option<std::path::PathBuf>,
    },
}

/// Runs a `pdu` subcommand; returns the exit code.
pub fn run(command: PduCommand) -> i32 {
    match command {
        PduCommand::Decode { hex, json } => {
            let input = match hex {
                Some(h) => h,
                None => match read_stdin() {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("tern: cannot read stdin: {e}");
                        return 2;
                    }
                },
            };
            match parse_hex_input(&input) {
                Ok(octets) if octets.is_empty() => {
                    eprintln!("tern: no hex given");
                    2
                }
                Ok(octets) => {
                    let (text, code) = decode_report(&octets, json);
                    print!("{text}");
                    code
                }
                Err(e) => {
                    eprintln!("tern: {e}");
                    2
                }
            }
        }
        PduCommand::Encode { json, json_file } => {
            let input = match (json, json_file) {
                (Some(j), _) => Ok(j),
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display())),
                (None, None) => read_stdin().map_err(|e| format!("cannot read stdin: {e}")),
            };
            match input.and_then(|j| encode_json(&j)) {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    0
                }
                Err(e) => {
                    eprintln!("tern: {e}");
                    1
                }
            }
        }
    }
}

fn read_stdin() -> std::io::Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    Ok(s)
}

/// Octets from hex as people paste it. A line that looks like a hex dump
/// (an offset of 4 to 8 hex digits, then two spaces) contributes at most 16
/// two-digit groups after the offset, so its ASCII column is ignored.
pub fn parse_hex_input(input: &str) -> Result<Vec<u8>, String> {
    let mut digits = String::with_capacity(input.len());
    for (line_no, line) in input.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(groups) = hex_dump_groups(trimmed) {
            digits.extend(groups);
            continue;
        }
        let mut chars = trimmed.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '0' if matches!(chars.peek(), Some('x' | 'X')) => {
                    chars.next();
                }
                c if c.is_ascii_hexdigit() => digits.push(c),
                ' ' | '\t' | '\r' | ':' | ',' | '-' | '|' => {}
                other => {
                    return Err(format!(
                        "line {}: {other:?} is not hex (expected 0-9, a-f, spaces, colons, 0x)",
                        line_no + 1
                    ))
                }
            }
        }
    }
    if digits.len() % 2 != 0 {
        return Err(format!(
            "odd number of hex digits ({}): a nibble is missing",
            digits.len()
        ));
    }
    hex::decode(&digits).map_err(|e| format!("bad hex: {e}"))
}

/// The byte groups of a Wireshark/xxd-style hex dump line, or None when the
/// line does not look like one. The groups end at the 16th, at a token that
/// is not two hex digits, or at a gap of three spaces or more (the ASCII
/// column starts there, and it may itself look like hex).
fn hex_dump_groups(line: &str) -> Option<Vec<char>> {
    let (offset, rest) = line.split_once("  ")?;
    let offset = offset.trim_end_matches(':');
    if !(4..=8).contains(&offset.len()) || !offset.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let rest = rest.trim_start();
    let mut out = Vec::with_capacity(32);
    let mut groups = 0;
    let mut cursor = rest;
    while groups < 16 {
        let token_end = cursor.find(char::is_whitespace).unwrap_or(cursor.len());
        let (token, after) = cursor.split_at(token_end);
        if token.len() != 2 || !token.chars().all(|c| c.is_ascii_hexdigit()) {
            break;
        }
        out.extend(token.chars());
        groups += 1;
        let gap = after.len() - after.trim_start().len();
        if gap >= 3 {
            break;
        }
        cursor = after.trim_start();
    }
    (groups > 0).then_some(out)
}

/// Decodes every PDU in `octets`; returns the report and the exit code.
pub fn decode_report(octets: &[u8], json: bool) -> (String, i32) {
    let decoder = FrameDecoder::new(u32::MAX);
    let mut buf = BytesMut::from(octets);
    let mut out = String::new();
    let mut code = 0;
    let mut index = 0usize;
    let mut offset = 0usize;
    loop {
        if buf.is_empty() {
            break;
        }
        index += 1;
        let start_len = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(Frame::Pdu(pdu))) => {
                let len = start_len - buf.len();
                if json {
                    out.push_str(&pdu_json(&pdu, len).to_string());
                    out.push('\n');
                } else {
                    out.push_str(&format!("PDU {index} at octet {offset} ({len} octets)\n"));
                    out.push_str(&describe(&pdu, len));
                }
                offset += len;
            }
            Ok(Some(Frame::Rejected { header, error, .. })) => {
                code = 1;
                let len = start_len - buf.len();
                out.push_str(&error_report(Some(&header), &error, offset, json));
                offset += len;
            }
            Err(e) => {
                code = 1;
                out.push_str(&error_report(None, &e.error, offset, json));
                break;
            }
            Ok(None) => {
                code = 1;
                let header = Header::parse(&buf);
                let error = DecodeError::new(
                    CommandStatus::ESME_RINVCMDLEN,
                    buf.len(),
                    "command_length",
                    match header {
                        Some(h) => format!(
                            "truncated: command_length says {} octets but only {} were given",
                            h.command_length,
                            buf.len()
                        ),
                        None => format!(
                            "truncated: {} octet(s) given, a PDU header has 16",
                            buf.len()
                        ),
                    },
                );
                out.push_str(&error_report(header.as_ref(), &error, offset, json));
                break;
            }
        }
    }
    (out, code)
}

fn error_report(header: Option<&Header>, e: &DecodeError, pdu_offset: usize, json: bool) -> String {
    let status_name = e.status.name().unwrap_or("?");
    let command = header.map(|h| command_name(h.command_id));
    if json {
        let mut v = serde_json::json!({
            "error": {
                "status": status_name,
                "status_code": format!("0x{:08X}", e.status.0),
                "offset": e.offset,
                "field": e.field,
                "reason": e.reason,
            },
            "pdu_offset": pdu_offset,
        });
        if let (Some(h), Some(obj)) = (header, v.as_object_mut()) {
            obj.insert("command".into(), Value::from(command_name(h.command_id)));
            obj.insert("sequence_number".into(), Value::from(h.sequence_number));
        }
        return format!("{v}\n");
    }
    let mut s = format!(
        "INVALID PDU at octet {pdu_offset}{}\n",
        command.map(|c| format!(" ({c})")).unwrap_or_default()
    );
    if let Some(h) = header {
        s.push_str(&format!(
            "  sequence_number          {}\n",
            h.sequence_number
        ));
    }
    s.push_str(&format!("  field                    {}\n", e.field));
    s.push_str(&format!(
        "  offset                   {} (from the PDU start)\n",
        e.offset
    ));
    s.push_str(&format!(
        "  status                   {status_name} (0x{:08X}): {}\n",
        e.status.0,
        e.status.text()
    ));
    s.push_str(&format!("  reason                   {}\n", e.reason));
    s
}

fn command_name(id: u32) -> String {
    CommandId::from_u32(id)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| format!("unknown command 0x{id:08X}"))
}

/// The PDU as JSON plus what a person wants next to it: the length on the
/// wire and the decoded message text. `pdu encode` ignores the extras.
fn pdu_json(pdu: &Pdu, len: usize) -> Value {
    let mut v = serde_json::to_value(pdu).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("command_length".into(), Value::from(len));
        if let Some((text, _)) = message_text(pdu) {
            obj.insert("text".into(), Value::from(text));
        }
    }
    v
}

/// Body fields in the order the specification lists them (serde keeps
/// declaration order in the serialized text; a plain `Value` would sort).
struct OrderedFields(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for OrderedFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedFields, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    fields.push((k, v));
                }
                Ok(OrderedFields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

fn body_fields(body: &Body) -> Vec<(String, Value)> {
    #[derive(serde::Deserialize)]
    struct Tagged {
        #[serde(default)]
        body: Option<OrderedFields>,
    }
    serde_json::to_string(body)
        .ok()
        .and_then(|s| serde_json::from_str::<Tagged>(&s).ok())
        .and_then(|t| t.body)
        .map(|b| b.0)
        .unwrap_or_default()
}

fn describe(pdu: &Pdu, len: usize) -> String {
    let id = pdu.command_id();
    let mut s = String::new();
    let mut line = |name: &str, value: String| s.push_str(&format!("  {name:<24} {value}\n"));
    line("command_length", len.to_string());
    line("command_id", format!("0x{:08X} {}", id.as_u32(), id.name()));
    line(
        "command_status",
        format!(
            "0x{:08X} {} ({})",
            pdu.command_status.0,
            pdu.command_status.name().unwrap_or("unnamed"),
            pdu.command_status.text()
        ),
    );
    line("sequence_number", pdu.sequence_number.to_string());
    let data_coding = data_coding_of(&pdu.body);
    for (name, value) in body_fields(&pdu.body) {
        if name == "tlvs" {
            continue;
        }
        let shown = match (&value, name.as_str()) {
            (Value::String(h), "short_message") => {
                format!("{} octet(s): {h}", h.len() / 2)
            }
            (Value::String(t), _) => format!("{t:?}"),
            (Value::Number(n), _) => {
                let note = n
                    .as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .and_then(|n| field_note(&name, n, data_coding));
                match note {
                    Some(note) => format!("{n} ({note})"),
                    None => n.to_string(),
                }
            }
            (Value::Array(items), _) => {
                let mut t = format!(
                    "{} entr{}",
                    items.len(),
                    if items.len() == 1 { "y" } else { "ies" }
                );
                for item in items {
                    t.push_str(&format!("\n  {:<24}   {item}", ""));
                }
                t
            }
            (other, _) => other.to_string(),
        };
        line(&name, shown);
    }
    if let Some(tlvs) = tlvs_of(&pdu.body) {
        if !tlvs.is_empty() {
            s.push_str("  TLVs:\n");
            for t in tlvs.iter() {
                let value = match t.typed() {
                    TypedValue::U8(v) => v.to_string(),
                    TypedValue::U16(v) => v.to_string(),
                    TypedValue::U32(v) => v.to_string(),
                    TypedValue::Text(text) => format!("{:?}", String::from_utf8_lossy(text)),
                    TypedValue::NetworkErrorCode(c) => format!(
                        "network_type {} ({}), error_code {}",
                        c.network_type,
                        match c.network_type {
                            1 => "ANSI-136",
                            2 => "IS-95",
                            3 => "GSM",
                            4 => "ANSI-41",
                            _ => "unknown",
                        },
                        c.error_code
                    ),
                    TypedValue::Octets(o) => hex::encode(o),
                };
                let note = match (t.tag, t.value) {
                    (crate::smpp::tlv::tag::MESSAGE_STATE, [state]) => message_state_name(*state)
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                s.push_str(&format!(
                    "    0x{:04X} {:<28} len {:<4} {value}{note}\n",
                    t.tag,
                    t.name().unwrap_or("(vendor/unknown)"),
                    t.value.len()
                ));
            }
        }
    }
    if let Some((text, how)) = message_text(pdu) {
        s.push_str(&format!("  {:<24} {text:?}\n", format!("text ({how})")));
    }
    if let Some(receipt) = receipt_summary(pdu) {
        s.push_str(&format!("  {:<24} {receipt}\n", "receipt"));
    }
    s
}

/// For a delivery receipt: what tern would match and report, with the TLVs
/// winning over the text as they do in the gateway.
fn receipt_summary(pdu: &Pdu) -> Option<String> {
    let (esm_class, message, tlvs) = match &pdu.body {
        Body::DeliverSm(m) => (m.esm_class, m.message(), &m.tlvs),
        Body::DataSm(m) => (
            m.esm_class,
            m.tlvs.message_payload().unwrap_or_default(),
            &m.tlvs,
        ),
        _ => return None,
    };
    let receipted_id = tlvs.receipted_message_id();
    let found = crate::smpp::receipt::identify_receipt(
        esm_class,
        &message,
        receipted_id.as_ref().map(|id| id.as_bytes()),
        tlvs.message_state(),
        tlvs.network_error_code(),
        crate::smpp::receipt::ReceiptSyntax::default(),
    );
    match found {
        Ok(Some(r)) => {
            let receipt = r.receipt;
            let stat = receipt.stat.as_ref().map_or("-", |s| s.stat_text());
            let err = receipt.err.as_ref().map_or("-", |e| e.text.as_str());
            let done = receipt
                .done_date
                .map_or_else(|| "-".to_string(), |d| d.to_string());
            Some(format!(
                "{:?} id={} stat={stat} err={err} done={done}",
                r.kind, receipt.id
            ))
        }
        Ok(None) => None,
        Err(e) => Some(format!("unreadable receipt: {e}")),
    }
}

fn tlvs_of(body: &Body) -> Option<&Tlvs> {
    match body {
        Body::SubmitSm(m) | Body::DeliverSm(m) => Some(&m.tlvs),
        Body::SubmitMulti(m) => Some(&m.tlvs),
        Body::DataSm(m) => Some(&m.tlvs),
        Body::DataSmResp(m) => Some(&m.tlvs),
        Body::AlertNotification(m) => Some(&m.tlvs),
        Body::BindReceiverResp(m) | Body::BindTransmitterResp(m) | Body::BindTransceiverResp(m) => {
            Some(&m.tlvs)
        }
        _ => None,
    }
}

fn data_coding_of(body: &Body) -> Option<u8> {
    match body {
        Body::SubmitSm(m) | Body::DeliverSm(m) => Some(m.data_coding),
        Body::SubmitMulti(m) => Some(m.data_coding),
        Body::DataSm(m) => Some(m.data_coding),
        _ => None,
    }
}

fn field_note(field: &str, value: u8, _data_coding: Option<u8>) -> Option<String> {
    let name: Option<&str> = match field {
        f if f.ends_with("_ton") => match value {
            0 => Some("unknown"),
            1 => Some("international"),
            2 => Some("national"),
            3 => Some("network specific"),
            4 => Some("subscriber number"),
            5 => Some("alphanumeric"),
            6 => Some("abbreviated"),
            _ => Some("INVALID TON"),
        },
        f if f.ends_with("_npi") => match value {
            0 => Some("unknown"),
            1 => Some("ISDN E.163/E.164"),
            3 => Some("data X.121"),
            4 => Some("telex F.69"),
            6 => Some("land mobile E.212"),
            8 => Some("national"),
            9 => Some("private"),
            10 => Some("ERMES"),
            14 => Some("Internet IP"),
            18 => Some("WAP client id"),
            _ => Some("INVALID NPI"),
        },
        "data_coding" => Some(match value {
            0 => "SMSC default alphabet (GSM 03.38 here)",
            1 => "IA5/ASCII",
            2 | 4 => "8-bit binary",
            3 => "Latin-1",
            5 => "JIS",
            6 => "Cyrillic",
            7 => "Latin/Hebrew",
            8 => "UCS-2",
            9 => "pictogram",
            10 => "ISO-2022-JP",
            13 => "extended Kanji",
            14 => "KS C 5601",
            0xF0..=0xF3 => "GSM 7-bit with message class",
            0xF4..=0xF7 => "8-bit with message class",
            _ => "reserved or message waiting",
        }),
        "esm_class" => {
            let kind = match value & 0x3C {
                0x00 => "default type",
                0x04 => "delivery receipt",
                0x08 => "delivery ack",
                0x10 => "manual/user ack",
                0x18 => "conversation abort",
                0x20 => "intermediate notification",
                _ => "reserved type",
            };
            let mut t = kind.to_string();
            if value & ESM_UDHI != 0 {
                t.push_str(", UDHI");
            }
            if value & 0x80 != 0 {
                t.push_str(", reply path");
            }
            return Some(t);
        }
        "registered_delivery" => Some(match value & 0x03 {
            0 => "no receipt",
            1 => "receipt on final state",
            2 => "receipt on failure",
            _ => "receipt on success (SMPP 5.0)",
        }),
        "message_state" => message_state_name(value),
        _ => None,
    };
    name.map(str::to_string)
}

fn message_state_name(state: u8) -> Option<&'static str> {
    Some(match state {
        0 => "SCHEDULED",
        1 => "ENROUTE",
        2 => "DELIVERED",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIVERABLE",
        6 => "ACCEPTED",
        7 => "UNKNOWN",
        8 => "REJECTED",
        9 => "SKIPPED",
        _ => return None,
    })
}

/// The message text and how it was decoded, for PDUs that carry one.
fn message_text(pdu: &Pdu) -> Option<(String, &'static str)> {
    let (message, data_coding, esm_class) = match &pdu.body {
        Body::SubmitSm(m) | Body::DeliverSm(m) => (m.message(), m.data_coding, m.esm_class),
        Body::SubmitMulti(m) => {
            let message = if m.short_message.is_empty() {
                m.tlvs.message_payload().unwrap_or_default()
            } else {
                m.short_message.clone()
            };
            (message, m.data_coding, m.esm_class)
        }
        Body::DataSm(m) => (m.tlvs.message_payload()?, m.data_coding, m.esm_class),
        _ => return None,
    };
    if message.is_empty() {
        return None;
    }
    let text_part = if esm_class & ESM_UDHI != 0 {
        let udh_len = usize::from(*message.first()?) + 1;
        message.get(udh_len..)?
    } else {
        &message[..]
    };
    Some(text::decode(data_coding, text_part))
}

/// Display-only text decoding on top of `smpp::text`: binary (and codings we
/// do not support) are shown as hex rather than refused, since a person reading
/// a capture wants to see the octets either way.
mod text {
    use crate::smpp::text::{self, DataCoding, DefaultAlphabet, Encoding};

    pub fn decode(data_coding: u8, octets: &[u8]) -> (String, &'static str) {
        let Ok(coding) = DataCoding::from_smpp(data_coding, DefaultAlphabet::Gsm7) else {
            return (hex::encode(octets), "unsupported data_coding, shown as hex");
        };
        let how = match coding.encoding {
            Encoding::Gsm7 => "GSM 03.38",
            Encoding::Ascii => "ASCII",
            Encoding::Latin1 => "Latin-1",
            Encoding::Ucs2 => "UCS-2",
            Encoding::Binary => return (hex::encode(octets), "binary, shown as hex"),
        };
        match text::decode(coding, octets) {
            Ok(decoded) => (decoded, how),
            Err(_) => (hex::encode(octets), "binary, shown as hex"),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn decodes_the_three_alphabets() {
            // 0x00 is '@' and 0x40 is '¡' in GSM; ESC 0x65 is the euro sign.
            assert_eq!(
                super::decode(0, b"Hello \x00 \x1B\x65 \x40").0,
                "Hello @ € ¡"
            );
            assert_eq!(super::decode(3, &[0x63, 0x61, 0x66, 0xE9]).0, "café");
            assert_eq!(
                super::decode(8, &[0x04, 0x1F, 0xD8, 0x3D, 0xDE, 0x00]).0,
                "П😀"
            );
            assert_eq!(super::decode(4, &[0xAB]).1, "binary, shown as hex");
        }
    }
}

/// Encodes JSON PDUs; one hex line per PDU.
pub fn encode_json(input: &str) -> Result<Vec<String>, String> {
    // One value, an array, or one value per line (what `decode --json` prints).
    let mut items = Vec::new();
    for value in serde_json::Deserializer::from_str(input).into_iter::<Value>() {
        match value.map_err(|e| format!("bad JSON: {e}"))? {
            Value::Array(more) => items.extend(more),
            single => items.push(single),
        }
    }
    if items.is_empty() {
        return Err("no JSON given".to_string());
    }
    let mut lines = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let pdu: Pdu = serde_json::from_value(item).map_err(|e| format!("PDU {}: {e}", i + 1))?;
        let bytes = pdu.to_bytes().map_err(|e| format!("PDU {}: {e}", i + 1))?;
        lines.push(hex::encode(bytes));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBMIT_SM: &str = "0000004500000004000000000000000743 4D54 00 01 01 34343132333400 \
        01 01 34343938373600 00 00 01 00 00 01 00 00 00 05 68656C6C6F \
        020C 0002 1234 020E 0001 02 020F 0001 01";

    #[test]
    fn hex_input_tolerates_log_and_capture_formats() {
        let want = hex::decode("0000001000000015").unwrap();
        for input in [
            "0000001000000015",
            "00 00 00 10 00 00 00 15\n",
            "0x00 0x00 0x00 0x10, 0x00 0x00 0x00 0x15",
            "00:00:00:10:00:00:00:15",
            "0000  00 00 00 10 00 00 00 15                          ........",
        ] {
            assert_eq!(parse_hex_input(input).unwrap(), want, "{input:?}");
        }
        let dump = "0000   00 00 00 10 00 00 00 15  00 00 00 00 00 00 00 01   ................\n";
        assert_eq!(parse_hex_input(dump).unwrap().len(), 16);
        // A short last line whose ASCII column looks like hex.
        let dump = "0000   00 00 00 10 00 00 00 15  00 00 00 00 00 00 00 01   ................\n\
                    0010   ab cd   ab cd\n";
        assert_eq!(parse_hex_input(dump).unwrap().len(), 18);
        assert!(parse_hex_input("00 0g").unwrap_err().contains("not hex"));
        assert!(parse_hex_input("000").unwrap_err().contains("odd"));
    }

    #[test]
    fn decode_lists_fields_tlvs_and_text() {
        let octets = parse_hex_input(SUBMIT_SM).unwrap();
        let (report, code) = decode_report(&octets, false);
        assert_eq!(code, 0, "{report}");
        for needle in [
            "command_id               0x00000004 submit_sm",
            "ESME_ROK",
            "source_addr              \"441234\"",
            "source_addr_ton          1 (international)",
            "0x020C sar_msg_ref_num",
            "len 2    4660",
            "text (GSM 03.38)         \"hello\"",
        ] {
            assert!(report.contains(needle), "missing {needle:?} in\n{report}");
        }
    }

    #[test]
    fn decode_reports_every_pdu_and_errors_with_offset() {
        let two = "00000010000000150000000000000001 00000010800000150000000000000001";
        let (report, code) = decode_report(&parse_hex_input(two).unwrap(), false);
        assert_eq!(code, 0);
        assert!(report.contains("PDU 1 at octet 0") && report.contains("PDU 2 at octet 16"));

        let bad = "0000001D 00000004 00000000 00000009 00 01 01 31313131313131313131";
        let (report, code) = decode_report(&parse_hex_input(bad).unwrap(), false);
        assert_eq!(code, 1);
        assert!(report.contains("ESME_RINVSRCADR"), "{report}");
        assert!(report.contains("offset                   19"), "{report}");

        let (report, code) = decode_report(&parse_hex_input("00000020 00000015").unwrap(), true);
        assert_eq!(code, 1);
        let v: Value = serde_json::from_str(report.trim()).unwrap();
        assert_eq!(v["error"]["status"], "ESME_RINVCMDLEN");
    }

    #[test]
    fn json_decode_output_encodes_back_to_the_same_octets() {
        let octets = parse_hex_input(SUBMIT_SM).unwrap();
        let (report, code) = decode_report(&octets, true);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(report.trim()).unwrap();
        assert_eq!(v["text"], "hello");
        assert_eq!(v["command_length"], 69);
        let lines = encode_json(report.trim()).unwrap();
        assert_eq!(lines, vec![hex::encode(&octets)]);
        let two = format!("{}\n{}", report.trim(), report.trim());
        assert_eq!(encode_json(&two).unwrap().len(), 2);
        assert!(encode_json("  ").is_err());
        assert!(
            encode_json("{\"command\":\"enquire_link\"}").is_err(),
            "sequence_number is required"
        );
    }
}

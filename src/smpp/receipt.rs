//! Delivery receipts: the de-facto text form, the receipt TLVs, and the id
//! normalisation that lets an operator's receipt find the message it reports.
//!
//! Owns: parsing receipt texts tolerantly (any case, fields missing, reordered
//! or extra, 10- or 12-digit dates, `text:` running to the end), formatting the
//! text we send to customers, telling a receipt from an MO by esm_class,
//! merging receipted_message_id / message_state / network_error_code over the
//! text, the MessageState <-> stat text <-> message_state value mapping, and
//! the per-connector [`IdFormat`] policy. Must not touch: PDU decoding (callers
//! pass plain field values), the store or routing (it only builds the key the
//! store matches on), or clocks.

use std::fmt;

use crate::smpp::time::DateTime;

/// Extra fields kept per receipt; more are dropped so a hostile text cannot
/// make us keep thousands of small strings.
pub const MAX_EXTRA_FIELDS: usize = 32;

/// Characters of the message text a formatted receipt repeats.
pub const RECEIPT_TEXT_CHARS: usize = 20;

/// Message states (SMPP 3.4 section 5.2.28, SMPP 5.0 adds SCHEDULED and
/// SKIPPED). `Other` keeps a stat text we do not know, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageState {
    Scheduled,
    Enroute,
    Delivered,
    Expired,
    Deleted,
    Undeliverable,
    Accepted,
    Unknown,
    Rejected,
    Skipped,
    Other(String),
}

impl MessageState {
    /// The message_state TLV value (0x0427).
    pub fn from_message_state(value: u8) -> Option<MessageState> {
        Some(match value {
            0 => MessageState::Scheduled,
            1 => MessageState::Enroute,
            2 => MessageState::Delivered,
            3 => MessageState::Expired,
            4 => MessageState::Deleted,
            5 => MessageState::Undeliverable,
            6 => MessageState::Accepted,
            7 => MessageState::Unknown,
            8 => MessageState::Rejected,
            9 => MessageState::Skipped,
            _ => return None,
        })
    }

    pub fn message_state(&self) -> Option<u8> {
        Some(match self {
            MessageState::Scheduled => 0,
            MessageState::Enroute => 1,
            MessageState::Delivered => 2,
            MessageState::Expired => 3,
            MessageState::Deleted => 4,
            MessageState::Undeliverable => 5,
            MessageState::Accepted => 6,
            MessageState::Unknown => 7,
            MessageState::Rejected => 8,
            MessageState::Skipped => 9,
            MessageState::Other(_) => return None,
        })
    }

    /// The receipt `stat:` text. SCHEDULED and SKIPPED have no de-facto
    /// seven-letter form; we use SCHEDLD and SKIPPED.
    pub fn stat_text(&self) -> &str {
        match self {
            MessageState::Scheduled => "SCHEDLD",
            MessageState::Enroute => "ENROUTE",
            MessageState::Delivered => "DELIVRD",
            MessageState::Expired => "EXPIRED",
            MessageState::Deleted => "DELETED",
            MessageState::Undeliverable => "UNDELIV",
            MessageState::Accepted => "ACCEPTD",
            MessageState::Unknown => "UNKNOWN",
            MessageState::Rejected => "REJECTD",
            MessageState::Skipped => "SKIPPED",
            MessageState::Other(text) => text,
        }
    }

    /// Reads a `stat:` value in any case; the spelled-out names some operators
    /// send (DELIVERED, UNDELIVERABLE, ...) map to the same states.
    pub fn from_stat_text(text: &str) -> MessageState {
        const NAMES: [(&str, MessageState); 19] = [
            ("DELIVRD", MessageState::Delivered),
            ("DELIVERED", MessageState::Delivered),
            ("UNDELIV", MessageState::Undeliverable),
            ("UNDELIVERABLE", MessageState::Undeliverable),
            ("UNDELIVERED", MessageState::Undeliverable),
            ("EXPIRED", MessageState::Expired),
            ("DELETED", MessageState::Deleted),
            ("ACCEPTD", MessageState::Accepted),
            ("ACCEPTED", MessageState::Accepted),
            ("UNKNOWN", MessageState::Unknown),
            ("REJECTD", MessageState::Rejected),
            ("REJECTED", MessageState::Rejected),
            ("ENROUTE", MessageState::Enroute),
            ("SCHEDLD", MessageState::Scheduled),
            ("SCHEDULED", MessageState::Scheduled),
            ("SKIPPED", MessageState::Skipped),
            ("DELIVR", MessageState::Delivered),
            ("UNDELIVR", MessageState::Undeliverable),
            ("REJECT", MessageState::Rejected),
        ];
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, state)| state.clone())
            .unwrap_or_else(|| MessageState::Other(text.to_owned()))
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.stat_text())
    }
}

/// A number field kept as sent (`sub:001`) with its value when decimal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReceiptNumber {
    pub text: String,
    pub value: Option<u32>,
}

impl ReceiptNumber {
    pub fn parse(text: &str) -> ReceiptNumber {
        let value = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse().ok()
        } else {
            None
        };
        ReceiptNumber {
            text: text.to_owned(),
            value,
        }
    }

    pub fn from_value(value: u32) -> ReceiptNumber {
        ReceiptNumber {
            text: format!("{value:03}"),
            value: Some(value),
        }
    }
}

/// The network_error_code TLV (0x0423), as the codec reads it.
pub use crate::smpp::tlv::NetworkErrorCode;

/// A delivery receipt, however it arrived. Fields the text did not carry are
/// `None`. When TLVs overrode a text field, the text's value is kept in
/// `extra` under its field name so nothing the operator said is lost.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Receipt {
    /// The operator's id for the message, exactly as sent.
    pub id: String,
    pub sub: Option<ReceiptNumber>,
    pub dlvrd: Option<ReceiptNumber>,
    pub submit_date: Option<DateTime>,
    pub done_date: Option<DateTime>,
    pub stat: Option<MessageState>,
    /// `err:` as sent (e.g. "0B1"), with its value when decimal.
    pub err: Option<ReceiptNumber>,
    pub network_error: Option<NetworkErrorCode>,
    /// Everything after `text:`, colons included.
    pub text: Option<String>,
    /// Unknown fields, unparseable known fields and overridden fields, in the
    /// order met, names as written.
    pub extra: Vec<(String, String)>,
}

/// Why a text or PDU could not be read as a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptParseError {
    #[error("receipt carries no message id (no id: field, no receipted_message_id)")]
    MissingId,
}

/// Choices per operator for the parts of the text form nobody agrees on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiptSyntax {
    /// Some operators append fields after the text (`text:hi nw:23410`).
    /// When set, trailing `name:value` words of the text whose names are not
    /// receipt fields become extra fields; the text then loses them. Off by
    /// default: the text runs to the end, as the de-facto form says.
    pub fields_after_text: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Sub,
    Dlvrd,
    SubmitDate,
    DoneDate,
    Stat,
    Err,
    Text,
}

impl Field {
    fn from_name(name: &str) -> Option<Field> {
        const NAMES: [(&str, Field); 14] = [
            ("id", Field::Id),
            ("sub", Field::Sub),
            ("dlvrd", Field::Dlvrd),
            ("submit_date", Field::SubmitDate),
            ("submit-date", Field::SubmitDate),
            ("submitdate", Field::SubmitDate),
            ("done_date", Field::DoneDate),
            ("done-date", Field::DoneDate),
            ("donedate", Field::DoneDate),
            ("stat", Field::Stat),
            ("state", Field::Stat),
            ("err", Field::Err),
            ("error", Field::Err),
            ("text", Field::Text),
        ];
        NAMES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, field)| *field)
    }
}

#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Known(Field),
    Extra(&'a str),
}

struct KeyMatch<'a> {
    key: Key<'a>,
    /// The name as written, e.g. "Submit date".
    written: &'a str,
    value_start: usize,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// A field name starting at `start` and its colon: `name:` or the two-word
/// `submit date:` / `done date:`.
fn key_at(text: &str, start: usize) -> Option<KeyMatch<'_>> {
    let bytes = text.as_bytes();
    let rest = bytes.get(start..)?;
    let name_end = start + rest.iter().take_while(|b| is_name_byte(**b)).count();
    let name = text.get(start..name_end).filter(|n| !n.is_empty())?;
    match bytes.get(name_end) {
        Some(b':') => Some(KeyMatch {
            key: Field::from_name(name).map_or(Key::Extra(name), Key::Known),
            written: name,
            value_start: name_end + 1,
        }),
        Some(b) if b.is_ascii_whitespace() => {
            let field = if name.eq_ignore_ascii_case("submit") {
                Field::SubmitDate
            } else if name.eq_ignore_ascii_case("done") {
                Field::DoneDate
            } else {
                return None;
            };
            let date_start = name_end
                + bytes
                    .get(name_end..)?
                    .iter()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            let date_word = bytes.get(date_start..date_start + 5)?;
            if date_word.eq_ignore_ascii_case(b"date:") {
                Some(KeyMatch {
                    key: Key::Known(field),
                    written: text.get(start..date_start + 4)?,
                    value_start: date_start + 5,
                })
            } else {
                None
            }
        }
        _ => None,
    }
}

impl Receipt {
    /// Parses a receipt text with the default syntax.
    pub fn parse(text: &str) -> Result<Receipt, ReceiptParseError> {
        Receipt::parse_with(text, ReceiptSyntax::default())
    }

    /// Parses a receipt text. Any field may be missing except the id.
    pub fn parse_with(text: &str, syntax: ReceiptSyntax) -> Result<Receipt, ReceiptParseError> {
        let (receipt, has_id) = parse_fields(text, syntax);
        if has_id {
            Ok(receipt)
        } else {
            Err(ReceiptParseError::MissingId)
        }
    }

    /// The receipt we send a customer. sub is 001; dlvrd is 001 when the
    /// message was delivered, 000 otherwise.
    pub fn for_customer(
        id: &str,
        submit_date: DateTime,
        done_date: DateTime,
        stat: MessageState,
        err: u32,
        message_text: &str,
    ) -> Receipt {
        let delivered = u32::from(stat == MessageState::Delivered);
        Receipt {
            id: id.to_owned(),
            sub: Some(ReceiptNumber::from_value(1)),
            dlvrd: Some(ReceiptNumber::from_value(delivered)),
            submit_date: Some(submit_date),
            done_date: Some(done_date),
            stat: Some(stat),
            err: Some(ReceiptNumber::from_value(err)),
            network_error: None,
            text: Some(message_text.chars().take(RECEIPT_TEXT_CHARS).collect()),
            extra: Vec::new(),
        }
    }

    /// The de-facto text: `id:{id} sub:{sub:03} dlvrd:{dlvrd:03} submit
    /// date:{YYMMDDhhmm} done date:{YYMMDDhhmm} stat:{STAT} err:{err:03}
    /// text:{first 20 chars}`. Missing numbers print as 000, missing dates
    /// as 0000000000, a missing stat as UNKNOWN; extra fields are not sent.
    pub fn format(&self) -> String {
        self.to_string()
    }

    fn push_extra(&mut self, name: &str, value: &str) {
        if self.extra.len() < MAX_EXTRA_FIELDS {
            self.extra.push((name.to_owned(), value.to_owned()));
        }
    }
}

struct NumberText<'a>(Option<&'a ReceiptNumber>);

impl fmt::Display for NumberText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ReceiptNumber {
                value: Some(value), ..
            }) => write!(f, "{value:03}"),
            Some(ReceiptNumber { text, value: None }) => f.write_str(text),
            None => f.write_str("000"),
        }
    }
}

struct DateText(Option<DateTime>);

impl fmt::Display for DateText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(date) => date.receipt_date().fmt(f),
            None => f.write_str("0000000000"),
        }
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text.as_deref().unwrap_or("");
        let text_end = text
            .char_indices()
            .nth(RECEIPT_TEXT_CHARS)
            .map_or(text.len(), |(index, _)| index);
        write!(
            f,
            "id:{} sub:{} dlvrd:{} submit date:{} done date:{} stat:{} err:{} text:{}",
            self.id,
            NumberText(self.sub.as_ref()),
            NumberText(self.dlvrd.as_ref()),
            DateText(self.submit_date),
            DateText(self.done_date),
            self.stat
                .as_ref()
                .map_or("UNKNOWN", MessageState::stat_text),
            NumberText(self.err.as_ref()),
            text.get(..text_end).unwrap_or(""),
        )
    }
}

/// Walks the words of `text`; every word that starts `name:` opens a field
/// whose value runs to the next such word, except `text:`, which runs to the
/// end. Returns the receipt and whether an `id:` was present.
fn parse_fields(text: &str, syntax: ReceiptSyntax) -> (Receipt, bool) {
    let text = text.trim_end_matches(['\0', '\r', '\n']);
    let bytes = text.as_bytes();
    let mut receipt = Receipt::default();
    let mut has_id = false;
    let mut open: Option<KeyMatch<'_>> = None;
    let mut index = 0;
    while index < bytes.len() {
        let at_word_start = index == 0 || bytes.get(index - 1).is_some_and(u8::is_ascii_whitespace);
        let is_space = bytes.get(index).is_some_and(u8::is_ascii_whitespace);
        if at_word_start && !is_space {
            if let Some(found) = key_at(text, index) {
                if let Some(previous) = open.take() {
                    let value = text.get(previous.value_start..index).unwrap_or("").trim();
                    store_field(&mut receipt, &mut has_id, &previous, value);
                }
                if matches!(found.key, Key::Known(Field::Text)) {
                    let value = text.get(found.value_start..).unwrap_or("");
                    store_text(&mut receipt, &found, value, syntax);
                    return (receipt, has_id);
                }
                index = found.value_start;
                open = Some(found);
                continue;
            }
        }
        index += 1;
    }
    if let Some(previous) = open {
        let value = text.get(previous.value_start..).unwrap_or("").trim();
        store_field(&mut receipt, &mut has_id, &previous, value);
    }
    (receipt, has_id)
}

fn store_text(receipt: &mut Receipt, found: &KeyMatch<'_>, value: &str, syntax: ReceiptSyntax) {
    if receipt.text.is_some() {
        receipt.push_extra(found.written, value);
        return;
    }
    let mut body = value;
    if syntax.fields_after_text {
        let mut trailing: Vec<(&str, &str)> = Vec::new();
        while let Some((head, word)) = split_last_word(body) {
            let Some((name, field_value)) = word.split_once(':') else {
                break;
            };
            let plain_name = !name.is_empty() && name.bytes().all(is_name_byte);
            let plain_value = !field_value.is_empty() && !field_value.contains(':');
            if !plain_name || !plain_value || Field::from_name(name).is_some() {
                break;
            }
            trailing.push((name, field_value));
            body = head;
        }
        for (name, field_value) in trailing.into_iter().rev() {
            receipt.push_extra(name, field_value);
        }
    }
    receipt.text = Some(body.to_owned());
}

/// (text before the last word, trimmed at its end; the last word).
fn split_last_word(text: &str) -> Option<(&str, &str)> {
    let trimmed = text.trim_end();
    let word_start = trimmed
        .rfind(|c: char| c.is_ascii_whitespace())
        .map_or(0, |space| space + 1);
    let word = trimmed.get(word_start..)?;
    if word.is_empty() {
        return None;
    }
    Some((trimmed.get(..word_start)?.trim_end(), word))
}

fn store_field(receipt: &mut Receipt, has_id: &mut bool, found: &KeyMatch<'_>, value: &str) {
    let field = match found.key {
        Key::Extra(name) => {
            receipt.push_extra(name, value);
            return;
        }
        Key::Known(field) => field,
    };
    let stored = match field {
        Field::Id if !*has_id => {
            receipt.id = value.to_owned();
            *has_id = true;
            true
        }
        Field::Sub if receipt.sub.is_none() => {
            receipt.sub = Some(ReceiptNumber::parse(value));
            true
        }
        Field::Dlvrd if receipt.dlvrd.is_none() => {
            receipt.dlvrd = Some(ReceiptNumber::parse(value));
            true
        }
        Field::SubmitDate if receipt.submit_date.is_none() => {
            receipt.submit_date = DateTime::parse_receipt_date(value).ok();
            receipt.submit_date.is_some()
        }
        Field::DoneDate if receipt.done_date.is_none() => {
            receipt.done_date = DateTime::parse_receipt_date(value).ok();
            receipt.done_date.is_some()
        }
        Field::Stat if receipt.stat.is_none() => {
            receipt.stat = Some(MessageState::from_stat_text(value));
            true
        }
        Field::Err if receipt.err.is_none() => {
            receipt.err = Some(ReceiptNumber::parse(value));
            true
        }
        // Repeats and unreadable dates stay visible as extras.
        _ => false,
    };
    if !stored {
        receipt.push_extra(found.written, value);
    }
}

/// The message type bits of esm_class (bits 5..2) that mark a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// 0x04: SMSC delivery receipt.
    SmscDeliveryReceipt,
    /// 0x08: SME delivery acknowledgement.
    SmeDeliveryAck,
    /// 0x10: SME manual/user acknowledgement.
    SmeManualAck,
    /// 0x20: intermediate delivery notification.
    IntermediateNotification,
}

/// esm_class bits 5..2: the message type.
pub const ESM_CLASS_MESSAGE_TYPE_MASK: u8 = 0x3C;

impl ReceiptKind {
    /// None for an ordinary message (MO) or a message type that is no receipt.
    pub fn from_esm_class(esm_class: u8) -> Option<ReceiptKind> {
        match esm_class & ESM_CLASS_MESSAGE_TYPE_MASK {
            0x04 => Some(ReceiptKind::SmscDeliveryReceipt),
            0x08 => Some(ReceiptKind::SmeDeliveryAck),
            0x10 => Some(ReceiptKind::SmeManualAck),
            0x20 => Some(ReceiptKind::IntermediateNotification),
            _ => None,
        }
    }

    pub fn esm_class_bits(self) -> u8 {
        match self {
            ReceiptKind::SmscDeliveryReceipt => 0x04,
            ReceiptKind::SmeDeliveryAck => 0x08,
            ReceiptKind::SmeManualAck => 0x10,
            ReceiptKind::IntermediateNotification => 0x20,
        }
    }
}

/// A deliver_sm or data_sm that esm_class marks as a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptPdu {
    pub kind: ReceiptKind,
    pub receipt: Receipt,
}

/// Decides whether a PDU is a receipt and builds it. `Ok(None)`: not a
/// receipt (an MO). TLVs win over the text: receipted_message_id over `id:`,
/// message_state (0..=9) over `stat:`, network_error_code over `err:`; the
/// overridden text values move to `extra`. An unknown message_state value
/// leaves the text's stat in place (or `Other("message_state=N")`).
pub fn identify_receipt(
    esm_class: u8,
    short_message: &[u8],
    receipted_message_id: Option<&[u8]>,
    message_state: Option<u8>,
    network_error_code: Option<NetworkErrorCode>,
    syntax: ReceiptSyntax,
) -> Result<Option<ReceiptPdu>, ReceiptParseError> {
    let Some(kind) = ReceiptKind::from_esm_class(esm_class) else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(short_message);
    let (mut receipt, mut has_id) = parse_fields(&text, syntax);

    let tlv_id = receipted_message_id
        .map(|raw| {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(raw.get(..end).unwrap_or(&[]))
        })
        .filter(|id| !id.trim().is_empty());
    if let Some(tlv_id) = tlv_id {
        let tlv_id = tlv_id.trim();
        if has_id && receipt.id != tlv_id {
            let text_id = std::mem::take(&mut receipt.id);
            receipt.push_extra("id", &text_id);
        }
        receipt.id = tlv_id.to_owned();
        has_id = true;
    }
    if !has_id {
        return Err(ReceiptParseError::MissingId);
    }

    if let Some(value) = message_state {
        match MessageState::from_message_state(value) {
            Some(state) => {
                if let Some(text_state) = receipt.stat.replace(state.clone()) {
                    if text_state != state {
                        receipt.push_extra("stat", text_state.stat_text());
                    }
                }
            }
            None if receipt.stat.is_none() => {
                receipt.stat = Some(MessageState::Other(format!("message_state={value}")));
            }
            None => {}
        }
    }

    if let Some(code) = network_error_code {
        let from_tlv = ReceiptNumber::from_value(u32::from(code.error_code));
        if let Some(text_err) = receipt.err.replace(from_tlv) {
            if text_err.value != Some(u32::from(code.error_code)) {
                receipt.push_extra("err", &text_err.text);
            }
        }
        receipt.network_error = Some(code);
    }
    Ok(Some(ReceiptPdu { kind, receipt }))
}

/// How a connector's operator writes its message ids, so the id in its
/// submit_sm_resp and the id in its receipt reduce to the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdFormat {
    /// Byte-exact (after trimming spaces and NULs).
    #[default]
    AsIs,
    /// Letters compared without case: `7F3A9C12` = `7f3a9c12`.
    HexCaseInsensitive,
    /// A decimal number: leading zeros do not count.
    Decimal,
    /// The receipt text says hex, the submit_sm_resp said decimal.
    HexInReceiptDecimalInResp,
    /// The receipt text says decimal, the submit_sm_resp said hex.
    DecimalInReceiptHexInResp,
    /// Leading zeros dropped, otherwise as-is.
    StripLeadingZeros,
}

/// Where an operator id was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdOrigin {
    SubmitSmResp,
    Receipt,
}

/// The canonical key the store indexes submitted messages by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MatchKey(String);

impl MatchKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdKeyError {
    #[error("empty message id")]
    Empty,
    #[error("message id is not a decimal number")]
    NotDecimal,
    #[error("message id is not a hexadecimal number")]
    NotHex,
    #[error("message id is too long to convert between decimal and hex (max 128 bits)")]
    TooLong,
}

impl IdFormat {
    /// The key for `id` as read from `origin`. The conversion formats key on
    /// lowercase hex without leading zeros, whichever side was decimal.
    pub fn key(self, origin: IdOrigin, id: &str) -> Result<MatchKey, IdKeyError> {
        let id = id.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
        if id.is_empty() {
            return Err(IdKeyError::Empty);
        }
        let key = match (self, origin) {
            (IdFormat::AsIs, _) => id.to_owned(),
            (IdFormat::HexCaseInsensitive, _) => id.to_ascii_lowercase(),
            (IdFormat::StripLeadingZeros, _) => strip_leading_zeros(id).to_owned(),
            (IdFormat::Decimal, _) => {
                if !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(IdKeyError::NotDecimal);
                }
                strip_leading_zeros(id).to_owned()
            }
            (IdFormat::HexInReceiptDecimalInResp, IdOrigin::Receipt)
            | (IdFormat::DecimalInReceiptHexInResp, IdOrigin::SubmitSmResp) => hex_key(id)?,
            (IdFormat::HexInReceiptDecimalInResp, IdOrigin::SubmitSmResp)
            | (IdFormat::DecimalInReceiptHexInResp, IdOrigin::Receipt) => {
                if !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(IdKeyError::NotDecimal);
                }
                let value: u128 = strip_leading_zeros(id)
                    .parse()
                    .map_err(|_| IdKeyError::TooLong)?;
                format!("{value:x}")
            }
        };
        Ok(MatchKey(key))
    }

    pub fn key_from_submit_resp(self, id: &str) -> Result<MatchKey, IdKeyError> {
        self.key(IdOrigin::SubmitSmResp, id)
    }

    pub fn key_from_receipt(self, id: &str) -> Result<MatchKey, IdKeyError> {
        self.key(IdOrigin::Receipt, id)
    }
}

/// "000" keeps one zero: the value zero is still an id.
fn strip_leading_zeros(id: &str) -> &str {
    let stripped = id.trim_start_matches('0');
    if stripped.is_empty() && !id.is_empty() {
        "0"
    } else {
        stripped
    }
}

fn hex_key(id: &str) -> Result<String, IdKeyError> {
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IdKeyError::NotHex);
    }
    let digits = strip_leading_zeros(id);
    // Same 128-bit limit as the decimal side, so both sides fail alike.
    if digits.len() > 32 {
        return Err(IdKeyError::TooLong);
    }
    Ok(digits.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> DateTime {
        DateTime::parse_receipt_date(text).expect("test date is valid")
    }

    #[test]
    fn message_state_values_and_stat_texts_map_both_ways() {
        for value in 0..=9u8 {
            let state = MessageState::from_message_state(value).expect("0..=9 are states");
            assert_eq!(state.message_state(), Some(value));
            assert_eq!(MessageState::from_stat_text(state.stat_text()), state);
            assert_eq!(state.stat_text().len(), 7, "stat texts are seven letters");
        }
        assert_eq!(MessageState::from_message_state(10), None);
        assert_eq!(
            MessageState::from_message_state(2),
            Some(MessageState::Delivered)
        );
        assert_eq!(
            MessageState::from_message_state(5),
            Some(MessageState::Undeliverable)
        );
        assert_eq!(
            MessageState::from_stat_text("delivered"),
            MessageState::Delivered
        );
        assert_eq!(
            MessageState::from_stat_text("FAKE"),
            MessageState::Other("FAKE".to_owned())
        );
        assert_eq!(MessageState::Other("FAKE".to_owned()).message_state(), None);
    }

    #[test]
    fn twelve_digit_dates_and_uppercase_stat() {
        let r = Receipt::parse(
            "id:42 sub:001 dlvrd:001 submit date:251125120000 done date:251125120130 Stat:DELIVRD err:000",
        )
        .expect("parses");
        assert_eq!(r.stat, Some(MessageState::Delivered));
        assert_eq!(r.done_date, Some(date("251125120130")));
        assert_eq!(r.done_date.map(|d| d.second()), Some(30));
        assert_eq!(r.text, None);
    }

    #[test]
    fn format_is_the_de_facto_text() {
        let r = Receipt::for_customer(
            "abc123",
            date("2511251200"),
            date("251125120130"),
            MessageState::Delivered,
            0,
            "Your verification code is 4821",
        );
        assert_eq!(
            r.format(),
            "id:abc123 sub:001 dlvrd:001 submit date:2511251200 done date:2511251201 \
             stat:DELIVRD err:000 text:Your verification co"
        );
        let parsed = Receipt::parse(&r.format()).expect("our own text parses");
        assert_eq!(
            parsed.done_date,
            Some(date("2511251201")),
            "seconds are not sent"
        );
        assert_eq!(
            Receipt {
                done_date: parsed.done_date,
                ..r.clone()
            },
            parsed
        );
        let failed = Receipt::for_customer(
            "x",
            date("2511251200"),
            date("2511251200"),
            MessageState::Undeliverable,
            11,
            "é€ multi-byte text that is long",
        );
        assert_eq!(
            failed.format(),
            "id:x sub:001 dlvrd:000 submit date:2511251200 done date:2511251200 \
             stat:UNDELIV err:011 text:é€ multi-byte text t"
        );
    }

    #[test]
    fn format_fills_missing_fields() {
        let r = Receipt::parse("id:9 err:0B1").expect("parses");
        assert_eq!(
            r.format(),
            "id:9 sub:000 dlvrd:000 submit date:0000000000 done date:0000000000 \
             stat:UNKNOWN err:0B1 text:"
        );
    }

    #[test]
    fn text_without_id_is_refused() {
        assert_eq!(
            Receipt::parse("stat:DELIVRD err:000"),
            Err(ReceiptParseError::MissingId)
        );
        assert_eq!(Receipt::parse(""), Err(ReceiptParseError::MissingId));
        assert_eq!(
            Receipt::parse("just a text: no id"),
            Err(ReceiptParseError::MissingId)
        );
    }

    #[test]
    fn bad_dates_and_repeats_become_extras() {
        let r = Receipt::parse("id:1 id:2 submit date:2513251200 stat:DELIVRD stat:UNDELIV")
            .expect("parses");
        assert_eq!(r.id, "1");
        assert_eq!(r.submit_date, None);
        assert_eq!(r.stat, Some(MessageState::Delivered));
        assert_eq!(
            r.extra,
            vec![
                ("id".to_owned(), "2".to_owned()),
                ("submit date".to_owned(), "2513251200".to_owned()),
                ("stat".to_owned(), "UNDELIV".to_owned()),
            ]
        );
    }

    #[test]
    fn extras_are_bounded() {
        let mut text = String::from("id:1");
        for i in 0..100 {
            text.push_str(&format!(" f{i}:{i}"));
        }
        let r = Receipt::parse(&text).expect("parses");
        assert_eq!(r.extra.len(), MAX_EXTRA_FIELDS);
        assert_eq!(r.extra.first(), Some(&("f0".to_owned(), "0".to_owned())));
    }

    #[test]
    fn spaces_after_colons_and_odd_bytes_are_tolerated() {
        let r = Receipt::parse("id: 77  stat: EXPIRED\0").expect("parses");
        assert_eq!(r.id, "77");
        assert_eq!(r.stat, Some(MessageState::Expired));
        for junk in [
            "",
            ":",
            "::::",
            "id",
            "id:",
            "submit ",
            "submit date",
            "done  date:",
            "é:é",
        ] {
            let _ = Receipt::parse(junk);
        }
        assert_eq!(Receipt::parse("id:").map(|r| r.id), Ok(String::new()));
    }

    #[test]
    fn esm_class_message_type_decides() {
        let text = b"id:1 stat:DELIVRD err:000";
        for (esm_class, kind) in [
            (0x04, Some(ReceiptKind::SmscDeliveryReceipt)),
            (0x08, Some(ReceiptKind::SmeDeliveryAck)),
            (0x10, Some(ReceiptKind::SmeManualAck)),
            (0x20, Some(ReceiptKind::IntermediateNotification)),
            (0x44, Some(ReceiptKind::SmscDeliveryReceipt)), // UDHI set too
            (0x00, None),
            (0x40, None),
            (0x18, None), // conversation abort, not a receipt
            (0x03, None), // messaging mode bits only
        ] {
            let got = identify_receipt(esm_class, text, None, None, None, ReceiptSyntax::default())
                .expect("no error");
            assert_eq!(got.map(|p| p.kind), kind, "esm_class {esm_class:#04x}");
        }
        for kind in [
            ReceiptKind::SmscDeliveryReceipt,
            ReceiptKind::SmeDeliveryAck,
            ReceiptKind::SmeManualAck,
            ReceiptKind::IntermediateNotification,
        ] {
            assert_eq!(
                ReceiptKind::from_esm_class(kind.esm_class_bits()),
                Some(kind)
            );
        }
    }

    #[test]
    fn tlvs_win_over_the_text() {
        let pdu = identify_receipt(
            0x04,
            b"id:0123 stat:DELIVRD err:000 text:hi",
            Some(b"7b\0"),
            Some(5),
            Some(NetworkErrorCode {
                network_type: 3,
                error_code: 27,
            }),
            ReceiptSyntax::default(),
        )
        .expect("no error")
        .expect("a receipt");
        let r = pdu.receipt;
        assert_eq!(r.id, "7b");
        assert_eq!(r.stat, Some(MessageState::Undeliverable));
        assert_eq!(r.err.as_ref().and_then(|e| e.value), Some(27));
        assert_eq!(r.err.map(|e| e.text), Some("027".to_owned()));
        assert_eq!(
            r.network_error,
            Some(NetworkErrorCode {
                network_type: 3,
                error_code: 27
            })
        );
        assert_eq!(r.text.as_deref(), Some("hi"));
        assert_eq!(
            r.extra,
            vec![
                ("id".to_owned(), "0123".to_owned()),
                ("stat".to_owned(), "DELIVRD".to_owned()),
                ("err".to_owned(), "000".to_owned()),
            ]
        );
    }

    #[test]
    fn tlvs_alone_make_a_receipt() {
        let pdu = identify_receipt(
            0x04,
            b"",
            Some(b"abc"),
            Some(0),
            None,
            ReceiptSyntax::default(),
        )
        .expect("no error")
        .expect("a receipt");
        assert_eq!(pdu.receipt.id, "abc");
        assert_eq!(pdu.receipt.stat, Some(MessageState::Scheduled));
        let skipped = identify_receipt(
            0x04,
            b"",
            Some(b"abc"),
            Some(9),
            None,
            ReceiptSyntax::default(),
        )
        .expect("no error")
        .expect("a receipt");
        assert_eq!(skipped.receipt.stat, Some(MessageState::Skipped));
        assert_eq!(
            identify_receipt(0x04, b"", None, Some(2), None, ReceiptSyntax::default()),
            Err(ReceiptParseError::MissingId)
        );
        assert_eq!(
            identify_receipt(
                0x04,
                b"stat:DELIVRD",
                Some(b"\0"),
                None,
                None,
                ReceiptSyntax::default()
            ),
            Err(ReceiptParseError::MissingId),
            "an empty receipted_message_id is no id"
        );
    }

    #[test]
    fn unknown_message_state_keeps_the_text_stat() {
        let with_text = identify_receipt(
            0x04,
            b"id:1 stat:EXPIRED",
            None,
            Some(42),
            None,
            ReceiptSyntax::default(),
        )
        .expect("no error")
        .expect("a receipt");
        assert_eq!(with_text.receipt.stat, Some(MessageState::Expired));
        let without = identify_receipt(
            0x04,
            b"id:1",
            None,
            Some(42),
            None,
            ReceiptSyntax::default(),
        )
        .expect("no error")
        .expect("a receipt");
        assert_eq!(
            without.receipt.stat,
            Some(MessageState::Other("message_state=42".to_owned()))
        );
    }

    #[test]
    fn non_utf8_short_message_does_not_panic() {
        let pdu = identify_receipt(
            0x04,
            b"id:\xff\xfe1 stat:\x80",
            None,
            None,
            None,
            ReceiptSyntax::default(),
        )
        .expect("no error")
        .expect("a receipt");
        assert!(pdu.receipt.id.ends_with('1'));
    }

    #[test]
    fn fields_after_text_when_configured() {
        let syntax = ReceiptSyntax {
            fields_after_text: true,
        };
        let r = Receipt::parse_with("id:1 text:x nw:23410 mccmnc:23410", syntax).expect("parses");
        assert_eq!(r.text.as_deref(), Some("x"));
        assert_eq!(
            r.extra,
            vec![
                ("nw".to_owned(), "23410".to_owned()),
                ("mccmnc".to_owned(), "23410".to_owned()),
            ]
        );
        // A word that is no field stops the split: the colons stay text.
        let r = Receipt::parse_with("id:1 text:with: colons and stat:FAKE inside", syntax)
            .expect("parses");
        assert_eq!(r.text.as_deref(), Some("with: colons and stat:FAKE inside"));
        assert!(r.extra.is_empty());
        // Receipt field names are never split off the text.
        let r = Receipt::parse_with("id:1 text:see stat:FAKE", syntax).expect("parses");
        assert_eq!(r.text.as_deref(), Some("see stat:FAKE"));
    }

    #[test]
    fn id_keys_per_format() {
        use IdFormat::*;
        let key = |format: IdFormat, origin: IdOrigin, id: &str| {
            format.key(origin, id).map(|k| k.as_str().to_owned())
        };
        assert_eq!(
            key(AsIs, IdOrigin::Receipt, " 7F3A9C12\0"),
            Ok("7F3A9C12".to_owned())
        );
        assert_ne!(
            AsIs.key_from_receipt("7F3A9C12"),
            AsIs.key_from_submit_resp("7f3a9c12")
        );
        assert_eq!(
            HexCaseInsensitive.key_from_receipt("7F3A9C12"),
            HexCaseInsensitive.key_from_submit_resp("7f3a9c12")
        );
        assert_eq!(
            key(Decimal, IdOrigin::Receipt, "00000000000000123456"),
            Ok("123456".to_owned())
        );
        assert_eq!(key(Decimal, IdOrigin::Receipt, "000"), Ok("0".to_owned()));
        assert_eq!(
            key(Decimal, IdOrigin::Receipt, "12a"),
            Err(IdKeyError::NotDecimal)
        );
        assert_eq!(
            key(StripLeadingZeros, IdOrigin::Receipt, "00Ab"),
            Ok("Ab".to_owned())
        );
        assert_eq!(key(AsIs, IdOrigin::Receipt, " \0"), Err(IdKeyError::Empty));
        // 0x75BCD15 = 123456789
        assert_eq!(
            DecimalInReceiptHexInResp.key_from_receipt("0123456789"),
            DecimalInReceiptHexInResp.key_from_submit_resp("75BCD15")
        );
        assert_eq!(
            HexInReceiptDecimalInResp.key_from_receipt("075bcd15"),
            HexInReceiptDecimalInResp.key_from_submit_resp("123456789")
        );
        assert_eq!(
            key(HexInReceiptDecimalInResp, IdOrigin::Receipt, "xyz"),
            Err(IdKeyError::NotHex)
        );
        assert_eq!(
            key(
                HexInReceiptDecimalInResp,
                IdOrigin::SubmitSmResp,
                &"9".repeat(40)
            ),
            Err(IdKeyError::TooLong)
        );
        assert_eq!(
            key(
                HexInReceiptDecimalInResp,
                IdOrigin::Receipt,
                &"f".repeat(33)
            ),
            Err(IdKeyError::TooLong)
        );
        assert_eq!(
            key(
                HexInReceiptDecimalInResp,
                IdOrigin::SubmitSmResp,
                &"0".repeat(60)
            ),
            Ok("0".to_owned()),
            "leading zeros never count toward the width"
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_never_panic(
                esm_class in any::<u8>(),
                short_message in proptest::collection::vec(any::<u8>(), 0..300),
                receipted_id in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..70)),
                state in proptest::option::of(any::<u8>()),
                split in any::<bool>(),
            ) {
                let syntax = ReceiptSyntax { fields_after_text: split };
                let result = identify_receipt(
                    esm_class,
                    &short_message,
                    receipted_id.as_deref(),
                    state,
                    None,
                    syntax,
                );
                if let Ok(Some(pdu)) = result {
                    prop_assert!(pdu.receipt.extra.len() <= MAX_EXTRA_FIELDS);
                    let _ = pdu.receipt.format();
                }
            }

            #[test]
            fn receipt_like_texts_never_panic(text in "((id|sub|Stat|err|text|submit date|done_date|nw|x)[: ]{0,2}[A-Za-z0-9 :]{0,12} ?){0,12}") {
                if let Ok(receipt) = Receipt::parse(&text) {
                    let again = Receipt::parse(&receipt.format());
                    prop_assert!(again.is_ok());
                }
            }

            #[test]
            fn formatted_receipts_parse_back(
                id in "[0-9A-Za-z-]{1,64}",
                stat in 0u8..=9,
                err in 0u32..1000,
                text in "[ -~]{0,40}",
            ) {
                let date = DateTime::new(2025, 11, 25, 12, 0, 0).expect("valid");
                let state = MessageState::from_message_state(stat).expect("0..=9");
                let sent = Receipt::for_customer(&id, date, date, state.clone(), err, &text);
                let got = Receipt::parse(&sent.format()).expect("our text parses");
                prop_assert_eq!(got.id, id);
                prop_assert_eq!(got.stat, Some(state));
                prop_assert_eq!(got.err.and_then(|e| e.value), Some(err));
                prop_assert_eq!(got.text, sent.text);
            }

            #[test]
            fn id_keys_agree_across_decimal_and_hex(value in any::<u64>(), zeros in 0usize..5) {
                let padded = format!("{}{value}", "0".repeat(zeros));
                let hex_upper = format!("{value:X}");
                prop_assert_eq!(
                    IdFormat::DecimalInReceiptHexInResp.key_from_receipt(&padded),
                    IdFormat::DecimalInReceiptHexInResp.key_from_submit_resp(&hex_upper)
                );
                prop_assert_eq!(
                    IdFormat::HexInReceiptDecimalInResp.key_from_receipt(&format!("{value:x}")),
                    IdFormat::HexInReceiptDecimalInResp.key_from_submit_resp(&padded)
                );
            }
        }
    }
}

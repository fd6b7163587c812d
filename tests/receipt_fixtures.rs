//! Every receipt shape in tests/fixtures/receipts.txt (a copy of the shared
//! operator samples) parses to the fields its line carries, and the fixture ids
//! reduce to the same match keys under the right per-connector IdFormat.

use tern::smpp::receipt::{IdFormat, MessageState, Receipt, ReceiptSyntax};
use tern::smpp::time::DateTime;

const FIXTURES: &str = include_str!("fixtures/receipts.txt");

struct Expected {
    id: &'static str,
    sub: Option<u32>,
    dlvrd: Option<u32>,
    /// (year, month, day, hour, minute, second)
    submit: (u16, u8, u8, u8, u8, u8),
    done: (u16, u8, u8, u8, u8, u8),
    stat: MessageState,
    err_text: &'static str,
    err_value: Option<u32>,
    text: Option<&'static str>,
}

const SUBMIT: (u16, u8, u8, u8, u8, u8) = (2025, 11, 25, 12, 0, 0);
const DONE: (u16, u8, u8, u8, u8, u8) = (2025, 11, 25, 12, 1, 0);

fn delivered(id: &'static str, text: &'static str) -> Expected {
    Expected {
        id,
        sub: Some(1),
        dlvrd: Some(1),
        submit: SUBMIT,
        done: DONE,
        stat: MessageState::Delivered,
        err_text: "000",
        err_value: Some(0),
        text: Some(text),
    }
}

fn expected_lines() -> Vec<Expected> {
    vec![
        delivered("0123456789", "Your code is 4821"),
        delivered("7F3A9C12", "hello"),
        Expected {
            dlvrd: Some(0),
            done: (2025, 11, 25, 12, 1, 30),
            stat: MessageState::Undeliverable,
            err_text: "001",
            err_value: Some(1),
            ..delivered("7f3a9c12", "")
        },
        delivered("123456", "Upper case fields"),
        Expected {
            stat: MessageState::Expired,
            ..delivered("123456", "mixed case")
        },
        delivered("c0ffee00-1234-4abc-9def-000000000001", "uuid id"),
        Expected {
            sub: None,
            dlvrd: None,
            stat: MessageState::Rejected,
            err_text: "0B1",
            err_value: None,
            text: None,
            ..delivered("123456", "")
        },
        Expected {
            stat: MessageState::Accepted,
            ..delivered("123456", "intermediate")
        },
        delivered("00000000000000123456", "leading zeros"),
        delivered("123456", "text with: colons and stat:FAKE inside"),
        Expected {
            stat: MessageState::Unknown,
            ..delivered("123456", "")
        },
        delivered("123456", "underscored dates"),
        Expected {
            stat: MessageState::Deleted,
            ..delivered("123456", "deleted")
        },
        delivered("123456", "x nw:23410 mccmnc:23410"),
    ]
}

fn fixture_lines() -> Vec<&'static str> {
    FIXTURES
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .collect()
}

fn at(parts: (u16, u8, u8, u8, u8, u8)) -> DateTime {
    let (year, month, day, hour, minute, second) = parts;
    DateTime::new(year, month, day, hour, minute, second).expect("expected date is valid")
}

#[test]
fn every_fixture_line_parses_to_its_fields() {
    let lines = fixture_lines();
    let expected = expected_lines();
    assert_eq!(
        lines.len(),
        expected.len(),
        "the fixture file and this test must list the same receipts"
    );
    for (number, (line, want)) in lines.iter().zip(&expected).enumerate() {
        let context = format!("fixture receipt {} ({line})", number + 1);
        let got = Receipt::parse(line).unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!(got.id, want.id, "{context}: id");
        assert_eq!(
            got.sub.as_ref().and_then(|n| n.value),
            want.sub,
            "{context}: sub"
        );
        assert_eq!(
            got.dlvrd.as_ref().and_then(|n| n.value),
            want.dlvrd,
            "{context}: dlvrd"
        );
        assert_eq!(
            got.submit_date,
            Some(at(want.submit)),
            "{context}: submit date"
        );
        assert_eq!(got.done_date, Some(at(want.done)), "{context}: done date");
        assert_eq!(got.stat.as_ref(), Some(&want.stat), "{context}: stat");
        let err = got
            .err
            .as_ref()
            .unwrap_or_else(|| panic!("{context}: err missing"));
        assert_eq!(err.text, want.err_text, "{context}: err text");
        assert_eq!(err.value, want.err_value, "{context}: err value");
        assert_eq!(got.text.as_deref(), want.text, "{context}: text");
        assert!(got.extra.is_empty(), "{context}: extras {:?}", got.extra);
    }
}

#[test]
fn sub_and_dlvrd_keep_their_text() {
    let lines = fixture_lines();
    let third = Receipt::parse(lines[2]).expect("fixture 3 parses");
    assert_eq!(third.dlvrd.map(|n| n.text), Some("000".to_owned()));
    assert_eq!(third.sub.map(|n| n.text), Some("001".to_owned()));
}

#[test]
fn trailing_network_fields_split_off_when_the_connector_says_so() {
    let lines = fixture_lines();
    let last = lines.last().expect("fixture has lines");
    let got = Receipt::parse_with(
        last,
        ReceiptSyntax {
            fields_after_text: true,
        },
    )
    .expect("parses");
    assert_eq!(got.text.as_deref(), Some("x"));
    assert_eq!(
        got.extra,
        vec![
            ("nw".to_owned(), "23410".to_owned()),
            ("mccmnc".to_owned(), "23410".to_owned()),
        ]
    );
    // The colon-laden text line is untouched by the same syntax.
    let colons = Receipt::parse_with(
        lines[9],
        ReceiptSyntax {
            fields_after_text: true,
        },
    )
    .expect("parses");
    assert_eq!(
        colons.text.as_deref(),
        Some("text with: colons and stat:FAKE inside")
    );
}

#[test]
fn formatted_fixtures_parse_back_to_the_same_fields() {
    for line in fixture_lines() {
        let original = Receipt::parse(line).expect("fixture parses");
        let again = Receipt::parse(&original.format()).expect("formatted text parses");
        assert_eq!(again.id, original.id, "{line}");
        assert_eq!(again.stat, original.stat, "{line}");
        assert_eq!(
            again.done_date.map(|d| d.receipt_date().to_string()),
            original.done_date.map(|d| d.receipt_date().to_string()),
            "{line}"
        );
        assert_eq!(
            again.err.map(|e| e.text),
            Some(original.err.map_or("000".to_owned(), |e| e.text)),
            "{line}"
        );
        let original_text: String = original.text.unwrap_or_default().chars().take(20).collect();
        assert_eq!(again.text, Some(original_text), "{line}");
    }
}

#[test]
fn fixture_ids_match_under_their_connector_formats() {
    let ids: Vec<String> = fixture_lines()
        .iter()
        .map(|line| Receipt::parse(line).expect("fixture parses").id)
        .collect();
    // Lines 2 and 3: the same hex id in two cases.
    assert_ne!(
        IdFormat::AsIs.key_from_receipt(&ids[1]),
        IdFormat::AsIs.key_from_receipt(&ids[2])
    );
    assert_eq!(
        IdFormat::HexCaseInsensitive.key_from_receipt(&ids[1]),
        IdFormat::HexCaseInsensitive.key_from_submit_resp(&ids[2])
    );
    // Line 9 pads line 4's id with zeros.
    assert_eq!(
        IdFormat::Decimal.key_from_receipt(&ids[8]),
        IdFormat::Decimal.key_from_submit_resp(&ids[3])
    );
    assert_eq!(
        IdFormat::StripLeadingZeros.key_from_receipt(&ids[8]),
        IdFormat::StripLeadingZeros.key_from_submit_resp("123456")
    );
    // Line 1: decimal in the receipt, hex (0x75BCD15 = 123456789) in the resp.
    assert_eq!(
        IdFormat::DecimalInReceiptHexInResp.key_from_receipt(&ids[0]),
        IdFormat::DecimalInReceiptHexInResp.key_from_submit_resp("75BCD15")
    );
    // Line 2: hex in the receipt, decimal in the resp.
    let as_decimal = u64::from_str_radix(&ids[1], 16)
        .expect("fixture id is hex")
        .to_string();
    assert_eq!(
        IdFormat::HexInReceiptDecimalInResp.key_from_receipt(&ids[1]),
        IdFormat::HexInReceiptDecimalInResp.key_from_submit_resp(&as_decimal)
    );
    // The UUID id only matches as-is or case-insensitively.
    assert!(IdFormat::Decimal.key_from_receipt(&ids[5]).is_err());
    assert_eq!(
        IdFormat::HexCaseInsensitive.key_from_receipt(&ids[5]),
        IdFormat::HexCaseInsensitive.key_from_submit_resp(&ids[5].to_uppercase())
    );
}

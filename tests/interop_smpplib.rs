//! Interop with an SMPP implementation we did not write: Python `smpplib`
//! (PyPI, pinned in .ci/run). Both directions, byte for byte:
//! - PDUs built by smpplib decode in tern to the same field values, and tern
//!   re-encodes them to the very same octets;
//! - PDUs built by tern parse in smpplib to the field values tern put in.
//!
//! The Python side is tests/interop/smpplib_vectors.py.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use tern::smpp::pdu::Pdu;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/smpplib_vectors.py"
);

fn python(mode: &str, stdin: &str) -> Value {
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (run .ci/run, which installs it with smpplib)");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("python runs");
    assert!(
        out.status.success(),
        "smpplib script failed (is smpplib installed? `pip install smpplib==2.2.4`, or run .ci/run):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("script prints JSON")
}

/// The value tern decoded for a field smpplib names: a mandatory body field,
/// or a TLV under the same name.
fn tern_field<'a>(pdu_json: &'a Value, name: &str) -> Option<&'a Value> {
    let body = pdu_json.get("body")?;
    if let Some(v) = body.get(name) {
        return Some(v);
    }
    body.get("tlvs")?
        .as_array()?
        .iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|t| t.get("value").or_else(|| t.get("hex")))
}

/// smpplib reports octet strings as hex and C-strings as text; tern's JSON does
/// the same, so values compare directly, except that a TLV holding a C-string
/// may carry the NUL in hex form on one side.
fn same_value(smpplib: &Value, tern: &Value) -> bool {
    if smpplib == tern {
        return true;
    }
    match (smpplib.as_str(), tern.as_str()) {
        (Some(a), Some(b)) => {
            a.eq_ignore_ascii_case(b) || hex::encode(a) == b.trim_end_matches("00")
        }
        _ => false,
    }
}

fn assert_fields_agree(case: &str, smpplib_fields: &Value, pdu_json: &Value) {
    let fields = smpplib_fields.as_object().expect("fields object");
    for (name, expected) in fields {
        // smpplib lists an absent short_message as "" when message_payload is used.
        if name == "short_message" && expected == "" {
            continue;
        }
        let got = tern_field(pdu_json, name)
            .unwrap_or_else(|| panic!("{case}: tern has no field {name}; tern decoded {pdu_json}"));
        assert!(
            same_value(expected, got),
            "{case}: field {name}: smpplib {expected}, tern {got}"
        );
    }
}

#[test]
fn pdus_built_by_smpplib_decode_in_tern_and_reencode_byte_for_byte() {
    let vectors = python("generate", "");
    let vectors = vectors.as_array().expect("array of vectors");
    assert!(
        vectors.len() >= 18,
        "expected the full vector set, got {}",
        vectors.len()
    );
    for v in vectors {
        let case = v["case"].as_str().expect("case");
        let octets = hex::decode(v["hex"].as_str().expect("hex")).expect("valid hex");
        let pdu = Pdu::decode_slice(&octets)
            .unwrap_or_else(|e| panic!("{case}: tern refused smpplib's PDU: {e:?}"));
        assert_eq!(
            pdu.command_id().name(),
            v["command"].as_str().expect("command"),
            "{case}"
        );
        assert_eq!(
            u64::from(pdu.command_status.0),
            v["status"].as_u64().expect("status"),
            "{case}"
        );
        assert_eq!(
            u64::from(pdu.sequence_number),
            v["sequence"].as_u64().expect("seq"),
            "{case}"
        );
        let pdu_json = serde_json::to_value(&pdu).expect("pdu serializes");
        assert_fields_agree(case, &v["fields"], &pdu_json);
        let again = pdu.to_bytes().expect("tern re-encodes");
        assert_eq!(
            hex::encode(&again),
            hex::encode(&octets),
            "{case}: tern's encoding differs from smpplib's"
        );
    }
}

/// PDUs as an operator link carries them, written in tern's JSON form.
const TERN_PDUS: &[&str] = &[
    r#"{"command":"bind_transceiver","sequence_number":1,"body":{"system_id":"trial","password":"trial","system_type":"","interface_version":52,"addr_ton":0,"addr_npi":0,"address_range":""}}"#,
    r#"{"command":"bind_transceiver_resp","sequence_number":1,"body":{"system_id":"tern"}}"#,
    r#"{"command":"submit_sm","sequence_number":2,"body":{"source_addr_ton":5,"source_addr_npi":0,"source_addr":"Tern","dest_addr_ton":1,"dest_addr_npi":1,"destination_addr":"447700900123","registered_delivery":1,"data_coding":0,"short_message":"596f757220636f6465206973203438323121"}}"#,
    r#"{"command":"submit_sm","sequence_number":3,"body":{"source_addr_ton":1,"source_addr_npi":1,"source_addr":"447700900001","dest_addr_ton":1,"dest_addr_npi":1,"destination_addr":"447700900123","esm_class":64,"data_coding":8,"short_message":"0500031502010041004200430044","tlvs":[{"tag":"user_message_reference","value":7}]}}"#,
    r#"{"command":"submit_sm_resp","sequence_number":2,"body":{"message_id":"0000000AB1C2D3E4F5G6"}}"#,
    r#"{"command":"deliver_sm","sequence_number":9,"body":{"source_addr_ton":1,"source_addr_npi":1,"source_addr":"447700900123","dest_addr_ton":5,"dest_addr_npi":0,"destination_addr":"Tern","esm_class":4,"data_coding":0,"short_message":"69643a313233343536207375623a30303120646c7672643a303031207375626d697420646174653a3235313132353132303020646f6e6520646174653a3235313132353132303120737461743a44454c49565244206572723a30303020746578743a","tlvs":[{"tag":"receipted_message_id","value":"123456"},{"tag":"message_state","value":2}]}}"#,
    r#"{"command":"deliver_sm_resp","sequence_number":9,"body":{"message_id":""}}"#,
    r#"{"command":"query_sm","sequence_number":10,"body":{"message_id":"0000000AB1C2D3E4F5G6","source_addr_ton":5,"source_addr_npi":0,"source_addr":"Tern"}}"#,
    r#"{"command":"enquire_link","sequence_number":11}"#,
    r#"{"command":"enquire_link_resp","sequence_number":11}"#,
    r#"{"command":"unbind","sequence_number":12}"#,
    r#"{"command":"unbind_resp","sequence_number":12}"#,
    r#"{"command":"generic_nack","command_status":"ESME_RINVCMDID","sequence_number":13}"#,
];

#[test]
fn pdus_built_by_tern_parse_in_smpplib_to_the_same_fields() {
    let mut hexes = String::new();
    let mut ours = Vec::new();
    for json in TERN_PDUS {
        let lines = tern::cli::pdu::encode_json(json).expect("tern encodes its own JSON");
        assert_eq!(lines.len(), 1);
        let octets = hex::decode(&lines[0]).expect("hex");
        let pdu = Pdu::decode_slice(&octets).expect("tern decodes what it encoded");
        ours.push(serde_json::to_value(&pdu).expect("serializes"));
        hexes.push_str(&lines[0]);
        hexes.push('\n');
    }
    let parsed = python("parse", &hexes);
    let parsed = parsed.as_array().expect("array");
    assert_eq!(parsed.len(), TERN_PDUS.len(), "smpplib parsed every PDU");
    for (theirs, ours) in parsed.iter().zip(&ours) {
        let case = ours["command"].as_str().expect("command");
        assert_eq!(theirs["command"].as_str(), Some(case));
        assert_eq!(theirs["sequence"], ours["sequence_number"], "{case}");
        assert_fields_agree(case, &theirs["fields"], ours);
    }
}

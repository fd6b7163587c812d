#!/usr/bin/env python3
"""Interop vectors from smpplib, an SMPP implementation tern did not write.

    smpplib_vectors.py generate        -> JSON list of {case, hex, fields} built by smpplib
    smpplib_vectors.py parse < hexes   -> JSON list of {hex, command, status, sequence, fields}
                                          as smpplib parses each hex PDU (one per line)

Byte-valued fields are given as hex strings, integer fields as integers, C-octet
strings as text. The Rust test (tests/interop_smpplib.rs) compares both ways.
"""
import json
import sys

from smpplib import consts, smpp
from smpplib.command import Command

# Fields each command carries that we compare (smpplib's names = the spec's names).
MANDATORY = {}


def value_of(v):
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, str):
        return v
    if isinstance(v, (int, str)):
        return v
    return str(v)


def fields_of(pdu):
    out = {}
    for name in getattr(pdu, "params_order", ()):
        if name == "sm_length":
            continue
        v = getattr(pdu, name, None)
        if v is None:
            continue
        param = pdu.params.get(name)
        if isinstance(v, bytes) and param is not None and param.type is str:
            # A parsed C-octet string: text without its NUL.
            v = v.rstrip(b"\0").decode("latin-1")
        out[name] = value_of(v)
    return out


def make(command, sequence, status=0, **kwargs):
    # smpplib takes C-octet strings as str and octet strings as bytes.
    params = smpp.make_pdu(command, sequence=0).params
    for key, value in list(kwargs.items()):
        if isinstance(value, bytes) and key in params and params[key].type is str:
            kwargs[key] = value.decode("latin-1")
    pdu = smpp.make_pdu(command, sequence=sequence, **kwargs)
    if status:
        pdu.status = status
    return pdu


def cases():
    gsm = "Your code is 4821".encode("ascii")
    ucs2 = "Код 4821 ✓".encode("utf-16-be")
    receipt = (
        b"id:7F3A9C12 sub:001 dlvrd:001 submit date:2511251200 "
        b"done date:2511251201 stat:DELIVRD err:000 text:hello"
    )
    yield "bind_transceiver", make(
        "bind_transceiver", 1, system_id=b"trial", password=b"secret", system_type=b"OTP",
        addr_ton=1, addr_npi=1, address_range=b"",
    )
    yield "bind_transmitter", make(
        "bind_transmitter", 2, system_id=b"acme", password=b"pw", system_type=b"",
        addr_ton=0, addr_npi=0, address_range=b"",
    )
    yield "bind_receiver", make(
        "bind_receiver", 3, system_id=b"acme", password=b"pw", system_type=b"",
        addr_ton=0, addr_npi=0, address_range=b"",
    )
    yield "bind_transceiver_resp", make("bind_transceiver_resp", 1, system_id=b"tern")
    yield "submit_sm_gsm", make(
        "submit_sm", 7, service_type=b"", source_addr_ton=5, source_addr_npi=0,
        source_addr=b"ACME", dest_addr_ton=1, dest_addr_npi=1, destination_addr=b"447700900123",
        esm_class=0, protocol_id=0, priority_flag=0, schedule_delivery_time=b"",
        validity_period=b"000001000000000R", registered_delivery=1, replace_if_present_flag=0,
        data_coding=0, sm_default_msg_id=0, short_message=gsm,
    )
    yield "submit_sm_ucs2_sar", make(
        "submit_sm", 8, service_type=b"", source_addr_ton=1, source_addr_npi=1,
        source_addr=b"447700900001", dest_addr_ton=1, dest_addr_npi=1,
        destination_addr=b"447700900123", esm_class=0, protocol_id=0, priority_flag=1,
        schedule_delivery_time=b"", validity_period=b"", registered_delivery=1,
        replace_if_present_flag=0, data_coding=8, sm_default_msg_id=0, short_message=ucs2,
        sar_msg_ref_num=0x1234, sar_total_segments=2, sar_segment_seqnum=1,
    )
    yield "submit_sm_payload", make(
        "submit_sm", 9, service_type=b"", source_addr_ton=1, source_addr_npi=1,
        source_addr=b"447700900001", dest_addr_ton=1, dest_addr_npi=1,
        destination_addr=b"447700900123", esm_class=0, protocol_id=0, priority_flag=0,
        schedule_delivery_time=b"", validity_period=b"", registered_delivery=0,
        replace_if_present_flag=0, data_coding=0, sm_default_msg_id=0, short_message=None,
        message_payload=b"A" * 200, user_message_reference=42,
    )
    yield "submit_sm_resp", make("submit_sm_resp", 7, message_id=b"00000001A2B3C4D5")
    yield "deliver_sm_receipt", make(
        "deliver_sm", 11, service_type=b"", source_addr_ton=1, source_addr_npi=1,
        source_addr=b"447700900123", dest_addr_ton=5, dest_addr_npi=0, destination_addr=b"ACME",
        esm_class=4, protocol_id=0, priority_flag=0, schedule_delivery_time=b"",
        validity_period=b"", registered_delivery=0, replace_if_present_flag=0, data_coding=0,
        sm_default_msg_id=0, short_message=receipt, receipted_message_id=b"7F3A9C12",
        message_state=2,
    )
    yield "deliver_sm_resp", make("deliver_sm_resp", 11, message_id=b"")
    yield "query_sm", make(
        "query_sm", 12, message_id=b"00000001A2B3C4D5", source_addr_ton=5,
        source_addr_npi=0, source_addr=b"ACME",
    )
    yield "data_sm", make(
        "data_sm", 13, service_type=b"", source_addr_ton=1, source_addr_npi=1,
        source_addr=b"447700900001", dest_addr_ton=1, dest_addr_npi=1,
        destination_addr=b"447700900123", esm_class=0, registered_delivery=1, data_coding=0,
        message_payload=b"data sm body",
    )
    yield "enquire_link", make("enquire_link", 14)
    yield "enquire_link_resp", make("enquire_link_resp", 14)
    yield "unbind", make("unbind", 15)
    yield "unbind_resp", make("unbind_resp", 15)
    yield "generic_nack", make("generic_nack", 16, status=consts.SMPP_ESME_RINVCMDID)
    yield "alert_notification", make(
        "alert_notification", 17, source_addr_ton=1, source_addr_npi=1,
        source_addr=b"447700900123", esme_addr_ton=5, esme_addr_npi=0, esme_addr=b"ACME",
    )


def generate():
    out = []
    for name, pdu in cases():
        raw = pdu.generate()
        out.append({
            "case": name,
            "hex": raw.hex(),
            "command": pdu.command,
            "status": pdu.status,
            "sequence": pdu.sequence,
            "fields": fields_of(pdu),
        })
    json.dump(out, sys.stdout, indent=1)
    print()


def parse():
    out = []
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        raw = bytes.fromhex(line)
        pdu = smpp.parse_pdu(raw, sequence=0, allow_unknown_opt_params=True)
        out.append({
            "hex": line,
            "command": pdu.command,
            "status": pdu.status,
            "sequence": pdu.sequence,
            "fields": fields_of(pdu),
        })
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "generate"
    {"generate": generate, "parse": parse}[mode]()

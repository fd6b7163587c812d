#!/usr/bin/env python3
"""A customer built on smpplib (an SMPP implementation tern did not write)
against `tern sim`: bind as transceiver, submit with registered_delivery=1,
wait for the delivery receipt.

    smpplib_sim_client.py HOST PORT  -> JSON {message_id, receipted_message_id, text, esm_class}

Exits non-zero when no receipt arrives within 10 seconds.
"""
import json
import sys
import time

import smpplib.client
import smpplib.consts

host, port = sys.argv[1], int(sys.argv[2])
client = smpplib.client.Client(host, port, timeout=10)
result = {}


def on_sent(pdu):
    result["message_id"] = pdu.message_id.decode() if isinstance(pdu.message_id, bytes) else pdu.message_id


def on_deliver(pdu):
    rid = getattr(pdu, "receipted_message_id", None)
    if isinstance(rid, bytes):
        rid = rid.rstrip(b"\0").decode()
    text = pdu.short_message.decode("latin-1") if isinstance(pdu.short_message, bytes) else pdu.short_message
    result["receipted_message_id"] = rid
    result["text"] = text
    result["esm_class"] = pdu.esm_class
    return 0  # ESME_ROK in the deliver_sm_resp


client.set_message_sent_handler(on_sent)
client.set_message_received_handler(on_deliver)
client.connect()
client.bind_transceiver(system_id="interop", password="secret")
client.send_message(
    source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
    source_addr="TERN",
    dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
    destination_addr="447900000002",
    short_message=b"interop hello",
    registered_delivery=1,
)
deadline = time.time() + 10
while "receipted_message_id" not in result and time.time() < deadline:
    client.read_once()
client.unbind()
client.disconnect()
print(json.dumps(result))
sys.exit(0 if "receipted_message_id" in result else 1)

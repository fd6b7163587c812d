#!/usr/bin/env python3
"""A customer of `tern serve` built on smpplib (an SMPP client tern did not write).

Used by tests/serve_e2e.rs. Every mode prints one JSON object on stdout.

    smpp_client.py session --port P [--system-id trial --password trial] [--gsm N] [--long-ucs2] [--data-sm]
        bind transceiver, submit N GSM messages and (optionally) a 2-part UCS-2
        message with a UDH and a data_sm, wait for every response, query_sm each id.
    smpp_client.py bind --port P --password X       bind status only
    smpp_client.py burst --port P --count N          N submits without waiting; statuses counted
    smpp_client.py load --port P --out FILE          submits until the connection dies; every
                                                     acknowledged id appended to FILE (flushed)
    smpp_client.py query --port P --ids FILE         query_sm every id in FILE
"""
import argparse
import json
import socket
import sys

import smpplib.client
import smpplib.consts as c
import smpplib.exceptions
import smpplib.gsm
import smpplib.smpp


class Customer:
    def __init__(self, port, system_id, password, timeout=10):
        self.client = smpplib.client.Client("127.0.0.1", port, timeout=timeout)
        self.acks = {}        # sequence -> message id
        self.errors = {}      # sequence -> status
        self.queries = {}     # message id -> message_state
        self.query_errors = 0
        self.client.set_message_sent_handler(self._sent)
        self.client.set_error_pdu_handler(self._error)
        self.client.set_query_resp_handler(self._query)
        self.client.connect()
        self.bind_status = 0
        try:
            self.client.bind_transceiver(system_id=system_id, password=password)
        except smpplib.exceptions.PDUError as e:
            self.bind_status = e.args[1]

    def _sent(self, pdu, **_):
        if pdu.status == 0:
            mid = pdu.message_id
            self.acks[pdu.sequence] = mid.decode() if isinstance(mid, bytes) else mid

    def _error(self, pdu):
        if pdu.command == "query_sm_resp":
            self.query_errors += 1
        else:
            self.errors[pdu.sequence] = int(pdu.status)

    def _query(self, pdu, **_):
        mid = pdu.message_id
        mid = mid.decode() if isinstance(mid, bytes) else mid
        self.queries[mid] = int(pdu.message_state)

    def answered(self):
        return len(self.acks) + len(self.errors)

    def submit(self, text=None, parts=None, encoding=c.SMPP_ENCODING_DEFAULT, esm_class=0):
        pdu = self.client.send_message(
            source_addr_ton=c.SMPP_TON_ALNUM, source_addr="TERN",
            dest_addr_ton=c.SMPP_TON_INTL, dest_addr_npi=c.SMPP_NPI_ISDN,
            destination_addr="447700900123",
            short_message=parts if parts is not None else text.encode("ascii"),
            data_coding=encoding, esm_class=esm_class, registered_delivery=1)
        return pdu.sequence

    def data_sm(self, text):
        """Sends one data_sm (text in message_payload); smpplib has no
        data_sm_resp handler, so its answer is read here."""
        pdu = smpplib.smpp.make_pdu(
            "data_sm", client=self.client,
            source_addr_ton=c.SMPP_TON_ALNUM, source_addr="TERN",
            dest_addr_ton=c.SMPP_TON_INTL, dest_addr_npi=c.SMPP_NPI_ISDN,
            destination_addr="447700900123", data_coding=0,
            message_payload=text.encode("ascii"))
        self.client.send_pdu(pdu)
        while True:
            resp = self.client.read_pdu()
            if resp.command == "data_sm_resp" and resp.sequence == pdu.sequence:
                mid = resp.message_id
                mid = mid.decode() if isinstance(mid, bytes) else mid
                return {"status": int(resp.status), "message_id": mid}

    def read_until(self, count):
        while self.answered() < count:
            self.client.read_once()

    def query(self, mid):
        self.client.query_message(message_id=mid, source_addr_ton=c.SMPP_TON_ALNUM,
                                  source_addr="TERN")
        self.client.read_once()


def mode_session(args):
    cust = Customer(args.port, args.system_id, args.password)
    out = {"bind": cust.bind_status}
    if cust.bind_status == 0:
        sent = 0
        for i in range(args.gsm):
            cust.submit(text="hello from smpplib %d" % i)
            sent += 1
        if args.long_ucs2:
            text = "Привет, это длинное сообщение в UCS-2, " * 3
            parts, encoding, esm_class = smpplib.gsm.make_parts(text, encoding=c.SMPP_ENCODING_ISO10646)
            out["long_parts"] = len(parts)
            for part in parts:
                cust.submit(parts=part, encoding=encoding, esm_class=esm_class)
                sent += 1
        cust.read_until(sent)
        if args.data_sm:
            out["data_sm"] = cust.data_sm("data_sm from smpplib")
            if out["data_sm"]["status"] == 0:
                cust.query(out["data_sm"]["message_id"])
        for mid in cust.acks.values():
            cust.query(mid)
        out["acks"] = list(cust.acks.values())
        out["errors"] = sorted(cust.errors.values())
        out["queried"] = cust.queries
        out["query_errors"] = cust.query_errors
        cust.client.unbind()
    cust.client.disconnect()
    print(json.dumps(out))


def mode_bind(args):
    cust = Customer(args.port, args.system_id, args.password)
    print(json.dumps({"bind": cust.bind_status}))
    cust.client.disconnect()


def mode_burst(args):
    cust = Customer(args.port, args.system_id, args.password)
    for i in range(args.count):
        cust.submit(text="burst %d" % i)
    cust.read_until(args.count)
    statuses = {}
    for s in cust.errors.values():
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    print(json.dumps({"ok": len(cust.acks), "errors": statuses}))
    cust.client.disconnect()


def mode_load(args):
    cust = Customer(args.port, args.system_id, args.password)
    window = args.window
    written = set()
    with open(args.out, "a") as f:
        try:
            sent = 0
            while sent < args.max:
                while sent - cust.answered() < window and sent < args.max:
                    cust.submit(text="load %d" % sent)
                    sent += 1
                cust.client.read_once()
                for seq, mid in cust.acks.items():
                    if seq not in written:
                        written.add(seq)
                        f.write(mid + "\n")
                f.flush()
        except (smpplib.exceptions.ConnectionError, OSError, socket.timeout):
            pass
        for seq, mid in cust.acks.items():
            if seq not in written:
                f.write(mid + "\n")
        f.flush()
    print(json.dumps({"acked": len(cust.acks)}))


def mode_query(args):
    with open(args.ids) as f:
        ids = [line.strip() for line in f if line.strip()]
    cust = Customer(args.port, args.system_id, args.password)
    for mid in ids:
        cust.query(mid)
    missing = [m for m in ids if m not in cust.queries]
    print(json.dumps({"acked": len(ids), "found": len(ids) - len(missing), "missing": missing[:10]}))
    cust.client.disconnect()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["session", "bind", "burst", "load", "query"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--system-id", default="trial")
    parser.add_argument("--password", default="trial")
    parser.add_argument("--gsm", type=int, default=0)
    parser.add_argument("--long-ucs2", action="store_true")
    parser.add_argument("--data-sm", action="store_true")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--out")
    parser.add_argument("--ids")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--max", type=int, default=1_000_000)
    args = parser.parse_args()
    {"session": mode_session, "bind": mode_bind, "burst": mode_burst,
     "load": mode_load, "query": mode_query}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())

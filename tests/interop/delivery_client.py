#!/usr/bin/env python3
"""A customer of `tern serve` receiving DLRs, built on smpplib (an SMPP client
tern did not write). Used by tests/delivery_e2e.rs. Every mode prints JSON.

    delivery_client.py submit --port P [--count N]
        bind transceiver, submit N messages with registered_delivery=1, wait
        for every submit_sm_resp, unbind; prints {"ids": [...]}.
    delivery_client.py receive --port P --expect N [--wait S] [--linger S]
                       [--bind receiver|transceiver] [--refuse-first K]
                       [--ignore-first K] [--brief]
        bind, answer deliver_sm (the first K with ESME_RX_T_APPN, or the
        first K not at all; the rest OK) until N arrived or S seconds passed,
        listen S_linger more seconds for anything further (duplicates),
        unbind; prints {"deliveries": [...]} (with --brief only the
        receipted_message_id of each, and the seconds from bind to the last).
    delivery_client.py live --port P [--wait S]
        bind transceiver, submit one message with registered_delivery=1,
        print {"id": ...} as soon as it is acknowledged, then receive one
        deliver_sm (as `receive --expect 1`) and print {"deliveries": [...]}.
"""
import argparse
import json
import socket
import sys
import time

import smpplib.client
import smpplib.consts as c
import smpplib.exceptions

ESME_RX_T_APPN = 0x64


def text(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.rstrip(b"\x00").decode("latin-1")
    return str(value)


class Customer:
    def __init__(self, port, bind, refuse_first=0, ignore_first=0, brief=False):
        self.client = smpplib.client.Client("127.0.0.1", port, timeout=0.3)
        self.acks = []
        self.errors = []
        self.deliveries = []
        self.refuse_left = refuse_first
        self.ignore_left = ignore_first
        self.brief = brief
        self.last_at = None
        self.client.set_message_sent_handler(self._sent)
        self.client.set_error_pdu_handler(self._error)
        self.client.set_message_received_handler(self._received)
        answer = self.client._message_received

        def maybe_answer(pdu):
            if pdu.command == "deliver_sm" and self.ignore_left > 0:
                self.ignore_left -= 1
                self._received(pdu)
                self.deliveries[-1]["ignored"] = True
                return
            answer(pdu)

        self.client._message_received = maybe_answer
        self.client.connect()
        if bind == "receiver":
            self.client.bind_receiver(system_id="trial", password="trial")
        else:
            self.client.bind_transceiver(system_id="trial", password="trial")

    def _sent(self, pdu, **_):
        self.acks.append(text(pdu.message_id))

    def _error(self, pdu):
        self.errors.append(int(pdu.status))

    def _received(self, pdu, **_):
        self.last_at = time.monotonic()
        if self.brief:
            self.deliveries.append(text(getattr(pdu, "receipted_message_id", None)))
            return c.SMPP_ESME_ROK
        refused = self.refuse_left > 0
        self.deliveries.append({
            "esm_class": int(pdu.esm_class),
            "data_coding": int(pdu.data_coding),
            "source_addr": text(pdu.source_addr),
            "destination_addr": text(pdu.destination_addr),
            "short_message": text(pdu.short_message),
            "receipted_message_id": text(getattr(pdu, "receipted_message_id", None)),
            "message_state": getattr(pdu, "message_state", None),
            "refused": refused,
        })
        if refused:
            self.refuse_left -= 1
            return ESME_RX_T_APPN
        return c.SMPP_ESME_ROK

    def read_for(self, seconds, until=None):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until is not None and until():
                return
            try:
                self.client.read_once()
            except socket.timeout:
                pass

    def submit(self, i):
        self.client.send_message(
            source_addr_ton=c.SMPP_TON_ALNUM, source_addr="TERN",
            dest_addr_ton=c.SMPP_TON_INTL, dest_addr_npi=c.SMPP_NPI_ISDN,
            destination_addr="447700900123",
            short_message=("receipt wanted %d" % i).encode("ascii"),
            data_coding=0, registered_delivery=1)

    def close(self):
        try:
            self.client.unbind()
        except (smpplib.exceptions.PDUError, smpplib.exceptions.ConnectionError, OSError):
            pass
        self.client.disconnect()


def receive(cust, args):
    started = time.monotonic()
    cust.read_for(args.wait, until=lambda: len(cust.deliveries) >= args.expect)
    elapsed = (cust.last_at or started) - started
    cust.read_for(args.linger)
    print(json.dumps({"deliveries": cust.deliveries, "seconds": elapsed}), flush=True)


def mode_submit(args):
    cust = Customer(args.port, "transceiver")
    deadline = time.monotonic() + 60
    sent = 0
    while sent < args.count and time.monotonic() < deadline:
        # At most 50 unanswered: below the server's window.
        while sent < args.count and sent - len(cust.acks) - len(cust.errors) < 50:
            cust.submit(sent)
            sent += 1
        cust.read_for(0.05, until=lambda: sent - len(cust.acks) - len(cust.errors) < 50)
    cust.read_for(10, until=lambda: len(cust.acks) + len(cust.errors) >= args.count)
    print(json.dumps({"ids": cust.acks, "errors": cust.errors}), flush=True)
    cust.close()


def mode_receive(args):
    cust = Customer(args.port, args.bind, args.refuse_first, args.ignore_first, args.brief)
    receive(cust, args)
    cust.close()


def mode_live(args):
    cust = Customer(args.port, "transceiver")
    cust.submit(0)
    cust.read_for(10, until=lambda: cust.acks or cust.errors)
    print(json.dumps({"id": cust.acks[0] if cust.acks else None, "errors": cust.errors}),
          flush=True)
    receive(cust, args)
    cust.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["submit", "receive", "live"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--expect", type=int, default=1)
    parser.add_argument("--wait", type=float, default=15.0)
    parser.add_argument("--linger", type=float, default=0.5)
    parser.add_argument("--bind", choices=["receiver", "transceiver"], default="transceiver")
    parser.add_argument("--refuse-first", type=int, default=0)
    parser.add_argument("--ignore-first", type=int, default=0)
    parser.add_argument("--brief", action="store_true")
    args = parser.parse_args()
    {"submit": mode_submit, "receive": mode_receive, "live": mode_live}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())

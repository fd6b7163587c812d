//! `tern sim` and `tern bench smpp` as real processes on 127.0.0.1: the load
//! generator against the simulator (receipts matched, throttling counted),
//! garbage on the wire, and a Python smpplib customer against the simulator.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use serde_json::Value;
use tern::smpp::pdu::{Address, Bind, Body, DeliverSmResp, Password, Pdu, SubmitSm, SystemId};

const TERN: &str = env!("CARGO_BIN_EXE_tern");

struct Sim {
    child: Child,
    addr: SocketAddr,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sim {
    fn start(extra: &[&str]) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = dir.path().join("report.json");
        let port = common::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(TERN)
            .args(["sim", "--listen", &addr.to_string(), "--report-json"])
            .arg(&report)
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("start tern sim");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "tern sim did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sim {
            child,
            addr,
            report,
            _dir: dir,
        }
    }

    /// SIGINT, then the report it wrote at exit.
    fn stop(mut self) -> Value {
        // SAFETY: kill(2) on the pid of a child we started and still own.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let status = self.child.wait().expect("wait for tern sim");
        assert!(status.success(), "tern sim exited with {status}");
        let text = std::fs::read_to_string(&self.report).expect("report written at exit");
        serde_json::from_str(&text).expect("report is JSON")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(addr: SocketAddr, extra: &[&str]) -> Value {
    let out = Command::new(TERN)
        .args(["bench", "smpp", "--target", &addr.to_string(), "--json"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tern bench smpp");
    assert!(
        out.status.success(),
        "tern bench smpp failed: {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("bench prints one JSON object")
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[test]
fn every_submit_acknowledged_and_every_receipt_matched() {
    let sim = Sim::start(&["--receipt-delay-ms", "5", "--receipt-jitter-ms", "20"]);
    let report = bench(
        sim.addr,
        &[
            "--binds",
            "4",
            "--window",
            "32",
            "--count",
            "2000",
            "--dlr",
            "--dlr-wait-s",
            "20",
        ],
    );
    assert_eq!(u(&report, "/submitted"), 2000, "{report}");
    assert_eq!(u(&report, "/acknowledged"), 2000, "{report}");
    assert_eq!(u(&report, "/timeouts"), 0, "{report}");
    assert_eq!(u(&report, "/receipts/expected"), 2000, "{report}");
    assert_eq!(u(&report, "/receipts/matched"), 2000, "{report}");
    assert_eq!(u(&report, "/receipts/missing"), 0, "{report}");
    assert_eq!(u(&report, "/receipts/duplicated"), 0, "{report}");
    assert_eq!(u(&report, "/receipts/unknown"), 0, "{report}");
    assert!(report["errors"].as_object().is_some_and(|e| e.is_empty()));
    let sim_report = sim.stop();
    assert_eq!(u(&sim_report, "/totals/submits_ok"), 2000);
    assert_eq!(u(&sim_report, "/totals/receipts_acked"), 2000);
    assert_eq!(u(&sim_report, "/per_destination/447900000001"), 2000);
}

#[test]
fn throttling_is_counted_by_status_name() {
    // One core, so "every 10th submit" is exact for the whole run.
    let sim = Sim::start(&["--cores", "0", "--throttle-every", "10"]);
    let report = bench(
        sim.addr,
        &["--binds", "2", "--window", "16", "--count", "1000"],
    );
    assert_eq!(u(&report, "/submitted"), 1000, "{report}");
    assert_eq!(u(&report, "/errors/ESME_RTHROTTLED"), 100, "{report}");
    assert_eq!(u(&report, "/acknowledged"), 900, "{report}");
    let sim_report = sim.stop();
    assert_eq!(u(&sim_report, "/totals/throttled"), 100);
}

fn read_pdu(stream: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).expect("a PDU header");
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut pdu = header.to_vec();
    pdu.resize(len.max(16), 0);
    stream.read_exact(&mut pdu[16..]).expect("the PDU body");
    pdu
}

#[test]
fn garbage_gets_a_generic_nack_and_others_are_still_served() {
    let sim = Sim::start(&[]);
    let mut raw = TcpStream::connect(sim.addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // A well-framed PDU with an unknown command_id: generic_nack, connection kept.
    raw.write_all(&[0, 0, 0, 16, 0x00, 0x0A, 0xBC, 0xDE, 0, 0, 0, 0, 0, 0, 0, 7])
        .expect("write");
    let nack = read_pdu(&mut raw);
    assert_eq!(&nack[4..8], &[0x80, 0, 0, 0], "generic_nack");
    assert_eq!(&nack[8..12], &[0, 0, 0, 3], "ESME_RINVCMDID");
    assert_eq!(&nack[12..16], &[0, 0, 0, 7], "sequence echoed");
    // A 4 GiB command_length: generic_nack(ESME_RINVCMDLEN), then the close.
    raw.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8])
        .expect("write");
    let nack = read_pdu(&mut raw);
    assert_eq!(&nack[4..8], &[0x80, 0, 0, 0], "generic_nack");
    assert_eq!(&nack[8..12], &[0, 0, 0, 2], "ESME_RINVCMDLEN");
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after the nack but the close");
    let report = bench(sim.addr, &["--count", "200"]);
    assert_eq!(u(&report, "/acknowledged"), 200, "{report}");
    let sim_report = sim.stop();
    assert_eq!(u(&sim_report, "/totals/generic_nacks"), 2);
}

#[test]
fn an_smpplib_customer_gets_its_receipt() {
    let sim = Sim::start(&["--id-format", "dec"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/smpplib_sim_client.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(sim.addr.ip().to_string())
        .arg(sim.addr.port().to_string())
        .output()
        .expect("python3 must be installed (run .ci/run, which installs it with smpplib)");
    assert!(
        out.status.success(),
        "smpplib client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("client prints JSON");
    let id = result["message_id"].as_str().expect("submit_sm_resp id");
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "decimal ids: {id}");
    assert_eq!(
        result["receipted_message_id"].as_str(),
        Some(id),
        "{result}"
    );
    assert_eq!(result["esm_class"].as_u64(), Some(4), "{result}");
    let text = result["text"].as_str().expect("receipt text");
    assert!(text.starts_with(&format!("id:{id} ")), "{text}");
    assert!(text.contains("stat:DELIVRD"), "{text}");
    assert!(text.contains("text:interop hello"), "{text}");
    let sim_report = sim.stop();
    assert_eq!(u(&sim_report, "/totals/receipts_acked"), 1);
}

#[test]
fn mo_traffic_reaches_a_bound_customer() {
    let sim = Sim::start(&["--cores", "0", "--mo-rate", "200", "--mo-to", "4455"]);
    let report = bench(sim.addr, &["--duration-s", "1.5", "--rate", "100"]);
    assert!(u(&report, "/mo_received") > 0, "{report}");
    assert_eq!(
        u(&report, "/receipts/unknown"),
        0,
        "MO are not receipts: {report}"
    );
    let sim_report = sim.stop();
    assert!(u(&sim_report, "/totals/mo_acked") >= u(&report, "/mo_received"));
}

#[test]
fn drop_after_closes_the_connection_and_the_bench_says_so() {
    let sim = Sim::start(&["--drop-after", "50"]);
    let out = Command::new(TERN)
        .args([
            "bench",
            "smpp",
            "--target",
            &sim.addr.to_string(),
            "--count",
            "500",
        ])
        .output()
        .expect("run tern bench smpp");
    assert!(
        !out.status.success(),
        "the bench must fail when the link drops"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("closed the connection"), "{stderr}");
    let sim_report = sim.stop();
    assert_eq!(u(&sim_report, "/totals/submits_ok"), 50);
    assert_eq!(u(&sim_report, "/totals/connections_dropped"), 1);
}

/// A blocking SMPP client from tern's own codec, for scripted sessions.
struct RawClient {
    stream: TcpStream,
    sequence: u32,
}

impl RawClient {
    fn bind(addr: SocketAddr, body: fn(Bind) -> Body) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut client = RawClient {
            stream,
            sequence: 0,
        };
        let bind = Bind {
            system_id: SystemId::from_text("holder").expect("system_id"),
            password: Password::from_text("pw").expect("password"),
            interface_version: 0x34,
            ..Bind::default()
        };
        client.send(body(bind));
        let resp = client.read();
        assert!(resp.command_status.is_ok(), "bind refused: {resp}");
        client
    }

    fn send(&mut self, body: Body) -> u32 {
        self.sequence += 1;
        let pdu = Pdu::new(self.sequence, body);
        self.stream
            .write_all(&pdu.to_bytes().expect("encode"))
            .expect("write");
        self.sequence
    }

    fn read(&mut self) -> Pdu {
        Pdu::decode_slice(&read_pdu(&mut self.stream)).expect("the sim sends valid PDUs")
    }

    fn submit_with_receipts(&mut self, count: usize) -> Vec<String> {
        for n in 0..count {
            self.send(Body::SubmitSm(SubmitSm {
                source_addr: Address::from_text("TERN").expect("address"),
                destination_addr: Address::from_text(&format!("4479{n:08}")).expect("address"),
                registered_delivery: 1,
                short_message: bytes::Bytes::from_static(b"held receipt"),
                ..SubmitSm::default()
            }));
        }
        (0..count)
            .map(|_| match self.read().body {
                Body::SubmitSmResp(resp) => resp.message_id.to_string(),
                other => panic!("expected submit_sm_resp, got {other:?}"),
            })
            .collect()
    }

    /// Reads `count` receipts, answering each; returns their receipted ids.
    fn receive_receipts(&mut self, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        while ids.len() < count {
            let pdu = self.read();
            if let Body::DeliverSm(sm) = &pdu.body {
                assert!(sm.is_delivery_receipt(), "{pdu}");
                let id = sm
                    .tlvs
                    .receipted_message_id()
                    .expect("receipted_message_id");
                ids.push(id.to_string());
                let resp = Pdu::new(
                    pdu.sequence_number,
                    Body::DeliverSmResp(DeliverSmResp::default()),
                );
                self.stream
                    .write_all(&resp.to_bytes().expect("encode"))
                    .expect("write");
            }
        }
        ids
    }
}

#[test]
fn receipts_wait_for_a_receiver_and_cross_cores_to_reach_it() {
    let sim = Sim::start(&[]);
    // No receiver yet: the receipts are held.
    let mut transmitter = RawClient::bind(sim.addr, Body::BindTransmitter);
    let mut submitted = transmitter.submit_with_receipts(20);
    drop(transmitter);
    let mut receiver = RawClient::bind(sim.addr, Body::BindReceiver);
    let mut received = receiver.receive_receipts(20);
    // With a receiver bound, transmitters on any core get theirs to it. Several
    // connections so that SO_REUSEPORT spreads them over the cores.
    for _ in 0..6 {
        let mut transmitter = RawClient::bind(sim.addr, Body::BindTransmitter);
        submitted.extend(transmitter.submit_with_receipts(10));
    }
    received.extend(receiver.receive_receipts(60));
    submitted.sort();
    received.sort();
    assert_eq!(submitted, received);
    drop(receiver);
    let sim_report = sim.stop();
    assert_eq!(u(&sim_report, "/totals/receipts_acked"), 80);
    assert!(
        u(&sim_report, "/totals/receipts_held") >= 20,
        "{sim_report}"
    );
}

#[test]
fn a_busy_port_is_reported_by_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = Command::new(TERN)
        .args(["sim", "--listen", &addr.to_string()])
        .output()
        .expect("run tern sim");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn fail_rate_answers_the_chosen_status() {
    let sim = Sim::start(&["--fail-rate", "1", "--fail-status", "ESME_RSYSERR"]);
    let report = bench(sim.addr, &["--count", "100", "--dlr", "--dlr-wait-s", "1"]);
    assert_eq!(u(&report, "/errors/ESME_RSYSERR"), 100, "{report}");
    assert_eq!(u(&report, "/acknowledged"), 0, "{report}");
    assert_eq!(
        u(&report, "/receipts/expected"),
        0,
        "no receipt for a refused submit"
    );
    assert_eq!(u(&sim.stop(), "/totals/failed"), 100);
}

#[test]
fn resp_delay_shows_in_the_latency() {
    let sim = Sim::start(&["--resp-delay-ms", "40"]);
    let report = bench(sim.addr, &["--count", "10", "--window", "1"]);
    assert_eq!(u(&report, "/acknowledged"), 10, "{report}");
    assert!(u(&report, "/latency_us/p50") >= 40_000, "{report}");
}

#[test]
fn max_tps_throttles_beyond_the_limit() {
    let sim = Sim::start(&["--cores", "0", "--max-tps", "200"]);
    let report = bench(sim.addr, &["--count", "2000", "--window", "64"]);
    let throttled = u(&report, "/errors/ESME_RTHROTTLED");
    assert!(
        throttled > 1000,
        "a burst of 2000 far beyond 200/s: {report}"
    );
    assert_eq!(u(&report, "/acknowledged") + throttled, 2000, "{report}");
}

#[test]
fn ids_in_different_formats_still_match_their_receipts() {
    // Decimal in submit_sm_resp, hex in the receipt, as some SMSCs do.
    let sim = Sim::start(&["--id-format", "dec-resp-hex-receipt"]);
    let report = bench(
        sim.addr,
        &[
            "--count",
            "300",
            "--dlr",
            "--id-format",
            "hex-in-receipt-dec-in-resp",
        ],
    );
    assert_eq!(u(&report, "/receipts/matched"), 300, "{report}");
    assert_eq!(u(&report, "/receipts/unknown"), 0, "{report}");
    // Compared as-is they mostly do not match (small ids read the same in
    // both bases, or collide with another message's id): the formats differ.
    let report = bench(sim.addr, &["--count", "50", "--dlr", "--dlr-wait-s", "2"]);
    assert!(u(&report, "/receipts/unknown") > 0, "{report}");
    assert!(u(&report, "/receipts/missing") > 0, "{report}");
}

//! `tern serve` end to end: the real binary on 127.0.0.1 with a temporary
//! data directory, driven by Python smpplib (tests/interop/smpp_client.py),
//! a client we did not write, and by raw sockets for hostile input.
//!
//! Covered: bind + submit (GSM and a 2-part UCS-2 message with UDH) + query_sm,
//! wrong password, throttling, a bad configuration key, garbage / a 4 GiB
//! command_length / half a PDU then silence (only that connection suffers),
//! a bind flood (wrong passwords, double binds, silent connections) while
//! another customer keeps submitting, and SIGKILL in the middle of a load:
//! every acknowledged message is found after the restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, temp_dir};

use serde_json::Value;

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/smpp_client.py");
const ESME_RINVCMDLEN: u32 = 0x02;
const ESME_RINVPASWD: u64 = 0x0E;
const ESME_RTHROTTLED: &str = "88";
const GENERIC_NACK: u32 = 0x8000_0000;

/// A config file with free ports; `extra_smpp` and `account_extra` are
/// appended to the [smpp] section and the trial account.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    smpp_port: u16,
}

impl Setup {
    fn new(name: &str, extra_smpp: &str, account_extra: &str) -> Setup {
        let dir = temp_dir(name);
        let smpp_port = free_port();
        let store_port = free_port();
        let config = dir.path().join("tern.toml");
        let text = format!(
            "[node]\ndata_dir = \"{data}\"\n\
             [smpp]\nlisten = \"127.0.0.1:{smpp_port}\"\n{extra_smpp}\n\
             [store]\nlisten = \"127.0.0.1:{store_port}\"\n\
             [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\n{account_extra}\n",
            data = dir.path().join("data").display()
        );
        std::fs::write(&config, text).expect("write config");
        Setup {
            dir,
            config,
            smpp_port,
        }
    }

    fn start(&self) -> Server {
        Server::start(&self.config, self.dir.path(), self.smpp_port)
    }
}

/// A running `tern serve`; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(config: &Path, dir: &Path, smpp_port: u16) -> Server {
        let log = dir.join(format!("serve-{}.log", free_port()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start tern serve");
        let mut server = Server { child, log };
        let addr = SocketAddr::from(([127, 0, 0, 1], smpp_port));
        common::wait_listening(addr, "tern serve", &mut server.child, &server.log);
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client(mode: &str, port: u16, args: &[&str]) -> Value {
    run_client(mode, port, args, None)
}

/// `client`, showing the server's log if the client fails.
fn client_or_log(mode: &str, port: u16, args: &[&str], server: &Server) -> Value {
    run_client(mode, port, args, Some(server))
}

fn run_client(mode: &str, port: u16, args: &[&str], server: Option<&Server>) -> Value {
    let out = Command::new("python3")
        .arg(CLIENT)
        .arg(mode)
        .arg("--port")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect(
            "python3 must be installed with smpplib (`pip install smpplib==2.2.4`, or run .ci/run)",
        );
    assert!(
        out.status.success(),
        "smpplib client `{mode}` failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.map(Server::log_text).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).expect("client prints JSON")
}

#[test]
fn bind_submit_gsm_and_long_ucs2_then_query() {
    let setup = Setup::new("submit", "", "");
    let _server = setup.start();
    let out = client(
        "session",
        setup.smpp_port,
        &["--gsm", "3", "--long-ucs2", "--data-sm"],
    );
    assert_eq!(out["bind"], 0, "{out}");
    assert_eq!(
        out["long_parts"], 2,
        "the UCS-2 text needs two UDH parts: {out}"
    );
    assert_eq!(out["errors"].as_array().map(Vec::len), Some(0), "{out}");
    let acks = out["acks"].as_array().expect("acks");
    assert_eq!(acks.len(), 5, "3 GSM + 2 UCS-2 parts acknowledged: {out}");
    let mut unique: Vec<&str> = acks.iter().filter_map(Value::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 5, "message ids are distinct: {out}");
    for id in &unique {
        assert_eq!(id.len(), 20, "message id {id} has the 20-character form");
        // query_sm answers from the store: message_state 1 (ENROUTE) before any operator.
        assert_eq!(out["queried"][*id], 1, "query_sm for {id}: {out}");
    }
    assert_eq!(out["query_errors"], 0, "{out}");
    // data_sm is accepted the same way and answered with data_sm_resp.
    assert_eq!(out["data_sm"]["status"], 0, "{out}");
    let data_id = out["data_sm"]["message_id"].as_str().expect("data_sm id");
    assert!(!unique.contains(&data_id), "data_sm got its own id: {out}");
    assert_eq!(
        out["queried"][data_id], 1,
        "data_sm message is in the store: {out}"
    );
}

/// Raw PDU: header plus body.
fn raw_pdu(command_id: u32, sequence_number: u32, body: &[u8]) -> Vec<u8> {
    let mut pdu = Vec::with_capacity(16 + body.len());
    pdu.extend_from_slice(&(16 + body.len() as u32).to_be_bytes());
    pdu.extend_from_slice(&command_id.to_be_bytes());
    pdu.extend_from_slice(&0u32.to_be_bytes());
    pdu.extend_from_slice(&sequence_number.to_be_bytes());
    pdu.extend_from_slice(body);
    pdu
}

#[test]
fn enquire_link_both_ways_and_unbind() {
    let setup = Setup::new("enquire", "enquire_link_interval_s = 1", "");
    let _server = setup.start();
    let mut stream =
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], setup.smpp_port))).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // bind_transceiver: system_id, password, system_type, version 0x34, ton, npi, range.
    let body = b"trial\0trial\0\0\x34\0\0\0";
    stream.write_all(&raw_pdu(0x09, 1, body)).expect("bind");
    assert_eq!(read_pdu_header(&mut stream), Some((0x8000_0009, 0)));
    stream
        .write_all(&raw_pdu(0x15, 2, b""))
        .expect("enquire_link");
    assert_eq!(read_pdu_header(&mut stream), Some((0x8000_0015, 0)));
    // Quiet for longer than the interval: the server probes us.
    assert_eq!(
        read_pdu_header(&mut stream).map(|(id, _)| id),
        Some(0x15),
        "server sends enquire_link after the idle interval"
    );
    stream.write_all(&raw_pdu(0x06, 3, b"")).expect("unbind");
    assert_eq!(read_pdu_header(&mut stream), Some((0x8000_0006, 0)));
    assert!(closed_by_server(&mut stream, Duration::from_secs(5)));
}

#[test]
fn wrong_password_is_refused_and_right_one_still_works() {
    let setup = Setup::new("password", "", "");
    let _server = setup.start();
    let out = client("bind", setup.smpp_port, &["--password", "wrong"]);
    assert_eq!(out["bind"].as_u64(), Some(ESME_RINVPASWD), "{out}");
    let out = client("bind", setup.smpp_port, &["--password", "trial"]);
    assert_eq!(out["bind"], 0, "{out}");
}

#[test]
fn over_the_rate_limit_is_throttled() {
    let setup = Setup::new("throttle", "", "max_tps = 4");
    let _server = setup.start();
    let out = client("burst", setup.smpp_port, &["--count", "40"]);
    let throttled = out["errors"][ESME_RTHROTTLED].as_u64().unwrap_or(0);
    let ok = out["ok"].as_u64().unwrap_or(0);
    assert!(throttled > 0, "ESME_RTHROTTLED expected: {out}");
    assert!(ok > 0, "some submits pass: {out}");
    assert_eq!(ok + throttled, 40, "{out}");
}

#[test]
fn bad_config_key_names_key_and_file() {
    let dir = temp_dir("badconfig");
    let config = dir.path().join("broken.toml");
    std::fs::write(&config, "[smpp]\nlisten_adress = \"127.0.0.1:1\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run tern serve");
    assert!(!out.status.success(), "a bad key must fail start-up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen_adress"), "key named: {stderr}");
    assert!(stderr.contains("broken.toml"), "file named: {stderr}");

    std::fs::write(&config, "[smpp]\nlisten = \"not-an-address\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run tern serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("smpp.listen"), "key named: {stderr}");
}

/// Reads one PDU header (and skips its body); None on EOF or error.
fn read_pdu_header(stream: &mut TcpStream) -> Option<(u32, u32)> {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).ok()?;
    let word =
        |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let body_len = word(0).checked_sub(16)? as usize;
    let mut body = vec![0u8; body_len.min(4096)];
    stream.read_exact(&mut body).ok()?;
    Some((word(4), word(8)))
}

/// True when the server closed the connection within `within`.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("set timeout");
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn hostile_input_drops_only_that_connection() {
    let setup = Setup::new("hostile", "dead_after_s = 2\nbind_timeout_s = 2", "");
    let server = setup.start();
    let addr = SocketAddr::from(([127, 0, 0, 1], setup.smpp_port));
    // A customer submitting all along, on its own connection.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = steady_submitter(addr, std::sync::Arc::clone(&stop));

    // Garbage: an HTTP request reads as an absurd command_length.
    let mut garbage = TcpStream::connect(addr).expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: tern\r\n\r\n")
        .expect("write");
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(
        read_pdu_header(&mut garbage),
        Some((GENERIC_NACK, ESME_RINVCMDLEN)),
        "garbage earns generic_nack(ESME_RINVCMDLEN)"
    );
    assert!(closed_by_server(&mut garbage, Duration::from_secs(5)));

    // A 4 GiB command_length.
    let mut huge = TcpStream::connect(addr).expect("connect");
    let mut pdu = Vec::new();
    pdu.extend_from_slice(&u32::MAX.to_be_bytes());
    pdu.extend_from_slice(&0x0000_0004u32.to_be_bytes());
    pdu.extend_from_slice(&0u32.to_be_bytes());
    pdu.extend_from_slice(&7u32.to_be_bytes());
    huge.write_all(&pdu).expect("write");
    huge.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(
        read_pdu_header(&mut huge),
        Some((GENERIC_NACK, ESME_RINVCMDLEN))
    );
    assert!(closed_by_server(&mut huge, Duration::from_secs(5)));

    // Half a bind_transceiver, then silence: dropped after the bind timeout.
    let mut half = TcpStream::connect(addr).expect("connect");
    let mut bind = Vec::new();
    bind.extend_from_slice(&40u32.to_be_bytes());
    bind.extend_from_slice(&0x0000_0009u32.to_be_bytes());
    bind.extend_from_slice(&0u32.to_be_bytes());
    bind.extend_from_slice(&1u32.to_be_bytes());
    bind.extend_from_slice(b"tri");
    half.write_all(&bind).expect("write");

    // Meanwhile another customer is served normally.
    let out = client("session", setup.smpp_port, &["--gsm", "2"]);
    assert_eq!(out["bind"], 0, "{out}");
    assert_eq!(out["acks"].as_array().map(Vec::len), Some(2), "{out}");

    assert!(
        closed_by_server(&mut half, Duration::from_secs(10)),
        "a half PDU then silence must be dropped"
    );
    let out = client("session", setup.smpp_port, &["--gsm", "1"]);
    assert_eq!(
        out["acks"].as_array().map(Vec::len),
        Some(1),
        "still serving: {out}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad, slowest) = steady.join().expect("steady submitter");
    eprintln!("hostile input: steady customer {ok} submits OK, slowest answer {slowest:?}");
    assert!(
        bad.is_empty(),
        "the steady customer suffered: {bad:?}\n{}",
        server.log_text()
    );
    assert!(ok >= 10, "the steady customer kept submitting: {ok}");
}

#[test]
fn sigkill_mid_load_loses_no_acknowledged_message() {
    let setup = Setup::new("crash", "", "");
    let acked_file = setup.dir.path().join("acked.txt");
    let mut server = setup.start();
    let load = Command::new("python3")
        .arg(CLIENT)
        .args(["load", "--port", &setup.smpp_port.to_string(), "--out"])
        .arg(&acked_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with smpplib");
    // Let acknowledgements accumulate, then pull the plug mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let acked = std::fs::read_to_string(&acked_file)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if acked >= 300 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "load made too little progress ({acked} acked):\n{}",
            server.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    common::wait_closed(SocketAddr::from(([127, 0, 0, 1], setup.smpp_port)));
    let load_out = load.wait_with_output().expect("load client ends");
    assert!(
        load_out.status.success(),
        "load client: {}",
        String::from_utf8_lossy(&load_out.stderr)
    );
    let acked = std::fs::read_to_string(&acked_file)
        .expect("acked ids")
        .lines()
        .count();

    let restarted = setup.start();
    let ids = acked_file.to_string_lossy().into_owned();
    let out = client_or_log("query", setup.smpp_port, &["--ids", &ids], &restarted);
    eprintln!("crash test: {out}");
    assert_eq!(out["acked"].as_u64(), Some(acked as u64), "{out}");
    assert_eq!(
        out["found"], out["acked"],
        "every acknowledged message survives SIGKILL: {out}"
    );
}

#[test]
fn account_limits_senders_binds_and_source_addresses() {
    let setup = Setup::new("limits", "", "allowed_senders = [\"OTHER\"]\nmax_binds = 1");
    let _server = setup.start();
    // The smpplib client sends from "TERN": not an allowed sender id.
    let out = client("session", setup.smpp_port, &["--gsm", "1"]);
    assert_eq!(out["bind"], 0, "{out}");
    assert_eq!(
        out["errors"],
        serde_json::json!([0x0A]),
        "ESME_RINVSRCADR: {out}"
    );

    // One bind held open: a second one exceeds max_binds.
    let mut held =
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], setup.smpp_port))).expect("connect");
    held.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    held.write_all(&raw_pdu(0x09, 1, b"trial\0trial\0\0\x34\0\0\0"))
        .expect("bind");
    assert_eq!(read_pdu_header(&mut held), Some((0x8000_0009, 0)));
    let out = client("bind", setup.smpp_port, &[]);
    assert_eq!(out["bind"], 0x0D, "ESME_RBINDFAIL over max_binds: {out}");
    drop(held);

    let setup = Setup::new("allowed-ips", "", "allowed_ips = [\"10.0.0.0/8\"]");
    let _server = setup.start();
    let out = client("bind", setup.smpp_port, &[]);
    assert_eq!(out["bind"], 0x0D, "loopback is outside 10.0.0.0/8: {out}");
}

#[test]
fn sigterm_unbinds_customers_and_exits_cleanly() {
    let setup = Setup::new("sigterm", "", "");
    let mut server = setup.start();
    let mut stream =
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], setup.smpp_port))).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(&raw_pdu(0x09, 1, b"trial\0trial\0\0\x34\0\0\0"))
        .expect("bind");
    assert_eq!(read_pdu_header(&mut stream), Some((0x8000_0009, 0)));

    let pid = libc::pid_t::try_from(server.child.id()).expect("pid fits");
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut header = [0u8; 16];
    stream
        .read_exact(&mut header)
        .expect("unbind from the server");
    assert_eq!(&header[4..8], &0x06u32.to_be_bytes(), "unbind");
    let mut resp = raw_pdu(0x8000_0006, 0, b"");
    resp[12..16].copy_from_slice(&header[12..16]);
    stream.write_all(&resp).expect("unbind_resp");
    assert!(closed_by_server(&mut stream, Duration::from_secs(10)));

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tern serve did not stop on SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "clean exit: {status}\n{}",
        server.log_text()
    );
    assert!(
        server.log_text().contains("stopped"),
        "{}",
        server.log_text()
    );
}

/// submit_sm body: TERN -> 447900000001, GSM default, `text`.
fn submit_body(text: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(b"\0\x05\0TERN\0\x01\x01447900000001\0");
    // esm_class, protocol_id, priority, schedule, validity, registered_delivery,
    // replace_if_present, data_coding, sm_default_msg_id.
    body.extend_from_slice(b"\0\0\0\0\0\0\0\0\0");
    body.push(u8::try_from(text.len()).expect("short text"));
    body.extend_from_slice(text);
    body
}

/// A customer that submits one message at a time until told to stop;
/// returns (OK answers, anything else, slowest answer).
fn steady_submitter(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<(u64, Vec<String>, Duration)> {
    thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(&raw_pdu(0x09, 1, b"trial\0trial\0\0\x34\0\0\0"))
            .expect("bind");
        assert_eq!(read_pdu_header(&mut stream), Some((0x8000_0009, 0)));
        let (mut ok, mut bad, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
        let mut seq = 2u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && bad.is_empty() {
            let sent = Instant::now();
            if let Err(e) = stream.write_all(&raw_pdu(0x04, seq, &submit_body(b"steady"))) {
                bad.push(format!("write: {e}"));
                break;
            }
            // Skip anything the server sends on its own (enquire_link, DLRs).
            loop {
                match read_pdu_header(&mut stream) {
                    Some((0x8000_0004, 0)) => {
                        ok += 1;
                        break;
                    }
                    Some((0x8000_0004, status)) => {
                        bad.push(format!("submit_sm_resp status {status:#x}"));
                        break;
                    }
                    Some(_) => continue,
                    None => {
                        bad.push("connection lost".into());
                        break;
                    }
                }
            }
            slowest = slowest.max(sent.elapsed());
            seq += 1;
        }
        (ok, bad, slowest)
    })
}

#[test]
fn a_bind_flood_is_answered_or_dropped_and_others_keep_submitting() {
    let setup = Setup::new("bindflood", "bind_timeout_s = 2", "");
    let server = setup.start();
    let addr = SocketAddr::from(([127, 0, 0, 1], setup.smpp_port));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = steady_submitter(addr, std::sync::Arc::clone(&stop));
    thread::sleep(Duration::from_millis(300));

    const PER_KIND: usize = 100;
    let flood_started = Instant::now();
    let mut wrong_password = Vec::new();
    let mut double_bind = Vec::new();
    let mut silent = Vec::new();
    for i in 0..PER_KIND {
        let mut stream = TcpStream::connect(addr).expect("connect wrong password");
        stream
            .write_all(&raw_pdu(0x09, 1, b"trial\0wrong\0\0\x34\0\0\0"))
            .expect("bind");
        wrong_password.push(stream);
        let mut stream = TcpStream::connect(addr).expect("connect double bind");
        let mut two = raw_pdu(0x09, 1, b"trial\0trial\0\0\x34\0\0\0");
        two.extend_from_slice(&raw_pdu(0x02, 2, b"trial\0trial\0\0\x34\0\0\0"));
        stream.write_all(&two).expect("binds");
        double_bind.push(stream);
        silent.push(TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {i}: {e}")));
    }
    // Every flooding connection is answered or dropped: none hangs.
    for stream in &mut double_bind {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        assert_eq!(
            read_pdu_header(stream),
            Some((0x8000_0009, 0)),
            "the first bind is accepted"
        );
        let second = read_pdu_header(stream);
        assert!(
            matches!(second, Some((0x8000_0002, status)) if status != 0),
            "a second bind on a bound connection is refused: {second:?}"
        );
    }
    // Refusals are held back (doubling per failure from one address, at
    // most MAX_FAILED_BIND_DELAY_MS), each connection on its own clock.
    for stream in &mut wrong_password {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        assert_eq!(
            read_pdu_header(stream).map(|(id, status)| (id, u64::from(status))),
            Some((0x8000_0009, ESME_RINVPASWD)),
            "a wrong password is refused, slowly"
        );
    }
    for stream in &mut silent {
        assert!(
            closed_by_server(stream, Duration::from_secs(10)),
            "a connection that never binds is dropped after bind_timeout_s"
        );
    }
    let flood_s = flood_started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad, slowest) = steady.join().expect("steady submitter");
    eprintln!(
        "bind flood: {} connections over {flood_s:.1}s; steady customer: {ok} submits OK, \
         slowest answer {slowest:?}",
        3 * PER_KIND
    );
    assert!(
        bad.is_empty(),
        "the steady customer suffered: {bad:?}\n{}",
        server.log_text()
    );
    assert!(ok >= 10, "the steady customer kept submitting: {ok}");
    assert!(
        slowest < Duration::from_secs(2),
        "no submit waited behind the flood: {slowest:?}"
    );
}

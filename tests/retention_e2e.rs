//! Retention end to end: a real `tern serve` process with its embedded
//! simulated operator and a one-second hot window, loaded by `tern bench smpp`
//! (every message asks for a DLR and gets it) and by a raw SMPP client of this
//! test (messages without DLR, queried later).
//!
//! Covered: once the load is over and the hot window passed, the replicated
//! state holds no message any more (the node's "retention stats" log line:
//! messages=0, every message evicted and archived); query_sm on an id that
//! left the state still answers, from the node's archive, with its final
//! state (DELIVERED), and an id nobody submitted still fails with
//! ESME_RQUERYFAIL.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, temp_dir};

use tern::smpp::pdu::{Body, Pdu};

const TERN: &str = env!("CARGO_BIN_EXE_tern");
const BIND_TRANSMITTER: u32 = 0x0000_0002;
const QUERY_SM: u32 = 0x0000_0003;
const SUBMIT_SM: u32 = 0x0000_0004;
const ESME_RQUERYFAIL: u32 = 0x67;
/// query_sm message_state DELIVERED.
const DELIVERED: u8 = 2;
const BENCH_MESSAGES: u64 = 3_000;
const OWN_MESSAGES: usize = 5;

/// A running `tern serve`; killed when dropped.
struct Server {
    child: Child,
    log: PathBuf,
    smpp: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = temp_dir("retention");
        let smpp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.path().join("tern.toml");
        let text = format!(
            "[node]\ndata_dir = \"{data}\"\ncores = [0]\n\
             [smpp]\nlisten = \"{smpp}\"\n\
             [store]\nlisten = \"127.0.0.1:{store}\"\nhot_window_s = 1\n\
             [upstream]\nembedded_simulator = true\n\
             [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\n",
            data = dir.path().join("data").display(),
            store = free_port(),
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.path().join("serve.log");
        let child = Command::new(TERN)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tern serve");
        let mut server = Server {
            child,
            log,
            smpp,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&smpp, Duration::from_millis(200))
            .map_or(true, |s| s.local_addr().ok() == Some(smpp))
        {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("tern serve exited with {status}:\n{}", server.log_text());
            }
            assert!(Instant::now() < deadline, "tern serve did not listen");
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// The log with terminal colour codes removed (the log colours fields).
    fn log_text(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut plain = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters, ended by a letter.
                for next in chars.by_ref() {
                    if next.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// The fields of the last "retention stats" line, if any.
    fn last_stats(&self) -> Option<Stats> {
        let text = self.log_text();
        let line = text.lines().rev().find(|l| l.contains("retention stats"))?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some(Stats {
            messages: field("messages=")?,
            evicted: field("evicted=")?,
            archived: field("archived=")?,
            archive_dropped: field("archive_dropped=")?,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stats {
    messages: u64,
    evicted: u64,
    archived: u64,
    archive_dropped: u64,
}

/// A bare SMPP transmitter: no deliveries come to it.
struct Client {
    stream: TcpStream,
    sequence: u32,
}

fn c_octet(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

impl Client {
    fn bind(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut client = Client {
            stream,
            sequence: 0,
        };
        let mut body = Vec::new();
        c_octet(&mut body, "trial");
        c_octet(&mut body, "trial");
        c_octet(&mut body, "");
        body.extend_from_slice(&[0x34, 0, 0]);
        c_octet(&mut body, "");
        let (status, _) = client.call(BIND_TRANSMITTER, &body);
        assert_eq!(status, 0, "bind_transmitter refused");
        client
    }

    /// Sends one request and returns the status and body of its response.
    fn call(&mut self, command_id: u32, body: &[u8]) -> (u32, Body) {
        self.sequence += 1;
        let sequence = self.sequence;
        let mut pdu = Vec::with_capacity(16 + body.len());
        pdu.extend_from_slice(&(16 + body.len() as u32).to_be_bytes());
        pdu.extend_from_slice(&command_id.to_be_bytes());
        pdu.extend_from_slice(&0u32.to_be_bytes());
        pdu.extend_from_slice(&sequence.to_be_bytes());
        pdu.extend_from_slice(body);
        self.stream.write_all(&pdu).expect("send");
        loop {
            let mut header = [0u8; 4];
            self.stream
                .read_exact(&mut header)
                .expect("response length");
            let length = u32::from_be_bytes(header) as usize;
            assert!((16..=65_536).contains(&length), "bad length {length}");
            let mut frame = header.to_vec();
            frame.resize(length, 0);
            self.stream.read_exact(&mut frame[4..]).expect("response");
            let response = Pdu::decode_slice(&frame).expect("a PDU tern sent decodes");
            // enquire_link and the like may come in between.
            if response.sequence_number == sequence && response.command_id().is_response() {
                return (response.command_status.0, response.body);
            }
        }
    }

    /// A submit_sm without DLR request; returns the message id.
    fn submit(&mut self, n: usize) -> String {
        let text = format!("retention {n}");
        let mut body = Vec::new();
        c_octet(&mut body, "");
        body.extend_from_slice(&[5, 0]);
        c_octet(&mut body, "TERN");
        body.extend_from_slice(&[1, 1]);
        c_octet(&mut body, "447700900123");
        // esm_class, protocol_id, priority_flag
        body.extend_from_slice(&[0, 0, 0]);
        c_octet(&mut body, "");
        c_octet(&mut body, "");
        // registered_delivery 0, replace_if_present, data_coding, default msg id
        body.extend_from_slice(&[0, 0, 0, 0]);
        body.push(text.len() as u8);
        body.extend_from_slice(text.as_bytes());
        let (status, response) = self.call(SUBMIT_SM, &body);
        assert_eq!(status, 0, "submit_sm {n} refused");
        match response {
            Body::SubmitSmResp(resp) => resp
                .message_id
                .as_str()
                .expect("an ASCII message id")
                .to_string(),
            other => panic!("submit_sm answered with {other:?}"),
        }
    }

    /// query_sm: (command_status, message_state).
    fn query(&mut self, id: &str) -> (u32, u8) {
        let mut body = Vec::new();
        c_octet(&mut body, id);
        body.extend_from_slice(&[5, 0]);
        c_octet(&mut body, "TERN");
        match self.call(QUERY_SM, &body) {
            (0, Body::QuerySmResp(resp)) => (0, resp.message_state),
            (status, _) => (status, 0),
        }
    }
}

#[test]
fn finished_messages_leave_the_state_and_answer_from_the_archive() {
    let server = Server::start();
    let mut client = Client::bind(server.smpp);
    let ids: Vec<String> = (0..OWN_MESSAGES).map(|n| client.submit(n)).collect();

    let bench = Command::new(TERN)
        .args(["bench", "smpp", "--target", &server.smpp.to_string()])
        .args([
            "--binds",
            "2",
            "--window",
            "64",
            "--dlr",
            "--dlr-wait-s",
            "30",
        ])
        .args(["--count", &BENCH_MESSAGES.to_string(), "--cores", "0"])
        .output()
        .expect("run tern bench smpp");
    let report = String::from_utf8_lossy(&bench.stdout);
    assert!(
        bench.status.success(),
        "bench failed:\n{report}\n{}",
        String::from_utf8_lossy(&bench.stderr)
    );

    // Everything finished with its DLR answered: after the hot window (1 s)
    // and the next eviction round the state is empty.
    let total = BENCH_MESSAGES + OWN_MESSAGES as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = server.last_stats();
        if stats.is_some_and(|s| s.messages == 0 && s.archived >= total) {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "the state did not empty: last {stats:?}\nbench: {report}\n{}",
            server.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    };
    let stats = stats.expect("a stats line");
    assert_eq!(stats.evicted, total, "{stats:?}");
    assert_eq!(stats.archive_dropped, 0, "{stats:?}");
    // The state was not empty all along: some stats line saw it hold messages.
    let saw_messages = server.log_text().lines().any(|l| {
        l.contains("retention stats")
            && l.split_whitespace()
                .any(|w| w.strip_prefix("messages=").is_some_and(|v| v != "0"))
    });
    assert!(saw_messages, "no stats line saw a non-empty state");

    for id in &ids {
        assert_eq!(
            client.query(id),
            (0, DELIVERED),
            "query_sm for archived {id}"
        );
    }
    let unknown = "0000000000000000000A";
    assert_ne!(ids.first().map(String::as_str), Some(unknown));
    assert_eq!(client.query(unknown).0, ESME_RQUERYFAIL);
}

//! The instrumentation is wired: a node runs in this process with one
//! connector to a `tern sim` operator, `tern bench smpp` sends it messages
//! asking for receipts, and the global registry must then show every stage
//! of the message's life, the store and the executors.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern::config::Config;
use tern::metrics::Family;

const MESSAGES: u64 = 200;
const TERN: &str = env!("CARGO_BIN_EXE_tern");

/// The simulated operator, killed when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_operator(port: u16) -> Operator {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut operator = Operator(
        Command::new(TERN)
            .args(["sim", "--listen", &addr.to_string(), "--cores", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tern sim"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = operator.0.try_wait() {
            panic!("tern sim exited with {status}");
        }
        assert!(Instant::now() < deadline, "tern sim did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    operator
}

fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[test]
fn a_running_node_fills_every_area_of_the_registry() {
    let dir = common::temp_dir("metrics");
    let smpp_port = common::free_port();
    let store_port = common::free_port();
    let operator_port = common::free_port();
    let _operator = start_operator(operator_port);
    let text = format!(
        "[node]\ndata_dir = \"{data}\"\ncores = [0]\n\
         [smpp]\nlisten = \"127.0.0.1:{smpp_port}\"\n\
         [store]\nlisten = \"127.0.0.1:{store_port}\"\n\
         [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\n\
         [[connector]]\nname = \"op1\"\nhosts = [\"127.0.0.1:{operator_port}\"]\n\
         system_id = \"tern\"\npassword = \"tern\"\nid_format = \"hex\"\n\
         [[route]]\nname = \"all\"\nprefix = \"\"\nconnectors = [\"op1\"]\n",
        data = dir.path().join("data").display()
    );
    let resolved = Config::parse(&text, "metrics-test.toml").expect("config");
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let engine = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            tern::engine::run(resolved, stop, move |addr| {
                let _ = ready_tx.send(addr);
            })
        })
    };
    let addr = match ready_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => addr,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            panic!("the node did not listen ({e}): {:?}", engine.join());
        }
    };

    let out = Command::new(TERN)
        .args(["bench", "smpp", "--json", "--dlr", "--dlr-wait-s", "20"])
        .args(["--count", &MESSAGES.to_string()])
        .args(["--target", &addr.to_string()])
        .output()
        .expect("run tern bench smpp");
    assert!(
        out.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Executor load is sampled once a second; receipts trail the acks.
    let deadline = Instant::now() + Duration::from_secs(20);
    let families = loop {
        let families = tern::metrics::snapshot();
        let complete = value(
            &families,
            "tern_dlrs_delivered_total",
            &[("account", "trial")],
        ) >= MESSAGES as f64
            && value(&families, "tern_executor_busy_seconds_total", &[]) > 0.0;
        if complete || Instant::now() > deadline {
            break families;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, Ordering::Relaxed);
    let stopped = engine.join().expect("engine thread");
    assert!(stopped.is_ok(), "engine: {stopped:?}");

    let mut text = String::new();
    tern::metrics::render_prometheus(&mut text);
    let n = MESSAGES as f64;
    let trial = [("account", "trial")];
    for (name, labels, at_least) in [
        ("tern_messages_accepted_total", &trial[..], n),
        ("tern_dlrs_delivered_total", &trial[..], n),
        (
            "tern_messages_submitted_total",
            &[("connector", "op1")][..],
            n,
        ),
        ("tern_upstream_binds_open", &[("connector", "op1")][..], 1.0),
        ("tern_receipts_received_total", &[][..], n),
        ("tern_submit_latency_seconds_count", &[][..], n),
        ("tern_commit_latency_seconds_count", &[][..], n),
        ("tern_upstream_window_occupancy_count", &[][..], n),
        ("tern_fsyncs_total", &[][..], 1.0),
        ("tern_fsync_latency_seconds_count", &[][..], 1.0),
        ("tern_raft_batch_entries_count", &[][..], 1.0),
        ("tern_raft_term", &[][..], 1.0),
        // Group commit: many proposals share one raft entry.
        ("tern_raft_commit_index", &[][..], 2.0),
        ("tern_raft_applied_index", &[][..], 2.0),
        ("tern_raft_leader_id", &[][..], 1.0),
        (
            "tern_executor_busy_seconds_total",
            &[][..],
            f64::MIN_POSITIVE,
        ),
        ("tern_executor_tasks_total", &[][..], 1.0),
        ("process_resident_memory_bytes", &[][..], 1.0),
    ] {
        let got = value(&families, name, labels);
        assert!(
            got >= at_least,
            "{name}{labels:?} = {got}, expected >= {at_least}\n{text}"
        );
    }
    // Binds and connections went back to zero when the bench left.
    assert_eq!(value(&families, "tern_binds_open", &trial), 0.0, "{text}");
    assert_eq!(
        value(&families, "tern_connections_open", &[]),
        0.0,
        "{text}"
    );
}

//! The embedded simulated operator: what `tern serve` submits to when it
//! runs with no connector configured (the embedded default), so that a
//! laptop gets receipts with nothing else installed.
//!
//! Owns: a `tern sim` child process on a free loopback port (a child, not
//! threads in this process, because the simulator installs its own signal
//! handlers), its stop, and the connector and catch-all route pointing at
//! it. Must not touch: the simulator's behaviour (its defaults: every
//! message DELIVRD at once).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{ConnectorConfig, RouteConfig};

/// Name of the embedded connector and of its route.
pub const EMBEDDED_CONNECTOR: &str = "embedded-sim";

pub struct Simulator {
    child: Child,
    addr: SocketAddr,
}

impl Simulator {
    /// Starts `tern sim` on 127.0.0.1 and waits until it accepts connections.
    pub fn start() -> Result<Simulator, String> {
        // Ask the kernel for a free port, then hand it to the child.
        let probe = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("embedded simulator: no free loopback port: {e}"))?;
        let addr = probe
            .local_addr()
            .map_err(|e| format!("embedded simulator: {e}"))?;
        drop(probe);
        let exe = std::env::current_exe()
            .map_err(|e| format!("embedded simulator: cannot find this binary: {e}"))?;
        let mut command = Command::new(exe);
        command
            .args(["sim", "--listen", &addr.to_string(), "--cores", "0"])
            .args(["--summary-every-ms", "60000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl in the forked child before exec only sets its
        // parent-death signal; nothing else runs there.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("embedded simulator: cannot start: {e}"))?;
        let mut simulator = Simulator { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                simulator.kill();
                return Err(format!("embedded simulator did not listen on {addr}"));
            }
            if let Ok(Some(status)) = simulator.child.try_wait() {
                return Err(format!("embedded simulator exited: {status}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!(%addr, "embedded simulated operator listening");
        Ok(simulator)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// SIGTERM, then SIGKILL if it has not gone within a second.
    pub fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The connector to the embedded simulator and a catch-all route to it.
pub fn default_connector_and_route(addr: SocketAddr) -> (ConnectorConfig, RouteConfig) {
    let connector = ConnectorConfig {
        name: EMBEDDED_CONNECTOR.into(),
        hosts: vec![addr.to_string()],
        system_id: "tern".into(),
        password: "tern".into(),
        system_type: String::new(),
        bind_type: "transceiver".into(),
        binds: 1,
        window: 100,
        max_tps: 0,
        enquire_link_s: 30,
        reconnect_min_ms: 100,
        reconnect_max_ms: 5_000,
        submit_timeout_ms: 10_000,
        // The simulator writes lowercase hex ids.
        id_format: "hex".into(),
        default_alphabet: "gsm7".into(),
        long_messages: "as-submitted".into(),
        enabled: true,
    };
    let route = RouteConfig {
        name: EMBEDDED_CONNECTOR.into(),
        account: None,
        prefix: String::new(),
        source: String::new(),
        priority: u32::MAX,
        connectors: vec![EMBEDDED_CONNECTOR.into()],
        targets: Vec::new(),
    };
    (connector, route)
}

//! `tern bench http`: HTTP submit load against `POST /v1/messages`.
//!
//! Owns: N keep-alive connections (hyper http1 client on glommio, spread over
//! the cores given), each sending one request after the other for the
//! duration, and the report (same shape as `tern bench smpp`: counts, rate,
//! latency percentiles, errors by status). Must not touch: the server, the
//! store, SMPP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde::Serialize;

use super::smpp::LatencyUs;
use crate::http::rt::{HyperIo, LocalExecutor};

/// What to run.
#[derive(Debug, Clone)]
pub struct HttpBenchConfig {
    pub target: SocketAddr,
    pub api_key: String,
    pub connections: usize,
    pub duration_s: f64,
    /// The JSON body of every request.
    pub body: String,
    /// Cores to run on (empty: every core this process may use).
    pub cores: Vec<usize>,
}

/// The outcome of a run, as printed (and as `--json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpBenchReport {
    pub connections: usize,
    pub requests: u64,
    /// 201 answers.
    pub created: u64,
    pub elapsed_s: f64,
    /// 201 answers per second.
    pub per_s: f64,
    pub latency_us: LatencyUs,
    /// Other answers by status code, and "connection" for broken connections.
    pub errors: BTreeMap<String, u64>,
}

impl std::fmt::Display for HttpBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bench http: {} connection(s): {} requests in {:.2} s",
            self.connections, self.requests, self.elapsed_s
        )?;
        writeln!(
            f,
            "  created (201): {} ({:.0} requests/s)",
            self.created, self.per_s
        )?;
        let l = &self.latency_us;
        writeln!(
            f,
            "  request latency us: p50 {} p99 {} p99.9 {} max {}",
            l.p50, l.p99, l.p999, l.max
        )?;
        if self.errors.is_empty() {
            write!(f, "  errors: none")
        } else {
            write!(f, "  errors:")?;
            for (name, n) in &self.errors {
                write!(f, " {name}={n}")?;
            }
            Ok(())
        }
    }
}

/// What one core's connections bring back.
struct CoreResult {
    latency: Histogram<u64>,
    requests: u64,
    created: u64,
    errors: BTreeMap<String, u64>,
}

/// Runs the load; an error means it could not run at all.
pub fn run(config: HttpBenchConfig) -> Result<HttpBenchReport, String> {
    if config.connections == 0 {
        return Err("at least one connection is needed".into());
    }
    let cores = if config.cores.is_empty() {
        crate::runtime::available_cores()
    } else {
        config.cores.clone()
    };
    if cores.is_empty() {
        return Err("no core to run on".into());
    }
    let config = Arc::new(config);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(config.duration_s.max(0.1));
    let mut executors = Vec::new();
    for (index, &core) in cores.iter().enumerate() {
        // Connections spread evenly; the first cores take the remainder.
        let share = config.connections / cores.len()
            + usize::from(index < config.connections % cores.len());
        if share == 0 {
            continue;
        }
        let config = Arc::clone(&config);
        let join =
            crate::runtime::spawn_pinned(&format!("tern-bench-http-{core}"), core, move || {
                run_core(config, share, deadline)
            })
            .map_err(|e| format!("executor on core {core}: {e}"))?;
        executors.push(join);
    }
    let mut latency = new_histogram()?;
    let mut report = HttpBenchReport {
        connections: config.connections,
        ..HttpBenchReport::default()
    };
    for executor in executors {
        let result = executor
            .join()
            .map_err(|e| format!("a load core failed: {e}"))??;
        latency
            .add(&result.latency)
            .map_err(|e| format!("latency histogram: {e}"))?;
        report.requests += result.requests;
        report.created += result.created;
        for (name, n) in result.errors {
            *report.errors.entry(name).or_default() += n;
        }
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.per_s = report.created as f64 / report.elapsed_s.max(1e-9);
    report.latency_us = LatencyUs {
        p50: latency.value_at_quantile(0.50),
        p99: latency.value_at_quantile(0.99),
        p999: latency.value_at_quantile(0.999),
        max: latency.max(),
    };
    Ok(report)
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| format!("histogram: {e}"))
}

async fn run_core(
    config: Arc<HttpBenchConfig>,
    connections: usize,
    deadline: Instant,
) -> Result<CoreResult, String> {
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let config = Arc::clone(&config);
        tasks.push(glommio::spawn_local(run_connection(config, deadline)));
    }
    let mut total = CoreResult {
        latency: new_histogram()?,
        requests: 0,
        created: 0,
        errors: BTreeMap::new(),
    };
    for task in tasks {
        let result = task.await?;
        total
            .latency
            .add(&result.latency)
            .map_err(|e| format!("latency histogram: {e}"))?;
        total.requests += result.requests;
        total.created += result.created;
        for (name, n) in result.errors {
            *total.errors.entry(name).or_default() += n;
        }
    }
    Ok(total)
}

/// One keep-alive connection sending requests back to back until `deadline`
/// (reconnecting if the server closes it).
async fn run_connection(
    config: Arc<HttpBenchConfig>,
    deadline: Instant,
) -> Result<CoreResult, String> {
    let mut result = CoreResult {
        latency: new_histogram()?,
        requests: 0,
        created: 0,
        errors: BTreeMap::new(),
    };
    let authorization = format!("Bearer {}", config.api_key);
    let body = Bytes::from(config.body.clone());
    'connect: while Instant::now() < deadline {
        let stream = glommio::net::TcpStream::connect(config.target)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", config.target))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(HyperIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        hyper::rt::Executor::execute(&LocalExecutor, async move {
            let _ = connection.await;
        });
        while Instant::now() < deadline {
            let request = Request::post("/v1/messages")
                .header(hyper::header::HOST, config.target.to_string())
                .header(hyper::header::AUTHORIZATION, authorization.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| format!("request: {e}"))?;
            let sent_at = Instant::now();
            result.requests += 1;
            let answer = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map(|_| status)
                        .map_err(|_| ())
                }
                Err(_) => Err(()),
            };
            match answer {
                Ok(status) => {
                    let micros = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX);
                    result.latency.saturating_record(micros.max(1));
                    if status == hyper::StatusCode::CREATED {
                        result.created += 1;
                    } else {
                        *result
                            .errors
                            .entry(status.as_u16().to_string())
                            .or_default() += 1;
                    }
                }
                Err(()) => {
                    *result.errors.entry("connection".into()).or_default() += 1;
                    continue 'connect;
                }
            }
        }
    }
    Ok(result)
}

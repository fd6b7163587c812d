//! Tests of the registry: the exposition checked line by line by a small
//! parser, label caps, and sums under concurrent writers. Each test builds
//! its own `Registry`, so tests running in parallel do not share counts.

use super::*;
use std::collections::BTreeMap;

/// One parsed sample line.
#[derive(Debug)]
struct Line {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `{a="x",b="y\"z"}` starting after the name; returns the labels and
/// the rest of the line.
type Labels = Vec<(String, String)>;

fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text.strip_prefix('{').ok_or("no `{`")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name `{name}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by `,`".into());
        }
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|e| format!("bad value `{text}`: {e}")),
    }
}

/// Parses a whole exposition, checking the 0.0.4 rules this registry relies
/// on: HELP then TYPE before a family's samples, each family once, sample
/// names that belong to the family, valid names and labels, no duplicate
/// series, histogram buckets cumulative and ending in +Inf equal to _count.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, (String, Vec<Line>)>, String> {
    let mut families: BTreeMap<String, (String, Vec<Line>)> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut pending_help: Option<String> = None;
    let mut series_seen = std::collections::HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: `{line}`", number + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !is_metric_name(name) {
                return Err(err("bad name in HELP".into()));
            }
            pending_help = Some(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap_or("");
            let kind = parts.next().unwrap_or("");
            if pending_help.as_deref() != Some(name) {
                return Err(err("TYPE without its HELP just before".into()));
            }
            if !["counter", "gauge", "histogram"].contains(&kind) || parts.next().is_some() {
                return Err(err("bad TYPE".into()));
            }
            if families.contains_key(name) {
                return Err(err("family declared twice".into()));
            }
            families.insert(name.to_string(), (kind.to_string(), Vec::new()));
            current = Some(name.to_string());
        } else if line.starts_with('#') || line.is_empty() {
            return Err(err("unexpected comment or blank line".into()));
        } else {
            let family = current
                .as_ref()
                .ok_or_else(|| err("sample before TYPE".into()))?;
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(err)?
            } else {
                (Vec::new(), &line[name_end..])
            };
            let value = parse_value(
                rest.strip_prefix(' ')
                    .ok_or_else(|| err("no space before value".into()))?,
            )
            .map_err(err)?;
            let (kind, samples) = families
                .get_mut(family)
                .ok_or_else(|| err("lost family".into()))?;
            let belongs = if kind == "histogram" {
                [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&name.to_string())
            } else {
                name == family
            };
            if !belongs || !is_metric_name(name) {
                return Err(err(format!("sample `{name}` outside family `{family}`")));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(err("counter without _total".into()));
            }
            if !series_seen.insert(format!("{name}{labels:?}")) {
                return Err(err("duplicate series".into()));
            }
            samples.push(Line {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    for (family, (kind, samples)) in &families {
        if kind != "histogram" {
            continue;
        }
        // A labelled histogram is one series of buckets per label set
        // (`le` aside), each with its own `_count` and `_sum`.
        let others = |line: &Line| -> Vec<(String, String)> {
            line.labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect()
        };
        let mut series: BTreeMap<Vec<(String, String)>, Vec<&Line>> = BTreeMap::new();
        for line in samples.iter().filter(|l| l.name.ends_with("_bucket")) {
            series.entry(others(line)).or_default().push(line);
        }
        if series.is_empty() {
            return Err(format!("{family}: no buckets"));
        }
        for (labels, buckets) in &series {
            let mut previous_le = f64::NEG_INFINITY;
            let mut previous_count = 0.0;
            for bucket in buckets {
                let le = bucket
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or(format!("{family}: bucket without le"))?;
                let le = parse_value(&le.1)?;
                if le <= previous_le || bucket.value < previous_count {
                    return Err(format!(
                        "{family}{labels:?}: buckets not increasing at le={le}"
                    ));
                }
                previous_le = le;
                previous_count = bucket.value;
            }
            if previous_le != f64::INFINITY {
                return Err(format!("{family}{labels:?}: last bucket is not +Inf"));
            }
            let count = samples
                .iter()
                .find(|l| l.name.ends_with("_count") && others(l) == *labels)
                .ok_or(format!("{family}{labels:?}: no _count"))?;
            let has_sum = samples
                .iter()
                .any(|l| l.name.ends_with("_sum") && others(l) == *labels);
            if count.value != previous_count || !has_sum {
                return Err(format!(
                    "{family}{labels:?}: _count differs from +Inf bucket or no _sum"
                ));
            }
        }
    }
    Ok(families)
}

fn value_of(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    registry
        .snapshot()
        .into_iter()
        .flat_map(|f| f.samples)
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.label(k) == Some(*v))
        })
        .map(|s| s.value)
}

fn render(registry: &Registry) -> String {
    let mut out = String::new();
    registry.render_prometheus(&mut out);
    out
}

#[test]
fn an_empty_registry_renders_valid_exposition() {
    let registry = Registry::new();
    let families = parse_exposition(&render(&registry)).unwrap();
    assert!(families.contains_key("tern_submit_latency_seconds"));
    assert!(families.contains_key("process_resident_memory_bytes"));
    // The process figures come from /proc, which the test host has.
    assert!(value_of(&registry, "process_resident_memory_bytes", &[]).unwrap() > 0.0);
    assert!(value_of(&registry, "process_open_fds", &[]).unwrap() > 0.0);
}

#[test]
fn every_family_renders_valid_exposition_with_values() {
    let registry = Registry::new();
    registry.inc_account(AccountCounter::Accepted, "acme");
    registry.inc_account(AccountCounter::Accepted, "acme");
    registry.inc_account(AccountCounter::Throttled, "beta");
    registry.inc_account(AccountCounter::DlrsDelivered, "acme");
    registry.inc_account(AccountCounter::MosDelivered, "acme");
    registry.rejected("acme", CommandStatus::ESME_RINVDSTADR);
    registry.rejected("acme", CommandStatus(0x0000_0466));
    registry.submitted("op1");
    registry.submit_failed("op1", CommandStatus::ESME_RTHROTTLED);
    registry.receipt("op1", "DELIVRD");
    registry.inc(Counter::MessagesFailed);
    registry.inc(Counter::MessagesExpired);
    registry.inc(Counter::Fsyncs);
    registry.gauge_add(Gauge::ConnectionsOpen, 1);
    registry.binds_open_add("acme", BindType::Transceiver, 1);
    registry.upstream_binds_open_add("op1", 1);
    for histogram in Histogram::ALL {
        registry.observe(histogram, 3);
        registry.observe(histogram, u64::MAX);
    }
    registry.observe_duration(Histogram::SubmitLatency, Duration::from_millis(3));
    registry.set_raft(RaftStatus {
        term: 4,
        commit_index: 10,
        applied_index: 9,
        leader_id: 2,
    });
    registry.add_executor_load(1, Duration::from_millis(1500), 7);

    let text = render(&registry);
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        value_of(
            &registry,
            "tern_messages_accepted_total",
            &[("account", "acme")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value_of(
            &registry,
            "tern_messages_rejected_total",
            &[("account", "acme"), ("status", "ESME_RINVDSTADR")]
        ),
        Some(1.0)
    );
    // Statuses without a name print as hex.
    assert_eq!(
        value_of(
            &registry,
            "tern_messages_rejected_total",
            &[("account", "acme"), ("status", "0x00000466")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &registry,
            "tern_receipts_received_total",
            &[("connector", "op1"), ("stat", "DELIVRD")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &registry,
            "tern_binds_open",
            &[("account", "acme"), ("bind_type", "transceiver")]
        ),
        Some(1.0)
    );
    assert_eq!(value_of(&registry, "tern_raft_leader_id", &[]), Some(2.0));
    assert_eq!(
        value_of(
            &registry,
            "tern_executor_busy_seconds_total",
            &[("executor", "1")]
        ),
        Some(1.5)
    );
    // 3 ns lands in the first bucket, 3 ms in the 5 ms one, u64::MAX in +Inf.
    assert!(
        text.contains("tern_submit_latency_seconds_bucket{le=\"0.0025\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("tern_submit_latency_seconds_bucket{le=\"0.005\"} 2\n"),
        "{text}"
    );
    assert_eq!(
        value_of(&registry, "tern_submit_latency_seconds_count", &[]),
        Some(3.0)
    );
    assert_eq!(
        value_of(&registry, "tern_raft_batch_entries_bucket", &[("le", "4")]),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &registry,
            "tern_raft_batch_entries_bucket",
            &[("le", "+Inf")]
        ),
        Some(2.0)
    );
}

#[test]
fn gauges_go_down_across_threads() {
    let registry = Registry::new();
    registry.gauge_add(Gauge::ConnectionsOpen, 1);
    registry.binds_open_add("acme", BindType::Receiver, 1);
    std::thread::scope(|s| {
        s.spawn(|| {
            registry.gauge_add(Gauge::ConnectionsOpen, -1);
            registry.binds_open_add("acme", BindType::Receiver, -1);
        });
    });
    assert_eq!(value_of(&registry, "tern_connections_open", &[]), Some(0.0));
    assert_eq!(
        value_of(
            &registry,
            "tern_binds_open",
            &[("account", "acme"), ("bind_type", "receiver")]
        ),
        Some(0.0)
    );
}

#[test]
fn label_values_are_escaped() {
    let registry = Registry::new();
    registry.inc_account(AccountCounter::Accepted, "we\"ird\\name\nx");
    let text = render(&registry);
    assert!(text.contains(r#"{account="we\"ird\\name\nx"}"#), "{text}");
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        value_of(
            &registry,
            "tern_messages_accepted_total",
            &[("account", "we\"ird\\name\nx")]
        ),
        Some(1.0)
    );
}

#[test]
fn labels_beyond_the_cap_fold_into_other() {
    let registry = Registry::new();
    for i in 0..(ACCOUNT_LABEL_CAP + 500) {
        registry.inc_account(AccountCounter::Accepted, &format!("account{i}"));
    }
    // Seen again: the same series, on the lock-free path.
    registry.inc_account(AccountCounter::Accepted, "account0");
    registry.inc_account(
        AccountCounter::Accepted,
        &format!("account{}", ACCOUNT_LABEL_CAP + 1),
    );
    let families = registry.snapshot();
    let accepted = families
        .iter()
        .find(|f| f.name == "tern_messages_accepted_total")
        .unwrap();
    assert_eq!(accepted.samples.len(), ACCOUNT_LABEL_CAP + 1);
    let total: f64 = accepted.samples.iter().map(|s| s.value).sum();
    assert_eq!(total, (ACCOUNT_LABEL_CAP + 502) as f64);
    assert_eq!(
        value_of(
            &registry,
            "tern_messages_accepted_total",
            &[("account", "account0")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value_of(
            &registry,
            "tern_messages_accepted_total",
            &[("account", OTHER_LABEL)]
        ),
        Some(501.0)
    );
    // A hostile operator sending endless distinct stats stays bounded too.
    for i in 0..10_000 {
        registry.receipt("op", &format!("S{i}"));
    }
    let receipts = registry
        .snapshot()
        .into_iter()
        .find(|f| f.name == "tern_receipts_received_total")
        .unwrap();
    assert!(receipts.samples.len() <= STAT_LABEL_CAP + 1);
    assert_eq!(
        receipts.samples.iter().map(|s| s.value).sum::<f64>(),
        10_000.0
    );
    parse_exposition(&render(&registry)).unwrap();
}

#[test]
fn pair_series_beyond_the_cap_fold_into_other() {
    let registry = Registry::new();
    // 1,000 accounts x 3 statuses = 3,000 pairs against a cap of 2,000.
    for i in 0..ACCOUNT_LABEL_CAP {
        for status in [1, 2, 3] {
            registry.rejected(&format!("a{i}"), CommandStatus(status));
        }
    }
    let rejected = registry
        .snapshot()
        .into_iter()
        .find(|f| f.name == "tern_messages_rejected_total")
        .unwrap();
    assert!(rejected.samples.len() <= PAIR_SERIES_CAP + 1);
    assert_eq!(
        rejected.samples.iter().map(|s| s.value).sum::<f64>(),
        3_000.0
    );
    let other = rejected
        .samples
        .iter()
        .find(|s| s.label("account") == Some(OTHER_LABEL))
        .unwrap();
    assert!(other.value >= 1_000.0);
}

#[test]
fn concurrent_writers_sum_exactly() {
    const THREADS: usize = 8;
    const PER_THREAD: u64 = 20_000;
    let registry = Registry::new();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let registry = &registry;
            s.spawn(move || {
                let own = format!("acct{t}");
                for i in 0..PER_THREAD {
                    registry.inc_account(AccountCounter::Accepted, "shared");
                    registry.inc_account(AccountCounter::Accepted, &own);
                    registry.submitted("op");
                    registry.observe(Histogram::CommitLatency, i * 1000);
                }
            });
        }
    });
    let total = (THREADS as u64 * PER_THREAD) as f64;
    assert_eq!(
        value_of(
            &registry,
            "tern_messages_accepted_total",
            &[("account", "shared")]
        ),
        Some(total)
    );
    for t in 0..THREADS {
        let own = format!("acct{t}");
        assert_eq!(
            value_of(
                &registry,
                "tern_messages_accepted_total",
                &[("account", own.as_str())]
            ),
            Some(PER_THREAD as f64)
        );
    }
    assert_eq!(
        value_of(
            &registry,
            "tern_messages_submitted_total",
            &[("connector", "op")]
        ),
        Some(total)
    );
    assert_eq!(
        value_of(&registry, "tern_commit_latency_seconds_count", &[]),
        Some(total)
    );
    let expected_sum_ns = THREADS as u64 * (0..PER_THREAD).map(|i| i * 1000).sum::<u64>();
    let sum = value_of(&registry, "tern_commit_latency_seconds_sum", &[]).unwrap();
    assert!((sum - expected_sum_ns as f64 / 1e9).abs() < 1e-6, "{sum}");
    parse_exposition(&render(&registry)).unwrap();
}

#[test]
fn the_parser_rejects_broken_exposition() {
    // The checks above are only as good as the parser; show it can fail.
    let broken = [
        "# HELP a_total x\n# TYPE a_total counter\na_total{b=\"c} 1\n",
        "# HELP a_total x\n# TYPE a_total counter\na_total{1b=\"c\"} 1\n",
        "# HELP a x\n# TYPE a counter\na 1\n",
        "# TYPE a_total counter\na_total 1\n",
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP g x\n# TYPE g gauge\ng 1\ng 2\n",
    ];
    for text in broken {
        assert!(parse_exposition(text).is_err(), "accepted: {text}");
    }
}

#[test]
fn the_global_registry_renders() {
    accepted("global-test-account");
    let mut out = String::new();
    render_prometheus(&mut out);
    parse_exposition(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(out.contains("tern_messages_accepted_total{account=\"global-test-account\"} "));
}

#[test]
fn http_requests_count_by_route_and_bounded_code() {
    let registry = Registry::new();
    registry.http_request(HttpRoute::Submit, 202, Duration::from_millis(3));
    registry.http_request(HttpRoute::Submit, 202, Duration::from_millis(3));
    registry.http_request(HttpRoute::Submit, 401, Duration::from_micros(50));
    // Codes without a series of their own fold into their class, or `other`.
    registry.http_request(HttpRoute::Admin, 418, Duration::from_millis(1));
    registry.http_request(HttpRoute::NotFound, 999, Duration::from_millis(1));
    registry.http_request(HttpRoute::NotFound, 0, Duration::from_millis(1));
    let text = render(&registry);
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let requests = |route: &str, code: &str| {
        value_of(
            &registry,
            "tern_http_requests_total",
            &[("route", route), ("code", code)],
        )
    };
    assert_eq!(requests("submit", "202"), Some(2.0));
    assert_eq!(requests("submit", "401"), Some(1.0));
    assert_eq!(requests("admin", "4xx"), Some(1.0));
    assert_eq!(requests("not_found", "other"), Some(2.0));
    assert_eq!(
        requests("lookup", "200"),
        None,
        "unseen codes are not shown"
    );
    let duration = |name: &str, labels: &[(&str, &str)]| value_of(&registry, name, labels);
    assert_eq!(
        duration(
            "tern_http_request_duration_seconds_count",
            &[("route", "submit")]
        ),
        Some(3.0)
    );
    assert_eq!(
        duration(
            "tern_http_request_duration_seconds_bucket",
            &[("route", "submit"), ("le", "0.0001")]
        ),
        Some(1.0)
    );
    assert_eq!(
        duration(
            "tern_http_request_duration_seconds_bucket",
            &[("route", "submit"), ("le", "0.005")]
        ),
        Some(3.0)
    );
    assert_eq!(
        duration(
            "tern_http_request_duration_seconds_count",
            &[("route", "health")]
        ),
        Some(0.0)
    );
    // Every code series has a distinct label.
    let labels: std::collections::BTreeSet<String> =
        (0..HTTP_CODE_SERIES).map(http_code_label).collect();
    assert_eq!(labels.len(), HTTP_CODE_SERIES);
    for code in 0..=u16::MAX {
        assert!(http_code_series(code) < HTTP_CODE_SERIES, "{code}");
    }
}

#[test]
fn a_thread_shard_stays_small() {
    // ARCHITECTURE.md promises about 100 KiB per recording thread.
    let bytes = Layout::new().total * std::mem::size_of::<AtomicU64>();
    assert!(bytes <= 112 * 1024, "{bytes} bytes per shard");
    assert!(
        bytes >= 80 * 1024,
        "{bytes} bytes per shard: update the docs"
    );
}

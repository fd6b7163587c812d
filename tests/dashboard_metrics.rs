//! The Grafana dashboard in monitoring/ may only use metric names and
//! grouping labels the registry exports: this test renders the exposition,
//! reads every panel expression and fails on any name the exposition lacks,
//! so a renamed metric cannot leave a silently empty panel behind.

use std::collections::BTreeSet;
use std::time::Duration;

use tern::metrics::{
    AccountCounter, BindType, Counter, Gauge, Histogram, HttpRoute, RaftStatus, Registry,
};
use tern::smpp::CommandStatus;

const DASHBOARD: &str = include_str!("../monitoring/grafana-dashboard.json");

/// PromQL words that look like identifiers but are functions, keywords or
/// Grafana variables, not metrics.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "by",
    "rate",
    "increase",
    "histogram_quantile",
    "clamp_min",
    "le",
    "instance",
];

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if key == "expr" {
                    if let Some(expr) = child.as_str() {
                        out.push(expr.to_string());
                    }
                } else {
                    collect_exprs(child, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Identifiers outside quoted strings, `{...}` matchers, `[...]` ranges and
/// `$variables`.
fn identifiers(expr: &str) -> Vec<(String, bool)> {
    let mut found = Vec::new();
    let mut chars = expr.char_indices().peekable();
    let mut depth_braces = 0;
    let mut depth_brackets = 0;
    let mut after_by = false;
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                for (_, c) in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                }
            }
            '{' => depth_braces += 1,
            '}' => depth_braces -= 1,
            '[' => depth_brackets += 1,
            ']' => depth_brackets -= 1,
            '$' => {
                while chars
                    .peek()
                    .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
                {
                    chars.next();
                }
            }
            ')' => after_by = false,
            // Numbers such as 1e-9 or 0.99: not identifiers.
            c if c.is_ascii_digit() => {
                while chars
                    .peek()
                    .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '.')
                {
                    chars.next();
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i + c.len_utf8();
                while let Some((j, c)) = chars.peek().copied() {
                    if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                        end = j + c.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &expr[i..end];
                if depth_braces == 0 && depth_brackets == 0 {
                    // Inside `by (...)` the words are label names.
                    found.push((word.to_string(), after_by));
                    if word == "by" {
                        after_by = true;
                    }
                }
            }
            _ => {}
        }
    }
    found
}

fn populated_registry() -> Registry {
    let registry = Registry::new();
    for counter in [
        AccountCounter::Accepted,
        AccountCounter::Throttled,
        AccountCounter::DlrsDelivered,
        AccountCounter::MosDelivered,
    ] {
        registry.inc_account(counter, "acme");
    }
    registry.rejected("acme", CommandStatus::ESME_RTHROTTLED);
    registry.submitted("op1");
    registry.submit_failed("op1", CommandStatus::ESME_RSYSERR);
    registry.receipt("op1", "DELIVRD");
    registry.inc(Counter::MessagesFailed);
    registry.gauge_add(Gauge::ConnectionsOpen, 1);
    registry.binds_open_add("acme", BindType::Transceiver, 1);
    registry.upstream_binds_open_add("op1", 1);
    registry.observe_duration(Histogram::SubmitLatency, Duration::from_millis(2));
    registry.set_raft(RaftStatus {
        term: 1,
        commit_index: 2,
        applied_index: 2,
        leader_id: 1,
    });
    registry.add_executor_load(0, Duration::from_millis(5), 1);
    registry.http_request(HttpRoute::Submit, 202, Duration::from_millis(2));
    registry
}

#[test]
fn every_dashboard_metric_and_label_is_exported() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    assert_eq!(dashboard["schemaVersion"], 39);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");

    let registry = populated_registry();
    let mut text = String::new();
    registry.render_prometheus(&mut text);
    let mut series_names = BTreeSet::new();
    let mut label_names = BTreeSet::new();
    for family in registry.snapshot() {
        series_names.insert(family.name.to_string());
        for sample in &family.samples {
            series_names.insert(sample.name.clone());
            label_names.extend(sample.labels.iter().map(|(k, _)| k.clone()));
        }
    }
    // Scraping adds these; the dashboard filters and groups by them.
    label_names.insert("instance".to_string());

    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "only {} expressions found", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for (word, is_label) in identifiers(expr) {
            if is_label {
                assert!(
                    label_names.contains(&word),
                    "label `{word}` in `{expr}` is not exported"
                );
            } else if !PROMQL_WORDS.contains(&word.as_str()) {
                assert!(
                    series_names.contains(&word),
                    "metric `{word}` in `{expr}` is not in the exposition:\n{text}"
                );
                used.insert(word);
            }
        }
    }
    // The dashboard shows each area the appliance exports.
    for needed in [
        "tern_messages_accepted_total",
        "tern_submit_latency_seconds_bucket",
        "tern_raft_commit_index",
        "tern_fsync_latency_seconds_bucket",
        "tern_executor_busy_seconds_total",
        "process_resident_memory_bytes",
        "tern_http_requests_total",
        "tern_http_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(needed), "the dashboard lacks {needed}");
    }
}

#[test]
fn the_identifier_reader_sees_metrics_and_labels() {
    // The check above is only as good as this reader: show it finds names.
    let words = identifiers(
        r#"histogram_quantile(0.99, 1e-9 + sum by (le, account) (rate(tern_x_bucket{instance=~"$instance"}[$__rate_interval])))"#,
    );
    assert_eq!(
        words,
        vec![
            ("histogram_quantile".to_string(), false),
            ("sum".to_string(), false),
            ("by".to_string(), false),
            ("le".to_string(), true),
            ("account".to_string(), true),
            ("rate".to_string(), false),
            ("tern_x_bucket".to_string(), false),
        ]
    );
}

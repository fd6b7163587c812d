//! Routing: which operator connectors a message may go to, in which order.
//!
//! Owns: `RoutingTable` (rules built from the replicated routes plus this
//! node's route extras from the configuration: source prefix, per-connector
//! priority and weight), the choice of a rule for a message and the ordered
//! candidate connectors for one attempt. Must not touch: sockets, the store
//! (callers hand in the routes they read) or connector state (callers say
//! which connectors are usable).
//!
//! The rule order is `AppState::route_for`'s (longest destination prefix,
//! then account-specific over generic, then lower priority, then name), with
//! one more filter: a rule with a source prefix only matches sources that
//! start with it. A unit test keeps the two in agreement.
//!
//! Why the extras are node-local: the replicated `Route` (log format
//! version one) carries an ordered connector list but no weights and no source. The
//! replicated order is the failover order; weights and source rules come
//! from each node's configuration, which must therefore agree across nodes.

use crate::config::{RouteConfig, RouteTargetConfig};
use crate::store::command::Route;

/// One connector of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub connector: String,
    /// Lower is tried first; a higher group only when the lower is unusable.
    pub priority: u32,
    /// Share of traffic within its priority group (at least 1).
    pub weight: u32,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub account: Option<String>,
    pub destination_prefix: String,
    pub source_prefix: String,
    pub priority: u32,
    pub targets: Vec<Target>,
}

impl Rule {
    fn matches(&self, account: &str, source: &str, destination: &str) -> bool {
        self.account.as_deref().map_or(true, |a| a == account)
            && destination.starts_with(self.destination_prefix.as_str())
            && source.starts_with(self.source_prefix.as_str())
    }
}

/// The rules of this node, rebuilt whenever the replicated routes change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    rules: Vec<Rule>,
}

impl RoutingTable {
    /// Rules from the replicated `routes`; a route the configuration also
    /// names takes its source prefix, and its priorities and weights when the
    /// configuration lists the same connectors.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = &'a Route>,
        extras: &[RouteConfig],
    ) -> RoutingTable {
        let rules = routes
            .into_iter()
            .map(|route| {
                let extra = extras.iter().find(|e| e.name == route.name);
                let configured = extra.map(RouteConfig::resolved_targets);
                let targets = match configured {
                    Some(targets) if same_connectors(&targets, &route.connectors) => targets
                        .into_iter()
                        .map(|t| Target {
                            connector: t.connector,
                            priority: t.priority,
                            weight: t.weight.max(1),
                        })
                        .collect(),
                    _ => route
                        .connectors
                        .iter()
                        .zip(0u32..)
                        .map(|(name, priority)| Target {
                            connector: name.clone(),
                            priority,
                            weight: 1,
                        })
                        .collect(),
                };
                Rule {
                    name: route.name.clone(),
                    account: route.account.clone(),
                    destination_prefix: route.destination_prefix.clone(),
                    source_prefix: extra.map(|e| e.source.clone()).unwrap_or_default(),
                    priority: route.priority,
                    targets,
                }
            })
            .collect();
        RoutingTable { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule for a message, or None when no rule covers it.
    pub fn rule_for(&self, account: &str, source: &str, destination: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.matches(account, source, destination))
            .min_by(|a, b| {
                b.destination_prefix
                    .len()
                    .cmp(&a.destination_prefix.len())
                    .then(b.account.is_some().cmp(&a.account.is_some()))
                    .then(a.priority.cmp(&b.priority))
                    .then(a.name.cmp(&b.name))
            })
    }
}

/// Whether the configured targets name exactly the replicated connectors.
fn same_connectors(targets: &[RouteTargetConfig], connectors: &[String]) -> bool {
    targets.len() == connectors.len() && targets.iter().all(|t| connectors.contains(&t.connector))
}

/// The connectors to try for one attempt, best first, into `out` (indices
/// into `rule.targets`; cleared first, so a caller can reuse the buffer).
/// Targets `usable` refuses are left out. Within the lowest usable priority
/// group the first is a weighted pick by `key` (a hash of the message id, so
/// the same message lands on the same connector and the split follows the
/// weights); the rest of the group follows in listed order, then the next
/// groups in the same way.
pub fn candidates(rule: &Rule, key: u64, usable: impl Fn(&str) -> bool, out: &mut Vec<usize>) {
    out.clear();
    // Groups in ascending priority without sorting into a new buffer: a rule
    // has a handful of targets, so walking them once per group is cheap.
    let mut previous: Option<u32> = None;
    while let Some(priority) = rule
        .targets
        .iter()
        .map(|t| t.priority)
        .filter(|p| previous.map_or(true, |prev| *p > prev))
        .min()
    {
        previous = Some(priority);
        let group_start = out.len();
        let mut total_weight = 0u64;
        for (index, target) in rule.targets.iter().enumerate() {
            if target.priority == priority && usable(&target.connector) {
                out.push(index);
                total_weight += u64::from(target.weight.max(1));
            }
        }
        if total_weight == 0 {
            continue;
        }
        let mut left = key % total_weight;
        let mut chosen = group_start;
        for (position, &index) in out.iter().enumerate().skip(group_start) {
            let weight = rule
                .targets
                .get(index)
                .map_or(1, |t| u64::from(t.weight.max(1)));
            if left < weight {
                chosen = position;
                break;
            }
            left -= weight;
        }
        // Rotate the pick to the front of its group, keeping the others' order.
        if let Some(group) = out.get_mut(group_start..=chosen) {
            group.rotate_right(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::Command;
    use crate::store::state::AppState;

    fn route(name: &str, account: Option<&str>, prefix: &str, priority: u32, c: &[&str]) -> Route {
        Route {
            name: name.into(),
            account: account.map(str::to_string),
            destination_prefix: prefix.into(),
            priority,
            connectors: c.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sample_routes() -> Vec<Route> {
        vec![
            route("all", None, "", 0, &["a"]),
            route("uk", None, "44", 0, &["b", "c"]),
            route("uk-mobile", None, "447", 5, &["c"]),
            route("uk-mobile-acme", Some("acme"), "447", 9, &["a"]),
            route("uk-mobile-2", None, "447", 1, &["b"]),
        ]
    }

    #[test]
    fn agrees_with_the_store_when_no_source_rules() {
        let mut state = AppState::new();
        for r in sample_routes() {
            state.apply_command(Command::UpsertRoute(r));
        }
        let table = RoutingTable::build(state.routes(), &[]);
        for account in ["acme", "other"] {
            for dst in ["", "1", "44", "4412", "447", "447700", "33"] {
                let ours = table.rule_for(account, "SRC", dst).map(|r| r.name.as_str());
                let store = state.route_for(account, dst).map(|r| r.name.as_str());
                assert_eq!(ours, store, "account {account} dst {dst}");
            }
        }
        assert_eq!(
            table
                .rule_for("acme", "x", "447700")
                .map(|r| r.name.as_str()),
            Some("uk-mobile-acme")
        );
        assert_eq!(
            table.rule_for("x", "x", "447700").map(|r| r.name.as_str()),
            Some("uk-mobile-2")
        );
    }

    #[test]
    fn source_prefix_filters_and_nothing_matches_gives_none() {
        let routes = vec![route("brand", None, "33", 0, &["a"])];
        let extras = vec![RouteConfig {
            name: "brand".into(),
            account: None,
            prefix: "33".into(),
            source: "ACME".into(),
            priority: 0,
            connectors: vec!["a".into()],
            targets: Vec::new(),
        }];
        let table = RoutingTable::build(&routes, &extras);
        assert!(table.rule_for("x", "ACMEBANK", "3361").is_some());
        assert!(table.rule_for("x", "OTHER", "3361").is_none());
        assert!(table.rule_for("x", "ACME", "4461").is_none());
    }

    fn weighted_rule() -> Rule {
        let routes = vec![route("w", None, "", 0, &["a", "b", "c"])];
        let extras = vec![RouteConfig {
            name: "w".into(),
            account: None,
            prefix: String::new(),
            source: String::new(),
            priority: 0,
            connectors: Vec::new(),
            targets: vec![
                RouteTargetConfig {
                    connector: "a".into(),
                    priority: 0,
                    weight: 3,
                },
                RouteTargetConfig {
                    connector: "b".into(),
                    priority: 0,
                    weight: 1,
                },
                RouteTargetConfig {
                    connector: "c".into(),
                    priority: 1,
                    weight: 1,
                },
            ],
        }];
        let table = RoutingTable::build(&routes, &extras);
        table.rules.first().cloned().expect("one rule")
    }

    #[test]
    fn weights_share_the_first_pick() {
        let rule = weighted_rule();
        let mut out = Vec::new();
        let mut first = [0u32; 3];
        for key in 0..4000u64 {
            candidates(&rule, key, |_| true, &mut out);
            assert_eq!(out.len(), 3);
            assert_eq!(out.last(), Some(&2), "the failover group comes last");
            first[out[0]] += 1;
        }
        assert_eq!(first, [3000, 1000, 0]);
    }

    #[test]
    fn unusable_connectors_are_skipped_and_failover_follows() {
        let rule = weighted_rule();
        let mut out = Vec::new();
        candidates(&rule, 0, |c| c != "a", &mut out);
        assert_eq!(out, vec![1, 2]);
        candidates(&rule, 7, |c| c == "c", &mut out);
        assert_eq!(out, vec![2]);
        candidates(&rule, 7, |_| false, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn configured_targets_that_disagree_with_the_store_fall_back_to_its_order() {
        let routes = vec![route("r", None, "", 0, &["x", "y"])];
        let extras = vec![RouteConfig {
            name: "r".into(),
            account: None,
            prefix: String::new(),
            source: String::new(),
            priority: 0,
            connectors: vec!["x".into(), "z".into()],
            targets: Vec::new(),
        }];
        let table = RoutingTable::build(&routes, &extras);
        let rule = table.rule_for("a", "s", "1").expect("rule");
        let names: Vec<_> = rule.targets.iter().map(|t| t.connector.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
        assert_eq!(rule.targets[1].priority, 1);
    }
}

//! Routing: which operator connectors a message may go to, in which order.
//!
//! Owns: `RoutingTable` (rules built from the replicated routes: account,
//! destination and source prefixes, per-connector priority and weight), the
//! choice of a rule for a message and the ordered candidate connectors for
//! one attempt. Must not touch: sockets, the store (callers hand in the routes
//! they read) or connector state (callers say which connectors are usable).
//!
//! The rule order is `AppState::route_for`'s (longest destination prefix,
//! then account-specific over generic, then lower priority, then name, among
//! rules whose source prefix matches). A unit test keeps the two in
//! agreement. Everything comes from the log, so every node routes alike.

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
    /// Rules from the replicated `routes`.
    pub fn build<'a>(routes: impl IntoIterator<Item = &'a Route>) -> RoutingTable {
        let rules = routes
            .into_iter()
            .map(|route| Rule {
                name: route.name.clone(),
                account: route.account.clone(),
                destination_prefix: route.destination_prefix.clone(),
                source_prefix: route.source_prefix.clone(),
                priority: route.priority,
                targets: route
                    .targets
                    .iter()
                    .map(|t| Target {
                        connector: t.connector.clone(),
                        priority: t.priority,
                        weight: t.weight.max(1),
                    })
                    .collect(),
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
    use crate::store::command::{Command, RouteTarget};
    use crate::store::state::AppState;

    fn route(name: &str, account: Option<&str>, prefix: &str, priority: u32, c: &[&str]) -> Route {
        Route {
            name: name.into(),
            account: account.map(str::to_string),
            destination_prefix: prefix.into(),
            source_prefix: String::new(),
            priority,
            targets: c
                .iter()
                .zip(0u32..)
                .map(|(name, priority)| RouteTarget {
                    connector: name.to_string(),
                    priority,
                    weight: 1,
                })
                .collect(),
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
    fn agrees_with_the_store() {
        let mut state = AppState::new();
        let mut routes = sample_routes();
        let mut branded = route("uk-brand", None, "447", 0, &["c"]);
        branded.source_prefix = "ACME".into();
        routes.push(branded);
        for r in routes {
            state.apply_command(Command::UpsertRoute(r));
        }
        let table = RoutingTable::build(state.routes());
        for account in ["acme", "other"] {
            for src in ["SRC", "ACMEBANK"] {
                for dst in ["", "1", "44", "4412", "447", "447700", "33"] {
                    let ours = table.rule_for(account, src, dst).map(|r| r.name.as_str());
                    let store = state.route_for(account, src, dst).map(|r| r.name.as_str());
                    assert_eq!(ours, store, "account {account} src {src} dst {dst}");
                }
            }
        }
        assert_eq!(
            table
                .rule_for("x", "ACMEBANK", "447700")
                .map(|r| r.name.as_str()),
            Some("uk-brand")
        );
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
        let mut brand = route("brand", None, "33", 0, &["a"]);
        brand.source_prefix = "ACME".into();
        let routes = vec![brand];
        let table = RoutingTable::build(&routes);
        assert!(table.rule_for("x", "ACMEBANK", "3361").is_some());
        assert!(table.rule_for("x", "OTHER", "3361").is_none());
        assert!(table.rule_for("x", "ACME", "4461").is_none());
    }

    fn weighted_rule() -> Rule {
        let mut w = route("w", None, "", 0, &["a", "b", "c"]);
        w.targets = [("a", 0, 3), ("b", 0, 1), ("c", 1, 1)]
            .into_iter()
            .map(|(connector, priority, weight)| RouteTarget {
                connector: connector.into(),
                priority,
                weight,
            })
            .collect();
        let routes = vec![w];
        let table = RoutingTable::build(&routes);
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
}

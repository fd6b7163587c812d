//! The node's running connectors, kept in step with the replicated
//! `Connector` records: a new or changed record starts binds, a removed,
//! disabled or replaced one retires.
//!
//! Owns: the list of running `ConnectorShared` instances (the dispatcher's
//! view, indices valid until the next `reconcile`), the instances retiring
//! (their queued jobs still to hand back), the spread of binds over the
//! upstream cores, and what the status handle shows. Must not touch: the
//! store (the dispatcher reads the records and passes them in), sockets, or
//! routing decisions.
//!
//! A record that does not parse (a bad host, an unknown id_format) is logged
//! once per change and runs no binds; the status says why.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::bind::BindSpec;
use super::{ConnectorShared, Job, StatusEntry, StatusHandle};
use crate::store::command::Connector;

pub struct Fleet {
    /// Enabled, valid connectors with their binds started.
    running: Vec<Arc<ConnectorShared>>,
    /// Every connector name in the store, whatever its state: a route naming
    /// only unknown ones fails, one naming a disabled one waits.
    known: HashSet<String>,
    /// Replaced or removed instances whose binds or queue are not done yet.
    retiring: Vec<Arc<ConnectorShared>>,
    /// The records the running set was built from.
    seen: Vec<Connector>,
    /// One per upstream core: binds to run there.
    spawners: Vec<flume::Sender<BindSpec>>,
    /// Bind i of the node goes to core i mod n, as binds are started.
    next_core: usize,
    next_key: u64,
    /// (submitted, failed) of retired instances by name, carried over.
    carried: HashMap<String, (u64, u64)>,
    status: StatusHandle,
}

impl Fleet {
    pub fn new(spawners: Vec<flume::Sender<BindSpec>>, status: StatusHandle) -> Fleet {
        Fleet {
            running: Vec::new(),
            known: HashSet::new(),
            retiring: Vec::new(),
            seen: Vec::new(),
            spawners,
            next_core: 0,
            next_key: 1,
            carried: HashMap::new(),
            status,
        }
    }

    /// The connectors that run binds; positions are stable until `reconcile`.
    pub fn running(&self) -> &[Arc<ConnectorShared>] {
        &self.running
    }

    pub fn knows(&self, name: &str) -> bool {
        self.known.contains(name)
    }

    /// The records last reconciled (to skip a reconcile when nothing changed).
    pub fn seen(&self) -> &[Connector] {
        &self.seen
    }

    /// Makes the running set match `records`: unchanged connectors keep
    /// running untouched; new and changed ones start binds; removed, disabled
    /// and changed ones retire (their binds finish what is outstanding and
    /// unbind; `take_returned` hands back what was still queued).
    pub fn reconcile(&mut self, records: Vec<Connector>) {
        let mut old: HashMap<String, Arc<ConnectorShared>> = self
            .running
            .drain(..)
            .map(|c| (c.name.clone(), c))
            .collect();
        let mut entries = Vec::with_capacity(records.len());
        self.known = records.iter().map(|r| r.name.clone()).collect();
        for record in &records {
            let mut entry = StatusEntry {
                name: record.name.clone(),
                enabled: record.enabled,
                live: None,
                invalid: None,
                carried: (0, 0),
            };
            if let Some(current) = old.get(&record.name) {
                if record.enabled && current.record == *record {
                    if let Some(current) = old.remove(&record.name) {
                        entry.live = Some(Arc::clone(&current));
                        self.running.push(current);
                    }
                    entries.push(entry);
                    continue;
                }
            }
            if let Some(previous) = old.remove(&record.name) {
                self.retire(previous);
            }
            entry.carried = self.carried.get(&record.name).copied().unwrap_or((0, 0));
            if !record.enabled {
                tracing::info!(connector = record.name.as_str(), "connector disabled");
                entries.push(entry);
                continue;
            }
            let key = self.next_key;
            self.next_key += 1;
            match ConnectorShared::from_record(record, key) {
                Ok(connector) => {
                    connector
                        .submitted
                        .store(entry.carried.0, Ordering::Relaxed);
                    connector.failed.store(entry.carried.1, Ordering::Relaxed);
                    let connector = Arc::new(connector);
                    self.start_binds(&connector);
                    tracing::info!(
                        connector = connector.name.as_str(),
                        binds = connector.binds_configured(),
                        "connector started"
                    );
                    entry.live = Some(Arc::clone(&connector));
                    self.running.push(connector);
                }
                Err(e) => {
                    tracing::error!(
                        connector = record.name.as_str(),
                        "connector record invalid, not started: {e}"
                    );
                    entry.invalid = Some(format!("invalid record: {e}"));
                }
            }
            entries.push(entry);
        }
        for (name, gone) in old {
            tracing::info!(connector = name.as_str(), "connector removed");
            self.retire(gone);
        }
        self.seen = records;
        self.status.publish(entries);
    }

    fn retire(&mut self, connector: Arc<ConnectorShared>) {
        connector.retire();
        self.carried.insert(
            connector.name.clone(),
            (
                connector.submitted.load(Ordering::Relaxed),
                connector.failed.load(Ordering::Relaxed),
            ),
        );
        self.retiring.push(connector);
    }

    fn start_binds(&mut self, connector: &Arc<ConnectorShared>) {
        let cores = self.spawners.len().max(1);
        for bind_index in 0..usize::from(connector.record.bind_count) {
            for &role in connector.roles() {
                let core = self.next_core % cores;
                self.next_core = self.next_core.wrapping_add(1);
                let Some(spawner) = self.spawners.get(core) else {
                    continue;
                };
                connector.running_binds.fetch_add(1, Ordering::Relaxed);
                let spec = BindSpec {
                    connector: Arc::clone(connector),
                    bind_index,
                    role,
                };
                if spawner.send(spec).is_err() {
                    // The core is gone (shutting down): nothing runs it.
                    connector.running_binds.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Jobs still queued on retired connectors, each with the key of the
    /// instance it was queued on; forgets instances that are done.
    pub fn take_returned(&mut self, mut returned: impl FnMut(Job, u64)) {
        self.retiring.retain(|connector| {
            while let Ok(job) = connector.jobs_rx.try_recv() {
                returned(job, connector.key);
            }
            // Binds still running may hand back more: their window drains
            // through outcomes, but a job taken just before the retirement
            // was seen can only come back through the queue it never left.
            connector.running_binds.load(Ordering::Relaxed) > 0 || !connector.jobs_rx.is_empty()
        });
    }

    /// Whether any retired instance still waits for its binds.
    pub fn has_retiring(&self) -> bool {
        !self.retiring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::bind::Role;
    use std::time::Instant;

    fn record(name: &str) -> Connector {
        Connector {
            name: name.into(),
            hosts: vec!["127.0.0.1:2775".into()],
            system_id: "tern".into(),
            password: "pw".into(),
            system_type: String::new(),
            bind_type: "transceiver".into(),
            bind_count: 2,
            window: 10,
            throughput_per_s: 0,
            enquire_link_s: 30,
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
            submit_timeout_ms: 1000,
            id_format: "hex".into(),
            default_alphabet: "gsm7".into(),
            long_messages: "as-submitted".into(),
            tls: false,
            enabled: true,
        }
    }

    struct Rig {
        fleet: Fleet,
        cores: Vec<flume::Receiver<BindSpec>>,
        status: StatusHandle,
    }

    fn rig(cores: usize) -> Rig {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::unbounded()).unzip();
        let status = StatusHandle::default();
        Rig {
            fleet: Fleet::new(txs, status.clone()),
            cores: rxs,
            status,
        }
    }

    impl Rig {
        /// Every bind spec sent since the last call, core by core.
        fn spawned(&self) -> Vec<Vec<BindSpec>> {
            self.cores
                .iter()
                .map(|rx| rx.try_iter().collect())
                .collect()
        }
    }

    fn job(n: u64) -> Job {
        let id = crate::store::id::MessageId::from_parts(1, 1, 0, n).expect("id");
        let accept = crate::store::command::Accept {
            id,
            account: "a".into(),
            source: crate::store::command::Address {
                ton: 1,
                npi: 1,
                digits: "1".into(),
            },
            destination: crate::store::command::Address {
                ton: 1,
                npi: 1,
                digits: "2".into(),
            },
            data_coding: 0,
            esm_class: 0,
            protocol_id: 0,
            priority: 0,
            registered_delivery: 1,
            payload: b"x".to_vec(),
            segment: None,
            received_at_ms: 0,
            validity_until_ms: None,
            owner_node: 1,
            client_ref: None,
            scheduled_at_ms: None,
        };
        Job {
            id,
            generation: 1,
            accept: Box::new(accept),
            queued_at: Instant::now(),
        }
    }

    #[test]
    fn a_new_connector_spreads_its_binds_over_the_cores() {
        let mut rig = rig(2);
        let mut tr = record("b");
        tr.bind_type = "transmitter+receiver".into();
        rig.fleet.reconcile(vec![record("a"), tr]);
        let spawned = rig.spawned();
        assert_eq!(spawned[0].len(), 3, "6 sessions over 2 cores");
        assert_eq!(spawned[1].len(), 3);
        let all: Vec<BindSpec> = spawned.into_iter().flatten().collect();
        let b_roles: Vec<Role> = all
            .iter()
            .filter(|s| s.connector.name == "b")
            .map(|s| s.role)
            .collect();
        assert_eq!(
            b_roles.iter().filter(|r| **r == Role::Receiver).count(),
            2,
            "one receiver per transmitter"
        );
        assert_eq!(rig.fleet.running().len(), 2);
        let status = rig.status.snapshot();
        assert_eq!(status[1].binds_configured, 4);
        assert_eq!(status[0].binds_up, 0, "nothing bound yet");
    }

    #[test]
    fn unchanged_records_touch_nothing_and_changes_restart() {
        let mut rig = rig(1);
        rig.fleet.reconcile(vec![record("a"), record("b")]);
        let first = rig.spawned();
        assert_eq!(first[0].len(), 4);
        let a_key = rig.fleet.running()[0].key;
        rig.fleet.reconcile(vec![record("a"), record("b")]);
        assert!(rig.spawned()[0].is_empty(), "same records: no new binds");
        assert_eq!(rig.fleet.running()[0].key, a_key);

        let mut changed = record("a");
        changed.window = 20;
        rig.fleet.reconcile(vec![changed, record("b")]);
        let restarted = rig.spawned();
        assert_eq!(restarted[0].len(), 2, "only a's binds start again");
        assert!(restarted[0].iter().all(|s| s.connector.name == "a"));
        assert!(first[0][0].connector.is_retired(), "the old a retired");
        assert!(!first[0][2].connector.is_retired(), "b kept running");
        let new_a = rig
            .fleet
            .running()
            .iter()
            .find(|c| c.name == "a")
            .expect("a");
        assert_ne!(new_a.key, a_key, "a new instance");
        assert_eq!(new_a.record.window, 20);
    }

    #[test]
    fn disabled_and_removed_connectors_retire_and_return_their_queue() {
        let mut rig = rig(1);
        rig.fleet.reconcile(vec![record("a"), record("b")]);
        let specs = rig.spawned().remove(0);
        let a = Arc::clone(&rig.fleet.running()[0]);
        a.jobs_tx.try_send(job(1)).expect("room");
        a.jobs_tx.try_send(job(2)).expect("room");
        let mut disabled = record("a");
        disabled.enabled = false;
        rig.fleet.reconcile(vec![disabled, record("b")]);
        assert!(a.is_retired());
        assert!(rig.fleet.running().iter().all(|c| c.name != "a"));
        assert!(rig.fleet.knows("a"), "a disabled connector is still known");
        let mut back = Vec::new();
        rig.fleet.take_returned(|job, key| back.push((job.id, key)));
        assert_eq!(back.len(), 2, "queued jobs come back to be rerouted");
        assert!(back.iter().all(|(_, key)| *key == a.key));
        assert!(rig.fleet.has_retiring(), "its binds still run");
        // The binds end (as bind::run does when it sees the retirement).
        for spec in specs.iter().filter(|s| s.connector.name == "a") {
            spec.connector.running_binds.fetch_sub(1, Ordering::Relaxed);
        }
        rig.fleet.take_returned(|_, _| panic!("nothing left"));
        assert!(!rig.fleet.has_retiring(), "forgotten once its binds ended");
        let status = rig.status.snapshot();
        assert!(!status[0].enabled);
        assert_eq!(status[0].binds_configured, 0);

        rig.fleet.reconcile(vec![record("a")]);
        assert!(!rig.fleet.knows("b"), "b removed");
        assert!(rig.fleet.running().iter().any(|c| c.name == "a"));
        assert_eq!(rig.status.snapshot().len(), 1);
    }

    #[test]
    fn an_invalid_record_is_skipped_and_reported() {
        let mut rig = rig(1);
        let mut bad = record("bad");
        bad.hosts = vec!["not a host".into()];
        let mut bad_format = record("worse");
        bad_format.id_format = "hexx".into();
        rig.fleet.reconcile(vec![bad, bad_format, record("good")]);
        assert_eq!(rig.fleet.running().len(), 1);
        assert!(rig.spawned()[0].iter().all(|s| s.connector.name == "good"));
        let status = rig.status.snapshot();
        let error = |i: usize| status[i].last_error.clone().unwrap_or_default();
        assert!(error(0).contains("hosts"), "{}", error(0));
        assert!(error(1).contains("id_format"), "{}", error(1));
        assert_eq!(status[2].last_error, None);
    }

    #[test]
    fn counters_survive_a_change() {
        let mut rig = rig(1);
        rig.fleet.reconcile(vec![record("a")]);
        rig.fleet.running()[0]
            .submitted
            .fetch_add(5, Ordering::Relaxed);
        rig.fleet.running()[0]
            .failed
            .fetch_add(2, Ordering::Relaxed);
        let mut changed = record("a");
        changed.bind_count = 3;
        rig.fleet.reconcile(vec![changed.clone()]);
        let status = rig.status.snapshot();
        assert_eq!((status[0].submitted, status[0].failed), (5, 2));
        assert_eq!(status[0].binds_configured, 3);
        changed.enabled = false;
        rig.fleet.reconcile(vec![changed]);
        let status = rig.status.snapshot();
        assert_eq!((status[0].submitted, status[0].failed), (5, 2));
    }
}

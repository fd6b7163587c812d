//! A seeded, single-threaded, deterministic simulator for the replicated store.
//!
//! Owns: a model of N nodes (each a [`RaftCore`] over a `RaftLog<SimDisk>` and
//! a state machine that records every applied command beside the real
//! `AppState`), a network that drops, delays, duplicates,
//! reorders and partitions messages (symmetric and one-way), a clock that moves
//! in steps and raft ticks, node crashes (unsynced disk writes vanish) and
//! power loss (every node at once), clients that propose a stream of commands
//! and remember which were acknowledged, an operator that changes membership
//! and transfers leadership, and the checks run after every simulation.
//!
//! Must not touch: wall clocks, threads, real files or sockets, global
//! randomness. Everything follows from the seed, so a failing seed reproduces
//! exactly: `TERN_SIM_SEED=<seed> cargo test --test store_sim`.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;

use raft::eraftpb::{ConfState, Message, MessageType, SnapshotMetadata};

use super::command::{Account, BindKind, Command};
use super::node::{Actions, CoreConfig, CoreMetrics, LogStart, ProposalResult, RaftCore};
use super::state::{AppState, ApplyOutcome};
use super::wal::{LogOptions, RaftLog, SimDisk};
use super::{StateMachine, StoreError};

/// The simulator's generator: the crate's seeded SplitMix64.
pub type SimRng = crate::rng::SplitMix64;

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

/// Shared record of what every replica applied at every index, checked as it
/// happens: two replicas that apply different commands at one index fail the
/// run at once.
#[derive(Default)]
struct Oracle {
    /// index -> (digest of the applied commands, node that applied it first).
    digests: BTreeMap<u64, (u64, u64)>,
    violations: Vec<String>,
}

impl Oracle {
    fn record(&mut self, node: u64, index: u64, digest: u64) {
        match self.digests.get(&index) {
            Some((seen, first_node)) if *seen != digest => {
                if self.violations.len() < 8 {
                    self.violations.push(format!(
                        "node {node} applied digest {digest:#x} at index {index}, node {first_node} applied {seen:#x}"
                    ));
                }
            }
            Some(_) => {}
            None => {
                self.digests.insert(index, (digest, node));
            }
        }
    }
}

/// What the recording state machine answers for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimOutput {
    /// First time this command id was applied.
    Applied,
    /// Already applied at `first_index` (a retried proposal committed twice).
    Duplicate { first_index: u64 },
    /// Bytes that are not a command.
    Malformed,
}

/// A deterministic state machine that keeps, per command id, the index where
/// it was first applied (dedup, as the real state machine does by message id),
/// and feeds each command's payload to the real `AppState` as well, so every
/// run also checks that AppState stays identical across replicas, snapshots
/// and restarts.
pub struct SimStateMachine {
    node: u64,
    applied: u64,
    first_index_of: BTreeMap<u64, u64>,
    app: AppState,
    oracle: Rc<RefCell<Oracle>>,
}

impl SimStateMachine {
    fn new(node: u64, oracle: Rc<RefCell<Oracle>>) -> Self {
        SimStateMachine {
            node,
            applied: 0,
            first_index_of: BTreeMap::new(),
            app: AppState::new(),
            oracle,
        }
    }

    /// Where command `id` was first applied, if at all.
    pub fn first_index_of(&self, id: u64) -> Option<u64> {
        self.first_index_of.get(&id).copied()
    }

    pub fn command_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.first_index_of.keys().copied()
    }

    /// The application state fed alongside.
    pub fn app(&self) -> &AppState {
        &self.app
    }
}

/// The application command that command `id` carries: a deterministic mix of
/// provisioning, node and bind changes.
fn app_command(id: u64) -> Command {
    let account = format!("acct{}", id % 7);
    let node = id % 3 + 1;
    match id % 5 {
        0 => Command::UpsertAccount(Account {
            name: account,
            password_hash: "$sim$".into(),
            max_binds: 0,
            throughput_per_s: 0,
            allowed_ips: Vec::new(),
            allowed_senders: Vec::new(),
            retention_s: 0,
            enabled: true,
            webhook_url: None,
            api_key_hash: None,
            webhook_secret: None,
            window: 0,
        }),
        1 => Command::NodeUp {
            node,
            incarnation: (id / 5) as u32,
        },
        2 | 3 => Command::BindOpened {
            node,
            session: id,
            account,
            kind: BindKind::Transceiver,
        },
        _ => Command::BindClosed {
            node: (id - 2) % 3 + 1,
            session: id - 2,
        },
    }
}

/// The bytes of command `id`: its id, then the encoded application command,
/// so every proposal can be regenerated and checked.
fn command_bytes(id: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&id.to_le_bytes());
    app_command(id).encode_into(&mut bytes);
    bytes
}

fn command_id(bytes: &[u8]) -> Option<u64> {
    let id = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    (bytes == command_bytes(id).as_slice()).then_some(id)
}

impl StateMachine for SimStateMachine {
    type Output = SimOutput;

    fn apply(&mut self, index: u64, commands: &[&[u8]]) -> Vec<SimOutput> {
        assert!(
            index > self.applied,
            "node {} applied index {index} after {}",
            self.node,
            self.applied
        );
        let mut digest = fnv1a(FNV_OFFSET, &index.to_le_bytes());
        let mut app_commands: Vec<&[u8]> = Vec::with_capacity(commands.len());
        let outputs = commands
            .iter()
            .map(|command| {
                digest = fnv1a(digest, &(command.len() as u64).to_le_bytes());
                digest = fnv1a(digest, command);
                match command_id(command) {
                    None => SimOutput::Malformed,
                    Some(id) => match self.first_index_of.get(&id) {
                        Some(first) => SimOutput::Duplicate {
                            first_index: *first,
                        },
                        None => {
                            self.first_index_of.insert(id, index);
                            app_commands.push(command.get(8..).unwrap_or_default());
                            SimOutput::Applied
                        }
                    },
                }
            })
            .collect();
        // AppState sees each distinct command once, as the real proposer's
        // dedup by message id would arrange; its outcome must not be
        // "undecodable" since every command is well formed.
        let app_outputs = self.app.apply(index, &app_commands);
        assert!(
            !app_outputs.contains(&ApplyOutcome::Undecodable),
            "AppState failed to decode a simulated command at index {index}"
        );
        self.applied = index;
        self.oracle.borrow_mut().record(self.node, index, digest);
        outputs
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Vec<u8> {
        let app = self.app.snapshot();
        let mut out = Vec::with_capacity(16 + 16 * self.first_index_of.len() + app.len());
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&(self.first_index_of.len() as u64).to_le_bytes());
        for (id, index) in &self.first_index_of {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&index.to_le_bytes());
        }
        out.extend_from_slice(&app);
        out
    }

    fn restore(&mut self, index: u64, snapshot: &[u8]) -> Result<(), StoreError> {
        let corrupt = || StoreError::Corrupt("sim state snapshot".into());
        let word = |at: usize| -> Result<u64, StoreError> {
            let raw = snapshot.get(at..at + 8).ok_or_else(corrupt)?;
            Ok(u64::from_le_bytes(raw.try_into().map_err(|_| corrupt())?))
        };
        let applied = word(0)?;
        let count = usize::try_from(word(8)?).map_err(|_| corrupt())?;
        let app_start = count
            .checked_mul(16)
            .and_then(|n| n.checked_add(16))
            .filter(|end| *end <= snapshot.len())
            .ok_or_else(corrupt)?;
        if applied != index {
            return Err(corrupt());
        }
        let mut first_index_of = BTreeMap::new();
        for i in 0..count {
            first_index_of.insert(word(16 + 16 * i)?, word(24 + 16 * i)?);
        }
        self.app.restore(index, &snapshot[app_start..])?;
        self.applied = applied;
        self.first_index_of = first_index_of;
        Ok(())
    }
}

/// What a simulation exercises besides the background network faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Three voters, light drop/duplicate/reorder, no crashes.
    Steady,
    /// The leader is crashed again and again and restarts later.
    LeaderCrash,
    /// Symmetric and one-way partitions come and go.
    Partitions,
    /// Every node loses power at once, several times.
    PowerLoss,
    /// One voter with data, then learners 2 and 3 join (2 by log, 3 after
    /// compaction, so by snapshot) and are promoted.
    Grow1To3,
    /// Node 3 is removed from three voters and shut down.
    RemoveVoter,
    /// Node 3's disk is wiped; it is removed and node 4 joins in its place.
    ReplaceWipedNode,
    /// Leadership is handed to another voter again and again.
    LeaderTransfer,
    /// Every fault at once: crashes, power loss, partitions, heavy loss.
    Chaos,
    /// One voter (a single appliance) that loses power again and again: it
    /// commits on its own sync, and nothing it acknowledged may vanish.
    SingleVoter,
}

impl Scenario {
    pub const ALL: [Scenario; 10] = [
        Scenario::Steady,
        Scenario::LeaderCrash,
        Scenario::Partitions,
        Scenario::PowerLoss,
        Scenario::Grow1To3,
        Scenario::RemoveVoter,
        Scenario::ReplaceWipedNode,
        Scenario::LeaderTransfer,
        Scenario::Chaos,
        Scenario::SingleVoter,
    ];
}

/// Knobs of one simulation run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub scenario: Scenario,
    /// Raft ticks with clients and faults active; a healing phase follows.
    pub active_ticks: u64,
    /// Ticks allowed for the healed cluster to converge before failing.
    pub heal_ticks: u64,
    pub steps_per_tick: u64,
    pub drop_ppm: u64,
    pub duplicate_ppm: u64,
    pub max_delay_steps: u64,
    /// Probability per step that a node with unsynced writes completes a sync.
    pub sync_ppm: u64,
    /// Probability per step that a client proposes a few commands.
    pub propose_ppm: u64,
    /// Probability per step that a node saves its state durably.
    pub state_save_ppm: u64,
}

impl SimOptions {
    pub fn new(seed: u64, scenario: Scenario) -> Self {
        let mut options = SimOptions {
            seed,
            scenario,
            active_ticks: 300,
            heal_ticks: 300,
            steps_per_tick: 10,
            drop_ppm: 20_000,
            duplicate_ppm: 10_000,
            max_delay_steps: 8,
            sync_ppm: 400_000,
            propose_ppm: 300_000,
            state_save_ppm: 10_000,
        };
        if scenario == Scenario::Chaos {
            options.drop_ppm = 100_000;
            options.duplicate_ppm = 50_000;
            options.max_delay_steps = 25;
        }
        options
    }
}

/// What a successful run saw (for assertions that a scenario did its job).
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub seed: u64,
    pub commands_proposed: u64,
    pub commands_acked: u64,
    pub retries: u64,
    pub final_applied_index: u64,
    pub final_voters: Vec<u64>,
    pub max_term: u64,
    pub leaders_seen: BTreeSet<u64>,
    pub crashes: u64,
    pub power_losses: u64,
    pub snapshots_installed: u64,
    /// Snapshots installed per node (how each node caught up).
    pub snapshots_installed_by_node: BTreeMap<u64, u64>,
    pub snapshots_built: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub batches_proposed: u64,
    pub proposals_batched: u64,
    /// Accounts in the final AppState (shows the application state was fed).
    pub app_accounts: u64,
}

impl SimReport {
    /// Adds the counters of one node's core (at a crash, a shutdown or the end).
    fn absorb(&mut self, id: u64, metrics: &CoreMetrics) {
        self.max_term = self.max_term.max(metrics.term);
        self.snapshots_installed += metrics.snapshots_installed;
        *self.snapshots_installed_by_node.entry(id).or_default() += metrics.snapshots_installed;
        self.snapshots_built += metrics.snapshots_built;
        self.batches_proposed += metrics.batches_proposed;
        self.proposals_batched += metrics.proposals_batched;
    }
}

/// A message on the wire, ordered by delivery step then send order.
struct InFlight {
    deliver_at: u64,
    seq: u64,
    message: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at, self.seq) == (other.deliver_at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deliver_at, self.seq).cmp(&(other.deliver_at, other.seq))
    }
}

struct RunningNode {
    core: RaftCore<SimStateMachine>,
    log: RaftLog<SimDisk>,
    /// Actions written to the log but not yet covered by a sync:
    /// (ready number, messages to send after the sync).
    unsynced: Vec<(u64, Vec<Message>)>,
    /// Latest compaction point handed out; the log only drops segments
    /// below a synced snapshot marker, so it is retried after each sync.
    compact_to: u64,
    /// request id -> (command id, attempts so far) for proposals this node
    /// has not answered.
    requests: BTreeMap<u64, (u64, u32)>,
}

struct SimNode {
    id: u64,
    disk: SimDisk,
    /// The state machine as last saved durably, with its metadata.
    durable_state: Option<(SnapshotMetadata, Vec<u8>)>,
    incarnations: u64,
    running: Option<RunningNode>,
    /// Step at which a crashed node comes back (None: stays down).
    restart_at: Option<u64>,
    /// Out of the cluster for good (removed by the operator).
    retired: bool,
    /// Brand-new node of a new cluster (bootstraps with these voters).
    bootstrap_voters: Vec<u64>,
}

/// One simulation. Create with [`Sim::new`], drive with [`Sim::run`].
pub struct Sim {
    options: SimOptions,
    rng: SimRng,
    step: u64,
    nodes: BTreeMap<u64, SimNode>,
    network: BinaryHeap<Reverse<InFlight>>,
    next_seq: u64,
    /// Directed links that drop everything: (from, to).
    blocked: BTreeSet<(u64, u64)>,
    oracle: Rc<RefCell<Oracle>>,
    /// Every command id ever proposed.
    proposed: BTreeSet<u64>,
    /// Acknowledged commands: id -> (index, output).
    acked: BTreeMap<u64, (u64, SimOutput)>,
    /// Commands to propose again: (not before step, command id, attempts).
    retry_queue: VecDeque<(u64, u64, u32)>,
    next_command: u64,
    next_request: u64,
    clients_active: bool,
    faults_active: bool,
    /// Operator's goal for membership (voters it wants), when it has one.
    target_voters: Option<Vec<u64>>,
    report: SimReport,
    failures: Vec<String>,
}

const MAX_ATTEMPTS: u32 = 30;
/// Small segments so that compaction really removes files in a short run.
const SIM_SEGMENT_BYTES: u64 = 16 * 1024;
const MAX_READY_ROUNDS: usize = 16;

impl Sim {
    pub fn new(options: SimOptions) -> Self {
        let rng = SimRng::new(options.seed);
        let oracle = Rc::new(RefCell::new(Oracle::default()));
        let mut sim = Sim {
            options,
            rng,
            step: 0,
            nodes: BTreeMap::new(),
            network: BinaryHeap::new(),
            next_seq: 0,
            blocked: BTreeSet::new(),
            oracle,
            proposed: BTreeSet::new(),
            acked: BTreeMap::new(),
            retry_queue: VecDeque::new(),
            next_command: 1,
            next_request: 1,
            clients_active: true,
            faults_active: true,
            target_voters: None,
            report: SimReport::default(),
            failures: Vec::new(),
        };
        let (voters, spares): (Vec<u64>, Vec<u64>) = match sim.options.scenario {
            Scenario::Grow1To3 => (vec![1], vec![2, 3]),
            Scenario::SingleVoter => (vec![1], vec![]),
            Scenario::ReplaceWipedNode => (vec![1, 2, 3], vec![4]),
            _ => (vec![1, 2, 3], vec![]),
        };
        for id in voters.iter().chain(spares.iter()) {
            let bootstrap_voters = if voters.contains(id) {
                voters.clone()
            } else {
                Vec::new()
            };
            sim.nodes.insert(
                *id,
                SimNode {
                    id: *id,
                    disk: SimDisk::new(),
                    durable_state: None,
                    incarnations: 0,
                    running: None,
                    restart_at: None,
                    retired: false,
                    bootstrap_voters,
                },
            );
        }
        // A spare node is started only when the operator adds it.
        for id in voters {
            sim.start_node(id);
        }
        sim
    }

    /// Runs the active phase, heals, waits for convergence and checks.
    pub fn run(mut self) -> Result<SimReport, String> {
        let active_steps = self.options.active_ticks * self.options.steps_per_tick;
        while self.step < active_steps && self.failures.is_empty() {
            self.step_once();
        }
        self.heal();
        let heal_steps = self.options.heal_ticks * self.options.steps_per_tick;
        let deadline = self.step + heal_steps;
        let mut converged = false;
        while self.step < deadline && self.failures.is_empty() {
            self.step_once();
            if self.step % self.options.steps_per_tick == 0 && self.converged() {
                converged = true;
                break;
            }
        }
        if self.failures.is_empty() && !converged {
            let status = self.status_line();
            self.failures
                .push(format!("cluster did not converge after healing: {status}"));
        }
        if self.failures.is_empty() {
            self.final_checks();
        }
        let violations = self.oracle.borrow().violations.clone();
        self.failures.extend(violations);
        if self.failures.is_empty() {
            self.report.seed = self.options.seed;
            Ok(self.report)
        } else {
            let mut message = format!(
                "simulation failed: scenario {:?} seed {} (reproduce: TERN_SIM_SEED={} cargo test --test store_sim)\n",
                self.options.scenario, self.options.seed, self.options.seed
            );
            for failure in &self.failures {
                let _ = writeln!(message, "  {failure}");
            }
            Err(message)
        }
    }

    fn step_once(&mut self) {
        self.step += 1;
        let is_tick = self.step % self.options.steps_per_tick == 0;
        if is_tick {
            let tick = self.step / self.options.steps_per_tick;
            if self.faults_active {
                self.scenario_events(tick);
            }
            self.operator(tick);
        }
        self.restart_due_nodes();
        self.deliver_due_messages();
        if is_tick {
            let ids: Vec<u64> = self.running_ids();
            for id in ids {
                if let Some(running) = self.running_mut(id) {
                    running.core.tick();
                }
            }
        }
        if self.clients_active {
            self.clients();
        }
        let ids: Vec<u64> = self.running_ids();
        for id in ids {
            self.process_node(id);
        }
    }

    fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.running.is_some())
            .map(|n| n.id)
            .collect()
    }

    fn running_mut(&mut self, id: u64) -> Option<&mut RunningNode> {
        self.nodes.get_mut(&id).and_then(|n| n.running.as_mut())
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter_map(|n| n.running.as_ref().map(|r| (n.id, r)))
            .filter(|(_, r)| r.core.is_leader())
            .max_by_key(|(_, r)| r.core.term())
            .map(|(id, _)| id)
    }

    fn start_node(&mut self, id: u64) {
        let oracle = Rc::clone(&self.oracle);
        // raft-rs would draw timeouts from its thread-local RNG: give each
        // node incarnation a seeded timeout instead, so a seed replays exactly.
        let election_timeout = 10 + self.rng.below(10) as usize;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        debug_assert!(node.running.is_none(), "node {id} started twice");
        node.incarnations += 1;
        let (log, recovered) = match RaftLog::open(
            node.disk.clone(),
            LogOptions {
                segment_size_bytes: SIM_SEGMENT_BYTES,
            },
        ) {
            Ok(opened) => opened,
            Err(e) => {
                self.failures
                    .push(format!("node {id}: log failed to open: {e}"));
                return;
            }
        };
        let mut sm = SimStateMachine::new(id, oracle);
        if let Some((meta, bytes)) = &node.durable_state {
            if let Err(e) = sm.restore(meta.index, bytes) {
                self.failures
                    .push(format!("node {id}: durable state does not restore: {e}"));
                return;
            }
        }
        let mut start = LogStart::from_recovered(
            recovered,
            node.durable_state.as_ref().map(|(meta, _)| meta.clone()),
        );
        if start.is_empty() && start.state_snapshot.is_none() && !node.bootstrap_voters.is_empty() {
            start = LogStart::bootstrap(&node.bootstrap_voters);
        }
        let mut config = CoreConfig::new(id, node.incarnations);
        config.election_ticks = 10;
        config.election_timeout_range_ticks = Some((election_timeout, election_timeout + 1));
        config.heartbeat_ticks = 2;
        config.proposal_timeout_ticks = 40;
        config.compact_keep_entries = 30;
        config.compact_min_entries = 10;
        config.learner_catch_up_entries = 10;
        config.max_batch_bytes = 4096;
        config.max_size_per_msg_bytes = 16 * 1024;
        config.max_inflight_msgs = 16;
        // Small enough that replay after a restart spans several readies.
        config.max_apply_bytes_per_ready = 8 * 1024;
        match RaftCore::new(config, start, sm) {
            Ok(core) => {
                node.running = Some(RunningNode {
                    core,
                    log,
                    unsynced: Vec::new(),
                    compact_to: 0,
                    requests: BTreeMap::new(),
                });
                node.restart_at = None;
            }
            Err(e) => self
                .failures
                .push(format!("node {id}: core failed to start: {e}")),
        }
    }

    /// Stops a node abruptly: its unsynced writes vanish, its pending client
    /// requests get no answer (the clients propose them again later).
    fn crash_node(&mut self, id: u64, restart_after_ticks: Option<u64>) {
        let seed = self.rng.next_u64();
        let restart_at = restart_after_ticks.map(|t| self.step + t * self.options.steps_per_tick);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(running) = node.running.take() else {
            return;
        };
        node.disk.power_cut(seed);
        node.restart_at = restart_at;
        self.report.crashes += 1;
        self.report.absorb(id, running.core.metrics());
        for (command, attempts) in running.requests.values() {
            self.retry_queue
                .push_back((self.step + 20, *command, attempts + 1));
        }
    }

    fn restart_due_nodes(&mut self) {
        let due: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.running.is_none() && !n.retired)
            .filter(|n| n.restart_at.is_some_and(|at| at <= self.step))
            .map(|n| n.id)
            .collect();
        for id in due {
            self.start_node(id);
        }
    }

    fn send(&mut self, message: Message) {
        self.report.messages_sent += 1;
        let copies = if self.faults_active && self.rng.chance_ppm(self.options.duplicate_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.faults_active && self.rng.chance_ppm(self.options.drop_ppm) {
                self.report.messages_dropped += 1;
                self.snapshot_outcome(&message, false);
                continue;
            }
            let delay = self.rng.between(1, self.options.max_delay_steps);
            self.next_seq += 1;
            self.network.push(Reverse(InFlight {
                deliver_at: self.step + delay,
                seq: self.next_seq,
                message: message.clone(),
            }));
        }
    }

    /// raft must hear whether every snapshot message arrived.
    fn snapshot_outcome(&mut self, message: &Message, delivered: bool) {
        if message.get_msg_type() != MessageType::MsgSnapshot {
            return;
        }
        let (from, to) = (message.from, message.to);
        if let Some(sender) = self.running_mut(from) {
            sender.core.report_snapshot(to, delivered);
        }
    }

    fn deliver_due_messages(&mut self) {
        while let Some(Reverse(top)) = self.network.peek() {
            if top.deliver_at > self.step {
                break;
            }
            let Some(Reverse(in_flight)) = self.network.pop() else {
                break;
            };
            let message = in_flight.message;
            let link_blocked = self.blocked.contains(&(message.from, message.to));
            let to = message.to;
            let receiver_up = self.running_mut(to).is_some();
            if link_blocked || !receiver_up {
                self.report.messages_dropped += 1;
                self.snapshot_outcome(&message, false);
                continue;
            }
            self.snapshot_outcome(&message, true);
            if let Some(receiver) = self.running_mut(to) {
                receiver.core.step(message);
            }
        }
    }

    fn clients(&mut self) {
        let mut batch: Vec<(u64, u32)> = Vec::new();
        while let Some((not_before, command, attempts)) = self.retry_queue.front().copied() {
            if not_before > self.step || batch.len() >= 8 {
                break;
            }
            self.retry_queue.pop_front();
            batch.push((command, attempts));
        }
        if self.rng.chance_ppm(self.options.propose_ppm) {
            for _ in 0..self.rng.between(1, 4) {
                let command = self.next_command;
                self.next_command += 1;
                self.proposed.insert(command);
                self.report.commands_proposed += 1;
                batch.push((command, 0));
            }
        }
        if batch.is_empty() {
            return;
        }
        let candidates: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.running.is_some() && !n.retired)
            .map(|n| n.id)
            .collect();
        for (command, attempts) in batch {
            if candidates.is_empty() || attempts >= MAX_ATTEMPTS {
                if attempts < MAX_ATTEMPTS {
                    self.retry_queue
                        .push_back((self.step + 10, command, attempts + 1));
                }
                continue;
            }
            let id = candidates[self.rng.below(candidates.len() as u64) as usize];
            let request = self.next_request;
            self.next_request += 1;
            let bytes = command_bytes(command);
            if let Some(running) = self.running_mut(id) {
                running.requests.insert(request, (command, attempts));
                running.core.propose(request, &bytes);
            }
        }
    }

    fn process_node(&mut self, id: u64) {
        for _ in 0..MAX_READY_ROUNDS {
            let Some(running) = self.running_mut(id) else {
                return;
            };
            if !running.core.has_ready() {
                break;
            }
            match running.core.ready() {
                Ok(actions) => self.execute(id, actions),
                Err(e) => {
                    self.failures.push(format!("node {id}: ready failed: {e}"));
                    return;
                }
            }
        }
        let sync_now = self.rng.chance_ppm(self.options.sync_ppm);
        let Some(running) = self.running_mut(id) else {
            return;
        };
        if sync_now && !running.unsynced.is_empty() {
            if let Err(e) = running.log.sync() {
                self.failures.push(format!("node {id}: sync failed: {e}"));
                return;
            }
            if running.compact_to > 0 {
                if let Err(e) = running.log.compact(running.compact_to) {
                    self.failures
                        .push(format!("node {id}: compact failed: {e}"));
                    return;
                }
            }
            let done = std::mem::take(&mut running.unsynced);
            let mut last_number = 0;
            let mut to_send = Vec::new();
            for (number, messages) in done {
                last_number = last_number.max(number);
                to_send.extend(messages);
            }
            running.core.persisted(last_number);
            for message in to_send {
                self.send(message);
            }
        }
        let save_now = self.rng.chance_ppm(self.options.state_save_ppm);
        let saves_allowed = !(self.options.scenario == Scenario::Grow1To3
            && self.step < 60 * self.options.steps_per_tick);
        if save_now && saves_allowed {
            self.save_state(id);
        }
    }

    fn save_state(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(running) = node.running.as_mut() else {
            return;
        };
        let meta = running.core.applied_snapshot_metadata();
        // Nothing applied yet: an index-0 "snapshot" would hide the bootstrap.
        if meta.index == 0 {
            return;
        }
        if node
            .durable_state
            .as_ref()
            .is_some_and(|(m, _)| m.index >= meta.index)
        {
            return;
        }
        let bytes = running.core.state_machine().snapshot();
        running.core.set_durable_snapshot_index(meta.index);
        node.durable_state = Some((meta, bytes));
    }

    fn execute(&mut self, id: u64, actions: Actions<SimOutput>) {
        for message in actions.messages {
            self.send(message);
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(running) = node.running.as_mut() else {
            return;
        };
        let mut failure = None;
        if let Some(meta) = &actions.installed_snapshot {
            // State first, then the log's marker: a crash in between leaves
            // the state ahead of the log, which the core repairs at start.
            node.durable_state = Some((meta.clone(), running.core.state_machine().snapshot()));
            if let Err(e) = running
                .log
                .set_snapshot(meta.index, meta.term, meta.get_conf_state())
                .and_then(|()| running.log.compact(meta.index))
            {
                failure = Some(e);
            }
        }
        if !actions.entries.is_empty() {
            if let Err(e) = running.log.append(&actions.entries) {
                failure = Some(e);
            }
        }
        if let Some(hard_state) = &actions.hard_state {
            if let Err(e) = running.log.set_hard_state(hard_state) {
                failure = Some(e);
            }
        }
        if let Some(conf_state) = &actions.conf_state {
            if let Err(e) = running.log.set_conf_state(conf_state) {
                failure = Some(e);
            }
        }
        if let Some(compaction) = &actions.compaction {
            running.compact_to = compaction.index;
            if let Err(e) = running
                .log
                .set_snapshot(compaction.index, compaction.term, &compaction.conf_state)
                .and_then(|()| running.log.compact(compaction.index))
            {
                failure = Some(e);
            }
        }
        if actions.number != 0 || !actions.persisted_messages.is_empty() {
            running
                .unsynced
                .push((actions.number, actions.persisted_messages));
        }
        let mut retries = Vec::new();
        for reply in actions.replies {
            let Some((command, attempts)) = running.requests.remove(&reply.request_id) else {
                failure = Some(StoreError::Raft(format!(
                    "reply to unknown request {}",
                    reply.request_id
                )));
                continue;
            };
            match reply.result {
                ProposalResult::Committed { index, output } => {
                    if let Some((prev_index, prev_output)) = self.acked.get(&command) {
                        // A command may be acknowledged twice only as a
                        // duplicate pointing at the first application.
                        let consistent = match &output {
                            SimOutput::Duplicate { first_index } => {
                                *first_index == *prev_index
                                    || matches!(prev_output, SimOutput::Duplicate { first_index: f } if f == first_index)
                            }
                            _ => false,
                        };
                        if !consistent {
                            self.failures.push(format!(
                                "command {command} acknowledged twice: {prev_index} {prev_output:?} then {index} {output:?}"
                            ));
                        }
                    } else {
                        self.acked.insert(command, (index, output));
                        self.report.commands_acked += 1;
                    }
                }
                ProposalResult::Retry(_) => {
                    self.report.retries += 1;
                    retries.push((command, attempts));
                }
            }
        }
        if let Some(e) = failure {
            self.failures.push(format!("node {id}: {e}"));
        }
        for (command, attempts) in retries {
            let delay = self.rng.between(5, 30);
            if self.clients_active && !self.acked.contains_key(&command) {
                self.retry_queue
                    .push_back((self.step + delay, command, attempts + 1));
            }
        }
    }

    fn heal(&mut self) {
        self.faults_active = false;
        self.clients_active = false;
        self.retry_queue.clear();
        self.blocked.clear();
        let down: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.running.is_none() && !n.retired && self.is_member(n.id))
            .map(|n| n.id)
            .collect();
        for id in down {
            self.start_node(id);
        }
    }

    /// The configuration of the most advanced running node.
    fn best_conf(&self) -> Option<ConfState> {
        self.nodes
            .values()
            .filter_map(|n| n.running.as_ref())
            .max_by_key(|r| r.core.applied_index())
            .map(|r| r.core.conf_state().clone())
    }

    fn is_member(&self, id: u64) -> bool {
        match self.best_conf() {
            Some(conf) => conf.voters.contains(&id) || conf.learners.contains(&id),
            // Nobody is running: every node that ever bootstrapped is a member.
            None => self
                .nodes
                .get(&id)
                .is_some_and(|n| !n.bootstrap_voters.is_empty()),
        }
    }

    fn members(&self) -> Vec<u64> {
        let Some(conf) = self.best_conf() else {
            return Vec::new();
        };
        conf.voters
            .iter()
            .chain(conf.learners.iter())
            .copied()
            .collect()
    }

    fn converged(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let Some(leader_node) = self.nodes.get(&leader).and_then(|n| n.running.as_ref()) else {
            return false;
        };
        let commit = leader_node.core.metrics().commit_index;
        let max_acked = self.acked.values().map(|(i, _)| *i).max().unwrap_or(0);
        if commit < max_acked {
            return false;
        }
        self.members().iter().all(|id| {
            self.nodes
                .get(id)
                .and_then(|n| n.running.as_ref())
                .is_some_and(|r| r.core.applied_index() == commit && r.unsynced.is_empty())
        })
    }

    fn status_line(&self) -> String {
        let mut line = String::new();
        for node in self.nodes.values() {
            match &node.running {
                Some(r) => {
                    let m = r.core.metrics();
                    let _ = write!(
                        line,
                        "[n{} term {} leader {} commit {} applied {} last {} voters {:?} learners {:?}] ",
                        node.id,
                        m.term,
                        m.leader_id,
                        m.commit_index,
                        m.applied_index,
                        m.last_index,
                        r.core.conf_state().voters,
                        r.core.conf_state().learners
                    );
                }
                None => {
                    let _ = write!(line, "[n{} down] ", node.id);
                }
            }
        }
        line
    }

    fn final_checks(&mut self) {
        let members = self.members();
        let mut reference: Option<(u64, Vec<u8>)> = None;
        for id in &members {
            let Some(running) = self.nodes.get(id).and_then(|n| n.running.as_ref()) else {
                self.failures.push(format!("member {id} is not running"));
                continue;
            };
            let sm = running.core.state_machine();
            for (command, (index, output)) in &self.acked {
                let expected = match output {
                    SimOutput::Applied => Some(*index),
                    SimOutput::Duplicate { first_index } => Some(*first_index),
                    SimOutput::Malformed => None,
                };
                if expected.is_none() || sm.first_index_of(*command) != expected {
                    self.failures.push(format!(
                        "node {id}: acknowledged command {command} ({output:?} at {index}) is at {:?}",
                        sm.first_index_of(*command)
                    ));
                    break;
                }
            }
            if let Some(command) = sm.command_ids().find(|c| !self.proposed.contains(c)) {
                self.failures.push(format!(
                    "node {id} applied command {command} never proposed"
                ));
            }
            if self.best_conf().map(|c| membership(&c))
                != Some(membership(running.core.conf_state()))
            {
                self.failures.push(format!(
                    "node {id} has configuration {:?}, the most advanced node {:?}",
                    running.core.conf_state(),
                    self.best_conf()
                ));
            }
            self.report.app_accounts = sm.app().accounts().count() as u64;
            let state = (sm.applied_index(), sm.snapshot());
            match &reference {
                None => reference = Some(state),
                Some(first) if *first != state => self.failures.push(format!(
                    "node {id} state differs (applied {} vs {})",
                    state.0, first.0
                )),
                Some(_) => {}
            }
        }
        for node in self.nodes.values() {
            if let Some(r) = &node.running {
                self.report.absorb(node.id, r.core.metrics());
            }
        }
        self.report.final_applied_index = reference.map_or(0, |(i, _)| i);
        self.report.final_voters = self.best_conf().map(|c| c.voters).unwrap_or_default();
        self.report.final_voters.sort_unstable();
        if let Some(target) = &self.target_voters {
            let mut want = target.clone();
            want.sort_unstable();
            let mut got = self.report.final_voters.clone();
            got.sort_unstable();
            if want != got {
                let status = self.status_line();
                self.failures.push(format!(
                    "membership goal {want:?} not reached: {got:?}; {status}"
                ));
            }
        }
    }

    /// Scenario-specific faults, once per tick while faults are active.
    fn scenario_events(&mut self, tick: u64) {
        if let Some(leader) = self.leader() {
            self.report.leaders_seen.insert(leader);
        }
        match self.options.scenario {
            Scenario::Steady | Scenario::Grow1To3 | Scenario::RemoveVoter => {}
            Scenario::LeaderCrash => {
                if tick % 40 == 20 {
                    if let Some(leader) = self.leader() {
                        let down_for = self.rng.between(5, 30);
                        self.crash_node(leader, Some(down_for));
                    }
                }
            }
            Scenario::Partitions => self.random_partitions(tick, 15),
            Scenario::PowerLoss => {
                if tick % 70 == 35 {
                    self.power_loss();
                }
            }
            Scenario::SingleVoter => {
                if self.rng.chance_ppm(30_000) {
                    self.power_loss();
                }
            }
            Scenario::ReplaceWipedNode => {
                if tick == 60 {
                    // The disk dies: node 3 never comes back with its data.
                    self.crash_node(3, None);
                    if let Some(node) = self.nodes.get_mut(&3) {
                        node.disk = SimDisk::new();
                        node.durable_state = None;
                        node.retired = true;
                    }
                    self.target_voters = Some(vec![1, 2, 4]);
                }
            }
            Scenario::LeaderTransfer => {
                if tick % 25 == 0 {
                    if let Some(leader) = self.leader() {
                        let others: Vec<u64> =
                            [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
                        let to = others[self.rng.below(others.len() as u64) as usize];
                        if let Some(r) = self.running_mut(leader) {
                            r.core.transfer_leader(to);
                        }
                    }
                }
            }
            Scenario::Chaos => {
                self.random_partitions(tick, 25);
                if self.rng.chance_ppm(20_000) {
                    let ids = self.running_ids();
                    if !ids.is_empty() {
                        let victim = ids[self.rng.below(ids.len() as u64) as usize];
                        let down_for = self.rng.between(3, 40);
                        self.crash_node(victim, Some(down_for));
                    }
                }
                if self.rng.chance_ppm(3_000) {
                    self.power_loss();
                }
            }
        }
    }

    fn power_loss(&mut self) {
        self.report.power_losses += 1;
        let ids = self.running_ids();
        for id in ids {
            let down_for = self.rng.between(2, 20);
            self.crash_node(id, Some(down_for));
        }
    }

    /// Every `period` ticks: heal, or isolate a node, or cut one direction.
    fn random_partitions(&mut self, tick: u64, period: u64) {
        if tick % period != 0 {
            return;
        }
        self.blocked.clear();
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        match self.rng.below(4) {
            0 => {}
            1 => {
                let isolated = ids[self.rng.below(ids.len() as u64) as usize];
                for other in &ids {
                    if *other != isolated {
                        self.blocked.insert((isolated, *other));
                        self.blocked.insert((*other, isolated));
                    }
                }
            }
            2 => {
                let from = ids[self.rng.below(ids.len() as u64) as usize];
                let to = ids[self.rng.below(ids.len() as u64) as usize];
                if from != to {
                    self.blocked.insert((from, to));
                }
            }
            _ => {
                // The leader can send but hears nobody (one-way, all links).
                if let Some(leader) = self.leader() {
                    for other in &ids {
                        if *other != leader {
                            self.blocked.insert((*other, leader));
                        }
                    }
                }
            }
        }
    }

    /// Membership changes, retried every few ticks until they hold.
    fn operator(&mut self, tick: u64) {
        if tick % 5 != 0 {
            return;
        }
        match self.options.scenario {
            Scenario::Grow1To3 if tick >= 30 => {
                let voters = if tick >= 120 {
                    vec![1, 2, 3]
                } else {
                    vec![1, 2]
                };
                self.target_voters = Some(voters);
            }
            Scenario::RemoveVoter if tick >= 80 => {
                self.target_voters = Some(vec![1, 2]);
            }
            _ => {}
        }
        let Some(target) = self.target_voters.clone() else {
            return;
        };
        let Some(leader) = self.leader() else {
            return;
        };
        let Some(conf) = self
            .running_mut(leader)
            .map(|r| r.core.conf_state().clone())
        else {
            return;
        };
        // Remove first (never grow past what the target tolerates), one change
        // at a time; raft refuses a second change while one is pending.
        if let Some(extra) = conf
            .voters
            .iter()
            .chain(conf.learners.iter())
            .copied()
            .find(|id| !target.contains(id))
        {
            if extra == leader {
                let next = target.first().copied().unwrap_or(1);
                if let Some(r) = self.running_mut(leader) {
                    r.core.transfer_leader(next);
                }
                return;
            }
            if let Some(r) = self.running_mut(leader) {
                let _ = r.core.remove_node(extra);
            }
            return;
        }
        // Shut down nodes that left the configuration for good.
        let leavers: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.running.is_some() && !target.contains(&n.id))
            .filter(|n| !conf.voters.contains(&n.id) && !conf.learners.contains(&n.id))
            .map(|n| n.id)
            .collect();
        for id in leavers {
            if let Some(node) = self.nodes.get_mut(&id) {
                if let Some(running) = node.running.take() {
                    self.report.absorb(id, running.core.metrics());
                }
                node.retired = true;
                node.restart_at = None;
            }
        }
        if let Some(missing) = target.iter().copied().find(|id| !conf.voters.contains(id)) {
            let needs_start = self
                .nodes
                .get(&missing)
                .is_some_and(|n| n.running.is_none() && n.incarnations == 0);
            if needs_start {
                self.start_node(missing);
            }
            if let Some(r) = self.running_mut(leader) {
                let _ = r.core.add_voter_via_learner(missing);
            }
        }
    }
}

/// Voters and learners as sorted lists: raft keeps them as sets.
fn membership(conf: &ConfState) -> (Vec<u64>, Vec<u64>) {
    let mut voters = conf.voters.clone();
    voters.sort_unstable();
    let mut learners = conf.learners.clone();
    learners.sort_unstable();
    (voters, learners)
}

/// Runs one seeded simulation.
pub fn run(options: SimOptions) -> Result<SimReport, String> {
    Sim::new(options).run()
}

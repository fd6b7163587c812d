//! `SimDisk`: an in-memory `LogDisk` for the deterministic simulator, with a
//! power cut that loses exactly what a real disk may lose.
//!
//! Owns: the simulated files and their durable/volatile split. Must not touch:
//! real files, clocks or global randomness (a power cut is driven by the seed it
//! is given, so a failing simulation reproduces).
//!
//! Model: each file has durable bytes and volatile (appended, unsynced) bytes;
//! `sync` moves volatile to durable. File names created or removed since the
//! last `sync_dir` are volatile too. A power cut drops everything volatile,
//! except that the file written last may keep a torn prefix of its volatile
//! bytes, optionally followed by garbage, as a disk that wrote part of a
//! request before losing power would.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::LogDisk;

#[derive(Debug, Default, Clone)]
struct SimFile {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    /// False until a `sync_dir` after its creation: the name may vanish.
    name_durable: bool,
}

#[derive(Debug, Default)]
struct SimState {
    files: BTreeMap<String, SimFile>,
    /// Files removed since the last `sync_dir`, with their durable bytes: a
    /// power cut brings them back.
    removed_volatile: BTreeMap<String, Vec<u8>>,
    last_written: Option<String>,
    fail_io: bool,
    /// Mutating operations left before every operation starts failing.
    ops_until_failure: Option<u64>,
    file_syncs: u64,
    dir_syncs: u64,
    power_cuts: u64,
}

/// An in-memory disk shared by all its clones: the simulator keeps one clone
/// while a node's log owns another, so the disk outlives a node "restart".
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

/// What a power cut did to the file written last, for simulator logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerCutEffect {
    /// No file had unsynced bytes.
    Clean,
    /// Every unsynced byte was lost.
    DroppedUnsynced,
    /// `kept_bytes` of the last file's unsynced bytes survived, then
    /// `garbage_bytes` of junk.
    Torn {
        file: String,
        kept_bytes: usize,
        garbage_bytes: usize,
    },
}

/// A small, fixed PRNG (splitmix64) so that a seed means the same cut in every
/// build, independent of any crate's generator.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next() % bound
        }
    }
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panicking test thread must not turn every later disk call into a
        // second panic; the state stays consistent because every mutation is
        // complete before the guard drops.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Simulates losing power: drops every unsynced byte and unsynced name
    /// change, and ends failures injected by `set_fail_io`/`fail_after_ops`; with a choice drawn from `seed`, the file written last keeps a
    /// torn prefix of its unsynced bytes (possibly followed by garbage).
    ///
    /// A log open on this disk must be dropped and reopened afterwards, as a
    /// node restarting after the cut would.
    pub fn power_cut(&self, seed: u64) -> PowerCutEffect {
        let mut rng = SplitMix::new(seed);
        let mut state = self.lock();
        state.power_cuts += 1;
        // The machine comes back up: injected failures end with the outage.
        state.fail_io = false;
        state.ops_until_failure = None;
        let last_written = state.last_written.take();
        let mut effect = PowerCutEffect::Clean;
        let mut torn: Option<(String, Vec<u8>)> = None;
        for (name, file) in state.files.iter_mut() {
            if file.volatile.is_empty() {
                continue;
            }
            effect = PowerCutEffect::DroppedUnsynced;
            let volatile = std::mem::take(&mut file.volatile);
            if last_written.as_deref() == Some(name.as_str()) {
                torn = Some((name.clone(), volatile));
            }
        }
        if let Some((name, volatile)) = torn {
            match rng.below(3) {
                0 => {}
                choice => {
                    let kept_bytes = rng.below(volatile.len() as u64 + 1) as usize;
                    let garbage_bytes = if choice == 2 {
                        rng.below(64) as usize + 1
                    } else {
                        0
                    };
                    if let Some(file) = state.files.get_mut(&name) {
                        file.durable
                            .extend_from_slice(volatile.get(..kept_bytes).unwrap_or(&[]));
                        for _ in 0..garbage_bytes {
                            file.durable.push(rng.next() as u8);
                        }
                    }
                    effect = PowerCutEffect::Torn {
                        file: name,
                        kept_bytes,
                        garbage_bytes,
                    };
                }
            }
        }
        state.files.retain(|_, file| file.name_durable);
        let restored = std::mem::take(&mut state.removed_volatile);
        for (name, durable) in restored {
            state.files.insert(
                name,
                SimFile {
                    durable,
                    volatile: Vec::new(),
                    name_durable: true,
                },
            );
        }
        effect
    }

    /// Makes every later operation fail with an I/O error (or succeed again),
    /// to test how the log handles a failing disk.
    pub fn set_fail_io(&self, fail: bool) {
        self.lock().fail_io = fail;
    }

    /// Lets `ops` more mutating operations (create, append, sync, truncate,
    /// remove, directory sync) succeed, then fails every operation, as a
    /// machine that lost power at that point would; follow with `power_cut`.
    /// `None` lifts the limit (but not a failure already triggered).
    pub fn fail_after_ops(&self, ops: Option<u64>) {
        self.lock().ops_until_failure = ops;
    }

    /// Names and current lengths (durable + unsynced) of all files.
    pub fn files(&self) -> Vec<(String, usize)> {
        self.lock()
            .files
            .iter()
            .map(|(name, file)| (name.clone(), file.durable.len() + file.volatile.len()))
            .collect()
    }

    /// The durable bytes of a file, if it exists.
    pub fn durable_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().files.get(name).map(|file| file.durable.clone())
    }

    /// Replaces a file with `bytes`, all durable (test set-up: torn tails,
    /// fixtures from older versions).
    pub fn put_durable(&self, name: &str, bytes: &[u8]) {
        self.lock().files.insert(
            name.to_string(),
            SimFile {
                durable: bytes.to_vec(),
                volatile: Vec::new(),
                name_durable: true,
            },
        );
    }

    /// XORs one durable byte of a file with `mask` (bit rot); false if the file
    /// or offset does not exist.
    pub fn corrupt_byte(&self, name: &str, offset: usize, mask: u8) -> bool {
        let mut state = self.lock();
        match state
            .files
            .get_mut(name)
            .and_then(|f| f.durable.get_mut(offset))
        {
            Some(byte) => {
                *byte ^= mask;
                true
            }
            None => false,
        }
    }

    /// File syncs, directory syncs and power cuts so far.
    pub fn counters(&self) -> (u64, u64, u64) {
        let state = self.lock();
        (state.file_syncs, state.dir_syncs, state.power_cuts)
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

/// Counts one mutating operation against `fail_after_ops`.
fn check_mutation(state: &mut SimState) -> io::Result<()> {
    check_io(state)?;
    match state.ops_until_failure {
        Some(0) => {
            state.fail_io = true;
            check_io(state)
        }
        Some(left) => {
            state.ops_until_failure = Some(left - 1);
            Ok(())
        }
        None => Ok(()),
    }
}

fn check_io(state: &SimState) -> io::Result<()> {
    if state.fail_io {
        Err(io::Error::other("simulated I/O failure"))
    } else {
        Ok(())
    }
}

impl LogDisk for SimDisk {
    fn list(&mut self) -> io::Result<Vec<String>> {
        let state = self.lock();
        check_io(&state)?;
        Ok(state.files.keys().cloned().collect())
    }

    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        let state = self.lock();
        check_io(&state)?;
        let file = state.files.get(name).ok_or_else(|| not_found(name))?;
        let mut bytes = file.durable.clone();
        bytes.extend_from_slice(&file.volatile);
        Ok(bytes)
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        check_mutation(&mut state)?;
        if state.files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("file {name} exists"),
            ));
        }
        state.files.insert(name.to_string(), SimFile::default());
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        check_mutation(&mut state)?;
        let file = state.files.get_mut(name).ok_or_else(|| not_found(name))?;
        file.volatile.extend_from_slice(bytes);
        state.last_written = Some(name.to_string());
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        check_mutation(&mut state)?;
        let file = state.files.get_mut(name).ok_or_else(|| not_found(name))?;
        let volatile = std::mem::take(&mut file.volatile);
        file.durable.extend_from_slice(&volatile);
        state.file_syncs += 1;
        Ok(())
    }

    fn truncate(&mut self, name: &str, len_bytes: u64) -> io::Result<()> {
        let mut state = self.lock();
        check_mutation(&mut state)?;
        let file = state.files.get_mut(name).ok_or_else(|| not_found(name))?;
        let volatile = std::mem::take(&mut file.volatile);
        file.durable.extend_from_slice(&volatile);
        let len = usize::try_from(len_bytes).unwrap_or(usize::MAX);
        file.durable.truncate(len);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        check_mutation(&mut state)?;
        let file = state.files.remove(name).ok_or_else(|| not_found(name))?;
        if file.name_durable {
            state
                .removed_volatile
                .insert(name.to_string(), file.durable);
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut state = self.lock();
        check_mutation(&mut state)?;
        for file in state.files.values_mut() {
            file.name_durable = true;
        }
        state.removed_volatile.clear();
        state.dir_syncs += 1;
        Ok(())
    }
}

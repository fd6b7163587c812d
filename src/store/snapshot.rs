//! Durable state snapshots: the only persistence of the applied state.
//!
//! Owns: the snapshot file format and `PersistentState`, which the raft driver
//! calls to save a snapshot (state bytes + the raft index, term and conf state
//! they correspond to) and to load the newest intact one at start-up. Must not
//! touch: the raft log (the driver compacts it only after `save_snapshot`
//! returned, i.e. after a real fsync) or the state's contents (opaque bytes).
//!
//! Atomicity: the applied index, term and conf state travel in the same file,
//! under the same checksum, as the state they describe. A file is written to a
//! temporary name, fsynced, renamed into place, and the directory is fsynced;
//! only then does `save_snapshot` return. On load, files that fail the checksum
//! or do not parse are skipped, so a torn newest snapshot falls back to the
//! previous one: a save keeps the snapshot it wrote plus the newest one known
//! intact (written or loaded by this process), or the newest `KEEP_SNAPSHOTS`
//! when none is known yet.
//!
//! File layout (little endian):
//! `"TERNSNAP" | version u8 | index u64 | term u64 | conf_len u32 | state_len u64
//!  | conf bytes | state bytes | crc32c u32 of everything before`.

use crate::store::StoreError;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const MAGIC: &[u8; 8] = b"TERNSNAP";
const FORMAT_VERSION: u8 = 1;
const HEADER_BYTES: usize = 8 + 1 + 8 + 8 + 4 + 8;
const TRAILER_BYTES: usize = 4;
/// Snapshots kept on disk: the newest plus one to fall back to.
pub const KEEP_SNAPSHOTS: usize = 2;
const NAME_PREFIX: &str = "snap-";
const NAME_SUFFIX: &str = ".bin";

/// Where snapshot files live: real files, or memory for the simulator.
pub trait SnapshotDisk: Send {
    /// Stores `bytes` under `name` so that it survives a power cut once this
    /// returns, atomically replacing any file of that name.
    fn write_durable(&mut self, name: &str, bytes: &[u8]) -> Result<(), StoreError>;
    fn read(&self, name: &str) -> Result<Vec<u8>, StoreError>;
    fn list(&self) -> Result<Vec<String>, StoreError>;
    fn remove(&mut self, name: &str) -> Result<(), StoreError>;
}

/// Snapshot files in a directory, with fsync + rename + directory fsync.
pub struct FsSnapshotDisk {
    dir: PathBuf,
}

impl FsSnapshotDisk {
    pub fn open(dir: &Path) -> Result<FsSnapshotDisk, StoreError> {
        std::fs::create_dir_all(dir)?;
        Ok(FsSnapshotDisk {
            dir: dir.to_path_buf(),
        })
    }
}

impl SnapshotDisk for FsSnapshotDisk {
    fn write_durable(&mut self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let temporary = self.dir.join(format!("{name}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, self.dir.join(name))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::new();
        File::open(self.dir.join(name))?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn remove(&mut self, name: &str) -> Result<(), StoreError> {
        std::fs::remove_file(self.dir.join(name))?;
        Ok(())
    }
}

/// In-memory snapshot files for the simulator (clonable handle). Every
/// completed `write_durable` is durable; `tear_next_write` makes the next one
/// leave a truncated file and fail, like a crash mid-write on a file system
/// that does not order data before the rename.
#[derive(Debug, Clone, Default)]
pub struct MemSnapshotDisk {
    inner: Arc<Mutex<MemDiskInner>>,
}

#[derive(Debug, Default)]
struct MemDiskInner {
    files: BTreeMap<String, Vec<u8>>,
    tear_at_bytes: Option<usize>,
}

impl MemSnapshotDisk {
    pub fn new() -> MemSnapshotDisk {
        MemSnapshotDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemDiskInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn tear_next_write(&self, keep_bytes: usize) {
        self.lock().tear_at_bytes = Some(keep_bytes);
    }
}

impl SnapshotDisk for MemSnapshotDisk {
    fn write_durable(&mut self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(keep) = inner.tear_at_bytes.take() {
            let torn = bytes.get(..keep.min(bytes.len())).unwrap_or_default();
            inner.files.insert(name.to_string(), torn.to_vec());
            return Err(StoreError::Io(std::io::Error::other("simulated crash")));
        }
        inner.files.insert(name.to_string(), bytes.to_vec());
        Ok(())
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        self.lock()
            .files
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, name)))
    }

    fn list(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().files.keys().cloned().collect())
    }

    fn remove(&mut self, name: &str) -> Result<(), StoreError> {
        self.lock().files.remove(name);
        Ok(())
    }
}

/// A snapshot as loaded back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSnapshot {
    pub index: u64,
    pub term: u64,
    /// The raft `ConfState`, serialised by the caller.
    pub conf_state: Vec<u8>,
    /// `StateMachine::snapshot()` bytes.
    pub state: Vec<u8>,
}

/// Saves and loads durable state snapshots on a `SnapshotDisk`.
pub struct PersistentState<D: SnapshotDisk> {
    disk: D,
    /// Index of the newest snapshot this process wrote or loaded intact.
    known_good: Cell<Option<u64>>,
}

fn file_name(index: u64) -> String {
    format!("{NAME_PREFIX}{index:020}{NAME_SUFFIX}")
}

fn index_of(name: &str) -> Option<u64> {
    name.strip_prefix(NAME_PREFIX)?
        .strip_suffix(NAME_SUFFIX)?
        .parse()
        .ok()
}

fn encode(index: u64, term: u64, conf_state: &[u8], state: &[u8]) -> Result<Vec<u8>, StoreError> {
    let conf_len = u32::try_from(conf_state.len())
        .map_err(|_| StoreError::Corrupt("conf state larger than 4 GiB".into()))?;
    let mut out = Vec::with_capacity(HEADER_BYTES + conf_state.len() + state.len() + TRAILER_BYTES);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(&conf_len.to_le_bytes());
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    out.extend_from_slice(conf_state);
    out.extend_from_slice(state);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

fn decode(bytes: &[u8]) -> Result<LoadedSnapshot, String> {
    if bytes.len() < HEADER_BYTES + TRAILER_BYTES {
        return Err(format!("{} bytes is shorter than a header", bytes.len()));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_BYTES);
    let stored_crc = u32::from_le_bytes(trailer.try_into().map_err(|_| "trailer")?);
    if crc32c::crc32c(body) != stored_crc {
        return Err("checksum mismatch".into());
    }
    if body.get(..8) != Some(MAGIC.as_slice()) {
        return Err("bad magic".into());
    }
    if body.get(8) != Some(&FORMAT_VERSION) {
        return Err(format!("unknown snapshot format {:?}", body.get(8)));
    }
    let index = le_u64(body, 9).ok_or("short header")?;
    let term = le_u64(body, 17).ok_or("short header")?;
    let conf_len = body
        .get(25..29)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or("short header")? as usize;
    let state_len = usize::try_from(le_u64(body, 29).ok_or("short header")?)
        .map_err(|_| "state length overflows")?;
    let conf_end = HEADER_BYTES
        .checked_add(conf_len)
        .ok_or("conf length overflows")?;
    let state_end = conf_end
        .checked_add(state_len)
        .ok_or("state length overflows")?;
    if state_end != body.len() {
        return Err("lengths disagree with the file size".into());
    }
    Ok(LoadedSnapshot {
        index,
        term,
        conf_state: body.get(HEADER_BYTES..conf_end).ok_or("conf")?.to_vec(),
        state: body.get(conf_end..state_end).ok_or("state")?.to_vec(),
    })
}

impl<D: SnapshotDisk> PersistentState<D> {
    pub fn new(disk: D) -> PersistentState<D> {
        PersistentState {
            disk,
            known_good: Cell::new(None),
        }
    }

    /// Writes the snapshot durably (returns only after fsync of the file and
    /// its directory), then removes all other snapshots but one fallback (see
    /// the module header). Compacting the raft log up to `index` is safe once
    /// this returns `Ok`.
    pub fn save_snapshot(
        &mut self,
        index: u64,
        term: u64,
        conf_state: &[u8],
        state: &[u8],
    ) -> Result<(), StoreError> {
        let bytes = encode(index, term, conf_state, state)?;
        self.disk.write_durable(&file_name(index), &bytes)?;
        let fallback = self.known_good.replace(Some(index));
        let mut indexes = self.snapshot_indexes()?;
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        let doomed: Vec<u64> = match fallback {
            // Keep the fallback even if newer (damaged) files exist.
            Some(good) => indexes
                .into_iter()
                .filter(|i| *i != index && *i != good)
                .collect(),
            None => indexes.into_iter().skip(KEEP_SNAPSHOTS).collect(),
        };
        for old in doomed {
            self.disk.remove(&file_name(old))?;
        }
        // Temporaries left by a crash mid-write are as large as a snapshot.
        let stray: Vec<String> = self
            .disk
            .list()?
            .into_iter()
            .filter(|n| n.starts_with(NAME_PREFIX) && n.ends_with(".tmp"))
            .collect();
        for name in stray {
            self.disk.remove(&name)?;
        }
        Ok(())
    }

    /// The newest snapshot that is intact, or `None` if there is none.
    /// Damaged files are skipped (and reported through `tracing`).
    pub fn load_latest(&self) -> Result<Option<LoadedSnapshot>, StoreError> {
        let mut indexes = self.snapshot_indexes()?;
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        for index in indexes {
            let name = file_name(index);
            let bytes = self.disk.read(&name)?;
            match decode(&bytes) {
                Ok(snapshot) if snapshot.index == index => {
                    self.known_good.set(Some(index));
                    return Ok(Some(snapshot));
                }
                Ok(snapshot) => tracing::warn!(
                    file = %name,
                    inner_index = snapshot.index,
                    "snapshot file name and contents disagree; skipped"
                ),
                Err(reason) => {
                    tracing::warn!(file = %name, %reason, "damaged snapshot skipped")
                }
            }
        }
        Ok(None)
    }

    fn snapshot_indexes(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .disk
            .list()?
            .iter()
            .filter_map(|n| index_of(n))
            .collect())
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::{Account, Command};
    use crate::store::state::AppState;
    use crate::store::StateMachine;

    fn state_at(index: u64, name: &str) -> AppState {
        let mut state = AppState::new();
        let command = Command::UpsertAccount(Account {
            name: name.into(),
            password_hash: String::new(),
            max_binds: 0,
            throughput_per_s: 0,
            allowed_ips: vec![],
            allowed_senders: vec![],
            retention_s: 0,
            enabled: true,
            webhook_url: None,
            api_key_hash: None,
            webhook_secret: None,
            window: 0,
        })
        .encode();
        state.apply(index, &[command.as_slice()]);
        state
    }

    fn save(persistent: &mut PersistentState<impl SnapshotDisk>, state: &AppState) {
        persistent
            .save_snapshot(state.applied_index(), 3, b"conf", &state.snapshot())
            .unwrap();
    }

    fn restored(persistent: &PersistentState<impl SnapshotDisk>) -> AppState {
        let loaded = persistent.load_latest().unwrap().expect("a snapshot");
        assert_eq!(
            (loaded.term, loaded.conf_state.as_slice()),
            (3, &b"conf"[..])
        );
        let mut state = AppState::new();
        state.restore(loaded.index, &loaded.state).unwrap();
        state
    }

    #[test]
    fn format_round_trip_and_rejects_damage() {
        let bytes = encode(5, 2, b"c", b"state").unwrap();
        let loaded = decode(&bytes).unwrap();
        assert_eq!(
            loaded,
            LoadedSnapshot {
                index: 5,
                term: 2,
                conf_state: b"c".to_vec(),
                state: b"state".to_vec()
            }
        );
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x40;
            assert!(decode(&flipped).is_err(), "flip at {position} accepted");
        }
    }

    #[test]
    fn torn_write_falls_back_to_the_previous_snapshot() {
        let disk = MemSnapshotDisk::new();
        let mut persistent = PersistentState::new(disk.clone());
        assert_eq!(persistent.load_latest().unwrap(), None);
        let first = state_at(10, "first");
        save(&mut persistent, &first);
        disk.tear_next_write(40);
        let second = state_at(20, "second");
        assert!(persistent
            .save_snapshot(20, 3, b"conf", &second.snapshot())
            .is_err());
        let back = restored(&persistent);
        assert_eq!(back.applied_index(), 10);
        assert_eq!(back.snapshot(), first.snapshot());
    }

    #[test]
    fn files_survive_reopen_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut persistent = PersistentState::new(FsSnapshotDisk::open(dir.path()).unwrap());
        for index in [5u64, 6, 7] {
            save(&mut persistent, &state_at(index, "a"));
        }
        let mut names = persistent.disk().list().unwrap();
        names.sort();
        assert_eq!(names, vec![file_name(6), file_name(7)]);
        // A crash mid-write leaves a temporary file and perhaps a torn newer
        // one; the loader takes the newest intact snapshot.
        std::fs::write(dir.path().join(format!("{}.tmp", file_name(9))), b"half").unwrap();
        let good = std::fs::read(dir.path().join(file_name(7))).unwrap();
        std::fs::write(dir.path().join(file_name(8)), &good[..good.len() / 2]).unwrap();
        let mut reopened = PersistentState::new(FsSnapshotDisk::open(dir.path()).unwrap());
        assert_eq!(restored(&reopened).applied_index(), 7);
        // A file renamed to the wrong index is not trusted either.
        std::fs::write(dir.path().join(file_name(8)), &good).unwrap();
        assert_eq!(restored(&reopened).applied_index(), 7);
        // The next save prunes the damaged file and the stray temporary.
        save(&mut reopened, &state_at(10, "a"));
        let mut names = reopened.disk().list().unwrap();
        names.sort();
        assert_eq!(names, vec![file_name(7), file_name(10)]);
        assert_eq!(restored(&reopened).applied_index(), 10);
    }
}

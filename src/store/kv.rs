//! A narrow key-value store interface with a sled implementation and an
//! in-memory one, plus the archive of finished messages built on it.
//!
//! Owns: `KvStore` (what the state layer needs from an embedded store: point
//! reads, ordered scans, atomic multi-tree batches, a real durability point),
//! `SledStore`, `MemStore`, `MessageArchive`. Must not touch: the raft log
//! (the wal owns it) or replicated state decisions (apply owns them).
//!
//! Durability: sled 0.34's `flush()` ends in `sync_file_range`, which does not
//! flush the disk's write cache. `SledStore::sync` therefore flushes and then
//! fsyncs every file of the database and the directories holding them; only
//! after that does a write count as durable.
//!
//! Trees are one sled keyspace with a one-byte prefix per logical tree, so a
//! `KvBatch` spanning trees is a single atomic `sled::Batch`.

use crate::store::command::{Address, SegmentInfo};
use crate::store::id::MessageId;
use crate::store::state::{Message, MessageState};
use crate::store::StoreError;
use bincode::Options;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Logical trees of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// Small facts such as the applied index.
    Meta,
    Messages,
    Upstream,
    Pending,
    /// Finished messages removed from the hot state by retention, by id.
    Archive,
    /// The same messages by (archived at ms, id), both big endian: what
    /// pruning walks, oldest first.
    ArchiveByAge,
}

impl Tree {
    fn prefix(self) -> u8 {
        match self {
            Tree::Meta => b'm',
            Tree::Messages => b'M',
            Tree::Upstream => b'U',
            Tree::Pending => b'P',
            Tree::Archive => b'A',
            Tree::ArchiveByAge => b'a',
        }
    }

    fn key(self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(key.len() + 1);
        full.push(self.prefix());
        full.extend_from_slice(key);
        full
    }
}

/// A key (without its tree prefix) and its value.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Writes applied together or not at all.
#[derive(Debug, Default, Clone)]
pub struct KvBatch {
    /// Prefixed key → new value (`None` deletes). Later writes to a key win.
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl KvBatch {
    pub fn new() -> KvBatch {
        KvBatch::default()
    }

    pub fn put(&mut self, tree: Tree, key: &[u8], value: Vec<u8>) {
        self.writes.push((tree.key(key), Some(value)));
    }

    pub fn delete(&mut self, tree: Tree, key: &[u8]) {
        self.writes.push((tree.key(key), None));
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// What the state layer needs from an embedded store.
pub trait KvStore: Send {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Applies the batch atomically (visible and, after `sync`, durable as a whole).
    fn write(&self, batch: KvBatch) -> Result<(), StoreError>;

    /// Up to `limit` entries of `tree` with keys >= `from`, in key order,
    /// keys without the tree prefix.
    fn scan(&self, tree: Tree, from: &[u8], limit: usize) -> Result<Vec<KvPair>, StoreError>;

    /// Returns once every write so far survives a power cut.
    fn sync(&self) -> Result<(), StoreError>;
}

/// sled's default page cache size.
const DEFAULT_SLED_CACHE_BYTES: u64 = 1 << 30;

/// sled behind `KvStore`.
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
}

fn sled_error(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) => StoreError::Io(io),
        sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
        other => StoreError::Corrupt(format!("sled: {other}")),
    }
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        Self::open_with_cache(dir, DEFAULT_SLED_CACHE_BYTES)
    }

    /// Opens with sled's page cache capped at `cache_bytes` (sled's own
    /// default is 1 GiB, which an archive nobody reads much should not take).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(sled_error)?;
        Ok(SledStore {
            db,
            dir: dir.to_path_buf(),
        })
    }
}

/// fsyncs every regular file under `dir` (recursively) and every directory.
fn fsync_tree(dir: &Path, depth_left: u8) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() && depth_left > 0 {
            fsync_tree(&entry.path(), depth_left - 1)?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl KvStore for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(tree.key(key))
            .map_err(sled_error)?
            .map(|v| v.to_vec()))
    }

    fn write(&self, batch: KvBatch) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.writes {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.db.apply_batch(sled_batch).map_err(sled_error)
    }

    fn scan(&self, tree: Tree, from: &[u8], limit: usize) -> Result<Vec<KvPair>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.range(tree.key(from)..).take(limit) {
            let (key, value) = item.map_err(sled_error)?;
            match key.split_first() {
                Some((&prefix, rest)) if prefix == tree.prefix() => {
                    out.push((rest.to_vec(), value.to_vec()));
                }
                _ => break,
            }
        }
        Ok(out)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(sled_error)?;
        // sled keeps its files at most two levels deep (blobs/, snap.*).
        fsync_tree(&self.dir, 2)
    }
}

#[derive(Debug, Default)]
struct MemInner {
    current: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// In-memory `KvStore` for the simulator: clonable handle; writes become
/// durable only at `sync`, and `power_cut` drops everything unsynced.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemInner> {
        // A panic while holding the lock leaves plain maps intact; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulated power loss: the visible state becomes the last synced one.
    pub fn power_cut(&self) {
        let mut inner = self.lock();
        inner.current = inner.durable.clone();
    }
}

impl KvStore for MemStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().current.get(&tree.key(key)).cloned())
    }

    fn write(&self, batch: KvBatch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for (key, value) in batch.writes {
            match value {
                Some(value) => inner.current.insert(key, value),
                None => inner.current.remove(&key),
            };
        }
        Ok(())
    }

    fn scan(&self, tree: Tree, from: &[u8], limit: usize) -> Result<Vec<KvPair>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .current
            .range(tree.key(from)..)
            .take_while(|(k, _)| k.first() == Some(&tree.prefix()))
            .take(limit)
            .map(|(k, v)| (k.get(1..).unwrap_or_default().to_vec(), v.clone()))
            .collect())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.durable = inner.current.clone();
        Ok(())
    }
}

fn record_codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

/// Version byte in front of every archived record.
const ARCHIVE_VERSION: u8 = 1;

/// The final record of a message as the archive keeps it: what a customer
/// or an operator asks about later (no payload: the archive answers "what
/// happened", it does not keep message content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedMessage {
    pub id: MessageId,
    pub account: String,
    pub source: Address,
    pub destination: Address,
    pub state: MessageState,
    pub received_at_ms: u64,
    pub done_at_ms: Option<u64>,
    /// The last submission to an operator, if any.
    pub connector: Option<String>,
    pub upstream_id: Option<String>,
    pub submitted_at_ms: Option<u64>,
    pub attempts: u32,
    /// The last upstream command_status of a failed submission.
    pub last_status: u32,
    /// The operator's error code from the final receipt.
    pub receipt_err: u16,
    pub registered_delivery: u8,
    pub data_coding: u8,
    pub esm_class: u8,
    pub segment: Option<SegmentInfo>,
    pub validity_until_ms: Option<u64>,
    /// The customer's own reference, echoed in lookups.
    pub client_ref: Option<String>,
}

impl ArchivedMessage {
    pub fn from_message(message: &Message) -> ArchivedMessage {
        let accept = &message.accept;
        let last = message.upstreams.last();
        ArchivedMessage {
            id: accept.id,
            account: accept.account.clone(),
            source: accept.source.clone(),
            destination: accept.destination.clone(),
            state: message.state,
            received_at_ms: accept.received_at_ms,
            done_at_ms: message.done_at_ms,
            connector: last.map(|u| u.connector.clone()),
            upstream_id: last.map(|u| u.upstream_id.clone()),
            submitted_at_ms: last.map(|u| u.submitted_at_ms),
            attempts: message.attempts,
            last_status: message.last_status,
            receipt_err: message.receipt_err,
            registered_delivery: accept.registered_delivery,
            data_coding: accept.data_coding,
            esm_class: accept.esm_class,
            segment: accept.segment,
            validity_until_ms: accept.validity_until_ms,
            client_ref: accept.client_ref.clone(),
        }
    }
}

fn age_key(archived_at_ms: u64, id: MessageId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&archived_at_ms.to_be_bytes());
    key[8..].copy_from_slice(&id.as_u128().to_be_bytes());
    key
}

/// Finished messages kept after the hot window removed them from the
/// replicated state. Node-local: each node archives what it applied; not
/// replicated, not synced on every write (a crash may lose the last writes:
/// the archive serves lookups, it is no part of the no-loss guarantee).
pub struct MessageArchive<K: KvStore> {
    kv: K,
}

impl<K: KvStore> MessageArchive<K> {
    pub fn new(kv: K) -> MessageArchive<K> {
        MessageArchive { kv }
    }

    /// Archives the records in one atomic batch, stamped `archived_at_ms`
    /// (the node's clock; pruning goes by it). A record archived again (a
    /// replica replaying its log) replaces the old one.
    pub fn archive(
        &self,
        records: &[ArchivedMessage],
        archived_at_ms: u64,
    ) -> Result<usize, StoreError> {
        let mut batch = KvBatch::new();
        for record in records {
            // Version, archived-at stamp, then the record.
            let mut value = Vec::with_capacity(96);
            value.push(ARCHIVE_VERSION);
            value.extend_from_slice(&archived_at_ms.to_be_bytes());
            record_codec()
                .serialize_into(&mut value, record)
                .map_err(|e| StoreError::Corrupt(format!("archive encode: {e}")))?;
            let id_key = record.id.as_u128().to_be_bytes();
            if let Some(previous) = self.kv.get(Tree::Archive, &id_key)? {
                if let Some(stamp) = previous.get(1..9) {
                    // The old age entry would otherwise prune the new record.
                    let mut old_key = stamp.to_vec();
                    old_key.extend_from_slice(&id_key);
                    batch.delete(Tree::ArchiveByAge, &old_key);
                }
            }
            batch.put(Tree::Archive, &id_key, value);
            batch.put(
                Tree::ArchiveByAge,
                &age_key(archived_at_ms, record.id),
                Vec::new(),
            );
        }
        let count = records.len();
        if count > 0 {
            self.kv.write(batch)?;
        }
        Ok(count)
    }

    /// The archived record of `id`, if this node still holds one.
    pub fn get(&self, id: MessageId) -> Result<Option<ArchivedMessage>, StoreError> {
        let Some(bytes) = self.kv.get(Tree::Archive, &id.as_u128().to_be_bytes())? else {
            return Ok(None);
        };
        // Version, archived-at stamp (8 bytes), then the record.
        match (bytes.first(), bytes.get(9..)) {
            (Some(&ARCHIVE_VERSION), Some(body)) => record_codec()
                .deserialize(body)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("archived message {id}: {e}"))),
            _ => Err(StoreError::Corrupt(format!(
                "archived message {id}: unknown version or truncated"
            ))),
        }
    }

    /// Deletes at most `max` records archived before `before_ms`, oldest
    /// first; returns how many went (fewer than `max` means none are left).
    pub fn prune(&self, before_ms: u64, max: usize) -> Result<usize, StoreError> {
        let oldest = self.kv.scan(Tree::ArchiveByAge, &[], max)?;
        let mut batch = KvBatch::new();
        let mut pruned = 0;
        for (key, _) in oldest {
            let (Some(stamp), Some(id_key)) = (key.get(..8), key.get(8..)) else {
                // Not a key this archive wrote; drop it rather than stall on it.
                batch.delete(Tree::ArchiveByAge, &key);
                continue;
            };
            let mut stamp_bytes = [0u8; 8];
            stamp_bytes.copy_from_slice(stamp);
            if u64::from_be_bytes(stamp_bytes) >= before_ms {
                break;
            }
            batch.delete(Tree::Archive, id_key);
            batch.delete(Tree::ArchiveByAge, &key);
            pruned += 1;
        }
        if !batch.is_empty() {
            self.kv.write(batch)?;
        }
        Ok(pruned)
    }

    pub fn store(&self) -> &K {
        &self.kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::tests::sample_accept;
    use crate::store::state::MessageState;

    fn exercise(kv: &dyn KvStore) {
        let mut batch = KvBatch::new();
        batch.put(Tree::Meta, b"applied", 7u64.to_le_bytes().to_vec());
        batch.put(Tree::Messages, b"a", b"1".to_vec());
        batch.put(Tree::Messages, b"b", b"2".to_vec());
        batch.put(Tree::Messages, b"c", b"3".to_vec());
        batch.put(Tree::Pending, b"a", b"x".to_vec());
        batch.delete(Tree::Messages, b"c");
        assert_eq!(batch.len(), 6);
        kv.write(batch).unwrap();
        assert_eq!(kv.get(Tree::Messages, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(Tree::Messages, b"c").unwrap(), None);
        assert_eq!(kv.get(Tree::Upstream, b"a").unwrap(), None);
        let scanned = kv.scan(Tree::Messages, b"", 10).unwrap();
        assert_eq!(
            scanned,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(kv.scan(Tree::Messages, b"b", 10).unwrap().len(), 1);
        assert_eq!(kv.scan(Tree::Messages, b"", 1).unwrap().len(), 1);
        kv.sync().unwrap();
    }

    #[test]
    fn memory_store_behaves_and_loses_unsynced_writes() {
        let kv = MemStore::new();
        exercise(&kv);
        let mut batch = KvBatch::new();
        batch.put(Tree::Messages, b"z", b"late".to_vec());
        kv.write(batch).unwrap();
        kv.clone().power_cut();
        assert_eq!(kv.get(Tree::Messages, b"z").unwrap(), None);
        assert_eq!(kv.get(Tree::Messages, b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn sled_store_behaves_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = SledStore::open(dir.path()).unwrap();
            exercise(&kv);
        }
        let kv = SledStore::open(dir.path()).unwrap();
        assert_eq!(kv.get(Tree::Messages, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.get(Tree::Pending, b"a").unwrap(), Some(b"x".to_vec()));
    }

    fn finished(counter: u64) -> Message {
        let mut accept = sample_accept();
        accept.id = MessageId::from_parts(1, 1, 0, counter).unwrap();
        Message {
            accept,
            owner: 2,
            state: MessageState::Delivered,
            attempts: 1,
            last_status: 0,
            retry_at_ms: None,
            upstreams: vec![crate::store::state::Upstream {
                connector: "op1".into(),
                upstream_id: format!("U{counter}"),
                submitted_at_ms: 4,
            }],
            done_at_ms: Some(5),
            receipt_err: 3,
            receipt_raw: None,
        }
    }

    #[test]
    fn archive_round_trip() {
        let archive = MessageArchive::new(MemStore::new());
        let record = ArchivedMessage::from_message(&finished(1));
        assert_eq!(record.connector.as_deref(), Some("op1"));
        assert_eq!(record.upstream_id.as_deref(), Some("U1"));
        assert_eq!((record.done_at_ms, record.receipt_err), (Some(5), 3));
        assert_eq!(
            archive.archive(std::slice::from_ref(&record), 100).unwrap(),
            1
        );
        assert_eq!(archive.get(record.id).unwrap(), Some(record.clone()));
        let other = MessageId::from_parts(9, 9, 9, 9).unwrap();
        assert_eq!(archive.get(other).unwrap(), None);
        for garbage in [vec![9, 9], vec![ARCHIVE_VERSION, 0, 0], vec![]] {
            let mut batch = KvBatch::new();
            batch.put(Tree::Archive, &other.as_u128().to_be_bytes(), garbage);
            archive.store().write(batch).unwrap();
            assert!(archive.get(other).is_err());
        }
    }

    #[test]
    fn prune_goes_oldest_first_in_bounded_batches() {
        let archive = MessageArchive::new(MemStore::new());
        let records: Vec<ArchivedMessage> = (1..=5)
            .map(|n| ArchivedMessage::from_message(&finished(n)))
            .collect();
        for (at_ms, record) in (10u64..).zip(&records) {
            archive
                .archive(std::slice::from_ref(record), at_ms)
                .unwrap();
        }
        // Archived again later (a replayed log): pruning goes by the new stamp.
        archive.archive(&records[..1], 100).unwrap();
        assert_eq!(archive.prune(13, 1).unwrap(), 1);
        assert!(archive.get(records[1].id).unwrap().is_none());
        assert_eq!(archive.prune(13, 10).unwrap(), 1);
        assert!(archive.get(records[2].id).unwrap().is_none());
        assert_eq!(archive.prune(13, 10).unwrap(), 0);
        assert!(archive.get(records[0].id).unwrap().is_some());
        assert!(archive.get(records[3].id).unwrap().is_some());
        assert_eq!(archive.prune(u64::MAX, 10).unwrap(), 3);
        assert!(archive
            .store()
            .scan(Tree::Archive, &[], 10)
            .unwrap()
            .is_empty());
        assert!(archive
            .store()
            .scan(Tree::ArchiveByAge, &[], 10)
            .unwrap()
            .is_empty());
    }
}

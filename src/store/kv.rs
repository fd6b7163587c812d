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

use crate::store::id::MessageId;
use crate::store::state::Message;
use crate::store::StoreError;
use bincode::Options;
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
    /// Finished messages removed from the hot state by retention.
    Archive,
}

impl Tree {
    fn prefix(self) -> u8 {
        match self {
            Tree::Meta => b'm',
            Tree::Messages => b'M',
            Tree::Upstream => b'U',
            Tree::Pending => b'P',
            Tree::Archive => b'A',
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
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
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

/// Finished messages kept after retention removed them from the hot state
/// (node-local: each node archives what it applied; not replicated state).
pub struct MessageArchive<K: KvStore> {
    kv: K,
}

impl<K: KvStore> MessageArchive<K> {
    pub fn new(kv: K) -> MessageArchive<K> {
        MessageArchive { kv }
    }

    /// Archives the messages in one atomic batch and makes it durable.
    pub fn archive<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a Message>,
    ) -> Result<usize, StoreError> {
        let mut batch = KvBatch::new();
        for message in messages {
            let mut value = vec![ARCHIVE_VERSION];
            record_codec()
                .serialize_into(&mut value, message)
                .map_err(|e| StoreError::Corrupt(format!("archive encode: {e}")))?;
            batch.put(Tree::Archive, &message.id().as_u128().to_be_bytes(), value);
        }
        let count = batch.len();
        if count > 0 {
            self.kv.write(batch)?;
            self.kv.sync()?;
        }
        Ok(count)
    }

    pub fn get(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        let Some(bytes) = self.kv.get(Tree::Archive, &id.as_u128().to_be_bytes())? else {
            return Ok(None);
        };
        match bytes.split_first() {
            Some((&ARCHIVE_VERSION, body)) => record_codec()
                .deserialize(body)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("archived message {id}: {e}"))),
            _ => Err(StoreError::Corrupt(format!(
                "archived message {id}: unknown version"
            ))),
        }
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

    #[test]
    fn archive_round_trip() {
        let archive = MessageArchive::new(MemStore::new());
        let message = Message {
            accept: sample_accept(),
            owner: 2,
            state: MessageState::Delivered,
            attempts: 1,
            last_status: 0,
            retry_at_ms: None,
            upstreams: vec![],
            done_at_ms: Some(5),
            receipt_err: 0,
            receipt_raw: None,
        };
        assert_eq!(archive.archive([&message]).unwrap(), 1);
        assert_eq!(archive.get(message.id()).unwrap(), Some(message.clone()));
        let other = MessageId::from_parts(9, 9, 9, 9).unwrap();
        assert_eq!(archive.get(other).unwrap(), None);
        let mut batch = KvBatch::new();
        batch.put(Tree::Archive, &other.as_u128().to_be_bytes(), vec![9, 9]);
        archive.store().write(batch).unwrap();
        assert!(archive.get(other).is_err());
    }
}

//! Where the raft log's bytes live: the `LogDisk` trait and its real-file
//! implementation `FsDisk`.
//!
//! Owns: the files of one log directory (segment files and the directory lock).
//! Must not touch: anything outside that directory, or the meaning of the bytes
//! (the log in `mod.rs` decides what to write, when to sync and what to delete).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The file operations the raft log needs, with the durability each one
/// promises spelled out so that a simulated disk can model exactly that.
///
/// Durability model: `append` reaches the disk only at the next `sync` of that
/// file; a created or removed file name is durable only after `sync_dir`.
pub trait LogDisk {
    /// Names of the files in the log directory, in any order.
    fn list(&mut self) -> io::Result<Vec<String>>;
    /// The whole current content of a file.
    fn read(&mut self, name: &str) -> io::Result<Vec<u8>>;
    /// Creates an empty file; fails if it exists.
    fn create(&mut self, name: &str) -> io::Result<()>;
    /// Appends bytes at the end of a file (not yet durable).
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Makes every byte appended to the file durable (fdatasync).
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Cuts a file to `len_bytes` and makes the new length durable.
    fn truncate(&mut self, name: &str, len_bytes: u64) -> io::Result<()>;
    /// Removes a file (durable after `sync_dir`).
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Makes the directory's set of names durable (fsync of the directory).
    fn sync_dir(&mut self) -> io::Result<()>;
}

/// The log on real files in one directory, written with plain `write` and made
/// durable with `fdatasync`.
///
/// Holds an exclusive `flock` on `LOCK` in the directory for its lifetime, so a
/// second process (or a second log in this one) cannot interleave writes.
pub struct FsDisk {
    dir: PathBuf,
    /// The file appends go to, kept open because nearly every append targets
    /// the active segment.
    open_file: Option<(String, File)>,
    _lock: File,
}

impl FsDisk {
    /// Opens (creating if needed) a log directory and locks it.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<FsDisk> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            // The new directory's own name must survive a power cut, or the
            // segments synced inside it are unreachable.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        // SAFETY: flock on a descriptor we own; it has no memory effects.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!("raft log directory {} is in use: {err}", dir.display()),
            ));
        }
        Ok(FsDisk {
            dir,
            open_file: None,
            _lock: lock,
        })
    }

    /// The directory this disk writes in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_for_append(&mut self, name: &str) -> io::Result<&mut File> {
        let reopen = !matches!(&self.open_file, Some((open, _)) if open == name);
        if reopen {
            let file = OpenOptions::new().append(true).open(self.dir.join(name))?;
            self.open_file = Some((name.to_string(), file));
        }
        match &mut self.open_file {
            Some((_, file)) => Ok(file),
            None => Err(io::Error::other("append file vanished")),
        }
    }
}

impl LogDisk for FsDisk {
    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for dirent in fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            if dirent.file_type()?.is_file() {
                if let Ok(name) = dirent.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(name))
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        self.open_file = Some((name.to_string(), file));
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.file_for_append(name)?.write_all(bytes)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let started = std::time::Instant::now();
        let synced = self.file_for_append(name)?.sync_data();
        crate::metrics::fsync_done(started.elapsed());
        synced
    }

    fn truncate(&mut self, name: &str, len_bytes: u64) -> io::Result<()> {
        if matches!(&self.open_file, Some((open, _)) if open == name) {
            self.open_file = None;
        }
        let file = OpenOptions::new().write(true).open(self.dir.join(name))?;
        file.set_len(len_bytes)?;
        file.sync_all()
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        if matches!(&self.open_file, Some((open, _)) if open == name) {
            self.open_file = None;
        }
        fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

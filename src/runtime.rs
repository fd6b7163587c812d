//! The thin layer over glommio (pinned at 0.9.0): executor construction and the
//! start-up checks it needs. Owns: everything that names glommio directly outside
//! of I/O primitives. Must not touch: protocol or storage logic.

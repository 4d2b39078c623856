//! Job logs: writing a stream to its file under a cap, and reading it back by bytes or lines.
//!
//! A stream is stored as raw bytes in `<logsDir>/<jobId>.<stream>.log`, at most the configured
//! cap; output past the cap is still read from the pipe (so the script never blocks on a full
//! pipe) and dropped. Beside it, `<file>.idx` is a sparse line index: fixed 16-byte entries
//! `(line number, byte offset of that line's start)`, one at least every [`INDEX_EVERY_LINES`]
//! lines or [`INDEX_EVERY_BYTES`] bytes, so a line page deep in a large log seeks close to its
//! start instead of reading the log from the beginning. Memory per stream is bounded by the
//! preview size plus one read buffer, whatever the log size.
//!
//! This file holds what both halves share: [`Stream`] and the on-disk format (the index's file
//! name and entry spacing). `write.rs` captures a stream into its file (cap, preview, index);
//! `read.rs` reads a log back as byte or line pages.

mod read;
mod write;

use std::path::{Path, PathBuf};

pub use read::{count_lines, read_bytes, read_bytes_in, read_lines, read_lines_in, BytePage, LinePage, LineQuery};
pub use write::{preview_text, LiveStream, LogSink, StreamSummary};

/// An index entry is written at least this many lines after the previous one.
pub const INDEX_EVERY_LINES: u64 = 1024;
/// An index entry is written at the first line start this many bytes after the previous one.
pub const INDEX_EVERY_BYTES: u64 = 64 * 1024;
/// Bytes of one index entry: the line number, then the byte offset of its start (both `u64`,
/// little-endian).
const ENTRY_SIZE: u64 = 16;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// Parses the wire name (`stdout` / `stderr`).
    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The path of a log file's line index.
pub fn index_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(".idx");
    PathBuf::from(name)
}

//! Capturing a stream: [`LogSink`] writes what the script prints into its log file under the
//! cap, keeps the line index and the preview (the stream's tail, [`LiveStream`] while it runs),
//! and ends as a [`StreamSummary`].

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{index_path, INDEX_EVERY_BYTES, INDEX_EVERY_LINES};
use crate::sync::lock;

/// Counters and preview of a stream that is still being written, readable from other threads
/// (a running job shows them).
#[derive(Debug)]
pub struct LiveStream {
    /// Bytes stored so far.
    pub size: AtomicU64,
    /// Complete lines (newline-terminated) stored so far.
    pub lines: AtomicU64,
    /// Whether output has been dropped at the cap.
    pub truncated: AtomicBool,
    /// Why output could not be stored, once it could not.
    pub error: Mutex<Option<String>>,
    /// The last `previewMaxBytes` bytes written so far.
    tail: Mutex<Tail>,
    /// Woken after each write (stored or dropped at the cap): what a follower of the log waits
    /// on instead of polling.
    pub changed: tokio::sync::Notify,
}

impl LiveStream {
    fn new(preview_max: usize) -> LiveStream {
        LiveStream {
            size: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            truncated: AtomicBool::new(false),
            error: Mutex::new(None),
            tail: Mutex::new(Tail::new(preview_max)),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The preview so far: the tail of what the script wrote, as text.
    pub fn preview(&self) -> String {
        lock(&self.tail).to_text()
    }
}

/// What is known of a stream once its writer is done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSummary {
    /// Bytes stored.
    pub size: u64,
    /// Whether output past the cap was dropped.
    pub truncated: bool,
    /// The last `previewMaxBytes` bytes the script wrote (stored or not), as text.
    pub preview: String,
    /// Lines stored, a final line without newline included.
    pub lines: u64,
    /// Why output could not be stored (`cannot write <file>: <reason>`); what came after it
    /// was dropped.
    pub error: Option<String>,
    /// Kept with the job instead of a file: the preview is the whole stream.
    pub inline: bool,
}

/// Writes one stream to its log file, enforcing the cap and maintaining preview and index.
///
/// Files are created on first use: a stream that writes nothing has no log file (it reads as
/// empty), and only a log long enough to need an index entry gets an index file. Most jobs
/// are short, and creating a file is the largest share of what a short job costs (an inode,
/// under the folder's lock). So a sink may also keep a small output in memory
/// ([`LogSink::keep_inline`]): it goes to a file only when it outgrows `preview_max` bytes, when
/// the process has run long enough for [`LogSink::spill`], or at the end if it is not UTF-8;
/// otherwise the stream ends [`StreamSummary::inline`] and its preview is all of it.
pub struct LogSink {
    path: PathBuf,
    file: Option<File>,
    /// Stored bytes not in a file yet (kept inline).
    pending: Vec<u8>,
    /// Most bytes kept inline; 0 when every byte goes to the file.
    inline_max: usize,
    /// Whether the stream writes to its file (once set, it stays set).
    spilled: bool,
    index: Option<File>,
    cap: u64,
    stored: u64,
    truncated: bool,
    lines: u64,
    at_line_start: bool,
    last_entry: (u64, u64),
    entries: Vec<u8>,
    live: Arc<LiveStream>,
    /// Set when storing failed: the rest of the stream is dropped.
    error: Option<String>,
}

impl LogSink {
    /// A sink for this log file; nothing is created until there is something to store.
    pub fn new(path: &Path, cap: u64, preview_max: usize) -> LogSink {
        LogSink {
            path: path.to_path_buf(),
            file: None,
            pending: Vec::new(),
            inline_max: 0,
            spilled: true,
            index: None,
            cap,
            stored: 0,
            truncated: false,
            lines: 0,
            at_line_start: true,
            last_entry: (0, 0),
            entries: Vec::new(),
            live: Arc::new(LiveStream::new(preview_max)),
            error: None,
        }
    }

    /// Keeps up to `preview_max` bytes in memory instead of a file (see the type's doc): for a
    /// job, whose preview is kept with it.
    pub fn keep_inline(mut self) -> LogSink {
        self.inline_max = lock(&self.live.tail).max;
        self.spilled = self.inline_max == 0;
        self
    }

    /// From now on the stream goes to its file: what is kept inline is written there (the file
    /// is created only if there is something to write). Called once the process has run for a
    /// while, so a longer job's log is on disk while it runs, as without inline keeping.
    pub fn spill(&mut self) {
        if self.spilled {
            return;
        }
        self.spilled = true;
        if self.pending.is_empty() || self.error.is_some() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        if let Err(e) = self.write_file(&pending) {
            // All of the stream was pending: none of it is stored.
            (self.stored, self.lines, self.at_line_start, self.last_entry) = (0, 0, true, (0, 0));
            self.entries.clear();
            self.live.size.store(0, Ordering::Release);
            self.live.lines.store(0, Ordering::Release);
            self.fail(&e);
            return;
        }
        self.write_index();
    }

    /// Counters other threads read while the job runs.
    pub fn live(&self) -> Arc<LiveStream> {
        Arc::clone(&self.live)
    }

    /// Takes one chunk read from the pipe. A failing disk never fails the job: the stream
    /// records why its output could not be stored (its `error`), and the rest is dropped;
    /// `truncated` means only the cap.
    pub fn write(&mut self, chunk: &[u8]) {
        self.store(chunk);
        self.live.changed.notify_waiters();
    }

    fn store(&mut self, chunk: &[u8]) {
        lock(&self.live.tail).push(chunk);
        if self.error.is_some() {
            return;
        }
        let room = self.cap.saturating_sub(self.stored);
        let keep = &chunk[..chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        if keep.len() < chunk.len() {
            self.truncated = true;
            self.live.truncated.store(true, Ordering::Relaxed);
        }
        if keep.is_empty() {
            return;
        }
        if !self.spilled && self.pending.len() + keep.len() > self.inline_max {
            self.spill();
            if self.error.is_some() {
                return;
            }
        }
        if self.spilled {
            if let Err(e) = self.write_file(keep) {
                self.fail(&e);
                return;
            }
        } else {
            self.pending.extend_from_slice(keep);
        }
        self.index_lines(keep);
        self.stored += keep.len() as u64;
        crate::metrics::get().log_bytes().inc_by(keep.len() as u64);
        self.live.size.store(self.stored, Ordering::Release);
        self.live.lines.store(self.lines, Ordering::Release);
    }

    fn index_lines(&mut self, keep: &[u8]) {
        for pos in memchr::memchr_iter(b'\n', keep) {
            self.lines += 1;
            let next_start = self.stored + pos as u64 + 1;
            let (entry_line, entry_offset) = self.last_entry;
            if self.lines - entry_line >= INDEX_EVERY_LINES || next_start - entry_offset >= INDEX_EVERY_BYTES {
                self.last_entry = (self.lines, next_start);
                self.entries.extend_from_slice(&self.lines.to_le_bytes());
                self.entries.extend_from_slice(&next_start.to_le_bytes());
            }
        }
        self.at_line_start = keep.last() == Some(&b'\n');
        self.write_index();
    }

    /// Writes the index entries gathered so far, once the log is in a file (kept inline, the
    /// stream is small and needs none; they are written if it spills).
    fn write_index(&mut self) {
        if self.entries.is_empty() || !self.spilled {
            return;
        }
        // Whole entries in one write, so a concurrent reader never sees half of one
        // (it reads only complete 16-byte entries).
        let written = match self.index.as_mut() {
            Some(index) => index.write_all(&self.entries),
            None => create(&index_path(&self.path)).and_then(|f| self.index.insert(f).write_all(&self.entries)),
        };
        if let Err(e) = written {
            log::warn!("log index {} failed: {e}", self.path.display());
        }
        self.entries.clear();
    }

    /// Appends to the log file, creating it on the first write.
    fn write_file(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.write_all(bytes),
            None => create(&self.path).and_then(|file| self.file.insert(file).write_all(bytes)),
        }
    }

    /// Storing failed: the stream says why, and the rest of it is dropped.
    fn fail(&mut self, e: &io::Error) {
        let message = format!("cannot write {}: {e}", self.path.display());
        log::warn!("{message}; dropping the rest of this stream");
        *lock(&self.live.error) = Some(message.clone());
        self.error = Some(message);
    }

    /// Ends the stream. A stream kept inline stays so if its preview holds it exactly (all
    /// of it, as UTF-8 text); otherwise it goes to its file now.
    pub fn finish(mut self) -> StreamSummary {
        let inline = !self.spilled
            && !self.pending.is_empty()
            && !self.truncated
            && self.pending.len() <= self.inline_max
            && std::str::from_utf8(&self.pending).is_ok();
        if !inline {
            self.spill();
        }
        let partial = u64::from(!self.at_line_start && self.stored > 0);
        StreamSummary {
            size: self.stored,
            truncated: self.truncated,
            preview: self.live.preview(),
            lines: self.lines + partial,
            error: self.error,
            inline,
        }
    }
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create(true).truncate(true).open(path)
}

/// The last `max` bytes seen.
#[derive(Debug)]
struct Tail {
    max: usize,
    buf: VecDeque<u8>,
    seen: u64,
}

impl Tail {
    fn new(max: usize) -> Tail {
        Tail { max, buf: VecDeque::with_capacity(max.min(64 * 1024)), seen: 0 }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        if self.max == 0 {
            return;
        }
        if chunk.len() >= self.max {
            self.buf.clear();
            self.buf.extend(&chunk[chunk.len() - self.max..]);
            return;
        }
        let overflow = (self.buf.len() + chunk.len()).saturating_sub(self.max);
        self.buf.drain(..overflow);
        self.buf.extend(chunk);
    }

    fn to_text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        preview_text(&bytes, self.seen > bytes.len() as u64)
    }
}

/// Bytes as text for a preview. When the bytes are a tail cut from a longer stream, up to three
/// leading UTF-8 continuation bytes (half a character) are dropped instead of shown as U+FFFD.
pub fn preview_text(bytes: &[u8], cut: bool) -> String {
    let start = if cut { bytes.iter().take(3).take_while(|b| (**b & 0xC0) == 0x80).count() } else { 0 };
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_stream_kept_inline_makes_no_file_and_its_preview_is_all_of_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j.stdout.log");
        let mut sink = LogSink::new(&path, 1 << 20, 16).keep_inline();
        sink.write(b"hello\n");
        sink.write(b"world");
        let summary = sink.finish();
        assert!(summary.inline && !path.exists(), "{summary:?}");
        assert_eq!((summary.size, summary.lines, summary.preview.as_str()), (11, 2, "hello\nworld"));
    }

    #[test]
    fn a_stream_kept_inline_goes_to_its_file_when_it_outgrows_the_preview_spills_or_is_not_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let grown = dir.path().join("grown.log");
        let mut sink = LogSink::new(&grown, 1 << 20, 8).keep_inline();
        sink.write(b"12345");
        assert!(!grown.exists());
        sink.write(b"67890");
        let summary = sink.finish();
        assert!(!summary.inline);
        assert_eq!(std::fs::read(&grown).expect("file"), b"1234567890");

        let spilled = dir.path().join("spilled.log");
        let mut sink = LogSink::new(&spilled, 1 << 20, 64).keep_inline();
        sink.write(b"early ");
        sink.spill();
        assert_eq!(std::fs::read(&spilled).expect("file at the spill"), b"early ");
        sink.write(b"late");
        assert!(!sink.finish().inline);
        assert_eq!(std::fs::read(&spilled).expect("file"), b"early late");

        let binary = dir.path().join("binary.log");
        let mut sink = LogSink::new(&binary, 1 << 20, 64).keep_inline();
        sink.write(&[0xff, 0xfe, b'\n']);
        assert!(!sink.finish().inline);
        assert_eq!(std::fs::read(&binary).expect("file"), [0xff, 0xfe, b'\n']);

        let nothing = dir.path().join("nothing.log");
        let mut sink = LogSink::new(&nothing, 1 << 20, 64).keep_inline();
        sink.spill();
        let summary = sink.finish();
        assert!(!summary.inline && !nothing.exists(), "an empty stream has no file");
    }

    #[test]
    fn preview_is_the_tail_and_drops_a_cut_character() {
        let mut tail = Tail::new(4);
        tail.push("ab".as_bytes());
        tail.push("cdé".as_bytes()); // é is two bytes: the last 4 bytes are "cdé"
        assert_eq!(tail.to_text(), "cdé");
        let mut cut = Tail::new(2);
        cut.push("aéb".as_bytes()); // the last 2 bytes are é's second byte and "b"
        assert_eq!(cut.to_text(), "b", "half a character is dropped, not shown as U+FFFD");
        let mut whole = Tail::new(16);
        whole.push(b"abc");
        assert_eq!(whole.to_text(), "abc");
    }
}

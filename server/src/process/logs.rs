//! Job logs: writing a stream to its file under a cap, and reading it back by bytes or lines.
//!
//! A stream is stored as raw bytes in `<logsDir>/<jobId>.<stream>.log`, at most the configured
//! cap; output past the cap is still read from the pipe (so the script never blocks on a full
//! pipe) and dropped. Beside it, `<file>.idx` is a sparse line index: fixed 16-byte entries
//! `(line number, byte offset of that line's start)`, one at least every [`INDEX_EVERY_LINES`]
//! lines or [`INDEX_EVERY_BYTES`] bytes, so a line page deep in a large log seeks close to its
//! start instead of reading the log from the beginning. Memory per stream is bounded by the
//! preview size plus one read buffer, whatever the log size.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// An index entry is written at least this many lines after the previous one.
pub const INDEX_EVERY_LINES: u64 = 1024;
/// An index entry is written at the first line start this many bytes after the previous one.
pub const INDEX_EVERY_BYTES: u64 = 64 * 1024;
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
}

impl LiveStream {
    fn new(preview_max: usize) -> LiveStream {
        LiveStream {
            size: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            truncated: AtomicBool::new(false),
            error: Mutex::new(None),
            tail: Mutex::new(Tail::new(preview_max)),
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
}

/// The path of a log file's line index.
pub fn index_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(".idx");
    PathBuf::from(name)
}

/// Writes one stream to its log file, enforcing the cap and maintaining preview and index.
///
/// Files are created on first use: a stream that writes nothing has no log file (it reads as
/// empty), and only a log long enough to need an index entry gets an index file. Most jobs
/// are short, and creating files is a large share of what a short job costs.
pub struct LogSink {
    path: PathBuf,
    file: Option<File>,
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

    /// Counters other threads read while the job runs.
    pub fn live(&self) -> Arc<LiveStream> {
        Arc::clone(&self.live)
    }

    /// Takes one chunk read from the pipe. A failing disk never fails the job: the stream
    /// records why its output could not be stored (its `error`), and the rest is dropped;
    /// `truncated` means only the cap.
    pub fn write(&mut self, chunk: &[u8]) {
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
        let written = match self.file.as_mut() {
            Some(file) => file.write_all(keep),
            None => create(&self.path).and_then(|file| self.file.insert(file).write_all(keep)),
        };
        if let Err(e) = written {
            let message = format!("cannot write {}: {e}", self.path.display());
            log::warn!("{message}; dropping the rest of this stream");
            *lock(&self.live.error) = Some(message.clone());
            self.error = Some(message);
            return;
        }
        self.index_lines(keep);
        self.stored += keep.len() as u64;
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
        if !self.entries.is_empty() {
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
    }

    /// Ends the stream.
    pub fn finish(self) -> StreamSummary {
        let partial = u64::from(!self.at_line_start && self.stored > 0);
        StreamSummary {
            size: self.stored,
            truncated: self.truncated,
            preview: self.live.preview(),
            lines: self.lines + partial,
            error: self.error,
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

/// A byte page of a log.
#[derive(Debug, Clone, PartialEq)]
pub struct BytePage {
    /// Where the page starts.
    pub offset: u64,
    /// Where the next page starts (`offset` at or past the end).
    pub next_offset: u64,
    /// The log's size now.
    pub total_size: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Reads up to `limit` bytes at `offset`. A missing log reads as empty.
pub fn read_bytes(path: &Path, offset: u64, limit: u64) -> io::Result<BytePage> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(BytePage { offset, next_offset: offset, total_size: 0, data: Vec::new() })
        }
        Err(e) => return Err(e),
    };
    let total_size = file.metadata()?.len();
    let want = limit.min(total_size.saturating_sub(offset));
    let mut data = vec![0u8; usize::try_from(want).unwrap_or(0)];
    let mut filled = 0;
    while filled < data.len() {
        match file.read_at(&mut data[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    data.truncate(filled);
    Ok(BytePage { offset, next_offset: offset + filled as u64, total_size, data })
}

/// A line page of a log.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePage {
    /// First line of the page (0-based).
    pub offset: u64,
    /// The line after the page.
    pub next_offset: u64,
    /// Lines in the log (for a running job: complete lines so far).
    pub total_lines: u64,
    /// The lines, without their `\n` or `\r\n`.
    pub lines: Vec<String>,
}

/// How to read lines.
#[derive(Debug, Clone, Copy)]
pub struct LineQuery {
    /// First line (0-based).
    pub offset: u64,
    /// Most lines.
    pub limit: u64,
    /// Most bytes of line text in one page; a page always holds at least one line, cut to
    /// this size if it is longer.
    pub max_bytes: usize,
    /// Only newline-terminated lines (the job is still writing the last one).
    pub complete_only: bool,
    /// The line count if the caller knows it; otherwise it is counted.
    pub known_total: Option<u64>,
}

/// Reads a page of lines, seeking through the line index when there is one.
pub fn read_lines(path: &Path, q: LineQuery) -> io::Result<LinePage> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(LinePage { offset: q.offset, next_offset: q.offset, total_lines: 0, lines: Vec::new() })
        }
        Err(e) => return Err(e),
    };
    let total_lines = match q.known_total {
        Some(n) => n,
        None => count_lines(&file, q.complete_only)?,
    };
    let mut page = LinePage { offset: q.offset, next_offset: q.offset, total_lines, lines: Vec::new() };
    if q.offset >= total_lines || q.limit == 0 {
        return Ok(page);
    }
    let (entry_line, entry_offset) = seek_entry(&index_path(path), q.offset)?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    reader.seek(SeekFrom::Start(entry_offset))?;
    for _ in entry_line..q.offset {
        if !skip_line(&mut reader)? {
            return Ok(page);
        }
    }
    let mut budget = q.max_bytes;
    let wanted = q.limit.min(total_lines - q.offset);
    while (page.lines.len() as u64) < wanted {
        // Only a page's first line may be cut (when it alone is over the limit); a later line
        // that does not fit ends the page and starts the next one whole.
        let Some((mut bytes, terminated)) = read_line_capped(&mut reader, q.max_bytes.max(1))? else { break };
        if (!terminated && q.complete_only) || (!page.lines.is_empty() && bytes.len() > budget) {
            break;
        }
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        budget = budget.saturating_sub(bytes.len());
        page.lines.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    page.next_offset = q.offset + page.lines.len() as u64;
    Ok(page)
}

/// The last index entry at or before `line`, by binary search over the fixed-size entries.
fn seek_entry(index: &Path, line: u64) -> io::Result<(u64, u64)> {
    let file = match File::open(index) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let count = file.metadata()?.len() / ENTRY_SIZE;
    let read_entry = |i: u64| -> io::Result<(u64, u64)> {
        let mut buf = [0u8; 16];
        file.read_exact_at(&mut buf, i * ENTRY_SIZE)?;
        let (a, b) = buf.split_at(8);
        Ok((u64::from_le_bytes(a.try_into().unwrap_or_default()), u64::from_le_bytes(b.try_into().unwrap_or_default())))
    };
    let (mut lo, mut hi) = (0u64, count);
    let mut best = (0, 0);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let entry = read_entry(mid)?;
        if entry.0 <= line {
            best = entry;
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(best)
}

/// Skips one line; false at end of file.
fn skip_line<R: BufRead>(reader: &mut R) -> io::Result<bool> {
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(any);
        }
        any = true;
        if let Some(pos) = memchr::memchr(b'\n', buf) {
            reader.consume(pos + 1);
            return Ok(true);
        }
        let n = buf.len();
        reader.consume(n);
    }
}

/// Reads one line, keeping at most `max` bytes of it (the rest is skipped). Returns the bytes
/// without the `\n` and whether the line was newline-terminated; `None` at end of file.
fn read_line_capped<R: BufRead>(reader: &mut R, max: usize) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut out = Vec::new();
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(any.then_some((out, false)));
        }
        any = true;
        let (chunk, found) = match memchr::memchr(b'\n', buf) {
            Some(pos) => (&buf[..pos], Some(pos)),
            None => (buf, None),
        };
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        match found {
            Some(pos) => {
                reader.consume(pos + 1);
                return Ok(Some((out, true)));
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// Counts lines by reading the whole file: only for logs without a known count (imported jobs,
/// jobs interrupted by a crash), whose size is bounded by the log cap.
pub fn count_lines(mut file: &File, complete_only: bool) -> io::Result<u64> {
    // From the start, wherever the file's cursor was left.
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut lines = 0u64;
    let mut last = b'\n';
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        lines += memchr::memchr_iter(b'\n', buf).count() as u64;
        last = buf[buf.len() - 1];
        let n = buf.len();
        reader.consume(n);
    }
    Ok(lines + u64::from(last != b'\n' && !complete_only))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    /// Lines of every shape the index must handle: empty, short, and longer than the 64 KiB
    /// entry spacing, in a pseudo-random order.
    fn sample_lines() -> Vec<Vec<u8>> {
        let mut state = 7u64;
        (0..6000)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let len = match state >> 60 {
                    0 => 0,
                    1 => 70_000 + (state % 50_000) as usize,
                    _ => (state % 200) as usize,
                };
                let mut line = format!("{i}:").into_bytes();
                line.resize(line.len() + len, b'a' + (i % 26) as u8);
                line
            })
            .collect()
    }

    fn write_log(dir: &Path, lines: &[Vec<u8>], trailing_newline: bool) -> PathBuf {
        let path = dir.join("job.stdout.log");
        let mut sink = LogSink::new(&path, u64::MAX, 64);
        let mut all = Vec::new();
        for line in lines {
            all.extend_from_slice(line);
            all.push(b'\n');
        }
        if !trailing_newline {
            all.pop();
        }
        // Odd chunk sizes, so lines and index entries straddle writes.
        for chunk in all.chunks(4093) {
            sink.write(chunk);
        }
        let summary = sink.finish();
        assert_eq!(summary.lines, lines.len() as u64);
        path
    }

    #[test]
    fn line_pages_match_a_naive_split_at_every_kind_of_offset() {
        let dir = tempfile::tempdir().unwrap();
        let lines = sample_lines();
        let path = write_log(dir.path(), &lines, false);
        assert!(index_path(&path).exists(), "a log this size must have an index");
        let total = lines.len() as u64;
        let offsets = [0, 1, 1023, 1024, 1025, 2047, 2048, 3000, 4095, 5998, 5999, 6000, 7000];
        for offset in offsets {
            for limit in [1, 3, 100, 10_000] {
                let q = LineQuery { offset, limit, max_bytes: 1 << 30, complete_only: false, known_total: Some(total) };
                let page = read_lines(&path, q).unwrap();
                let want: Vec<String> = lines
                    .iter()
                    .skip(offset as usize)
                    .take(limit as usize)
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect();
                assert_eq!(page.lines.len(), want.len(), "offset {offset} limit {limit}");
                assert!(page.lines == want, "offset {offset} limit {limit}: wrong lines");
                assert_eq!(page.next_offset, offset + want.len() as u64);
            }
        }
    }

    #[test]
    fn a_page_budget_cuts_only_the_first_line_and_otherwise_ends_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let lines = sample_lines();
        let path = write_log(dir.path(), &lines, true);
        let long = lines.iter().position(|l| l.len() > 70_000).unwrap() as u64;
        let q = |offset, max_bytes| LineQuery {
            offset,
            limit: 50,
            max_bytes,
            complete_only: false,
            known_total: Some(lines.len() as u64),
        };
        // Starting on the long line with a small budget: that one line, cut to the budget.
        let page = read_lines(&path, q(long, 1000)).unwrap();
        assert_eq!(page.lines.len(), 1);
        assert_eq!(page.lines[0].len(), 1000);
        // Starting before it: the page stops before the line that does not fit.
        let page = read_lines(&path, q(long - 1, 1000)).unwrap();
        assert_eq!(page.next_offset, long, "the long line must start the next page");
    }

    #[test]
    fn counting_without_an_index_agrees_with_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let lines = sample_lines();
        let path = write_log(dir.path(), &lines, false);
        let file = File::open(&path).unwrap();
        assert_eq!(count_lines(&file, false).unwrap(), lines.len() as u64);
        assert_eq!(count_lines(&file, true).unwrap(), lines.len() as u64 - 1);
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

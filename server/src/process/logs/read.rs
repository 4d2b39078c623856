//! Reading a log back: byte pages ([`read_bytes`]) and line pages ([`read_lines`], which seeks
//! through the sparse line index the writer keeps), and counting lines when no count is known.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{index_path, ENTRY_SIZE};

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
    let page = LinePage { offset: q.offset, next_offset: q.offset, total_lines, lines: Vec::new() };
    if q.offset >= total_lines || q.limit == 0 {
        return Ok(page);
    }
    let (entry_line, entry_offset) = seek_entry(&index_path(path), q.offset)?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    reader.seek(SeekFrom::Start(entry_offset))?;
    fill_page(reader, entry_line, page, q)
}

/// A byte page of a stream held in memory (a short job's output, kept with the job).
pub fn read_bytes_in(data: &[u8], offset: u64, limit: u64) -> BytePage {
    let total_size = data.len() as u64;
    let start = offset.min(total_size);
    let end = start.saturating_add(limit).min(total_size);
    let bytes = data[usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0)].to_vec();
    BytePage { offset, next_offset: offset + (end - start), total_size, data: bytes }
}

/// A line page of a stream held in memory, as [`read_lines`] reads one from a file.
pub fn read_lines_in(data: &[u8], q: LineQuery) -> io::Result<LinePage> {
    let newlines = memchr::memchr_iter(b'\n', data).count() as u64;
    let partial = u64::from(!q.complete_only && data.last().is_some_and(|b| *b != b'\n'));
    let total_lines = q.known_total.unwrap_or(newlines + partial);
    let page = LinePage { offset: q.offset, next_offset: q.offset, total_lines, lines: Vec::new() };
    if q.offset >= total_lines || q.limit == 0 {
        return Ok(page);
    }
    fill_page(data, 0, page, q)
}

/// Fills `page` from `reader`, which stands at the start of line `at`.
fn fill_page<R: BufRead>(mut reader: R, at: u64, mut page: LinePage, q: LineQuery) -> io::Result<LinePage> {
    let total_lines = page.total_lines;
    for _ in at..q.offset {
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

    use std::path::PathBuf;

    use super::*;
    use crate::process::logs::LogSink;

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
    fn pages_of_a_stream_in_memory_equal_those_of_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        for (text, name) in [("a\nbb\r\nccc", "partial"), ("one\ntwo\n", "complete"), ("", "empty"), ("x", "one")] {
            let path = dir.path().join(format!("{name}.log"));
            std::fs::write(&path, text).unwrap();
            for complete_only in [false, true] {
                for offset in 0..5 {
                    for (limit, max_bytes) in [(1, 1 << 20), (2, 1 << 20), (10, 1 << 20), (10, 2)] {
                        let q = LineQuery { offset, limit, max_bytes, complete_only, known_total: None };
                        let what =
                            format!("{name} offset {offset} limit {limit} max {max_bytes} complete {complete_only}");
                        assert_eq!(read_lines_in(text.as_bytes(), q).unwrap(), read_lines(&path, q).unwrap(), "{what}");
                    }
                }
            }
            for (offset, limit) in [(0, 1), (0, 100), (2, 3), (10, 5), (3, 0)] {
                assert_eq!(read_bytes_in(text.as_bytes(), offset, limit), read_bytes(&path, offset, limit).unwrap());
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
}

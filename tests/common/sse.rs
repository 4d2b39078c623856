//! A server-sent events client for the tests: a raw HTTP/1.1 request on its own connection,
//! the chunked body decoded as it arrives, parsed into events. Reading stops when the test
//! stops calling [`SseClient::next`] (a stalled reader), and dropping the client cuts the
//! connection mid-stream (a reader that went away).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One event as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// Its `id:`, if it had one.
    pub id: Option<String>,
    /// Its `event:` name (`message` when absent).
    pub event: String,
    /// Its `data:` lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event {self:?}: data is not JSON: {e}"))
    }
}

/// An open stream (or the error answer in its place).
pub struct SseClient {
    reader: BufReader<TcpStream>,
    /// The response status.
    pub status: u16,
    /// The response headers, names lowercased.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Bytes left of the current chunk.
    left: usize,
    eof: bool,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
}

impl SseClient {
    /// `GET path` with `headers`, on a new connection to `base` (`http://host:port`).
    pub fn open(base: &str, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let addr = base.trim_start_matches("http://");
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        SseClient::open_on(stream, addr, path, headers)
    }

    /// [`SseClient::open`] on a connection the caller made (e.g. with a small receive buffer).
    pub fn open_on(mut stream: TcpStream, host: &str, path: &str, headers: &[(&str, &str)]) -> SseClient {
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok());
        SseClient { reader, status, headers, chunked, left: length.unwrap_or(0), eof: false, comments: 0 }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The whole body of a non-stream answer (e.g. an error), as JSON.
    pub fn body_json(&mut self) -> serde_json::Value {
        let mut body = Vec::new();
        while let Some(b) = self.byte() {
            body.push(b);
        }
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
    }

    /// Sets how long one read may wait.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.reader.get_ref().set_read_timeout(Some(timeout)).unwrap();
    }

    /// The next body byte, `None` at the end of the body.
    fn byte(&mut self) -> Option<u8> {
        if self.eof {
            return None;
        }
        if self.chunked && self.left == 0 {
            let mut size = String::new();
            loop {
                size.clear();
                if self.reader.read_line(&mut size).ok()? == 0 {
                    self.eof = true;
                    return None;
                }
                if !size.trim().is_empty() {
                    break;
                }
            }
            self.left = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if self.left == 0 {
                self.eof = true;
                return None;
            }
        } else if !self.chunked && self.left == 0 {
            self.eof = true;
            return None;
        }
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            Ok(1) => {
                self.left -= 1;
                Some(b[0])
            }
            _ => {
                self.eof = true;
                None
            }
        }
    }

    /// One line of the body without its line end, `None` at the end.
    fn line(&mut self) -> Option<String> {
        let mut out = Vec::new();
        loop {
            match self.byte()? {
                b'\n' => break,
                b => out.push(b),
            }
        }
        if out.last() == Some(&b'\r') {
            out.pop();
        }
        Some(String::from_utf8(out).expect("an SSE stream is UTF-8"))
    }

    /// The next event; `None` when the stream has ended.
    pub fn next(&mut self) -> Option<SseEvent> {
        let (mut id, mut event, mut data, mut any) = (None, String::from("message"), Vec::<String>::new(), false);
        loop {
            let line = self.line()?;
            if line.is_empty() {
                if any {
                    return Some(SseEvent { id, event, data: data.join("\n") });
                }
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').map_or((line.as_str(), ""), |(f, v)| (f, v));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => {
                    id = Some(value.to_string());
                    any = true;
                }
                "event" => {
                    event = value.to_string();
                    any = true;
                }
                "data" => {
                    data.push(value.to_string());
                    any = true;
                }
                _ => {}
            }
        }
    }

    /// Every event until the stream ends.
    pub fn rest(&mut self) -> Vec<SseEvent> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

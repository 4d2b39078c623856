//! The rule for what a request names (a step label, a script name, an idempotency key of a
//! job or a run): one length limit, applied by both services.

/// Longest label, script name or idempotency key, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Whether `name` is 1 to [`MAX_NAME_CHARS`] characters.
pub fn fits_name(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= MAX_NAME_CHARS
}

/// A name as one URL path segment: unreserved characters as they are, every other byte
/// percent-encoded (for the requests one cluster node makes to another).
pub fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

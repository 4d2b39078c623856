//! OOMOL blocks over the script-runner HTTP API.
//!
//! This crate is a placeholder until the blocks issue: it will hold one `ureq` client per
//! endpoint and the flow engine. It must never depend on the server crate (the server may
//! depend on it), so that blocks speak to a script-runner only through its public HTTP API.

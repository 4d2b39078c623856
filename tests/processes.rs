//! Integration tests (being written).

mod common;

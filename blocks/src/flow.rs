//! The flow runner (next).

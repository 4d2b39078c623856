//! Locking that survives a poisoned mutex.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also when another thread panicked while holding it: the data is as consistent
/// as each step left it, and refusing every later request would be worse.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

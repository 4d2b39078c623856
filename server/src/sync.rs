//! Locking that survives a poisoned mutex.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also when another thread panicked while holding it: the data is as consistent
/// as each step left it, and refusing every later request would be worse.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs blocking storage or file work on tokio's blocking pool, off the async workers; the
/// error is the task's panic or cancellation (each layer maps it into its own error enum).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(f).await
}

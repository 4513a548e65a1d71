//! Blocking calls made from async code without stalling the shared tokio executor.
//!
//! Depends on tokio only.

/// Runs `f`, a call that may block (a registry request, a librdkafka call that waits on
/// the broker), so that the other tasks of a multi-threaded runtime keep running
/// meanwhile: the worker thread hands its other tasks over first
/// (`tokio::task::block_in_place`). Outside a runtime, on a blocking-pool thread or on a
/// current-thread runtime, it just calls `f`.
pub(crate) fn block_off_executor<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

//! Work inside another network namespace from the agent. `setns` changes
//! the namespace of the calling thread only, so the work runs on a thread
//! of its own that ends with it: the agent's runtime threads stay in the
//! host's namespace.

use std::os::fd::OwnedFd;

/// Runs `f` on a new thread inside the network namespace `netns` and
/// returns its result.
pub async fn run_in<T: Send + 'static>(
    netns: OwnedFd,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let result = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
                .and_then(|()| f());
            let _ = tx.send(result);
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "netns thread ended without an answer",
        ))
    })
}

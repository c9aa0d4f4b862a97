//! What benchmarks share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Runs `job(0..count)` on `parallel` threads, each taking the next index
/// as it finishes one; returns jobs per second.
pub fn throughput(count: usize, parallel: usize, job: impl Fn(usize) + Sync) -> f64 {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    job(i);
                }
            });
        }
    });
    count as f64 / t.elapsed().as_secs_f64()
}

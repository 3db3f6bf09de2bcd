//! Running one job per item on a few threads, stoppable by the caller.
//!
//! Indexing the layers of a stack (`index::open_all`) and of a flatten (`flatten`) both need the
//! same thing: every item processed on up to N threads, the first failure stopping the others,
//! and the caller's `check` (Python's Ctrl-C) polled on the calling thread while they work.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crate::error::{Error, Result};

/// How often `check` runs while the workers are busy.
const POLL: Duration = Duration::from_millis(50);

/// Runs `job(i, stop)` for every `i` in `0..n` on up to `workers` threads (at least one) and
/// returns the results in item order.
///
/// A job that fails sets `stop`, which the other jobs should watch (and answer with
/// [`Error::Interrupted`]); no new job starts once it is set. `check` runs on the calling
/// thread every 50 ms while jobs run; its error stops them and is returned. Otherwise the first
/// failure in item order is returned, [`Error::Interrupted`] only when no job failed for
/// another reason (so a job stopped because of another's failure never hides the cause).
pub fn map_stoppable<T, F>(
    n: usize,
    workers: usize,
    check: &dyn Fn() -> Result<()>,
    job: F,
) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize, &AtomicBool) -> Result<T> + Sync,
{
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<T>>> = (0..n).map(|_| None).collect();
    let mut interrupted = None;
    // Each worker keeps its results and hands them over when it ends; the calling thread wakes
    // only when a worker ends or the poll interval passes (a wake-up per item would cost a
    // futex call per item, more than hashing a small file).
    let running = (Mutex::new(workers.clamp(1, n.max(1))), Condvar::new());
    thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.clamp(1, n.max(1)))
            .map(|_| {
                let (stop, next, job, running) = (&stop, &next, &job, &running);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let result = if stop.load(Ordering::Relaxed) {
                            Err(Error::Interrupted)
                        } else {
                            job(i, stop)
                        };
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        mine.push((i, result));
                    }
                    let (count, ended) = running;
                    *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                    ended.notify_one();
                    mine
                })
            })
            .collect();
        let (count, ended) = &running;
        let mut left = count.lock().unwrap_or_else(|e| e.into_inner());
        while *left > 0 {
            let (guard, timeout) = ended
                .wait_timeout(left, POLL)
                .unwrap_or_else(|e| e.into_inner());
            left = guard;
            if timeout.timed_out() && interrupted.is_none() {
                if let Err(e) = check() {
                    stop.store(true, Ordering::Relaxed);
                    interrupted = Some(e);
                }
            }
        }
        drop(left);
        for handle in handles {
            match handle.join() {
                Ok(mine) => {
                    for (i, result) in mine {
                        results[i] = Some(result);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    if let Some(e) = interrupted {
        return Err(e);
    }
    let mut stopped = false;
    let mut done = Vec::with_capacity(n);
    for result in results {
        match result {
            Some(Ok(value)) => done.push(value),
            Some(Err(Error::Interrupted)) | None => stopped = true,
            Some(Err(e)) => return Err(e),
        }
    }
    if stopped {
        return Err(Error::Interrupted);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_item_order() {
        let got = map_stoppable(20, 3, &|| Ok(()), |i, _| Ok(i * 2)).unwrap();
        assert_eq!(got, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert!(map_stoppable(0, 4, &|| Ok(()), |i, _| Ok(i))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_cause_wins_over_the_jobs_it_stopped() {
        let got = map_stoppable(8, 2, &|| Ok(()), |i, stop| {
            if i == 5 {
                return Err(Error::InvalidArgument("five".into()));
            }
            while i > 5 && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(1));
            }
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
            Ok(i)
        });
        assert!(matches!(got, Err(Error::InvalidArgument(_))), "{got:?}");
    }

    #[test]
    fn a_failing_check_stops_the_jobs() {
        let got = map_stoppable(2, 2, &|| Err(Error::Interrupted), |_, stop| {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        });
        assert!(matches!(got, Err(Error::Interrupted)));
    }
}

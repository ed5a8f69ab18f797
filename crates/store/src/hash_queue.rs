//! The queue in front of the password-hashing workers.
//!
//! Hash checks are deliberately expensive, so they are the cheapest way to make a gateway slow
//! for everyone: a flood of wrong passwords used to queue without bound, and a valid user's
//! sign-in waited behind all of it. Here the queue is bounded by time, not length: a check that
//! would wait longer than the caller's deadline (`auth.verify_queue_timeout`) is refused at once
//! ([`Busy`], answered `503 verifier_busy`), and the waiting checks form three lanes, served in
//! order: a user signing in again from where they signed in before ([`Lane::Known`]), clients
//! with no recent failed sign-in ([`Lane::Preferred`]), clients that have failed lately
//! ([`Lane::Suspect`]). A guesser's second attempt waits behind every first attempt, and a
//! flood of first attempts from ever new addresses still waits behind the users who signed in
//! from their address before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// Which lane a check waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A user signing in from a client they signed in from lately.
    Known,
    /// A client without a recent failed sign-in.
    Preferred,
    /// A client that failed to sign in lately: served after every preferred check.
    Suspect,
}

/// The check would have waited longer than its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// About when a retry may find a free worker (for `Retry-After`).
    pub retry_after: Duration,
}

struct Lanes {
    free: usize,
    known: VecDeque<oneshot::Sender<Permit>>,
    preferred: VecDeque<oneshot::Sender<Permit>>,
    suspect: VecDeque<oneshot::Sender<Permit>>,
}

struct Shared {
    workers: usize,
    lanes: Mutex<Lanes>,
    /// Moving average of one hash check, in microseconds (for the wait estimate).
    average_us: AtomicU64,
}

/// The right to run one hash check; the next waiter gets it when dropped.
pub struct Permit {
    shared: Option<Arc<Shared>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            release(shared);
        }
    }
}

/// Hands a freed worker to the next waiter (preferred lane first), or marks it free.
fn release(shared: Arc<Shared>) {
    let mut lanes = shared.lanes.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let next = lanes
            .known
            .pop_front()
            .or_else(|| lanes.preferred.pop_front())
            .or_else(|| lanes.suspect.pop_front());
        let Some(waiter) = next else {
            lanes.free += 1;
            return;
        };
        let permit = Permit {
            shared: Some(shared.clone()),
        };
        match waiter.send(permit) {
            Ok(()) => return,
            // That waiter gave up (its deadline passed): the worker goes to the next one.
            Err(mut unsent) => {
                unsent.shared = None;
            }
        }
    }
}

/// A bounded, two-lane queue of hash checks for `workers` workers.
#[derive(Clone)]
pub struct HashQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HashQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashQueue")
            .field("workers", &self.shared.workers)
            .finish_non_exhaustive()
    }
}

impl HashQueue {
    /// A queue for `workers` concurrent checks (at least one), each first guessed to take
    /// `typical` (the timing floor measured at load).
    pub fn new(workers: usize, typical: Duration) -> HashQueue {
        let workers = workers.max(1);
        HashQueue {
            shared: Arc::new(Shared {
                workers,
                lanes: Mutex::new(Lanes {
                    free: workers,
                    known: VecDeque::new(),
                    preferred: VecDeque::new(),
                    suspect: VecDeque::new(),
                }),
                average_us: AtomicU64::new(
                    u64::try_from(typical.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                ),
            }),
        }
    }

    /// Records how long a check took (a moving average over the last few).
    pub fn record(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.shared.average_us.load(Ordering::Relaxed);
        let new = (old.saturating_mul(7).saturating_add(took)) / 8;
        self.shared.average_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Waits for a worker in `lane`, for at most `deadline`. Refused at once when the checks
    /// ahead would already take longer than `deadline` to run.
    pub async fn acquire(&self, lane: Lane, deadline: Duration) -> Result<Permit, Busy> {
        let average = Duration::from_micros(self.shared.average_us.load(Ordering::Relaxed));
        let receiver = {
            let mut lanes = self
                .shared
                .lanes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            lanes.known.retain(|w| !w.is_closed());
            lanes.preferred.retain(|w| !w.is_closed());
            lanes.suspect.retain(|w| !w.is_closed());
            let ahead = match lane {
                Lane::Known => lanes.known.len(),
                Lane::Preferred => lanes.known.len() + lanes.preferred.len(),
                Lane::Suspect => lanes.known.len() + lanes.preferred.len() + lanes.suspect.len(),
            };
            if ahead == 0 && lanes.free > 0 {
                lanes.free -= 1;
                return Ok(Permit {
                    shared: Some(self.shared.clone()),
                });
            }
            // Every worker is busy: this check starts after the ones ahead of it, in rounds of
            // `workers`, each about one average check long.
            let rounds = u32::try_from(ahead / self.shared.workers + 1).unwrap_or(u32::MAX);
            let estimate = average.saturating_mul(rounds);
            if estimate > deadline {
                return Err(Busy {
                    retry_after: estimate,
                });
            }
            let (sender, receiver) = oneshot::channel();
            match lane {
                Lane::Known => lanes.known.push_back(sender),
                Lane::Preferred => lanes.preferred.push_back(sender),
                Lane::Suspect => lanes.suspect.push_back(sender),
            }
            receiver
        };
        match tokio::time::timeout(deadline, receiver).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Busy {
                retry_after: deadline,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn preferred_checks_overtake_suspect_ones() {
        let q = HashQueue::new(1, Duration::from_millis(10));
        let running = q
            .acquire(Lane::Suspect, Duration::from_secs(1))
            .await
            .unwrap();
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        for (name, lane) in [
            ("suspect-1", Lane::Suspect),
            ("suspect-2", Lane::Suspect),
            ("preferred", Lane::Preferred),
            ("known", Lane::Known),
        ] {
            let (q, tx) = (q.clone(), tx.clone());
            tokio::spawn(async move {
                let p = q.acquire(lane, Duration::from_secs(1)).await.unwrap();
                tx.send(name).unwrap();
                drop(p);
            });
            tokio::task::yield_now().await;
        }
        drop(running);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(order.recv().await.unwrap());
        }
        assert_eq!(got, ["known", "preferred", "suspect-1", "suspect-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_would_wait_too_long_is_refused_at_once() {
        let q = HashQueue::new(2, Duration::from_millis(500));
        let _a = q
            .acquire(Lane::Preferred, Duration::from_secs(2))
            .await
            .unwrap();
        let _b = q
            .acquire(Lane::Preferred, Duration::from_secs(2))
            .await
            .unwrap();
        // Queue eight suspects: four rounds of 500 ms ahead of a ninth, over its 2 s.
        let mut waiting = Vec::new();
        for _ in 0..8 {
            let q = q.clone();
            waiting.push(tokio::spawn(async move {
                q.acquire(Lane::Suspect, Duration::from_secs(2))
                    .await
                    .is_ok()
            }));
            tokio::task::yield_now().await;
        }
        let refused = q.acquire(Lane::Suspect, Duration::from_secs(2)).await;
        assert!(refused.is_err(), "the 9th waiter should be refused");
        // A preferred check still gets in line.
        let preferred = {
            let q = q.clone();
            tokio::spawn(async move {
                q.acquire(Lane::Preferred, Duration::from_secs(2))
                    .await
                    .is_ok()
            })
        };
        tokio::task::yield_now().await;
        drop(_a);
        assert!(preferred.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_passes_its_turn_on() {
        let q = HashQueue::new(1, Duration::from_millis(1));
        let running = q
            .acquire(Lane::Preferred, Duration::from_secs(1))
            .await
            .unwrap();
        let impatient = {
            let q = q.clone();
            tokio::spawn(async move {
                q.acquire(Lane::Preferred, Duration::from_millis(5))
                    .await
                    .is_ok()
            })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!impatient.await.unwrap());
        drop(running);
        // The worker is free again, not lost to the waiter that left.
        assert!(
            q.acquire(Lane::Preferred, Duration::from_millis(1))
                .await
                .is_ok()
        );
    }
}

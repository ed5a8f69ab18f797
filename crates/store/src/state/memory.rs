//! The in-process state backend: per-client limits, failed-logon counting and bans.
//!
//! # Per-client table
//!
//! Every request with a `[dynamic]` limit enabled touches one entry of a table keyed by the
//! client address, so the table is split into [`SHARDS`] independently locked shards (chosen by
//! a seeded hash of the address); two requests only contend when their addresses fall in the
//! same shard, and a lock is held for one hash-map operation. An entry is 32 bytes: the address
//! as a `u128` (IPv4 in its IPv4-mapped IPv6 form, so `1.2.3.4` and `::ffff:1.2.3.4` are one
//! client), the GCRA *theoretical arrival time* in clock nanoseconds and the number of requests
//! in flight.
//!
//! The rate limit is a GCRA: with emission interval `T = interval / max_requests`, a request at
//! `now` is admitted iff `max(tat, now) + T - now <= interval`, and then
//! `tat = max(tat, now) + T`. A client may therefore send `max_requests` at once and then one per
//! `T`; a refused request changes nothing, so a client that keeps flooding gets through again as
//! soon as its rate falls back under the limit.
//!
//! The hasher is a folded multiply (as in foldhash) keyed by a per-process random seed: much
//! faster than SipHash for a 16-byte key, and an attacker cannot aim addresses at one bucket
//! without knowing the seed.
//!
//! [`MemoryState::sweep`] drops entries with nothing in flight whose rate state has fully
//! recovered (`tat <= now`), so memory follows the number of *recently active* clients.
//!
//! # Logon regulation
//!
//! Failed logons are counted per client address and per user name: each key keeps the deadlines
//! (failure time + `find_time`) of its recent failures, at most `max_failures` of them. When a
//! key reaches `max_failures` live failures it is banned for `ban_time` and its failures are
//! cleared. Bans are read on every request that carries credentials, so they sit behind an
//! `RwLock` with an atomic count that lets the common "nobody is banned" case skip the lock.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use super::session::Session;
use super::{
    Admission, Ban, BanSubject, Clock, InFlightGuard, LimitRefusal, Limits, Rate, Regulation,
    SessionCap,
};

/// Number of shards of the per-client table (a power of two).
pub const SHARDS: usize = 64;

/// Most Digest nonces whose counts are kept at once (each is a few dozen bytes for at most
/// `auth.digest.nonce_ttl`).
const MAX_NONCES: usize = 200_000;

/// The in-process state store. Cheap to share: clone the `Arc` it is kept in.
pub struct MemoryState {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    hash: KeyState,
    shards: Box<[Shard]>,
    failures: Mutex<Failures>,
    bans: RwLock<Bans>,
    /// `bans.by_addr.len() + bans.by_user.len()`, readable without the lock.
    ban_entries: AtomicUsize,
    /// Bans that ran out since the last [`MemoryState::take_ended_bans`] (for the audit log).
    ended: Mutex<Vec<BanSubject>>,
    /// Sign-in sessions by store key, with their idle deadline (clock nanos).
    sessions: Mutex<HashMap<String, (Session, u64)>>,
    /// Digest nonce counts per nonce: the highest `nc` seen, which of the
    /// [`super::NONCE_WINDOW`] counts below it were seen (bit `d` for `highest - d`), and when
    /// the nonce expires.
    nonces: Mutex<HashMap<String, (u64, u128, u64)>>,
    /// Each user's session keys, oldest first (for `portal.max_sessions_per_user`).
    sessions_of: Mutex<HashMap<String, std::collections::VecDeque<String>>>,
    /// The key that signs CSRF tokens: random per process.
    secret: [u8; 32],
}

/// One shard, alone on its cache line(s) so that two cores locking neighbouring shards do not
/// bounce one line between them.
#[repr(align(64))]
struct Shard(Mutex<HashMap<u128, Slot, KeyState>>);

/// Per-client limiter state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    /// GCRA theoretical arrival time, clock nanoseconds (0 when no rate limit applies).
    tat: u64,
    /// Requests admitted under a concurrency limit whose guard has not been dropped yet.
    in_flight: u32,
}

struct Failures {
    /// Deadlines (clock nanos) of the recent failures of each address, oldest first.
    by_addr: HashMap<u128, Vec<u64>, KeyState>,
    /// The same per user name. User names are attacker-chosen strings: std's SipHash.
    by_user: HashMap<Box<str>, Vec<u64>>,
}

struct Bans {
    by_addr: HashMap<u128, BanRecord, KeyState>,
    by_user: HashMap<Box<str>, BanRecord>,
}

struct BanRecord {
    /// End of the ban, clock nanos.
    until: u64,
    reason: Box<str>,
}

impl MemoryState {
    /// An empty store reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> MemoryState {
        let hash = KeyState::random();
        let shards = (0..SHARDS)
            .map(|_| Shard(Mutex::new(HashMap::with_hasher(hash))))
            .collect();
        let failures = Failures {
            by_addr: HashMap::with_hasher(hash),
            by_user: HashMap::new(),
        };
        let bans = Bans {
            by_addr: HashMap::with_hasher(hash),
            by_user: HashMap::new(),
        };
        MemoryState {
            inner: Arc::new(Inner {
                clock,
                hash,
                shards,
                failures: Mutex::new(failures),
                bans: RwLock::new(bans),
                ban_entries: AtomicUsize::new(0),
                ended: Mutex::new(Vec::new()),
                sessions: Mutex::new(HashMap::new()),
                nonces: Mutex::new(HashMap::new()),
                sessions_of: Mutex::new(HashMap::new()),
                secret: rand::random(),
            }),
        }
    }

    /// Phase 4: checks one request from `ip` against `limits` and, when admitted, counts it.
    ///
    /// Never answers [`Admission::Unavailable`]. Without any limit the table is not touched.
    pub fn admit(&self, ip: IpAddr, limits: &Limits) -> Admission {
        if limits.max_concurrent.is_none() && limits.rate.is_none() {
            return Admission::Admitted(InFlightGuard::none());
        }
        let key = client_key(ip);
        let shard = self.inner.shard_of(key);
        let now = self.inner.now();
        {
            let mut table = lock(&self.inner.shards[shard].0);
            let slot = table.entry(key).or_default();
            if let Some(max) = limits.max_concurrent
                && slot.in_flight >= max
            {
                return Admission::Refused(LimitRefusal::Concurrent { max });
            }
            if let Some(rate) = limits.rate {
                match gcra(slot.tat, now, rate) {
                    Ok(tat) => slot.tat = tat,
                    Err(retry_after) => {
                        return Admission::Refused(LimitRefusal::Rate { retry_after });
                    }
                }
            }
            if limits.max_concurrent.is_none() {
                return Admission::Admitted(InFlightGuard::none());
            }
            slot.in_flight = slot.in_flight.saturating_add(1);
        }
        let inner = Arc::clone(&self.inner);
        Admission::Admitted(InFlightGuard::new(move || inner.release(shard, key)))
    }

    /// Phase 5: the active ban of the address, else of the user name.
    pub fn ban_for(&self, ip: IpAddr, user: Option<&str>) -> Option<Ban> {
        if self.inner.ban_entries.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let now = self.inner.now();
        let key = client_key(ip);
        let bans = read(&self.inner.bans);
        if let Some(ban) = bans.by_addr.get(&key).filter(|b| b.until > now) {
            return Some(ban.to_ban(BanSubject::Address(key_to_ip(key)), now));
        }
        let user = user?;
        let ban = bans.by_user.get(user).filter(|b| b.until > now)?;
        Some(ban.to_ban(BanSubject::User(user.to_owned()), now))
    }

    /// Records a failed logon of `user` from `ip`; returns the bans it started (address and/or
    /// user name).
    pub fn record_failure(&self, ip: IpAddr, user: &str, reg: &Regulation) -> Vec<Ban> {
        let now = self.inner.now();
        let key = client_key(ip);
        let (addr_reached, user_reached) = {
            let mut failures = lock(&self.inner.failures);
            let addr_reached = count_failure(failures.by_addr.entry(key).or_default(), now, reg);
            if addr_reached {
                failures.by_addr.remove(&key);
            }
            let user_reached = match failures.by_user.get_mut(user) {
                Some(deadlines) => count_failure(deadlines, now, reg),
                None => count_failure(failures.by_user.entry(user.into()).or_default(), now, reg),
            };
            if user_reached {
                failures.by_user.remove(user);
            }
            (addr_reached, user_reached)
        };
        if !addr_reached && !user_reached {
            return Vec::new();
        }
        let until = now.saturating_add(nanos(reg.ban_time));
        let reason: Box<str> = super::ban_reason(reg).into();
        let mut started = Vec::new();
        let mut bans = write(&self.inner.bans);
        if addr_reached {
            let record = BanRecord {
                until,
                reason: reason.clone(),
            };
            started.push(record.to_ban(BanSubject::Address(key_to_ip(key)), now));
            bans.by_addr.insert(key, record);
        }
        if user_reached {
            let record = BanRecord { until, reason };
            started.push(record.to_ban(BanSubject::User(user.to_owned()), now));
            bans.by_user.insert(user.into(), record);
        }
        self.inner.ban_entries.store(bans.len(), Ordering::SeqCst);
        started
    }

    /// Records a successful logon: the failure count of the client address starts again (the
    /// user name's count and any ban stay).
    pub fn record_success(&self, ip: IpAddr, _user: &str) {
        lock(&self.inner.failures).by_addr.remove(&client_key(ip));
    }

    /// Every active ban: addresses first, then user names, each in order.
    pub fn list_bans(&self) -> Vec<Ban> {
        let now = self.inner.now();
        let bans = read(&self.inner.bans);
        let mut addrs: Vec<_> = bans.by_addr.iter().filter(|(_, b)| b.until > now).collect();
        addrs.sort_unstable_by_key(|(k, _)| **k);
        let mut users: Vec<_> = bans.by_user.iter().filter(|(_, b)| b.until > now).collect();
        users.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let addrs = addrs
            .into_iter()
            .map(|(k, b)| b.to_ban(BanSubject::Address(key_to_ip(*k)), now));
        let users = users
            .into_iter()
            .map(|(u, b)| b.to_ban(BanSubject::User(u.to_string()), now));
        addrs.chain(users).collect()
    }

    /// Lifts the bans of `who` (parsed as an address if it is one, else a user name), or every
    /// ban when `None`; returns how many active bans were lifted.
    pub fn clear_bans(&self, who: Option<&str>) -> usize {
        let now = self.inner.now();
        let mut bans = write(&self.inner.bans);
        let lifted = match who {
            None => {
                let active = bans
                    .by_addr
                    .values()
                    .chain(bans.by_user.values())
                    .filter(|b| b.until > now)
                    .count();
                bans.by_addr.clear();
                bans.by_user.clear();
                active
            }
            Some(who) => {
                let removed = match who.parse::<IpAddr>() {
                    Ok(ip) => bans.by_addr.remove(&client_key(ip)),
                    Err(_) => bans.by_user.remove(who),
                };
                usize::from(removed.is_some_and(|b| b.until > now))
            }
        };
        self.inner.ban_entries.store(bans.len(), Ordering::SeqCst);
        lifted
    }

    /// The key that signs CSRF tokens (random per process).
    pub fn secret(&self) -> [u8; 32] {
        self.inner.secret
    }

    /// Records Digest nonce count `nc` for the nonce `key` (kept for `ttl`, the nonce's
    /// lifetime); `false` when it was used before, or is [`super::NONCE_WINDOW`] or more below
    /// the highest count seen with the nonce (a replay).
    pub fn nonce_count(&self, key: &str, nc: u64, ttl: Duration) -> bool {
        const _: () = assert!(super::NONCE_WINDOW <= 128);
        if nc == 0 {
            return false;
        }
        let now = self.inner.now();
        let mut nonces = lock(&self.inner.nonces);
        match nonces.get_mut(key) {
            Some((highest, seen, deadline)) if *deadline > now => {
                if nc > *highest {
                    let shift = nc - *highest;
                    *seen = if shift >= 128 { 0 } else { *seen << shift };
                    *seen |= 1;
                    *highest = nc;
                    true
                } else {
                    let below = *highest - nc;
                    if below >= super::NONCE_WINDOW || *seen & (1u128 << below) != 0 {
                        false
                    } else {
                        *seen |= 1u128 << below;
                        true
                    }
                }
            }
            _ => {
                // Bounded: every nonce in use holds an entry until it expires.
                if nonces.len() >= MAX_NONCES {
                    nonces.retain(|_, (_, _, deadline)| *deadline > now);
                    if nonces.len() >= MAX_NONCES {
                        tracing::warn!(
                            "{MAX_NONCES} Digest nonces in use: a new one is refused until some expire"
                        );
                        return false;
                    }
                }
                nonces.insert(key.to_owned(), (nc, 1, now.saturating_add(nanos(ttl))));
                true
            }
        }
    }

    /// Stores a new session under `key`, idle for at most `idle`.
    ///
    /// The user keeps at most `cap.max_per_user` live sessions: the oldest beyond it end.
    pub fn session_create(&self, key: &str, session: &Session, idle: Duration, cap: &SessionCap) {
        let now = self.inner.now();
        let deadline = now.saturating_add(nanos(idle));
        let mut sessions = lock(&self.inner.sessions);
        sessions.insert(key.to_owned(), (session.clone(), deadline));
        let mut index = lock(&self.inner.sessions_of);
        let keys = index.entry(session.user.clone()).or_default();
        // Sessions that ended by themselves (idle, sign-out) leave the index first.
        keys.retain(|k| sessions.get(k).is_some_and(|(_, d)| *d > now));
        keys.push_back(key.to_owned());
        let max = usize::try_from(cap.max_per_user.max(1)).unwrap_or(usize::MAX);
        while keys.len() > max {
            if let Some(oldest) = keys.pop_front() {
                sessions.remove(&oldest);
            }
        }
    }

    /// The session under `key`, if it has not been idle too long; its idle deadline moves to
    /// `idle` from now.
    pub fn session_touch(&self, key: &str, idle: Duration) -> Option<Session> {
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        match sessions.get_mut(key) {
            Some((session, deadline)) if *deadline > now => {
                *deadline = now.saturating_add(nanos(idle));
                Some(session.clone())
            }
            Some(_) => {
                sessions.remove(key);
                None
            }
            None => None,
        }
    }

    /// Ends the session under `key`; whether there was one.
    pub fn session_delete(&self, key: &str) -> bool {
        lock(&self.inner.sessions).remove(key).is_some()
    }

    /// Live sessions (for tests and metrics).
    pub fn session_count(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// The bans that ran out (found by [`MemoryState::sweep`]) since the last call.
    pub fn take_ended_bans(&self) -> Vec<BanSubject> {
        std::mem::take(&mut *lock(&self.inner.ended))
    }

    /// Drops what no longer matters: clients with nothing in flight whose rate state has fully
    /// recovered, expired bans and failure records whose every failure is older than
    /// `find_time`. Returns how many entries were removed. Call it every few seconds.
    pub fn sweep(&self) -> usize {
        let now = self.inner.now();
        let mut removed = 0;
        for shard in &self.inner.shards {
            let mut table = lock(&shard.0);
            let before = table.len();
            table.retain(|_, slot| slot.in_flight > 0 || slot.tat > now);
            removed += before - table.len();
            // Give memory back after a flood: shrink once the table is a quarter full.
            let len = table.len();
            if table.capacity() > 64 && len * 4 < table.capacity() {
                table.shrink_to(len * 2);
            }
        }
        {
            let mut failures = lock(&self.inner.failures);
            let before = failures.by_addr.len() + failures.by_user.len();
            let live = |deadlines: &mut Vec<u64>| {
                deadlines.retain(|&d| d > now);
                !deadlines.is_empty()
            };
            failures.by_addr.retain(|_, d| live(d));
            failures.by_user.retain(|_, d| live(d));
            removed += before - (failures.by_addr.len() + failures.by_user.len());
        }
        {
            let mut nonces = lock(&self.inner.nonces);
            let before = nonces.len();
            nonces.retain(|_, (_, _, deadline)| *deadline > now);
            removed += before - nonces.len();
        }
        {
            let mut sessions = lock(&self.inner.sessions);
            let before = sessions.len();
            sessions.retain(|_, (_, deadline)| *deadline > now);
            removed += before - sessions.len();
        }
        if self.inner.ban_entries.load(Ordering::SeqCst) > 0 {
            let mut bans = write(&self.inner.bans);
            let before = bans.len();
            let mut ended: Vec<BanSubject> = bans
                .by_addr
                .iter()
                .filter(|(_, b)| b.until <= now)
                .map(|(k, _)| BanSubject::Address(key_to_ip(*k)))
                .collect();
            ended.extend(
                bans.by_user
                    .iter()
                    .filter(|(_, b)| b.until <= now)
                    .map(|(u, _)| BanSubject::User(u.to_string())),
            );
            bans.by_addr.retain(|_, b| b.until > now);
            bans.by_user.retain(|_, b| b.until > now);
            if !ended.is_empty() {
                lock(&self.inner.ended).extend(ended);
            }
            removed += before - bans.len();
            self.inner.ban_entries.store(bans.len(), Ordering::SeqCst);
        }
        removed
    }

    /// Clients currently in the per-client table.
    pub fn tracked_clients(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(&s.0).len()).sum()
    }

    #[cfg(test)]
    fn slot(&self, ip: IpAddr) -> Option<Slot> {
        let key = client_key(ip);
        lock(&self.inner.shards[self.inner.shard_of(key)].0)
            .get(&key)
            .copied()
    }
}

impl fmt::Debug for MemoryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryState")
            .field("tracked_clients", &self.tracked_clients())
            .field("bans", &self.inner.ban_entries.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn now(&self) -> u64 {
        nanos(self.clock.now())
    }

    fn shard_of(&self, key: u128) -> usize {
        // hashbrown indexes buckets with the low bits and tags them with the top 7: take the
        // shard from bits in neither place, so entries of one shard still spread over both.
        (self.hash.hash_one(key) >> 32) as usize & (SHARDS - 1)
    }

    /// Runs when an [`InFlightGuard`] is dropped.
    fn release(&self, shard: usize, key: u128) {
        // The entry cannot have been swept: sweep keeps entries with requests in flight.
        if let Some(slot) = lock(&self.shards[shard].0).get_mut(&key) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }
}

impl Bans {
    fn len(&self) -> usize {
        self.by_addr.len() + self.by_user.len()
    }
}

impl BanRecord {
    fn to_ban(&self, subject: BanSubject, now: u64) -> Ban {
        let remaining = Duration::from_nanos(self.until.saturating_sub(now));
        let wall = SystemTime::now();
        Ban {
            subject,
            reason: self.reason.to_string(),
            until: wall.checked_add(remaining).unwrap_or(wall),
            remaining,
        }
    }
}

/// The GCRA decision: the new theoretical arrival time if a request at `now` is admitted, else
/// how long until one would be.
fn gcra(tat: u64, now: u64, rate: Rate) -> Result<u64, Duration> {
    let interval = nanos(rate.interval);
    let emission = interval / u64::from(rate.max_requests.max(1));
    let next = tat.max(now).saturating_add(emission);
    if next - now <= interval {
        Ok(next)
    } else {
        Err(Duration::from_nanos(next - interval - now))
    }
}

/// Adds a failure at `now` to a key's deadlines; true when the key reached `max_failures`.
fn count_failure(deadlines: &mut Vec<u64>, now: u64, reg: &Regulation) -> bool {
    let max = usize::try_from(reg.max_failures.max(1)).unwrap_or(usize::MAX);
    deadlines.retain(|&d| d > now);
    deadlines.push(now.saturating_add(nanos(reg.find_time)));
    if deadlines.len() > max {
        // Only after `max_failures` was lowered by a reload; the oldest ones no longer matter.
        deadlines.drain(..deadlines.len() - max);
    }
    deadlines.len() >= max
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The table key: the address as IPv6, IPv4 in its IPv4-mapped form.
fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn key_to_ip(key: u128) -> IpAddr {
    Ipv6Addr::from(key).to_canonical()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks halfway through an update: poisoning is moot.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Seeds of the address hasher, drawn once per process.
#[derive(Clone, Copy)]
struct KeyState {
    k0: u64,
    k1: u64,
}

impl KeyState {
    fn random() -> KeyState {
        // Odd, so a zero-ish high word never zeroes the multiplier.
        KeyState {
            k0: rand::random(),
            k1: rand::random::<u64>() | 1,
        }
    }
}

impl BuildHasher for KeyState {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            acc: self.k0,
            k1: self.k1,
        }
    }
}

/// A folded-multiply hasher for addresses (`u128` keys hash with a single `write_u128`).
struct KeyHasher {
    acc: u64,
    k1: u64,
}

/// 64×64→128 multiply, high and low halves xored: every input bit reaches every output bit.
#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for KeyHasher {
    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.acc = folded_multiply((n as u64) ^ self.acc, ((n >> 64) as u64) ^ self.k1);
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.acc = folded_multiply(n ^ self.acc, self.k1 ^ 0x243f_6a88_85a3_08d3);
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.acc
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Barrier;
    use std::thread;

    use super::*;
    use crate::state::FakeClock;

    const MS: Duration = Duration::from_millis(1);

    fn store() -> (Arc<FakeClock>, MemoryState) {
        let clock = Arc::new(FakeClock::default());
        // Not at the clock's origin, so "tat 0" and "now" differ.
        clock.advance(Duration::from_secs(1000));
        let state = MemoryState::new(clock.clone());
        (clock, state)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Out-of-order counts pass once each; a repeat, or one a window below the highest, fails;
    /// the record ends with the nonce.
    #[test]
    fn nonce_counts_pass_once_each_in_any_order_within_the_window() {
        let (clock, state) = store();
        let ttl = Duration::from_secs(60);
        for nc in [1, 3, 2, 5, 4] {
            assert!(state.nonce_count("n", nc, ttl), "{nc}");
        }
        for nc in [1, 2, 3, 4, 5, 0] {
            assert!(!state.nonce_count("n", nc, ttl), "replayed {nc}");
        }
        assert!(state.nonce_count("n", 300, ttl));
        assert!(
            !state.nonce_count("n", 172, ttl),
            "a window below the highest"
        );
        assert!(state.nonce_count("n", 173, ttl));
        assert!(state.nonce_count("other", 1, ttl), "counts are per nonce");
        clock.advance(ttl + MS);
        assert!(state.nonce_count("n", 1, ttl), "a new lifetime");
    }

    /// The nonce table is bounded: once MAX_NONCES live nonces hold a count, a new nonce is
    /// refused (counted as a replay: the client is challenged again) instead of growing the
    /// table; nonces still in use keep working, and room comes back as old ones expire.
    #[test]
    fn the_nonce_table_is_bounded() {
        let (clock, state) = store();
        let ttl = Duration::from_secs(60);
        for i in 0..MAX_NONCES {
            assert!(state.nonce_count(&format!("n{i}"), 1, ttl));
        }
        assert!(!state.nonce_count("one-too-many", 1, ttl));
        assert!(state.nonce_count("n0", 2, ttl), "a nonce in use goes on");
        assert_eq!(lock(&state.inner.nonces).len(), MAX_NONCES);
        clock.advance(ttl + MS);
        assert!(
            state.nonce_count("one-too-many", 1, ttl),
            "room after expiry"
        );
        assert_eq!(
            lock(&state.inner.nonces).len(),
            1,
            "expired ones were swept"
        );
    }

    fn rate(max_requests: u32, interval: Duration) -> Limits {
        Limits {
            max_concurrent: None,
            rate: Some(Rate {
                max_requests,
                interval,
            }),
        }
    }

    fn concurrent(max: u32) -> Limits {
        Limits {
            max_concurrent: Some(max),
            rate: None,
        }
    }

    /// The guard if admitted, else the refusal.
    fn admit(s: &MemoryState, ip: IpAddr, limits: &Limits) -> Result<InFlightGuard, LimitRefusal> {
        match s.admit(ip, limits) {
            Admission::Admitted(guard) => Ok(guard),
            Admission::Refused(why) => Err(why),
            Admission::Unavailable => panic!("the memory backend is never unavailable"),
        }
    }

    fn refused_rate(s: &MemoryState, ip: IpAddr, limits: &Limits) -> Duration {
        match admit(s, ip, limits) {
            Err(LimitRefusal::Rate { retry_after }) => retry_after,
            Err(other) => panic!("refused for {other:?}"),
            Ok(_) => panic!("admitted"),
        }
    }

    const REG: Regulation = Regulation {
        max_failures: 5,
        find_time: Duration::from_secs(120),
        ban_time: Duration::from_secs(300),
    };

    #[test]
    fn slot_is_compact() {
        assert!(size_of::<(u128, Slot)>() <= 32);
        assert!(size_of::<Shard>() <= 64);
    }

    #[test]
    fn no_limits_touch_nothing() {
        let (_, s) = store();
        for _ in 0..100 {
            assert!(admit(&s, ip("10.0.0.1"), &Limits::default()).is_ok());
        }
        assert_eq!(s.tracked_clients(), 0);
    }

    #[test]
    fn rate_burst_then_exact_retry_after() {
        let (clock, s) = store();
        let limits = rate(20, 200 * MS); // T = 10ms
        let a = ip("192.0.2.1");
        for i in 0..20 {
            assert!(admit(&s, a, &limits).is_ok(), "request {i} of the burst");
        }
        assert_eq!(refused_rate(&s, a, &limits), 10 * MS);
        clock.advance(4 * MS);
        assert_eq!(refused_rate(&s, a, &limits), 6 * MS);
        clock.advance(6 * MS);
        assert!(admit(&s, a, &limits).is_ok());
        assert_eq!(refused_rate(&s, a, &limits), 10 * MS);
        // After a full interval of silence, a full burst again.
        clock.advance(200 * MS);
        for _ in 0..20 {
            assert!(admit(&s, a, &limits).is_ok());
        }
        assert!(admit(&s, a, &limits).is_err());
    }

    #[test]
    fn steady_rate_at_the_limit_is_admitted() {
        let (clock, s) = store();
        let limits = rate(5, Duration::from_secs(1)); // T = 200ms
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(admit(&s, a, &limits).is_ok());
        }
        for _ in 0..50 {
            clock.advance(200 * MS);
            assert!(admit(&s, a, &limits).is_ok());
            assert_eq!(refused_rate(&s, a, &limits), 200 * MS);
        }
    }

    #[test]
    fn flooding_client_regains_access_when_its_rate_falls() {
        let (clock, s) = store();
        let limits = rate(10, Duration::from_secs(1)); // T = 100ms
        let a = ip("2001:db8::7");
        for _ in 0..10 {
            assert!(admit(&s, a, &limits).is_ok());
        }
        // 1000 refused requests over 99ms: none of them counts.
        for _ in 0..99 {
            for _ in 0..10 {
                assert!(admit(&s, a, &limits).is_err());
            }
            clock.advance(MS);
        }
        assert_eq!(refused_rate(&s, a, &limits), MS);
        clock.advance(MS);
        assert!(admit(&s, a, &limits).is_ok());
    }

    #[test]
    fn clients_are_independent() {
        let (_, s) = store();
        let limits = rate(3, Duration::from_secs(1));
        for _ in 0..3 {
            assert!(admit(&s, ip("10.0.0.1"), &limits).is_ok());
        }
        assert!(admit(&s, ip("10.0.0.1"), &limits).is_err());
        for _ in 0..3 {
            assert!(admit(&s, ip("10.0.0.2"), &limits).is_ok());
        }
        assert!(admit(&s, ip("10.0.0.2"), &limits).is_err());
        assert_eq!(s.tracked_clients(), 2);
    }

    #[test]
    fn ipv4_mapped_is_ipv4() {
        let (_, s) = store();
        let limits = rate(2, Duration::from_secs(1));
        assert!(admit(&s, ip("203.0.113.9"), &limits).is_ok());
        assert!(admit(&s, ip("::ffff:203.0.113.9"), &limits).is_ok());
        assert!(admit(&s, ip("203.0.113.9"), &limits).is_err());
        assert!(admit(&s, ip("::ffff:203.0.113.9"), &limits).is_err());
        assert_eq!(s.tracked_clients(), 1);
        // Not to be confused with the IPv4-compatible form or a different address.
        assert!(admit(&s, ip("::203.0.113.9"), &limits).is_ok());
        assert_eq!(
            key_to_ip(client_key(ip("::ffff:203.0.113.9"))),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn concurrency_limit_and_release() {
        let (_, s) = store();
        let limits = concurrent(3);
        let a = ip("10.1.1.1");
        let mut guards: Vec<_> = (0..3).map(|_| admit(&s, a, &limits).unwrap()).collect();
        assert_eq!(
            admit(&s, a, &limits).err(),
            Some(LimitRefusal::Concurrent { max: 3 })
        );
        // The refusal counted nothing.
        assert_eq!(s.slot(a).unwrap().in_flight, 3);
        // Another client is not affected.
        let other = admit(&s, ip("10.1.1.2"), &limits).unwrap();
        drop(guards.pop());
        assert_eq!(s.slot(a).unwrap().in_flight, 2);
        guards.push(admit(&s, a, &limits).unwrap());
        assert!(admit(&s, a, &limits).is_err());
        assert_eq!(s.sweep(), 0, "busy clients stay");
        drop(guards);
        drop(other);
        assert_eq!(s.slot(a).unwrap().in_flight, 0);
        assert_eq!(s.sweep(), 2);
        assert_eq!(s.tracked_clients(), 0);
    }

    #[test]
    fn guards_dropped_on_other_threads() {
        let (_, s) = store();
        let limits = Limits {
            max_concurrent: Some(4),
            rate: None,
        };
        let a = ip("2001:db8::1");
        let guards: Vec<_> = (0..4).map(|_| admit(&s, a, &limits).unwrap()).collect();
        assert!(admit(&s, a, &limits).is_err());
        thread::scope(|scope| {
            for guard in guards {
                scope.spawn(move || drop(guard));
            }
        });
        assert_eq!(s.slot(a).unwrap().in_flight, 0);
        // A guard may outlive the store handle it came from.
        let guard = admit(&s, a, &limits).unwrap();
        drop(s);
        drop(guard);
    }

    #[test]
    fn rate_and_concurrency_together() {
        let (clock, s) = store();
        let limits = Limits {
            max_concurrent: Some(2),
            rate: Some(Rate {
                max_requests: 3,
                interval: 300 * MS,
            }),
        };
        let a = ip("10.9.9.9");
        let g1 = admit(&s, a, &limits).unwrap();
        let g2 = admit(&s, a, &limits).unwrap();
        // Concurrency refusal does not use up the rate.
        assert_eq!(
            admit(&s, a, &limits).err(),
            Some(LimitRefusal::Concurrent { max: 2 })
        );
        drop(g1);
        let g3 = admit(&s, a, &limits).unwrap();
        drop(g2);
        // Rate refusal does not take a concurrency slot.
        assert_eq!(refused_rate(&s, a, &limits), 100 * MS);
        assert_eq!(s.slot(a).unwrap().in_flight, 1);
        drop(g3);
        // Idle only once the rate state has recovered.
        assert_eq!(s.sweep(), 0);
        clock.advance(299 * MS);
        assert_eq!(s.sweep(), 0);
        clock.advance(MS);
        assert_eq!(s.sweep(), 1);
        assert_eq!(s.tracked_clients(), 0);
    }

    #[test]
    fn sweep_removes_idle_keeps_busy() {
        let (clock, s) = store();
        let limits = Limits {
            max_concurrent: Some(10),
            rate: Some(Rate {
                max_requests: 10,
                interval: Duration::from_secs(1),
            }),
        };
        for i in 0..1000u32 {
            drop(admit(&s, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), &limits).unwrap());
        }
        let busy = admit(&s, ip("10.0.0.5"), &limits).unwrap();
        let recent = ip("10.0.0.6");
        clock.advance(Duration::from_millis(950));
        for _ in 0..5 {
            drop(admit(&s, recent, &limits).unwrap());
        }
        assert_eq!(s.tracked_clients(), 1000);
        clock.advance(Duration::from_millis(100));
        assert_eq!(s.sweep(), 998);
        assert_eq!(s.tracked_clients(), 2);
        assert_eq!(s.slot(ip("10.0.0.5")).unwrap().in_flight, 1);
        drop(busy);
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.sweep(), 2);
        assert_eq!(s.tracked_clients(), 0);
    }

    #[test]
    fn hammering_threads_counts_exact() {
        let (_, s) = store();
        let threads = 8;
        let clients: Vec<IpAddr> = (0..16u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)))
            .collect();

        // Concurrency: each thread holds every guard it gets; exactly `max` per client succeed.
        let limits = concurrent(5);
        let barrier = Barrier::new(threads);
        let admitted: usize = thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let mut held = Vec::new();
                        for _ in 0..20 {
                            for &c in &clients {
                                if let Ok(g) = admit(&s, c, &limits) {
                                    held.push(g);
                                }
                            }
                        }
                        held
                    })
                })
                .collect();
            let held: Vec<Vec<InFlightGuard>> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            held.iter().map(Vec::len).sum()
        });
        assert_eq!(admitted, 5 * clients.len());
        for &c in &clients {
            assert_eq!(s.slot(c).unwrap().in_flight, 0);
        }

        // Admit-and-drop churn from many threads: never refused, nothing leaks.
        let barrier = Barrier::new(threads);
        thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    barrier.wait();
                    for _ in 0..2000 {
                        for &c in &clients {
                            let g = admit(&s, c, &concurrent(threads as u32)).unwrap();
                            drop(g);
                        }
                    }
                });
            }
        });
        for &c in &clients {
            assert_eq!(s.slot(c).unwrap().in_flight, 0);
        }

        // Rate with the clock standing still: exactly `max_requests` per client.
        let limits = rate(100, Duration::from_secs(1));
        let barrier = Barrier::new(threads);
        let admitted: usize = thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let mut n = 0;
                        for _ in 0..50 {
                            for &c in &clients {
                                n += usize::from(admit(&s, c, &limits).is_ok());
                            }
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 100 * clients.len());
    }

    #[test]
    fn shards_are_balanced() {
        let (_, s) = store();
        let mut counts = [0usize; SHARDS];
        for i in 0..64_000u32 {
            counts[s
                .inner
                .shard_of(client_key(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))] += 1;
        }
        for i in 0..64_000u128 {
            counts[s.inner.shard_of(client_key(IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | i,
            ))))] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 1600 && *max < 2400, "{min}..{max}");
    }

    #[test]
    fn five_failures_ban_address_and_user() {
        let (_, s) = store();
        let a = ip("198.51.100.4");
        for _ in 0..4 {
            assert!(s.record_failure(a, "alice", &REG).is_empty());
            s.sweep();
        }
        assert_eq!(s.ban_for(a, Some("alice")), None);
        let bans = s.record_failure(a, "alice", &REG);
        assert_eq!(bans.len(), 2);
        assert_eq!(bans[0].subject, BanSubject::Address(a));
        assert_eq!(bans[1].subject, BanSubject::User("alice".into()));
        assert_eq!(bans[0].reason, "5 failed logons within 2m");
        assert_eq!(bans[0].remaining, Duration::from_secs(300));
        assert!(bans[0].until > SystemTime::now() + Duration::from_secs(290));

        // The address is banned whoever it claims to be (even with the right password: the
        // caller asks before checking it), and the user from anywhere.
        let ban = s.ban_for(a, Some("bob")).unwrap();
        assert_eq!(ban.subject, BanSubject::Address(a));
        assert_eq!(s.ban_for(a, None).unwrap().subject, BanSubject::Address(a));
        let ban = s.ban_for(ip("2001:db8::99"), Some("alice")).unwrap();
        assert_eq!(ban.subject, BanSubject::User("alice".into()));
        assert_eq!(s.ban_for(ip("2001:db8::99"), Some("bob")), None);
        assert_eq!(s.ban_for(ip("2001:db8::99"), None), None);
    }

    #[test]
    fn address_ban_alone_when_users_vary() {
        let (_, s) = store();
        let a = ip("::ffff:198.51.100.4");
        for (i, user) in ["u1", "u2", "u3", "u4"].into_iter().enumerate() {
            assert!(s.record_failure(a, user, &REG).is_empty(), "failure {i}");
        }
        let bans = s.record_failure(a, "u5", &REG);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].subject, BanSubject::Address(ip("198.51.100.4")));
        assert!(s.ban_for(ip("198.51.100.4"), None).is_some());
        assert!(s.ban_for(ip("198.51.100.5"), Some("u1")).is_none());
    }

    #[test]
    fn user_ban_alone_when_addresses_vary() {
        let (_, s) = store();
        for i in 0..4u32 {
            assert!(
                s.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), "root", &REG)
                    .is_empty()
            );
        }
        let bans = s.record_failure(ip("10.0.0.9"), "root", &REG);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].subject, BanSubject::User("root".into()));
        // User names are taken as typed.
        assert!(s.ban_for(ip("10.0.1.1"), Some("Root")).is_none());
    }

    #[test]
    fn failures_spread_wider_than_find_time_never_ban() {
        let (clock, s) = store();
        let a = ip("198.51.100.4");
        // Every 30s + 1ms: any five span more than 2m.
        for _ in 0..100 {
            assert!(s.record_failure(a, "alice", &REG).is_empty());
            clock.advance(Duration::from_secs(30) + MS);
            if clock.now().as_secs().is_multiple_of(7) {
                s.sweep();
            }
        }
        assert!(s.list_bans().is_empty());
        // Exactly 2m apart: the first has expired when the fifth comes.
        let b = ip("198.51.100.5");
        for _ in 0..20 {
            assert!(s.record_failure(b, "bob", &REG).is_empty());
            clock.advance(Duration::from_secs(30));
        }
        // Faster than that bans.
        let c = ip("198.51.100.6");
        for _ in 0..4 {
            assert!(s.record_failure(c, "carol", &REG).is_empty());
            clock.advance(Duration::from_secs(30) - MS);
        }
        assert_eq!(s.record_failure(c, "carol", &REG).len(), 2);
    }

    #[test]
    fn success_resets_the_address_count_only() {
        let (_, s) = store();
        let a = ip("198.51.100.4");
        for _ in 0..4 {
            assert!(s.record_failure(a, "alice", &REG).is_empty());
        }
        s.record_success(a, "alice");
        // The address starts again; the user name's four failures stay.
        let bans = s.record_failure(a, "alice", &REG);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].subject, BanSubject::User("alice".into()));
        for _ in 0..3 {
            assert!(s.record_failure(a, "bob", &REG).is_empty());
        }
        assert_eq!(
            s.record_failure(a, "carol", &REG)[0].subject,
            BanSubject::Address(a)
        );
        // Success does not lift a ban.
        s.record_success(a, "alice");
        assert!(s.ban_for(a, None).is_some());
        assert!(s.ban_for(ip("10.0.0.1"), Some("alice")).is_some());
    }

    #[test]
    fn ban_expires_after_ban_time() {
        let (clock, s) = store();
        let a = ip("198.51.100.4");
        for _ in 0..5 {
            s.record_failure(a, "alice", &REG);
        }
        clock.advance(Duration::from_secs(299));
        let ban = s.ban_for(a, Some("alice")).unwrap();
        assert_eq!(ban.remaining, Duration::from_secs(1));
        assert_eq!(s.list_bans().len(), 2);
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.ban_for(a, Some("alice")), None);
        assert!(s.list_bans().is_empty());
        assert_eq!(s.clear_bans(None), 0, "expired bans are not lifted");
        // The count started again at the ban.
        for _ in 0..4 {
            assert!(s.record_failure(a, "alice", &REG).is_empty());
        }
    }

    #[test]
    fn sweep_drops_expired_bans_and_stale_failures() {
        let (clock, s) = store();
        for _ in 0..5 {
            s.record_failure(ip("10.0.0.1"), "alice", &REG);
        }
        s.record_failure(ip("10.0.0.2"), "bob", &REG);
        assert_eq!(s.sweep(), 0);
        clock.advance(Duration::from_secs(120));
        assert_eq!(s.sweep(), 2, "bob's and 10.0.0.2's failures");
        clock.advance(Duration::from_secs(180));
        assert_eq!(s.sweep(), 2, "both bans");
        let ended = s.take_ended_bans();
        assert!(
            ended.contains(&BanSubject::Address(ip("10.0.0.1")))
                && ended.contains(&BanSubject::User("alice".into())),
            "{ended:?}"
        );
        assert!(s.take_ended_bans().is_empty());
        assert_eq!(s.inner.ban_entries.load(Ordering::SeqCst), 0);
        assert_eq!(s.sweep(), 0);
    }

    #[test]
    fn list_and_clear_bans() {
        let (_, s) = store();
        let ban = |a: &str, u: &str| {
            for _ in 0..5 {
                s.record_failure(ip(a), u, &REG);
            }
        };
        ban("10.0.0.2", "bob");
        ban("::ffff:10.0.0.1", "alice");
        ban("2001:db8::1", "carol");
        let subjects: Vec<String> = s
            .list_bans()
            .iter()
            .map(|b| b.subject.to_string())
            .collect();
        assert_eq!(
            subjects,
            [
                "address 10.0.0.1",
                "address 10.0.0.2",
                "address 2001:db8::1",
                "user alice",
                "user bob",
                "user carol"
            ]
        );

        assert_eq!(s.clear_bans(Some("::ffff:10.0.0.1")), 1);
        assert_eq!(s.clear_bans(Some("10.0.0.1")), 0);
        assert!(s.ban_for(ip("10.0.0.1"), None).is_none());
        assert!(s.ban_for(ip("10.0.0.1"), Some("alice")).is_some());
        assert_eq!(s.clear_bans(Some("alice")), 1);
        assert!(s.ban_for(ip("10.0.0.1"), Some("alice")).is_none());
        assert_eq!(s.clear_bans(Some("nobody")), 0);
        assert_eq!(s.list_bans().len(), 4);
        assert_eq!(s.clear_bans(None), 4);
        assert!(s.list_bans().is_empty());
        assert!(s.ban_for(ip("2001:db8::1"), Some("carol")).is_none());
    }

    #[test]
    fn reasons_read_like_the_config() {
        assert_eq!(crate::state::human(Duration::from_secs(120)), "2m");
        assert_eq!(crate::state::human(Duration::from_secs(90)), "1m30s");
        assert_eq!(crate::state::human(Duration::from_millis(200)), "200ms");
        assert_eq!(crate::state::human(Duration::from_secs(3600)), "1h");
        assert_eq!(crate::state::human(Duration::ZERO), "0s");
        let one = Regulation {
            max_failures: 1,
            ..REG
        };
        assert_eq!(crate::state::ban_reason(&one), "1 failed logon within 2m");
    }
}

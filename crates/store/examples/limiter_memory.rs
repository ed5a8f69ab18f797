//! Memory taken by the per-client limiter table: one million distinct client addresses (half
//! IPv4, half IPv6), each admitted once with both `[dynamic]` limits enabled, and the growth of
//! the process's resident set (`VmRSS`) it causes.
//!
//! `cargo run --release -p portcullis-store --example limiter_memory`

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_store::state::memory::MemoryState;
use portcullis_store::state::{Admission, FakeClock, Limits, Rate};

const CLIENTS: u32 = 1_000_000;

/// The resident set size, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

fn client(i: u32) -> IpAddr {
    if i.is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    } else {
        IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(i)))
    }
}

fn main() {
    let clock = Arc::new(FakeClock::default());
    let state = MemoryState::new(clock.clone());
    let limits = Limits {
        max_concurrent: Some(5),
        rate: Some(Rate {
            max_requests: 20,
            interval: Duration::from_millis(200),
        }),
    };

    let before = rss_kib();
    let started = Instant::now();
    for i in 0..CLIENTS {
        match state.admit(client(i), &limits) {
            Admission::Admitted(guard) => drop(guard),
            _ => panic!("client {i} refused"),
        }
    }
    let elapsed = started.elapsed();
    let after = rss_kib();
    assert_eq!(state.tracked_clients(), CLIENTS as usize);

    let grown = after.saturating_sub(before) * 1024;
    println!("clients tracked:   {}", state.tracked_clients());
    println!("VmRSS before:      {before} KiB");
    println!("VmRSS after:       {after} KiB");
    println!(
        "RSS growth:        {:.1} MiB",
        grown as f64 / (1024.0 * 1024.0)
    );
    println!(
        "bytes per client:  {:.1}",
        grown as f64 / f64::from(CLIENTS)
    );
    println!(
        "insert time:       {:.0} ns per new client",
        elapsed.as_nanos() as f64 / f64::from(CLIENTS)
    );

    // Once their rate state has recovered the clients are idle and a sweep drops them.
    clock.advance(Duration::from_secs(1));
    let started = Instant::now();
    let removed = state.sweep();
    println!(
        "sweep:             {removed} idle clients removed in {:?}",
        started.elapsed()
    );
    println!("VmRSS after sweep: {} KiB", rss_kib());
}

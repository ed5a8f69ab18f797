//! One `[dynamic]` decision of the in-memory state store on a warm table of 100k clients.
//!
//! `cargo bench -p portcullis-store --bench limiter -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_store::state::memory::MemoryState;
use portcullis_store::state::{Admission, Limits, Rate, SystemClock};

const CLIENTS: u32 = 100_000;

fn limiter(c: &mut Criterion) {
    let state = MemoryState::new(Arc::new(SystemClock::new()));
    let clients: Vec<IpAddr> = (0..CLIENTS)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7)))
        .collect();
    // Generous enough that the benchmark never gets refused: every decision is a full admit.
    let rate = Rate {
        max_requests: 1_000_000,
        interval: Duration::from_secs(1),
    };
    let both = Limits {
        max_concurrent: Some(5),
        rate: Some(rate),
    };
    for &ip in &clients {
        drop(state.admit(ip, &both));
    }
    assert_eq!(state.tracked_clients(), CLIENTS as usize);

    let mut group = c.benchmark_group("admit");
    for (name, limits) in [
        ("rate+concurrency", both),
        (
            "rate only",
            Limits {
                max_concurrent: None,
                rate: Some(rate),
            },
        ),
        ("no limits", Limits::default()),
    ] {
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let ip = clients[next];
                next = (next + 1) % clients.len();
                let admission = state.admit(black_box(ip), black_box(&limits));
                black_box(matches!(admission, Admission::Admitted(_)));
                // The guard is dropped here: the in-flight slot is released.
            });
        });
    }
    group.finish();

    c.bench_function("ban_for (nobody banned)", |b| {
        b.iter(|| state.ban_for(black_box(clients[0]), Some(black_box("alice"))));
    });
}

criterion_group!(benches, limiter);
criterion_main!(benches);

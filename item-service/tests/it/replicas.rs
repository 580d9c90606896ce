//! Two item-service replicas on one database, each running its own reservation sweeper as
//! deployed: every expired reservation is released by exactly one of them, and its stock
//! comes back exactly once.

use std::time::Duration;

use shop_proto::item::v1::{self as pb, ReservationStatus};

use crate::harness::{counter, spawn_with};

const RESERVATIONS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sweeping_release_each_expired_reservation_once() {
    // Both sweep every 20 ms, so their rounds overlap while the reservations expire.
    let first = spawn_with(|c| {
        c.reservation_ttl_secs = 1;
        c.sweep_interval_ms = 20;
    })
    .await;
    let shared = first.config.clone();
    let second = spawn_with(|c| *c = shared).await;
    let a = first.create("REPL-A", "A", "c", 100, 100).await;
    let b = first.create("REPL-B", "B", "c", 100, 100).await;
    let before = counter(
        &first.metrics().await,
        "item_reservations_total{outcome=\"expired\"}",
    );
    for i in 0..RESERVATIONS {
        // Half through each replica, as a balanced caller would.
        let via = if i % 2 == 0 { &first } else { &second };
        via.reserve(&format!("repl-{i}"), &[(&a.id, 1), (&b.id, 2)])
            .await
            .expect("reserve");
    }

    let released = test_support::eventually(Duration::from_secs(60), || async {
        let mut n = 0;
        for i in 0..RESERVATIONS {
            let r = first
                .client
                .clone()
                .get_reservation(pb::GetReservationRequest {
                    reservation_id: format!("repl-{i}"),
                })
                .await
                .expect("get reservation")
                .into_inner()
                .reservation
                .expect("reservation");
            n += usize::from(r.status == ReservationStatus::Released as i32);
        }
        (n == RESERVATIONS).then_some(n)
    })
    .await;
    assert_eq!(released, RESERVATIONS);
    // Stock back exactly once: not short (a reservation left holding), not over.
    let stocks = test_support::eventually(Duration::from_secs(30), || async {
        let s = (first.stock(&a.id).await, first.stock(&b.id).await);
        (s == (100, 100)).then_some(s)
    })
    .await;
    assert_eq!(stocks, (100, 100));
    // More rounds of both sweepers find nothing left to do: two of each replica's own,
    // run here (the sweeper has no round counter to wait on; the second round starts after
    // the first has ended, so any background round that overlapped has had its turn).
    for _ in 0..2 {
        for replica in [&first, &second] {
            let handled = replica.service.sweep_once().await.expect("sweep");
            assert_eq!(handled, 0, "nothing left to release");
        }
    }
    assert_eq!(
        (first.stock(&a.id).await, second.stock(&b.id).await),
        (100, 100)
    );
    // Both replicas report into this process's metrics: one expiry per reservation in all.
    let expired = counter(
        &first.metrics().await,
        "item_reservations_total{outcome=\"expired\"}",
    ) - before;
    assert_eq!(
        expired, RESERVATIONS as f64,
        "each released by exactly one replica"
    );
    second.stop().await;
    first.stop().await;
}

//! Stock reservations through the gRPC API: all-or-nothing, idempotency, the oversell
//! race, expiry by the sweeper.

use std::time::Duration;

use crate::harness::*;
use platform::{ErrorReason, reason_of};
use shop_proto::item::v1::{self as pb, ReservationStatus};
use tonic::Code;

#[tokio::test]
async fn fifty_concurrent_reservations_of_ten_units_sell_exactly_ten() {
    let app = spawn().await;
    let item = app.create("HOT-1", "Hot Item", "deals", 500, 10).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = app.client.clone();
        let id = item.id.clone();
        tasks.push(tokio::spawn(async move {
            c.reserve_stock(pb::ReserveStockRequest {
                reservation_id: format!("race-{i}"),
                lines: vec![shop_proto::common::v1::ItemLine {
                    item_id: id,
                    quantity: 1,
                }],
            })
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(r) => {
                assert_eq!(
                    r.into_inner().reservation.expect("r").status,
                    ReservationStatus::Reserved as i32
                );
                ok += 1;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                assert_eq!(reason_of(&s), Some(ErrorReason::OutOfStock), "{s:?}");
                assert!(s.message().contains(&item.id), "names the item: {s:?}");
                assert!(s.message().contains("0 left"), "says what is left: {s:?}");
            }
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(app.stock(&item.id).await, 0);
    app.stop().await;
}

/// Callers decide on `x-shop-reason`, so it must reach them over the wire, by the proto
/// name grpcurl users see in the trailers, next to the field.
#[tokio::test]
async fn reserving_more_than_the_stock_says_out_of_stock_in_the_metadata() {
    let app = spawn().await;
    let item = app.create("WHY-1", "Why", "c", 100, 2).await;
    let err = app
        .reserve("why-1", &[(&item.id, 3)])
        .await
        .expect_err("only 2 left");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.metadata()
            .get(platform::reason::REASON_METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("ERROR_REASON_OUT_OF_STOCK"),
        "{err:?}"
    );
    assert_eq!(
        platform::error::field_of(&err).as_deref(),
        Some("lines[0].quantity")
    );
    // Bad input says so too.
    let bad = app
        .reserve("why-2", &[(&item.id, 0)])
        .await
        .expect_err("quantity 0");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&bad), Some(ErrorReason::InvalidField), "{bad:?}");
    app.stop().await;
}

#[tokio::test]
async fn multi_line_reservation_failing_on_its_last_line_changes_nothing() {
    let app = spawn().await;
    let a = app.create("ML-A", "A", "c", 100, 5).await;
    let b = app.create("ML-B", "B", "c", 100, 5).await;
    let c = app.create("ML-C", "C", "c", 100, 1).await;
    let err = app
        .reserve("multi-1", &[(&a.id, 2), (&b.id, 3), (&c.id, 2)])
        .await
        .expect_err("last line short");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        platform::error::field_of(&err).as_deref(),
        Some("lines[2].quantity")
    );
    assert!(
        err.message().contains(&c.id) && err.message().contains("1 left"),
        "{err:?}"
    );
    for (item, stock) in [(&a, 5), (&b, 5), (&c, 1)] {
        assert_eq!(app.stock(&item.id).await, stock);
    }
    // A retry gets the same answer and still takes nothing.
    let again = app
        .reserve("multi-1", &[(&a.id, 2), (&b.id, 3), (&c.id, 2)])
        .await
        .expect_err("same outcome");
    assert_eq!((again.code(), again.message()), (err.code(), err.message()));
    assert_eq!(app.stock(&a.id).await, 5);
    let got = app
        .client
        .clone()
        .get_reservation(pb::GetReservationRequest {
            reservation_id: "multi-1".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .reservation
        .expect("r");
    assert_eq!(got.status, ReservationStatus::Rejected as i32);
    assert!(got.reason.contains("1 left"));

    // Unknown item on a line: NOT_FOUND naming the line; nothing held.
    let missing = "0123456789abcdef01234567";
    let err = app
        .reserve("multi-2", &[(&a.id, 1), (missing, 1)])
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        platform::error::field_of(&err).as_deref(),
        Some("lines[1].item_id")
    );
    assert_eq!(reason_of(&err), Some(ErrorReason::ItemNotFound), "{err:?}");
    assert_eq!(app.stock(&a.id).await, 5);

    // The same lines that fit do succeed.
    let ok = app
        .reserve("multi-3", &[(&a.id, 2), (&b.id, 3), (&c.id, 1)])
        .await
        .expect("fits");
    assert_eq!(ok.status, ReservationStatus::Reserved as i32);
    assert_eq!(ok.lines.len(), 3);
    assert_eq!(
        (
            app.stock(&a.id).await,
            app.stock(&b.id).await,
            app.stock(&c.id).await
        ),
        (3, 2, 0)
    );
    app.stop().await;
}

#[tokio::test]
async fn reserve_commit_release_are_idempotent() {
    let app = spawn().await;
    let item = app.create("IDEM-1", "Idem", "c", 100, 10).await;

    // Reserve twice with the same id: one hold.
    let r1 = app
        .reserve("idem-a", &[(&item.id, 3)])
        .await
        .expect("reserve");
    let r2 = app
        .reserve("idem-a", &[(&item.id, 3)])
        .await
        .expect("retry");
    assert_eq!(r1.status, ReservationStatus::Reserved as i32);
    assert_eq!(r2.status, r1.status);
    assert_eq!(r2.expires_at, r1.expires_at);
    assert_eq!(app.stock(&item.id).await, 7);
    // Same id, other lines: refused.
    let other = app.reserve("idem-a", &[(&item.id, 4)]).await;
    assert_field(other, Code::AlreadyExists, "reservation_id");
    let other = app
        .reserve("idem-a", &[(&item.id, 4)])
        .await
        .expect_err("other lines");
    assert_eq!(
        reason_of(&other),
        Some(ErrorReason::IdempotencyKeyReused),
        "{other:?}"
    );

    // Commit twice: stock stays sold.
    let c1 = app.commit("idem-a").await.expect("commit");
    let c2 = app.commit("idem-a").await.expect("commit again");
    assert_eq!(c1.status, ReservationStatus::Committed as i32);
    assert_eq!(c2.status, ReservationStatus::Committed as i32);
    assert_eq!(app.stock(&item.id).await, 7);
    // A committed reservation cannot be released; a reserve retry reports it committed.
    let committed = app.release("idem-a").await.expect_err("committed");
    assert_eq!(committed.code(), Code::FailedPrecondition);
    assert_eq!(
        reason_of(&committed),
        Some(ErrorReason::ReservationCommitted)
    );
    assert_eq!(
        app.reserve("idem-a", &[(&item.id, 3)])
            .await
            .expect("retry")
            .status,
        ReservationStatus::Committed as i32
    );
    assert_eq!(app.stock(&item.id).await, 7);

    // Release twice: stock comes back exactly once.
    app.reserve("idem-b", &[(&item.id, 5)])
        .await
        .expect("reserve");
    assert_eq!(app.stock(&item.id).await, 2);
    let l1 = app.release("idem-b").await.expect("release");
    let l2 = app.release("idem-b").await.expect("release again");
    assert_eq!(l1.status, ReservationStatus::Released as i32);
    assert_eq!(l2.status, ReservationStatus::Released as i32);
    assert_eq!(app.stock(&item.id).await, 7);
    // Released: commit refused, reserve retry reports released, nothing re-taken.
    let released = app.commit("idem-b").await.expect_err("released");
    assert_eq!(released.code(), Code::FailedPrecondition);
    assert_eq!(
        reason_of(&released),
        Some(ErrorReason::ReservationReleased),
        "released by its caller, not expired: {released:?}"
    );
    assert_eq!(
        app.reserve("idem-b", &[(&item.id, 5)])
            .await
            .expect("retry")
            .status,
        ReservationStatus::Released as i32
    );
    assert_eq!(app.stock(&item.id).await, 7);

    // Concurrent retries of one reservation take stock once.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let app_client = app.client.clone();
        let id = item.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = app_client;
            c.reserve_stock(pb::ReserveStockRequest {
                reservation_id: "idem-c".into(),
                lines: vec![shop_proto::common::v1::ItemLine {
                    item_id: id,
                    quantity: 2,
                }],
            })
            .await
        }));
    }
    for t in tasks {
        if let Err(s) = t.await.expect("join") {
            assert_eq!(
                s.code(),
                Code::Aborted,
                "only 'still being made' may fail: {s:?}"
            );
            assert_eq!(reason_of(&s), Some(ErrorReason::InProgress), "{s:?}");
        }
    }
    assert_eq!(app.stock(&item.id).await, 5);

    // Concurrent releases put it back once.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = app.client.clone();
        tasks.push(tokio::spawn(async move {
            c.release_reservation(pb::ReleaseReservationRequest {
                reservation_id: "idem-c".into(),
            })
            .await
        }));
    }
    for t in tasks {
        if let Err(s) = t.await.expect("join") {
            assert_eq!(s.code(), Code::Aborted, "{s:?}");
        }
    }
    app.release("idem-c").await.expect("release settles");
    assert_eq!(app.stock(&item.id).await, 7);
    app.stop().await;
}

#[tokio::test]
async fn expired_reservations_are_released_by_the_sweeper() {
    let app = spawn_with(|c| {
        c.reservation_ttl_secs = 2;
        c.sweep_interval_ms = 100;
    })
    .await;
    let a = app.create("EXP-A", "A", "c", 100, 4).await;
    let b = app.create("EXP-B", "B", "c", 100, 4).await;
    // Committed first, so that even on a slow machine it is committed before it expires.
    let r2 = app.reserve("exp-2", &[(&a.id, 1)]).await.expect("reserve");
    assert_eq!(r2.status, ReservationStatus::Reserved as i32);
    app.commit("exp-2").await.expect("commit");
    let r1 = app
        .reserve("exp-1", &[(&a.id, 3), (&b.id, 1)])
        .await
        .expect("reserve");
    assert_eq!(r1.status, ReservationStatus::Reserved as i32);

    let mut released = None;
    for _ in 0..100 {
        let r = app
            .client
            .clone()
            .get_reservation(pb::GetReservationRequest {
                reservation_id: "exp-1".into(),
            })
            .await
            .expect("get")
            .into_inner()
            .reservation
            .expect("r");
        if r.status == ReservationStatus::Released as i32 {
            released = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let released = released.expect("the sweeper releases the reservation");
    assert_eq!(released.reason, "expired");
    // Stock of the expired reservation is back (cache on: the sweeper invalidated it);
    // the committed one stays sold.
    let mut stocks = (0, 0);
    for _ in 0..50 {
        stocks = (app.stock(&a.id).await, app.stock(&b.id).await);
        if stocks == (3, 4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stocks, (3, 4));
    // Committing an expired reservation is refused; releasing it again changes nothing.
    let expired = app.commit("exp-1").await.expect_err("expired");
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert_eq!(
        reason_of(&expired),
        Some(ErrorReason::ReservationExpired),
        "{expired:?}"
    );
    app.release("exp-1").await.expect("idempotent release");
    assert_eq!(app.stock(&a.id).await, 3);
    // Further sweeps find nothing to do; committed reservations never expire.
    assert_eq!(app.service.sweep_once().await.expect("sweep"), 0);
    assert_eq!(
        app.commit("exp-2").await.expect("still committed").status,
        ReservationStatus::Committed as i32
    );
    app.stop().await;
}

#[tokio::test]
async fn sweepers_on_several_replicas_return_stock_once() {
    // Two service instances on one database, each sweeping.
    let first = spawn_with(|c| {
        c.reservation_ttl_secs = 1;
        c.sweep_interval_ms = 3_600_000;
    })
    .await;
    let db = first.config.mongodb_database.clone();
    let second = spawn_with(|c| {
        c.mongodb_database = db;
        c.reservation_ttl_secs = 1;
        c.sweep_interval_ms = 3_600_000;
    })
    .await;
    let item = first.create("REP-1", "Rep", "c", 100, 100).await;
    for i in 0..20 {
        first
            .reserve(&format!("rep-{i}"), &[(&item.id, 2)])
            .await
            .expect("reserve");
    }
    assert_eq!(first.stock(&item.id).await, 60);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (a, b, c) = tokio::join!(
        first.service.sweep_once(),
        second.service.sweep_once(),
        first.service.sweep_once()
    );
    assert_eq!(
        a.expect("sweep") + b.expect("sweep") + c.expect("sweep"),
        20
    );
    assert_eq!(first.stock(&item.id).await, 100);
    second.stop().await;
    first.stop().await;
}

/// What the reservation and its item look like in MongoDB: (item holds, settled).
async fn stored_state(app: &TestApp, rid: &str, item_id: &str) -> (Vec<String>, bool) {
    use mongodb::bson::{Document, doc, oid::ObjectId};
    let db = app.service.database();
    let oid = ObjectId::parse_str(item_id).expect("item id");
    let item = db
        .collection::<Document>("inventory")
        .find_one(doc! { "_id": oid })
        .await
        .expect("read the item's stock")
        .expect("the item's stock exists");
    let holds = item
        .get_array("holds")
        .map(|h| {
            h.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let reservation = db
        .collection::<Document>("reservations")
        .find_one(doc! { "_id": rid })
        .await
        .expect("read reservation")
        .expect("reservation exists");
    (holds, reservation.get_bool("settled").unwrap_or(false))
}

#[tokio::test]
async fn commit_answers_after_two_flat_round_trips_and_settles_afterwards() {
    let app = spawn().await;
    let item = app.create("ONE-1", "One", "c", 100, 5).await;
    app.reserve("one-a", &[(&item.id, 2)])
        .await
        .expect("reserve");
    assert_eq!(stored_state(&app, "one-a", &item.id).await.0, ["one-a"]);

    let res = app
        .client
        .clone()
        .commit_reservation(pb::CommitReservationRequest {
            reservation_id: "one-a".into(),
        })
        .await
        .expect("commit");
    assert_eq!(
        round_trips(res.metadata(), "mongodb"),
        2,
        "the happy path is a read and a conditional update (no findAndModify, which \
         SecantusDB answers with a collection scan): {:?}",
        res.metadata()
    );
    assert_eq!(
        res.into_inner().reservation.expect("r").status,
        ReservationStatus::Committed as i32
    );
    // Released right after the commit (settled or not yet): refused as committed.
    let err = app.release("one-a").await.expect_err("committed");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&err), Some(ErrorReason::ReservationCommitted));
    // A retried commit answers the same and takes nothing more.
    assert_eq!(
        app.commit("one-a").await.expect("retry").status,
        ReservationStatus::Committed as i32
    );
    assert_eq!(app.stock(&item.id).await, 3);
    // The hold marker goes once the answer is out; the stock stays sold.
    test_support::eventually(Duration::from_secs(30), || async {
        let (holds, settled) = stored_state(&app, "one-a", &item.id).await;
        (holds.is_empty() && settled).then_some(())
    })
    .await;
    assert_eq!(app.stock(&item.id).await, 3);

    // Not reserved: the read tells why, and no update is tried.
    let res = app
        .client
        .clone()
        .commit_reservation(pb::CommitReservationRequest {
            reservation_id: "one-a".into(),
        })
        .await
        .expect("commit again");
    assert_eq!(round_trips(res.metadata(), "mongodb"), 1);
    let missing = app.commit("no-such").await.expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(reason_of(&missing), Some(ErrorReason::ReservationNotFound));
    app.stop().await;
}

#[tokio::test]
async fn the_sweeper_settles_a_commit_whose_process_died_before_settling() {
    use mongodb::bson::{DateTime, Document, doc};
    let app = spawn_with(|c| c.sweep_interval_ms = 3_600_000).await;
    let item = app.create("DIED-1", "Died", "c", 100, 5).await;
    app.reserve("died-a", &[(&item.id, 2)])
        .await
        .expect("reserve");
    // What a process leaves that died right after RESERVED->COMMITTED, a while ago (its
    // grace period, `due`, long over).
    let then = DateTime::now().timestamp_millis() - 120_000;
    app.service
        .database()
        .collection::<Document>("reservations")
        .update_one(
            doc! { "_id": "died-a" },
            doc! { "$set": {
                "status": "committed",
                "settled": false,
                "updated_at": DateTime::from_millis(then),
                "due": DateTime::from_millis(then + 30_000),
            } },
        )
        .await
        .expect("simulate the crash");
    assert_eq!(
        stored_state(&app, "died-a", &item.id).await,
        (vec!["died-a".to_owned()], false)
    );
    assert_eq!(app.service.sweep_once().await.expect("sweep"), 1);
    assert_eq!(
        stored_state(&app, "died-a", &item.id).await,
        (Vec::new(), true)
    );
    // Still committed, stock still sold.
    assert_eq!(
        app.commit("died-a").await.expect("committed").status,
        ReservationStatus::Committed as i32
    );
    assert_eq!(app.stock(&item.id).await, 3);
    app.stop().await;
}

/// The item's stock as stored (no cache in between).
async fn stored_stock(app: &TestApp, item_id: &str) -> i64 {
    let stock = app.stored_inventory(item_id).await;
    stock
        .get_i64("stock")
        .or_else(|_| stock.get_i32("stock").map(i64::from))
        .expect("stock")
}

/// Commits and releases of one reservation racing through two replicas (a caller's retries,
/// a second caller, another replica): each status change is a read then a compare-and-set
/// (no `find_one_and_update`), so exactly one of them wins, every other call answers as
/// that outcome says, and the stock moves once. Every other round the reservation is in its
/// shape from before `rev` existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_and_releases_change_a_reservation_exactly_once() {
    use mongodb::bson::{Document, doc};
    const ROUNDS: usize = 12;
    const CALLS: usize = 8;
    let first = spawn_with(|c| c.sweep_interval_ms = 3_600_000).await;
    let shared = first.config.clone();
    let second = spawn_with(|c| *c = shared).await;
    let item = first.create("CAS-1", "Cas", "c", 100, 1_000).await;
    let changes = |m: &str| {
        counter(m, "item_reservations_total{outcome=\"committed\"")
            + counter(m, "item_reservations_total{outcome=\"released\"")
    };
    let mut committed = 0;
    for round in 0..ROUNDS {
        let rid = format!("cas-{round}");
        first
            .reserve(&rid, &[(&item.id, 3)])
            .await
            .expect("reserve");
        let reservations = first
            .service
            .database()
            .collection::<Document>("reservations");
        let stored = reservations
            .find_one(doc! { "_id": &rid })
            .await
            .expect("read")
            .expect("exists");
        assert!(stored.contains_key("rev"), "new reservations carry rev");
        if round % 2 == 1 {
            reservations
                .update_one(doc! { "_id": &rid }, doc! { "$unset": { "rev": "" } })
                .await
                .expect("as before rev existed");
        }
        let held = stored_stock(&first, &item.id).await;
        // Both replicas report into this process's metrics.
        let before = changes(&first.metrics().await);
        let calls = (0..CALLS).map(|i| {
            let app = if i % 2 == 0 { &first } else { &second };
            let rid = rid.clone();
            async move {
                // Alternate commit/release, with the pairing shifted every round.
                if (i + round) % 2 == 0 {
                    ("commit", app.commit(&rid).await)
                } else {
                    ("release", app.release(&rid).await)
                }
            }
        });
        let answers = futures::future::join_all(calls).await;
        let winner = if answers.iter().any(|(op, r)| *op == "commit" && r.is_ok()) {
            ReservationStatus::Committed
        } else {
            ReservationStatus::Released
        };
        for (op, answer) in &answers {
            let wins = (*op == "commit") == (winner == ReservationStatus::Committed);
            match answer {
                Ok(r) => {
                    assert!(wins, "{op} succeeded after the other outcome: {answers:?}");
                    assert_eq!(r.status, winner as i32, "{answers:?}");
                }
                Err(e) => {
                    assert!(!wins, "{op} failed though it won: {answers:?}");
                    assert_eq!(e.code(), Code::FailedPrecondition, "{answers:?}");
                    let expected = if winner == ReservationStatus::Committed {
                        ErrorReason::ReservationCommitted
                    } else {
                        ErrorReason::ReservationReleased
                    };
                    assert_eq!(reason_of(e), Some(expected), "{answers:?}");
                }
            }
        }
        let after = changes(&first.metrics().await);
        assert_eq!(
            after - before,
            1.0,
            "exactly one status change: {answers:?}"
        );
        // Settled (the hold marker gone) and the stock moved once: back for a release,
        // still taken for a commit.
        test_support::eventually(Duration::from_secs(30), || async {
            let (holds, settled) = stored_state(&first, &rid, &item.id).await;
            (holds.is_empty() && settled).then_some(())
        })
        .await;
        let want = if winner == ReservationStatus::Committed {
            committed += 1;
            held
        } else {
            held + 3
        };
        assert_eq!(stored_stock(&first, &item.id).await, want, "{answers:?}");
        let stored = reservations
            .find_one(doc! { "_id": &rid })
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(
            stored.get_str("status").expect("status"),
            if winner == ReservationStatus::Committed {
                "committed"
            } else {
                "released"
            }
        );
        assert!(
            stored.get_i64("rev").expect("rev") >= 2,
            "every write bumps rev"
        );
    }
    assert_eq!(stored_stock(&first, &item.id).await, 1_000 - 3 * committed);
    second.stop().await;
    first.stop().await;
}

//! The Redis cache through the gRPC API: freshness after writes, hits, negative entries,
//! single-flight, ITEM_CACHE=off, and Redis dying mid-test (on a private redis-server).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::harness::*;
use item_service::CacheMode;
use shop_proto::item::v1 as pb;
use tonic::Code;

/// Metrics are process-wide: these tests run one at a time so counter deltas are theirs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GETS: &str = "item_mongo_reads_total{op=\"get\"}";
const HITS: &str = "item_cache_requests_total{result=\"hit\"}";
const ERRORS: &str = "item_cache_requests_total{result=\"error\"}";

async fn get_item_count(app: &TestApp, id: &str, n: usize) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut c = app.client.clone();
        let id = id.to_owned();
        tasks.push(tokio::spawn(async move {
            c.get_item(pb::GetItemRequest { id }).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.expect("join").is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn writes_are_visible_immediately_with_the_cache_on() {
    let _serial = SERIAL.lock().await;
    let app = spawn().await;
    let item = app.create("FRESH-1", "Fresh", "c", 100, 10).await;
    let m0 = app.metrics().await;
    app.get(&item.id).await.expect("fill");
    app.get(&item.id).await.expect("hit");
    let m1 = app.metrics().await;
    assert!(
        counter(&m1, HITS) > counter(&m0, HITS),
        "second read is a hit"
    );
    assert_eq!(
        counter(&m1, GETS) - counter(&m0, GETS),
        1.0,
        "one MongoDB read for two gets"
    );

    let updated = app
        .client
        .clone()
        .update_item(pb::UpdateItemRequest {
            id: item.id.clone(),
            expected_version: 1,
            name: Some("Fresher".into()),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .item
        .expect("item");
    let got = app.get(&item.id).await.expect("get");
    assert_eq!(got, updated);
    assert_eq!(got.name, "Fresher");

    // Stock changes invalidate too.
    app.reserve("fresh-r", &[(&item.id, 4)])
        .await
        .expect("reserve");
    assert_eq!(app.stock(&item.id).await, 6);
    app.release("fresh-r").await.expect("release");
    assert_eq!(app.stock(&item.id).await, 10);
    let batch = app
        .client
        .clone()
        .batch_get_items(pb::BatchGetItemsRequest {
            ids: vec![item.id.clone()],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.items[0].stock, 10);
    app.reserve("fresh-s", &[(&item.id, 1)])
        .await
        .expect("reserve");
    let batch = app
        .client
        .clone()
        .batch_get_items(pb::BatchGetItemsRequest {
            ids: vec![item.id.clone()],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.items[0].stock, 9, "batch reads see stock changes");

    app.client
        .clone()
        .delete_item(pb::DeleteItemRequest {
            id: item.id.clone(),
        })
        .await
        .expect("delete");
    assert_eq!(
        app.get(&item.id).await.expect_err("deleted").code(),
        Code::NotFound
    );

    // Not found is cached briefly: the second miss is a hit. (Wait out the delayed second
    // delete of the invalidation first, or it may remove the negative entry.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.get(&item.id).await.expect_err("deleted").code(),
        Code::NotFound
    );
    let m2 = app.metrics().await;
    assert_eq!(
        app.get(&item.id).await.expect_err("deleted").code(),
        Code::NotFound
    );
    let m3 = app.metrics().await;
    assert_eq!(
        counter(&m3, GETS),
        counter(&m2, GETS),
        "negative entry served from Redis"
    );
    assert!(m3.contains("item_cache_requests_total{result=\"miss\"}"));
    app.stop().await;
}

#[tokio::test]
async fn a_burst_of_misses_makes_one_mongodb_read() {
    let _serial = SERIAL.lock().await;
    let app = spawn().await;
    let item = app.create("BURST-1", "Burst", "c", 100, 10).await;
    let m0 = app.metrics().await;
    assert_eq!(get_item_count(&app, &item.id, 50).await, 50);
    let m1 = app.metrics().await;
    assert_eq!(counter(&m1, GETS) - counter(&m0, GETS), 1.0);
    app.stop().await;
}

#[tokio::test]
async fn cache_off_reads_mongodb_every_time() {
    let _serial = SERIAL.lock().await;
    let app = spawn_with(|c| c.cache = CacheMode::Off).await;
    let item = app.create("OFF-1", "Off", "c", 100, 10).await;
    let m0 = app.metrics().await;
    for _ in 0..5 {
        app.get(&item.id).await.expect("get");
    }
    let m1 = app.metrics().await;
    assert_eq!(counter(&m1, GETS) - counter(&m0, GETS), 5.0);
    assert_eq!(counter(&m1, HITS), counter(&m0, HITS));
    app.stop().await;
}

struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let mut redis = Self {
            child: Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--bind",
                    "127.0.0.1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed to run this test"),
            url: format!("redis://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        redis.kill();
        panic!("private redis-server did not start");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn reads_keep_working_when_redis_dies() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start().await;
    let url = redis.url.clone();
    let app = spawn_with(|c| c.redis_url = url.as_str().into()).await;
    let item = app.create("DOWN-1", "Down", "c", 100, 10).await;
    // Wait for the background connect, then warm the cache.
    let mut warmed = false;
    for _ in 0..100 {
        let m0 = app.metrics().await;
        app.get(&item.id).await.expect("get");
        app.get(&item.id).await.expect("get");
        if counter(&app.metrics().await, HITS) > counter(&m0, HITS) {
            warmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(warmed, "cache serves hits while redis is up");

    let m0 = app.metrics().await;
    redis.kill();
    for _ in 0..20 {
        assert_eq!(
            app.get(&item.id).await.expect("read with redis down").id,
            item.id
        );
    }
    let batch = app
        .client
        .clone()
        .batch_get_items(pb::BatchGetItemsRequest {
            ids: vec![item.id.clone()],
        })
        .await
        .expect("batch with redis down")
        .into_inner();
    assert_eq!(batch.items.len(), 1);
    // Writes work too and reads see them.
    app.reserve("down-r", &[(&item.id, 2)])
        .await
        .expect("reserve with redis down");
    assert_eq!(app.stock(&item.id).await, 8);
    let m1 = app.metrics().await;
    assert!(
        counter(&m1, ERRORS) > counter(&m0, ERRORS),
        "errors are counted"
    );
    assert!(
        counter(&m1, GETS) > counter(&m0, GETS),
        "reads went to MongoDB"
    );
    app.stop().await;
}

#[tokio::test]
async fn starts_and_serves_while_redis_is_unreachable() {
    let _serial = SERIAL.lock().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let app =
        spawn_with(|c| c.redis_url = format!("redis://127.0.0.1:{port}").as_str().into()).await;
    let item = app.create("NOREDIS-1", "No Redis", "c", 100, 10).await;
    for _ in 0..5 {
        assert_eq!(app.get(&item.id).await.expect("get").stock, 10);
    }
    app.stop().await;
}

const LIST_HITS: &str = "item_list_cache_requests_total{result=\"hit\"}";

/// Names on the first page of `category`, and how many MongoDB round trips it cost.
async fn list_names(app: &TestApp, category: &str) -> (Vec<String>, u32) {
    let res = app
        .client
        .clone()
        .list_items(pb::ListItemsRequest {
            category: category.into(),
            ..Default::default()
        })
        .await
        .expect("list");
    let trips = round_trips(res.metadata(), "mongodb");
    let names = res.into_inner().items.into_iter().map(|i| i.name).collect();
    (names, trips)
}

#[tokio::test]
async fn list_pages_are_cached_and_show_catalog_edits_at_once() {
    let _serial = SERIAL.lock().await;
    // A TTL far longer than the test: only the edits themselves can make pages fresh.
    let app = spawn_with(|c| c.list_cache_ttl_ms = 600_000).await;
    let a = app.create("LIST-A", "Alpha lamp", "lamps", 100, 5).await;
    assert_eq!(list_names(&app, "lamps").await.0, ["Alpha lamp"]);
    let m0 = app.metrics().await;
    let (names, trips) = list_names(&app, "lamps").await;
    assert_eq!(names, ["Alpha lamp"]);
    assert_eq!(trips, 0, "a repeated page is served from Redis");
    assert!(counter(&app.metrics().await, LIST_HITS) > counter(&m0, LIST_HITS));
    list_names(&app, "").await;

    let b = app.create("LIST-B", "Beta lamp", "lamps", 100, 5).await;
    assert_eq!(
        list_names(&app, "lamps").await.0,
        ["Alpha lamp", "Beta lamp"]
    );
    assert_eq!(
        list_names(&app, "").await.0,
        ["Alpha lamp", "Beta lamp"],
        "every cached page, not only the edited category's"
    );

    app.client
        .clone()
        .update_item(pb::UpdateItemRequest {
            id: a.id.clone(),
            expected_version: a.version,
            name: Some("Aardvark lamp".into()),
            ..Default::default()
        })
        .await
        .expect("update");
    assert_eq!(
        list_names(&app, "lamps").await.0,
        ["Aardvark lamp", "Beta lamp"]
    );

    app.client
        .clone()
        .delete_item(pb::DeleteItemRequest { id: b.id.clone() })
        .await
        .expect("delete");
    assert_eq!(list_names(&app, "lamps").await.0, ["Aardvark lamp"]);
    assert_eq!(list_names(&app, "").await.0, ["Aardvark lamp"]);
    app.stop().await;
}

#[tokio::test]
async fn listing_keeps_working_when_redis_dies() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start().await;
    let url = redis.url.clone();
    let app = spawn_with(|c| c.redis_url = url.as_str().into()).await;
    app.create("LDOWN-1", "Lamp one", "lamps", 100, 10).await;
    // Wait for the background connect: a repeated page comes from Redis.
    let mut warmed = false;
    for _ in 0..100 {
        list_names(&app, "lamps").await;
        if list_names(&app, "lamps").await.1 == 0 {
            warmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(warmed, "list pages are cached while redis is up");

    redis.kill();
    for _ in 0..5 {
        assert_eq!(list_names(&app, "lamps").await.0, ["Lamp one"]);
    }
    // Edits made while Redis is down show too.
    app.create("LDOWN-2", "Lamp two", "lamps", 100, 10).await;
    assert_eq!(list_names(&app, "lamps").await.0, ["Lamp one", "Lamp two"]);
    app.stop().await;
}

//! Catalog RPCs through the gRPC API: CRUD, optimistic concurrency, batch reads, listing
//! and paging, every kind of bad input, and grpcurl via reflection.

use std::collections::HashSet;

use crate::harness::*;
use shop_proto::{
    common::v1::{Money, PageRequest},
    item::v1::{self as pb, ItemSort},
};
use tonic::Code;

const MISSING: &str = "0123456789abcdef01234567";

#[tokio::test]
async fn create_get_update_delete() {
    let app = spawn().await;
    let item = app.create("mug-1", "  Blue Mug ", "Kitchen", 1299, 7).await;
    assert_eq!(item.sku, "MUG-1");
    assert_eq!(item.name, "Blue Mug");
    assert_eq!(item.category, "kitchen");
    assert_eq!(item.version, 1);
    assert_eq!(item.id.len(), 24);
    assert!(item.created_at.is_some() && item.updated_at.is_some());

    let got = app.get(&item.id).await.expect("get");
    assert_eq!(got, item);

    // Duplicate SKU (case-insensitive through upper-casing).
    let dup = app
        .client
        .clone()
        .create_item(create_req("MUG-1", "Other", "kitchen", 1, 1))
        .await;
    assert_field(dup, Code::AlreadyExists, "sku");

    let mut c = app.client.clone();
    let updated = c
        .update_item(pb::UpdateItemRequest {
            id: item.id.clone(),
            expected_version: 1,
            name: Some("Red Mug".into()),
            price: Some(Money {
                amount_minor: 1499,
                currency: "EUR".into(),
            }),
            stock: Some(3),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .item
        .expect("item");
    assert_eq!(updated.version, 2);
    assert_eq!(updated.name, "Red Mug");
    assert_eq!(updated.stock, 3);
    assert_eq!(
        updated.description, item.description,
        "unset fields unchanged"
    );
    assert_eq!(
        updated.price.as_ref().map(|p| p.currency.as_str()),
        Some("EUR")
    );

    // Stale version -> ABORTED; the item is unchanged.
    let stale = c
        .update_item(pb::UpdateItemRequest {
            id: item.id.clone(),
            expected_version: 1,
            name: Some("Lost update".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(stale.expect_err("stale").code(), Code::Aborted);
    assert_eq!(app.get(&item.id).await.expect("get").name, "Red Mug");

    let missing = c
        .update_item(pb::UpdateItemRequest {
            id: MISSING.into(),
            expected_version: 1,
            name: Some("x".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(missing.expect_err("missing").code(), Code::NotFound);

    c.delete_item(pb::DeleteItemRequest {
        id: item.id.clone(),
    })
    .await
    .expect("delete");
    assert_eq!(
        app.get(&item.id).await.expect_err("gone").code(),
        Code::NotFound
    );
    let again = c
        .delete_item(pb::DeleteItemRequest {
            id: item.id.clone(),
        })
        .await;
    assert_eq!(again.expect_err("gone").code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn batch_get_keeps_request_order_and_reports_missing() {
    let app = spawn().await;
    let a = app.create("A-1", "Apple", "fruit", 100, 1).await;
    let b = app.create("B-1", "Banana", "fruit", 200, 1).await;
    let res = app
        .client
        .clone()
        .batch_get_items(pb::BatchGetItemsRequest {
            ids: vec![b.id.clone(), MISSING.into(), a.id.clone(), b.id.clone()],
        })
        .await
        .expect("batch")
        .into_inner();
    let ids: Vec<_> = res.items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids, vec![b.id.clone(), a.id.clone()]);
    assert_eq!(res.missing_ids, vec![MISSING.to_owned()]);
    // Second time through the cache: same answer.
    let again = app
        .client
        .clone()
        .batch_get_items(pb::BatchGetItemsRequest {
            ids: vec![b.id.clone(), MISSING.into(), a.id.clone()],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(again.items, res.items);
    assert_eq!(again.missing_ids, res.missing_ids);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let app = spawn().await;
    let mut c = app.client.clone();
    let ok = || create_req("OK-1", "Name", "cat", 100, 1);

    let cases: Vec<(pb::CreateItemRequest, &str)> = vec![
        (
            pb::CreateItemRequest {
                sku: String::new(),
                ..ok()
            },
            "sku",
        ),
        (
            pb::CreateItemRequest {
                sku: "has space".into(),
                ..ok()
            },
            "sku",
        ),
        (
            pb::CreateItemRequest {
                sku: "X".repeat(65),
                ..ok()
            },
            "sku",
        ),
        (
            pb::CreateItemRequest {
                name: "  ".into(),
                ..ok()
            },
            "name",
        ),
        (
            pb::CreateItemRequest {
                name: "n".repeat(201),
                ..ok()
            },
            "name",
        ),
        (
            pb::CreateItemRequest {
                description: "d".repeat(5001),
                ..ok()
            },
            "description",
        ),
        (
            pb::CreateItemRequest {
                category: String::new(),
                ..ok()
            },
            "category",
        ),
        (
            pb::CreateItemRequest {
                category: "c".repeat(65),
                ..ok()
            },
            "category",
        ),
        (
            pb::CreateItemRequest {
                price: None,
                ..ok()
            },
            "price",
        ),
        (
            pb::CreateItemRequest {
                price: usd(-1),
                ..ok()
            },
            "price.amount_minor",
        ),
        (
            pb::CreateItemRequest {
                price: Some(Money {
                    amount_minor: 1,
                    currency: "XYZ".into(),
                }),
                ..ok()
            },
            "price.currency",
        ),
        (pb::CreateItemRequest { stock: -1, ..ok() }, "stock"),
        (
            pb::CreateItemRequest {
                stock: 1_000_000_001,
                ..ok()
            },
            "stock",
        ),
        (
            pb::CreateItemRequest {
                image_url: "ftp://x/y".into(),
                ..ok()
            },
            "image_url",
        ),
        (
            pb::CreateItemRequest {
                image_url: format!("https://x/{}", "a".repeat(2048)),
                ..ok()
            },
            "image_url",
        ),
    ];
    for (req, field) in cases {
        assert_field(c.create_item(req).await, Code::InvalidArgument, field);
    }

    let item = app.create("OK-1", "Name", "cat", 100, 1).await;
    let upd = |f: fn(&mut pb::UpdateItemRequest)| {
        let mut r = pb::UpdateItemRequest {
            id: item.id.clone(),
            expected_version: 1,
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let cases: Vec<(pb::UpdateItemRequest, &str)> = vec![
        (upd(|r| r.id = "nope".into()), "id"),
        (upd(|r| r.id = String::new()), "id"),
        (upd(|r| r.expected_version = 0), "expected_version"),
        (upd(|r| r.name = Some(String::new())), "name"),
        (upd(|r| r.stock = Some(-5)), "stock"),
        (upd(|r| r.price = usd(-5)), "price.amount_minor"),
        (upd(|r| r.category = Some(String::new())), "category"),
        (upd(|r| r.image_url = Some("not a url".into())), "image_url"),
    ];
    for (req, field) in cases {
        assert_field(c.update_item(req).await, Code::InvalidArgument, field);
    }

    assert_field(
        c.get_item(pb::GetItemRequest { id: "zz".into() }).await,
        Code::InvalidArgument,
        "id",
    );
    assert_field(
        c.delete_item(pb::DeleteItemRequest { id: "zz".into() })
            .await,
        Code::InvalidArgument,
        "id",
    );
    assert_field(
        c.batch_get_items(pb::BatchGetItemsRequest { ids: vec![] })
            .await,
        Code::InvalidArgument,
        "ids",
    );
    assert_field(
        c.batch_get_items(pb::BatchGetItemsRequest {
            ids: vec![MISSING.into(); 101],
        })
        .await,
        Code::InvalidArgument,
        "ids",
    );
    assert_field(
        c.batch_get_items(pb::BatchGetItemsRequest {
            ids: vec![MISSING.into(), "bad".into()],
        })
        .await,
        Code::InvalidArgument,
        "ids[1]",
    );

    let list = |f: fn(&mut pb::ListItemsRequest)| {
        let mut r = pb::ListItemsRequest::default();
        f(&mut r);
        r
    };
    let cases: Vec<(pb::ListItemsRequest, &str)> = vec![
        (list(|r| r.category = "c".repeat(65)), "category"),
        (list(|r| r.query = "q".repeat(101)), "query"),
        (list(|r| r.sort = 99), "sort"),
        (
            list(|r| {
                r.page = Some(PageRequest {
                    page_size: 101,
                    page_token: String::new(),
                })
            }),
            "page.page_size",
        ),
        (
            list(|r| {
                r.page = Some(PageRequest {
                    page_size: -1,
                    page_token: String::new(),
                })
            }),
            "page.page_size",
        ),
        (
            list(|r| {
                r.page = Some(PageRequest {
                    page_size: 10,
                    page_token: "garbage!".into(),
                })
            }),
            "page.page_token",
        ),
        (
            list(|r| {
                r.page = Some(PageRequest {
                    page_size: 10,
                    page_token: "eyJ2IjoxfQ".into(),
                })
            }),
            "page.page_token",
        ),
    ];
    for (req, field) in cases {
        assert_field(c.list_items(req).await, Code::InvalidArgument, field);
    }

    // Reservation input.
    type Case<'a> = (&'a str, Vec<(&'a str, i32)>, &'a str);
    let cases: Vec<Case> = vec![
        ("", vec![(item.id.as_str(), 1)], "reservation_id"),
        ("r\u{7f}", vec![(item.id.as_str(), 1)], "reservation_id"),
        ("r1", vec![], "lines"),
        ("r1", vec![("bad", 1)], "lines[0].item_id"),
        ("r1", vec![(item.id.as_str(), 0)], "lines[0].quantity"),
        ("r1", vec![(item.id.as_str(), 1001)], "lines[0].quantity"),
        (
            "r1",
            vec![(item.id.as_str(), 1), (item.id.as_str(), 1)],
            "lines[1].item_id",
        ),
    ];
    for (rid, lines, field) in cases {
        assert_field(app.reserve(rid, &lines).await, Code::InvalidArgument, field);
    }
    let long = "r".repeat(256);
    assert_field(
        app.reserve(&long, &[(item.id.as_str(), 1)]).await,
        Code::InvalidArgument,
        "reservation_id",
    );
    assert_field(
        app.commit("").await,
        Code::InvalidArgument,
        "reservation_id",
    );
    assert_field(
        app.release("").await,
        Code::InvalidArgument,
        "reservation_id",
    );
    assert_eq!(
        app.commit("nope").await.expect_err("missing").code(),
        Code::NotFound
    );
    assert_eq!(
        app.release("nope").await.expect_err("missing").code(),
        Code::NotFound
    );
    let get = c
        .get_reservation(pb::GetReservationRequest {
            reservation_id: "nope".into(),
        })
        .await;
    assert_eq!(get.expect_err("missing").code(), Code::NotFound);
    app.stop().await;
}

async fn list_all(
    app: &TestApp,
    category: &str,
    query: &str,
    sort: ItemSort,
    page_size: i32,
) -> Vec<pb::Item> {
    let mut c = app.client.clone();
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let res = c
            .list_items(pb::ListItemsRequest {
                category: category.into(),
                query: query.into(),
                sort: sort as i32,
                page: Some(PageRequest {
                    page_size,
                    page_token: token.clone(),
                }),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(res.items.len() <= page_size.max(1) as usize);
        out.extend(res.items);
        token = res.page.expect("page").next_page_token;
        if token.is_empty() {
            return out;
        }
    }
    panic!("paging never ended");
}

#[tokio::test]
async fn paging_through_250_items_has_no_gaps_or_repeats() {
    let app = spawn().await;
    let mut ids = HashSet::new();
    for i in 0..250 {
        // Few distinct prices and names, so pages split inside runs of equal sort keys.
        let cat = if i % 2 == 0 { "even" } else { "odd" };
        let item = app
            .create(
                &format!("P-{i:03}"),
                &format!("Widget {}", i % 7),
                cat,
                100 * (i % 5),
                1,
            )
            .await;
        ids.insert(item.id);
    }
    for sort in [
        ItemSort::Unspecified,
        ItemSort::NameAsc,
        ItemSort::PriceAsc,
        ItemSort::PriceDesc,
        ItemSort::Newest,
    ] {
        let all = list_all(&app, "", "", sort, 17).await;
        let seen: HashSet<_> = all.iter().map(|i| i.id.clone()).collect();
        assert_eq!(all.len(), 250, "{sort:?}: no repeats");
        assert_eq!(seen, ids, "{sort:?}: no gaps");
        let ordered = all.windows(2).all(|w| {
            let (a, b) = (&w[0], &w[1]);
            let pa = a.price.as_ref().map_or(0, |p| p.amount_minor);
            let pb = b.price.as_ref().map_or(0, |p| p.amount_minor);
            match sort {
                ItemSort::Unspecified | ItemSort::NameAsc => {
                    a.name.to_lowercase() <= b.name.to_lowercase()
                }
                ItemSort::PriceAsc => pa <= pb,
                ItemSort::PriceDesc => pa >= pb,
                ItemSort::Newest => {
                    let ta = a.created_at.as_ref().map(|t| (t.seconds, t.nanos));
                    let tb = b.created_at.as_ref().map(|t| (t.seconds, t.nanos));
                    ta >= tb
                }
            }
        });
        assert!(ordered, "{sort:?}: sorted");
    }
    // Default page size is 20; max 100.
    let res = app
        .client
        .clone()
        .list_items(pb::ListItemsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(res.items.len(), 20);
    let res = app
        .client
        .clone()
        .list_items(pb::ListItemsRequest {
            page: Some(PageRequest {
                page_size: 100,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(res.items.len(), 100);

    // Category filter and case-insensitive name search (regex characters are literal).
    let odd = list_all(&app, "ODD", "", ItemSort::PriceAsc, 30).await;
    assert_eq!(odd.len(), 125);
    assert!(odd.iter().all(|i| i.category == "odd"));
    let w3 = list_all(&app, "", "wIDGET 3", ItemSort::NameAsc, 10).await;
    assert!(!w3.is_empty() && w3.iter().all(|i| i.name == "Widget 3"));
    assert!(
        list_all(&app, "", "widget.", ItemSort::NameAsc, 10)
            .await
            .is_empty()
    );

    // A token is bound to its filter and sort.
    let first = app
        .client
        .clone()
        .list_items(pb::ListItemsRequest {
            category: "odd".into(),
            sort: ItemSort::PriceAsc as i32,
            page: Some(PageRequest {
                page_size: 5,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let token = first.page.expect("page").next_page_token;
    for (category, sort) in [("even", ItemSort::PriceAsc), ("odd", ItemSort::NameAsc)] {
        let res = app
            .client
            .clone()
            .list_items(pb::ListItemsRequest {
                category: category.into(),
                sort: sort as i32,
                page: Some(PageRequest {
                    page_size: 5,
                    page_token: token.clone(),
                }),
                ..Default::default()
            })
            .await;
        assert_field(res, Code::InvalidArgument, "page.page_token");
    }
    app.stop().await;
}

#[tokio::test]
async fn paging_by_very_long_names_still_works() {
    // 200 two-byte characters: too long to carry in a 512-byte token, so the token holds
    // only the id and the server reads the key back.
    let app = spawn().await;
    let mut ids = HashSet::new();
    for i in 0..7 {
        let name = format!("{i}{}", "ü".repeat(199));
        ids.insert(
            app.create(&format!("L-{i}"), &name, "long", 100, 1)
                .await
                .id,
        );
    }
    let all = list_all(&app, "long", "", ItemSort::NameAsc, 2).await;
    assert_eq!(all.len(), 7);
    assert_eq!(
        all.iter().map(|i| i.id.clone()).collect::<HashSet<_>>(),
        ids
    );
    assert!(all.windows(2).all(|w| w[0].name <= w[1].name));
    app.stop().await;
}

#[tokio::test]
async fn paging_is_stable_under_concurrent_inserts() {
    let app = spawn().await;
    let mut before = HashSet::new();
    for i in 0..60 {
        before.insert(
            app.create(&format!("S-{i:03}"), &format!("Item {i:03}"), "c", 100, 1)
                .await
                .id,
        );
    }
    let mut c = app.client.clone();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut n = 0;
    loop {
        let res = c
            .list_items(pb::ListItemsRequest {
                page: Some(PageRequest {
                    page_size: 7,
                    page_token: token.clone(),
                }),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        seen.extend(res.items.into_iter().map(|i| i.id));
        // Insert between pages, before and after the cursor in name order.
        app.create(&format!("N-{n:03}"), &format!("Item {n:03}x"), "c", 100, 1)
            .await;
        app.create(&format!("M-{n:03}"), "Aaa first", "c", 100, 1)
            .await;
        n += 1;
        token = res.page.expect("page").next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no repeats");
    assert!(
        before.is_subset(&unique),
        "every item that existed throughout was served"
    );
    app.stop().await;
}

#[tokio::test]
async fn grpcurl_list_and_get_item_via_reflection() {
    let grpcurl = env("GRPCURL");
    let app = spawn().await;
    let item = app.create("CURL-1", "Curl Mug", "kitchen", 999, 4).await;
    let addr = app.grpc_addr.to_string();
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(grpcurl).args(args).output()
            })
            .await
            .expect("join")
            .expect("grpcurl runs")
        }
    };
    let out = run(vec!["-plaintext".into(), addr.clone(), "list".into()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("shop.item.v1.ItemService"), "{stdout}");
    assert!(stdout.contains("grpc.health.v1.Health"), "{stdout}");

    let out = run(vec![
        "-plaintext".into(),
        "-H".into(),
        format!(
            "x-shop-caller: {}",
            test_support::identity::operator_token(platform::identity::ITEM_SERVICE)
        ),
        "-d".into(),
        format!("{{\"id\":\"{}\"}}", item.id),
        addr.clone(),
        "shop.item.v1.ItemService/GetItem".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"sku\": \"CURL-1\""), "{stdout}");
    assert!(stdout.contains("Curl Mug"), "{stdout}");

    let out = run(vec![
        "-plaintext".into(),
        "-d".into(),
        "{\"service\":\"shop.item.v1.ItemService\"}".into(),
        addr,
        "grpc.health.v1.Health/Check".into(),
    ])
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));
    app.stop().await;
}

#[tokio::test]
async fn seed_loads_at_least_1000_items_and_is_idempotent() {
    let app = spawn().await;
    let db = app.service.database().clone();
    let first = item_service::seed_catalog(&db).await.expect("seed");
    assert!(first.total >= 1000);
    assert_eq!(first.inserted, first.total);
    let again = item_service::seed_catalog(&db).await.expect("seed again");
    assert_eq!(again.inserted, 0);
    let all = list_all(&app, "", "", ItemSort::PriceAsc, 100).await;
    assert_eq!(all.len(), first.total);
    let categories: HashSet<_> = all.iter().map(|i| i.category.clone()).collect();
    assert!(categories.len() >= 10, "{categories:?}");
    // Deleting one and re-seeding restores only that one.
    app.client
        .clone()
        .delete_item(pb::DeleteItemRequest {
            id: all[0].id.clone(),
        })
        .await
        .expect("delete");
    let third = item_service::seed_catalog(&db).await.expect("seed third");
    assert_eq!(third.inserted, 1);
    app.stop().await;
}

//! The synchronous-vs-asynchronous section end to end, in quick mode, against the real
//! processes (started by the experiment from the built binaries) on the real stores and NATS
//! (`scripts/stack up`): its tables must hold a row for every strategy it compares, every
//! asynchronous checkout must be placed, and no consumer may apply a duplicate.

use loadtest::experiment::{self, sections::sync_vs_async};
use serde_json::Value;

use crate::crash::built_binaries;

fn rows<'a>(section: &'a Value, caption_start: &str) -> Vec<&'a Vec<Value>> {
    let table = section["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| {
            t["caption"]
                .as_str()
                .is_some_and(|c| c.starts_with(caption_start))
        })
        .unwrap_or_else(|| panic!("no table {caption_start:?}"));
    table["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r.as_array().expect("row"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_section_compares_every_strategy_on_the_real_stack() {
    let out = tempfile::tempdir().expect("tempdir");
    let report = experiment::run(experiment::Options {
        bin_dir: built_binaries(),
        out_dir: out.path().to_owned(),
        quick: true,
        progress: false,
        only: vec!["sync_vs_async".into()],
        rate: None,
        shop_url: None,
    })
    .await
    .expect("the experiment runs");
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("valid JSON");
    let section = &json["sections"][0];
    assert_eq!(section["id"], "sync_vs_async");

    // (a) one row per strategy, every checkout answered and placed.
    let same_load = rows(section, "(a)");
    let names: Vec<&str> = same_load
        .iter()
        .map(|r| r[0].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, sync_vs_async::STYLES);
    for r in &same_load {
        assert_eq!(r[1], r[2], "every checkout answered: {r:?}");
        assert_eq!(r[1], r[7], "every checkout placed: {r:?}");
    }
    // (b) the synchronous strategy and async, side by side; async accepted every checkout
    // during the outage and placed them all once payment-service was back.
    let totals = rows(section, "(b) totals");
    let names: Vec<&str> = totals.iter().map(|r| r[0].as_str().unwrap_or("")).collect();
    assert_eq!(names, [sync_vs_async::OUTAGE_SYNC, "async"]);
    let a = totals[1];
    assert_eq!(a[1], a[2], "async accepted every checkout: {a:?}");
    assert_eq!(a[1], a[4], "async placed every checkout: {a:?}");
    assert_ne!(
        totals[0][3], "0",
        "the synchronous strategy failed some: {:?}",
        totals[0]
    );

    // (c) every consumer of the main path applied each accepted checkout once.
    let accepted = section["figures"]["async_accepted"]
        .as_f64()
        .expect("accepted");
    assert!(accepted > 0.0);
    for c in section["figures"]["consumers"]
        .as_array()
        .expect("consumers")
    {
        let name = c["consumer"].as_str().unwrap_or("");
        if [
            "item-service-checkout-requested",
            "payment-service-stock-reserved",
            "user-service-payment-succeeded",
            "item-service-order-completed",
        ]
        .contains(&name)
        {
            assert_eq!(c["applied"].as_f64(), Some(accepted), "{c}");
        }
    }
    // (d) the lag was sampled.
    assert!(
        !section["figures"]["lag"]
            .as_array()
            .expect("lag")
            .is_empty()
    );
}

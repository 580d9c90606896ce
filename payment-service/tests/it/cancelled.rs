//! Calls cut off by their deadline while payment-service is talking to MariaDB. A deadline
//! that ran out while a transaction was being opened (BEGIN sent, its answer not yet read)
//! used to hand the connection back to the pool inside a transaction nobody knew about:
//! every later statement on it read one old snapshot, so a retried Charge looked up its own
//! payment, found nothing and answered NOT_FOUND although the charge had succeeded. Cut off
//! halfway through reading an answer, a connection never came back to the pool at all.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::harness::{TestApp, VISA_OK, charge_request, new_id, spawn_app_with};

/// A TCP proxy to `target` (set before the first connection) that holds every answer from
/// it for `delay`, so each database round trip lasts long enough for a deadline to fall
/// inside it.
async fn slow_answers(target: Arc<OnceLock<String>>, delay: Duration) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Some(target) = target.get() else {
                continue;
            };
            let Ok(server) = TcpStream::connect(target).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tokio::time::sleep(delay).await;
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn get(app: &TestApp, payment_id: &str) -> Result<(), tonic::Status> {
    app.client
        .clone()
        .get_payment(shop_proto::payment::v1::GetPaymentRequest {
            payment_id: payment_id.into(),
            order_id: String::new(),
        })
        .await
        .map(drop)
}

/// `mysql://user:pass@host:port/db` with `addr` as host and port.
fn via(url: &str, addr: std::net::SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (credentials, rest) = rest.rsplit_once('@').expect("credentials");
    let (authority, path) = rest.split_once('/').expect("a database");
    (
        format!("{scheme}://{credentials}@{addr}/{path}"),
        authority.to_owned(),
    )
}

#[tokio::test]
async fn charges_cut_off_by_their_deadline_never_make_a_later_retry_answer_not_found() {
    let target = Arc::new(OnceLock::new());
    let proxy = slow_answers(target.clone(), Duration::from_millis(2)).await;
    let slow = spawn_app_with(move |c| {
        use secrecy::ExposeSecret as _;
        let (slow_url, direct) = via(c.database_url.expose_secret(), proxy);
        let _ = target.set(direct);
        c.database_url = slow_url.into();
        // Few connections, so a connection left behind is soon used again.
        c.database_max_connections = 2;
    })
    .await;

    // The same database without the proxy: payments made there are what `slow` must see.
    let db_url = slow.db_url.clone();
    let direct = spawn_app_with(move |c| c.database_url = db_url.into()).await;
    let earlier = direct
        .charge(charge_request(&new_id(), 900, VISA_OK))
        .await
        .expect("a first charge");

    let mut wrong = Vec::new();
    for round in 0..32u64 {
        // A charge whose caller gives up somewhere inside its database work.
        let mut cut = tonic::Request::new(charge_request(&new_id(), 1_000, VISA_OK));
        cut.set_timeout(Duration::from_micros(500 + round * 500));
        let _ = slow.client.clone().charge(cut).await;
        // Reads on both connections, as other requests would make.
        for _ in 0..2 {
            if let Err(s) = get(&slow, &earlier.payment_id).await {
                wrong.push(format!("round {round}: GetPayment of the first: {s:?}"));
            }
        }
        let req = charge_request(&new_id(), 1_500, VISA_OK);
        let paid = direct.charge(req.clone()).await.expect("charge");
        for _ in 0..2 {
            if let Err(s) = get(&slow, &paid.payment_id).await {
                wrong.push(format!(
                    "round {round}: GetPayment {}: {s:?}",
                    paid.payment_id
                ));
            }
        }
        match slow.charge(req).await {
            Ok(again) => assert_eq!(again.payment_id, paid.payment_id),
            Err(s) => wrong.push(format!("round {round}: retried Charge: {s:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "payments that exist were not found:\n{}",
        wrong.join("\n")
    );
}

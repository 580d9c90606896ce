//! Card numbers and CVCs never reach the logs, even at debug level, whatever the outcome.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use crate::harness::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_number_or_cvc_in_debug_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let app = spawn_app_with(|c| c.processor_timeout_ms = 300).await;
    app.charge(charge_request("log-ok", 100, VISA_OK))
        .await
        .expect("charge");
    app.charge(charge_request("log-declined", 100, VISA_NO_FUNDS))
        .await
        .expect("declined");
    let mut bad = charge_request("log-bad", 100, "4242424242424241");
    bad.description = String::new();
    app.charge(bad).await.expect_err("luhn");
    app.put_admin(
        "/admin/faults",
        serde_json::json!([{"method": "POST /v1/charges", "error_rate": 1.0}]),
    )
    .await;
    app.charge(charge_request("log-500", 100, VISA_DECLINED))
        .await
        .expect_err("500s");

    let text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(text.contains("payment settled"), "logs were captured");
    for n in ALL_TEST_NUMBERS.iter().chain(&["4242424242424241"]) {
        assert!(!text.contains(n), "a card number reached the logs");
    }
    // The CVC as a value of its own (ids such as UUIDs or trace ids may contain the same
    // digits by chance, so match whole tokens, with '-' and '_' inside tokens).
    let leaked = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .any(|token| token == CVC);
    assert!(!leaked, "the CVC reached the logs");
    let cvc_lines: Vec<String> = text
        .lines()
        .map(str::to_ascii_lowercase)
        .filter(|l| {
            ["cvc:", "cvc\"", "cvc=", "cvc\\\""]
                .iter()
                .any(|p| l.contains(p))
        })
        .collect();
    assert!(
        cvc_lines.is_empty(),
        "a cvc field reached the logs: {cvc_lines:?}"
    );
    app.finish().await;
}

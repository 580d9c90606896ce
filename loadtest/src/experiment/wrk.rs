//! Calibration against `wrk`: same endpoint, connections and duration.

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub non_2xx: u64,
    pub socket_errors: String,
    pub command: String,
}

fn to_ms(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, mul) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|x| x * mul)
}

pub fn parse(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            r.socket_errors = v.trim().to_owned();
        } else {
            let mut parts = t.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("50%"), Some(v), None) => r.p50_ms = to_ms(v),
                (Some("90%"), Some(v), None) => r.p90_ms = to_ms(v),
                (Some("99%"), Some(v), None) => r.p99_ms = to_ms(v),
                _ => {}
            }
        }
    }
    r
}

pub fn available() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok()
}

/// `wrk -t threads -c connections -d duration --latency url`.
pub async fn run(
    url: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    crate::generator::http::Target::parse(url)?;
    let secs = duration.as_secs().max(1);
    let args = [
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{secs}s"),
        "--latency".to_owned(),
        url.to_owned(),
    ];
    let out = tokio::time::timeout(
        duration + Duration::from_secs(30),
        tokio::process::Command::new("wrk").args(&args).output(),
    )
    .await
    .context("wrk did not finish")?
    .context("running wrk (apt-get install wrk)")?;
    if !out.status.success() {
        anyhow::bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut r = parse(&String::from_utf8_lossy(&out.stdout));
    r.command = format!("wrk {}", args.join(" "));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:8080/healthz\n  2 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   612.00us  300.00us   9.00ms   90.00%\n  Latency Distribution\n     50%  550.00us\n     75%  700.00us\n     90%    1.10ms\n     99%    2.50ms\n  250000 requests in 10.00s, 30.00MB read\nRequests/sec:  25000.50\nTransfer/sec:      3.00MB\n";
        let r = parse(out);
        assert_eq!(r.requests_per_sec, 25000.5);
        assert_eq!(r.p50_ms, Some(0.55));
        assert_eq!(r.p99_ms, Some(2.5));
    }
}

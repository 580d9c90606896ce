//! The report: one JSON document with every figure, a Markdown summary generated from the
//! same data, and the SVG charts it names.

use std::{fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use crate::{experiment::charts::Chart, generator::engine::RunResult};

/// Where the numbers were measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// A table for the Markdown (and the JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Table {
    pub caption: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: &str, headers: &[&str]) -> Self {
        Self {
            caption: caption.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// One experiment: what we expected, what we measured, what it teaches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Section {
    /// Stable id: "calibration", "cost_per_hop", "tail_amplification", "availability",
    /// "cascading_failure", "cache".
    pub id: String,
    pub title: String,
    pub setup: String,
    pub prediction: String,
    pub measurement: String,
    pub lesson: String,
    pub tables: Vec<Table>,
    pub charts: Vec<Chart>,
    /// Section-specific derived figures (predictions, ratios, scraped counters).
    pub figures: serde_json::Value,
    /// Every run behind the section, in full.
    pub runs: Vec<RunResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub title: String,
    pub generated_at: String,
    /// "full" or "quick".
    pub mode: String,
    pub machine: Machine,
    /// How the stack was deployed and loaded (binaries, ports, settings).
    pub setup: Vec<String>,
    pub elapsed_s: f64,
    pub sections: Vec<Section>,
    /// Anything that did not go as planned.
    pub notes: Vec<String>,
}

pub const SECTION_IDS: [&str; 7] = [
    "calibration",
    "cost_per_hop",
    "tail_amplification",
    "availability",
    "cascading_failure",
    "cache",
    "sync_vs_async",
];

/// Sections numbered after crash recovery (which has no section of its own here).
const AFTER_RECOVERY: [&str; 1] = ["sync_vs_async"];

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `report.json`, `README.md` and the charts into `dir`.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for s in &report.sections {
        for c in &s.charts {
            crate::experiment::charts::render(c, dir)?;
        }
    }
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(dir.join("README.md"), markdown(report))?;
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", r.title);
    let _ = writeln!(
        md,
        "Generated {} by `loadtest experiment` ({} mode) in {:.0} s.\n",
        r.generated_at, r.mode, r.elapsed_s
    );
    let _ = writeln!(
        md,
        "**Machine:** {} cores (`nproc`), {} (`lscpu` model name), {:.1} GiB RAM, Linux {}. \
         Load generator, every service and every database share these cores, so absolute \
         figures are this machine's; the comparisons between rows are the point.\n",
        r.machine.nproc, r.machine.cpu_model, r.machine.mem_total_gib, r.machine.kernel
    );
    if !r.setup.is_empty() {
        let _ = writeln!(md, "**Setup.**\n");
        for s in &r.setup {
            let _ = writeln!(md, "- {s}");
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "**How to read it.** Latencies are in milliseconds. Open-model runs send at a fixed \
         rate and time each request from its *intended* start, so queueing in the client or \
         the server shows up in the percentiles (coordinated omission corrected). Warm-up is \
         excluded. \"ok %\" is the share of requests answered 2xx (gRPC OK). Every figure, \
         with full per-endpoint histograms summaries and error kinds, is in `report.json`.\n"
    );
    let _ = writeln!(md, "## Contents\n");
    let (before, after): (Vec<&Section>, Vec<&Section>) = r
        .sections
        .iter()
        .partition(|s| !AFTER_RECOVERY.contains(&s.id.as_str()));
    let recovery = before.len();
    let numbered: Vec<(usize, &Section)> = before
        .iter()
        .copied()
        .enumerate()
        .chain(
            after
                .iter()
                .copied()
                .enumerate()
                .map(|(i, s)| (recovery + 1 + i, s)),
        )
        .collect();
    for &(i, s) in numbered.iter().take(recovery) {
        let _ = writeln!(md, "{}. [{}](#{})", i, s.title, anchor(i, &s.title));
    }
    let _ = writeln!(
        md,
        "{recovery}. [{CRASH_RECOVERY}](#{})",
        anchor(recovery, CRASH_RECOVERY)
    );
    for &(i, s) in numbered.iter().skip(recovery) {
        let _ = writeln!(md, "{}. [{}](#{})", i, s.title, anchor(i, &s.title));
    }
    md.push('\n');
    for &(i, s) in numbered.iter().take(recovery) {
        section_markdown(&mut md, i, s);
    }
    let _ = writeln!(
        md,
        "## {recovery}. {CRASH_RECOVERY}\n\n\
         Measured by runs of their own, not by this experiment: `loadtest crash` (every process \
         killed in every step of a checkout) and `loadtest soak` (five minutes of load with a \
         random process killed every 20-40 s), each followed by the consistency checker. \
         Their figures, the timeline of one recovered checkout and how to repeat them are in \
         [crash-recovery.md](crash-recovery.md); the raw outputs in `crash/` and `soak/`.\n"
    );
    for &(i, s) in numbered.iter().skip(recovery) {
        section_markdown(&mut md, i, s);
    }
    if !r.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

/// One section: setup, prediction, measurement, tables, charts, lesson.
fn section_markdown(md: &mut String, i: usize, s: &Section) {
    let _ = writeln!(md, "## {i}. {}\n", s.title);
    if !s.setup.is_empty() {
        let _ = writeln!(md, "**Setup.** {}\n", s.setup);
    }
    let _ = writeln!(md, "**Prediction.** {}\n", s.prediction);
    let _ = writeln!(md, "**Measurement.** {}\n", s.measurement);
    for t in &s.tables {
        if !t.caption.is_empty() {
            let _ = writeln!(md, "*{}*\n", t.caption);
        }
        let _ = writeln!(
            md,
            "| {} |",
            t.headers
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            md,
            "|{}",
            t.headers.iter().map(|_| " --- |").collect::<String>()
        );
        for row in &t.rows {
            let _ = writeln!(
                md,
                "| {} |",
                row.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            );
        }
        md.push('\n');
    }
    for c in &s.charts {
        let _ = writeln!(md, "![{}]({})\n", c.title, c.file);
    }
    let _ = writeln!(md, "**What it teaches.** {}\n", s.lesson);
}

/// The section the crash test and the soak report on (see `report/crash-recovery.md`).
const CRASH_RECOVERY: &str = "Crash recovery";

fn anchor(i: usize, title: &str) -> String {
    let mut a = format!("{i}-");
    for ch in title.to_lowercase().chars() {
        if ch.is_alphanumeric() {
            a.push(ch);
        } else if ch == ' ' || ch == '-' {
            a.push('-');
        }
    }
    a
}

/// "12.34" with sensible precision for milliseconds.
pub fn f_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn f_pct(v: f64) -> String {
    format!("{:.1}", v * 100.0)
}

/// The standard latency row for a run: name, rate, ok %, p50, p90, p99, max, throughput.
pub const RUN_HEADERS: [&str; 8] = [
    "run",
    "offered req/s",
    "throughput req/s",
    "ok %",
    "p50",
    "p90",
    "p99",
    "max",
];

pub fn run_row(label: &str, r: &RunResult) -> Vec<String> {
    vec![
        label.to_owned(),
        r.offered_rps
            .map_or_else(|| "closed".into(), |v| format!("{v:.0}")),
        format!("{:.1}", r.throughput_rps),
        f_pct(r.success_rate),
        f_ms(r.latency.p50_ms),
        f_ms(r.latency.p90_ms),
        f_ms(r.latency.p99_ms),
        f_ms(r.latency.max_ms),
    ]
}

//! SVG charts (plotters): grouped bars (per strategy / configuration), horizontal stacked
//! bars (where a request's time goes) and lines (latency vs offered load, success vs
//! injected failure).

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Curve {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed-looking (thin, no markers): predictions.
    #[serde(default)]
    pub predicted: bool,
}

/// What a chart shows; kept in the JSON so every plotted figure is there too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChartSpec {
    Bars {
        y_label: String,
        categories: Vec<String>,
        series: Vec<BarSeries>,
    },
    Lines {
        x_label: String,
        y_label: String,
        series: Vec<Curve>,
    },
    /// Horizontal bars, one per category, each made of the series' values stacked left to
    /// right (where a request's time goes); `marks` (one per category, optional) are drawn
    /// as a tick across the bar (e.g. the client-seen latency).
    Stacked {
        x_label: String,
        categories: Vec<String>,
        series: Vec<BarSeries>,
        #[serde(default)]
        marks: Vec<f64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Chart {
    /// File name inside the report directory, e.g. "latency_per_strategy.svg".
    pub file: String,
    pub title: String,
    pub spec: ChartSpec,
}

const W: u32 = 900;
const H: u32 = 480;

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

fn finite_max(vals: impl Iterator<Item = f64>) -> f64 {
    vals.filter(|v| v.is_finite()).fold(0.0_f64, f64::max)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

pub fn render(chart: &Chart, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(&chart.file);
    let r = match &chart.spec {
        ChartSpec::Bars {
            y_label,
            categories,
            series,
        } => bars(&path, &chart.title, y_label, categories, series),
        ChartSpec::Lines {
            x_label,
            y_label,
            series,
        } => lines(&path, &chart.title, x_label, y_label, series),
        ChartSpec::Stacked {
            x_label,
            categories,
            series,
            marks,
        } => stacked(&path, &chart.title, x_label, categories, series, marks),
    };
    r.map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}

fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[BarSeries],
) -> DrawResult {
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = categories.len().max(1);
    let ymax = finite_max(series.iter().flat_map(|s| s.values.iter().copied())).max(1e-3) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(y_label)
        .draw()?;
    let k = series.len().max(1);
    let group = 0.8;
    let w = group / k as f64;
    for (si, s) in series.iter().enumerate() {
        let c = color(si);
        chart
            .draw_series(
                s.values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(ci, v)| {
                        let x0 = ci as f64 + (1.0 - group) / 2.0 + si as f64 * w;
                        Rectangle::new([(x0, 0.0), (x0 + w * 0.95, *v)], c.filled())
                    }),
            )?
            .label(s.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    // Category names under the axis, in pixels (plotters' numeric ticks would not land on
    // the bar groups).
    for (ci, name) in categories.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(ci as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            name.clone(),
            (px, py + 8),
            ("sans-serif", 14).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ),
            ),
        ))?;
    }
    root.present()?;
    Ok(())
}

fn stacked(
    path: &Path,
    title: &str,
    x_label: &str,
    categories: &[String],
    series: &[BarSeries],
    marks: &[f64],
) -> DrawResult {
    let n = categories.len().max(1);
    let root = SVGBackend::new(path, (W, H.max(140 + 60 * n as u32))).into_drawing_area();
    root.fill(&WHITE)?;
    let value = |si: usize, ci: usize| -> f64 {
        series[si]
            .values
            .get(ci)
            .copied()
            .filter(|v| v.is_finite() && *v > 0.0)
            .unwrap_or(0.0)
    };
    let sums = (0..n).map(|ci| (0..series.len()).map(|si| value(si, ci)).sum::<f64>());
    // Room on the right for the legend, so it never hides a bar.
    let xmax = finite_max(sums.chain(marks.iter().copied())).max(1e-3) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(190)
        .build_cartesian_2d(0f64..xmax, 0f64..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .y_label_formatter(&|_| String::new())
        .x_desc(x_label)
        .draw()?;
    let mut left = vec![0.0; n];
    for (si, s) in series.iter().enumerate() {
        let c = color(si);
        let bars: Vec<_> = (0..n)
            .filter(|ci| value(si, *ci) > 0.0)
            .map(|ci| {
                let (x0, x1) = (left[ci], left[ci] + value(si, ci));
                left[ci] = x1;
                let y = (n - 1 - ci) as f64;
                Rectangle::new([(x0, y + 0.2), (x1, y + 0.8)], c.filled())
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(s.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    chart.draw_series(
        marks
            .iter()
            .enumerate()
            .filter(|(ci, m)| *ci < n && m.is_finite() && **m > 0.0)
            .map(|(ci, m)| {
                let y = (n - 1 - ci) as f64;
                PathElement::new(vec![(*m, y + 0.1), (*m, y + 0.9)], BLACK.stroke_width(3))
            }),
    )?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    // Category names left of their bars, in pixels.
    for (ci, name) in categories.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(0.0, (n - 1 - ci) as f64 + 0.5));
        root.draw(&Text::new(
            name.clone(),
            (px - 8, py),
            ("sans-serif", 14).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Right,
                    plotters::style::text_anchor::VPos::Center,
                ),
            ),
        ))?;
    }
    root.present()?;
    Ok(())
}

fn lines(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Curve]) -> DrawResult {
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let pts = || series.iter().flat_map(|s| s.points.iter().copied());
    let xmax = finite_max(pts().map(|p| p.0)).max(1e-3) * 1.05;
    let ymax = finite_max(pts().map(|p| p.1)).max(1e-3) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()?;
    for (si, s) in series.iter().enumerate() {
        let c = color(si);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let style = if s.predicted {
            c.stroke_width(1)
        } else {
            c.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), style))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        if !s.predicted {
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

//! `curves.png`: training loss and metric (accuracy, or a regression's mean absolute error;
//! smoothed) with the held-out evaluations, against steps. Pure Rust (plotters' bitmap backend, the DejaVu font compiled in), no system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use super::objective::Metric;
use super::trainer::StepRecord;
use crate::error::{Error, Result};

static FONT: Once = Once::new();

fn smooth(values: &[f64], window: usize) -> Vec<f64> {
    (0..values.len())
        .map(|i| {
            let lo = i.saturating_sub(window - 1);
            values[lo..=i].iter().sum::<f64>() / (i - lo + 1) as f64
        })
        .collect()
}

fn register_font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Draws `records` (of a run scored by `metric`) into `path` (PNG) under `title`.
pub fn curves(path: &Path, records: &[StepRecord], title: &str, metric: Metric) -> Result<()> {
    register_font();
    if records.is_empty() {
        return Ok(());
    }
    let err = |e: String| Error::Io {
        path: path.display().to_string(),
        message: format!("cannot draw the plot: {e}"),
    };
    let root = BitMapBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((1, 2));
    let steps: Vec<f64> = records.iter().map(|r| r.step as f64).collect();
    let max_step = steps.last().copied().unwrap_or(1.0).max(1.0);
    let window = (records.len() / 50).max(1);
    let series = [
        (
            "loss",
            smooth(&records.iter().map(|r| r.loss).collect::<Vec<_>>(), window),
            0usize,
        ),
        (
            metric.name(),
            smooth(
                &records.iter().map(|r| r.metric).collect::<Vec<_>>(),
                window,
            ),
            1,
        ),
    ];
    for (panel, (name, train, which)) in panels.iter().zip(series) {
        let evals: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|r| {
                r.eval
                    .map(|(l, a)| (r.step as f64, if which == 0 { l } else { a }))
            })
            .collect();
        let (lo, hi) = if which == 1 && metric == Metric::Accuracy {
            (0.0, 1.0)
        } else {
            let all = train.iter().chain(evals.iter().map(|e| &e.1));
            let hi = all.clone().cloned().fold(f64::MIN, f64::max);
            let lo = all.cloned().fold(f64::MAX, f64::min);
            (lo.min(0.0), hi * 1.05 + 1e-9)
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{title}: {name}"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..max_step, lo..hi)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(steps.iter().cloned().zip(train), &BLUE))
            .map_err(|e| err(e.to_string()))?
            .label(format!("train {name}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        if !evals.is_empty() {
            chart
                .draw_series(LineSeries::new(evals.clone(), RED.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(format!("held-out {name}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
            chart
                .draw_series(evals.iter().map(|&p| Circle::new(p, 4, RED.filled())))
                .map_err(|e| err(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(if which == 0 || metric != Metric::Accuracy {
                SeriesLabelPosition::UpperRight
            } else {
                SeriesLabelPosition::LowerRight
            })
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Distinct colours that read well on white.
const LINE_COLOURS: [RGBColor; 8] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// One line of an accuracy chart: a name and its (x, accuracy) points.
pub type Line = (String, Vec<(f64, f64)>);

/// Accuracy (0–1) against `x_desc`, one coloured line with markers per entry of `lines`.
pub fn accuracy_lines(path: &Path, title: &str, x_desc: &str, lines: &[Line]) -> Result<()> {
    register_font();
    let err = |e: String| Error::Io {
        path: path.display().to_string(),
        message: format!("cannot draw the plot: {e}"),
    };
    let xs = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if lo > hi {
        return Ok(());
    }
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let root = BitMapBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(lo..hi, 0.0..1.02)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("held-out accuracy")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (k, (name, points)) in lines.iter().enumerate() {
        let colour = LINE_COLOURS[k % LINE_COLOURS.len()].to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

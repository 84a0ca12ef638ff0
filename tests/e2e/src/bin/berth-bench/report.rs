//! The output: one JSON object per line on stdout.

use super::*;

/// One line of output. Fields in the order of the contract's example: what, then numbers.
#[derive(Serialize)]
pub(crate) struct Line<'a> {
    pub(crate) bench: &'a str,
    pub(crate) metric: &'a str,
    pub(crate) unit: &'a str,
    #[serde(flatten)]
    pub(crate) stats: Option<Stats>,
    /// How many things `value` is about, when it is one figure (pods started at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) n: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<f64>,
    #[serde(flatten)]
    pub(crate) image: Option<ImageFields>,
    /// Which processes a memory figure is about, when not the daemon's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) processes: Option<&'a str>,
    /// The runtime handler a figure is about (the `handlers` bench).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) handler: Option<&'a str>,
    /// Why there is no figure: the handler cannot run containers on this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) skipped: Option<&'a str>,
    /// How many running containers a stats figure is about (the `stats` bench).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) containers: Option<usize>,
}

#[derive(Serialize)]
pub(crate) struct Stats {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

#[derive(Serialize)]
pub(crate) struct ImageFields {
    pub(crate) mb: usize,
    pub(crate) layers: usize,
    pub(crate) mb_per_s: f64,
    pub(crate) compressed_bytes: usize,
}

impl Stats {
    pub(crate) fn of(values: &[f64]) -> Stats {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Stats {
            n: values.len(),
            p50: round(percentile(values, 0.5), 4),
            p90: round(percentile(values, 0.9), 4),
            min: round(min, 4),
            max: round(max, 4),
        }
    }
}

/// A line with only what it is about; fill in the rest with `..line(…)`.
pub(crate) fn line<'a>(bench: &'a str, metric: &'a str, unit: &'a str) -> Line<'a> {
    Line {
        bench,
        metric,
        unit,
        stats: None,
        n: None,
        value: None,
        image: None,
        processes: None,
        handler: None,
        skipped: None,
        containers: None,
    }
}

pub(crate) fn print(line: &Line) {
    println!("{}", serde_json::to_string(line).expect("a line serialises"));
}

/// Nearest rank: the smallest value with at least `p` of the values at or below it.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(crate) fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

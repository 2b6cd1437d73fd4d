//! `metrics.csv`: one row per step (eval columns filled where an evaluation ran), and the same
//! rows as JSON Lines in `metrics.jsonl` (full precision; `null` where no evaluation ran). On
//! resume the rows after the checkpoint's step are dropped, so the files always match the run.
//! The metric's columns are named after it: `accuracy` and `eval_accuracy`, or `mae` and
//! `eval_mae` for a regression.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::objective::Metric;
use super::trainer::StepRecord;
use crate::error::{Error, Result};

/// The CSV's header line for runs scored by `metric`.
fn header(metric: Metric) -> String {
    let m = metric.name();
    format!("step,loss,{m},lr,grad_norm,eval_loss,eval_{m},elapsed_s")
}

/// Both files of a run's metrics, appended to step by step.
pub struct Metrics {
    path: PathBuf,
    metric: Metric,
    file: std::fs::File,
    json_path: PathBuf,
    json: std::fs::File,
}

fn io(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl Metrics {
    /// Starts the file (step 0) or keeps its rows up to `start_step` (resume), for a run scored
    /// by `metric`. The kept rows are rewritten atomically, so an interruption here never loses
    /// the run's history.
    pub fn open(path: &Path, start_step: usize, metric: Metric) -> Result<Self> {
        let kept: Vec<StepRecord> = if start_step > 0 && path.exists() {
            Self::read(path)?
                .into_iter()
                .filter(|r| r.step <= start_step)
                .collect()
        } else {
            Vec::new()
        };
        let mut text = format!("{}\n", header(metric));
        let mut lines = String::new();
        for r in &kept {
            text.push_str(&Self::row(r));
            lines.push_str(&Self::json_line(r, metric));
        }
        let json_path = path.with_extension("jsonl");
        crate::files::write_atomic(&json_path, lines.as_bytes())?;
        crate::files::write_atomic(path, text.as_bytes())?;
        let append = |p: &Path| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .map_err(|e| io(p, e))
        };
        Ok(Self {
            path: path.to_path_buf(),
            metric,
            file: append(path)?,
            json: append(&json_path)?,
            json_path,
        })
    }

    /// One JSON object per line, the CSV's columns by the same names, in the same order.
    fn json_line(r: &StepRecord, metric: Metric) -> String {
        let m = metric.name();
        let fields: [(String, serde_json::Value); 8] = [
            ("step".into(), r.step.into()),
            ("loss".into(), r.loss.into()),
            (m.into(), r.metric.into()),
            ("lr".into(), r.lr.into()),
            ("grad_norm".into(), r.grad_norm.into()),
            ("eval_loss".into(), r.eval.map(|e| e.0).into()),
            (format!("eval_{m}"), r.eval.map(|e| e.1).into()),
            ("elapsed_s".into(), r.elapsed.into()),
        ];
        // written field by field to keep the CSV's order (a JSON map would sort the keys)
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}\n", body.join(","))
    }

    fn row(r: &StepRecord) -> String {
        let (el, ea) = match r.eval {
            Some((l, a)) => (format!("{l:.6}"), format!("{a:.6}")),
            None => (String::new(), String::new()),
        };
        format!(
            "{},{:.6},{:.6},{:.6e},{:.6},{el},{ea},{:.3}\n",
            r.step, r.loss, r.metric, r.lr, r.grad_norm, r.elapsed
        )
    }

    /// Appends one step to both files.
    pub fn write(&mut self, r: &StepRecord) -> Result<()> {
        self.file
            .write_all(Self::row(r).as_bytes())
            .map_err(|e| io(&self.path, e))?;
        self.json
            .write_all(Self::json_line(r, self.metric).as_bytes())
            .map_err(|e| io(&self.json_path, e))
    }

    /// Reads `metrics.csv` back (of either metric: its header says which).
    pub fn read(path: &Path) -> Result<Vec<StepRecord>> {
        let text = crate::files::read_text_capped(path, crate::files::TEXT_CAP, "the metrics")?;
        let first = text.lines().next().unwrap_or("");
        if ![Metric::Accuracy, Metric::MeanAbsoluteError]
            .iter()
            .any(|&m| header(m) == first)
        {
            return Err(io(path, format!("line 1: not a metrics header: `{first}`")));
        }
        let mut out = Vec::new();
        for (k, line) in text.lines().enumerate().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let bad = || io(path, format!("line {}: malformed metrics row", k + 1));
            if f.len() != 8 {
                return Err(bad());
            }
            let num = |s: &str| s.parse::<f64>().map_err(|_| bad());
            let eval = if f[5].is_empty() {
                None
            } else {
                Some((num(f[5])?, num(f[6])?))
            };
            out.push(StepRecord {
                step: f[0].parse().map_err(|_| bad())?,
                loss: num(f[1])?,
                metric: num(f[2])?,
                lr: num(f[3])?,
                grad_norm: num(f[4])?,
                eval,
                elapsed: num(f[7])?,
            });
        }
        Ok(out)
    }
}

//! An experiment's outputs: `results.md` and `results.csv` (one row per run), `sizes.csv`,
//! `accuracy-vs-steps.png` and, for tasks with a size, `accuracy-vs-size.png`.

use std::fmt::Write as _;
use std::path::Path;

use super::TaskReport;
use crate::error::{Error, Result};
#[cfg(feature = "plots")]
use crate::train::plot::{accuracy_lines, Line};

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn percent(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// `mean ± sd` in percent; `–` when there is no value (no run of that rule finished), never a
/// number made up for it.
pub fn accuracy_cell(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let (m, s) = mean_sd(values);
    format!("{} ± {}", percent(m), percent(s))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// How much a run's held-out accuracy rose over its last third: the final accuracy less the
/// accuracy at the last evaluation at or before two thirds of `steps` (`None`: no such point).
/// A curve is called flat when this is within ±1 point.
pub fn late_gain(run: &super::RunResult, steps: usize) -> Option<f64> {
    let cut = steps * 2 / 3;
    let before = run.curve.iter().rev().find(|(s, _)| *s <= cut)?;
    Some(run.accuracy - before.1)
}

/// The mean late gain of `runs` in points (`–` when no run has one).
fn late_gain_cell(runs: &[&super::RunResult], steps: usize) -> String {
    let gains: Vec<f64> = runs.iter().filter_map(|r| late_gain(r, steps)).collect();
    if gains.is_empty() {
        "–".into()
    } else {
        format!("{:+.1}", mean_sd(&gains).0 * 100.0)
    }
}

/// The task's Markdown section: settings, then one row per rule.
pub fn markdown(r: &TaskReport) -> String {
    let c = &r.config;
    let mut out = String::new();
    let _ = writeln!(out, "### {}\n", r.task);
    let _ = writeln!(
        out,
        "Depth {}, {} steps × batch {}, lr {}, seeds {}; held-out accuracy over {} batches; \
         majority-class rate {}%; parameters matched to {}; \"last third\" is the rise of \
         held-out accuracy over the last third of training (final less the evaluation at two \
         thirds of the steps, mean over seeds, in points: within ±1 the curve is flat).\n",
        c.depth,
        c.steps,
        c.batch,
        c.lr,
        c.seed_range()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        c.eval_batches,
        percent(r.base_rate),
        thousands(r.budget)
    );
    let probe = if r.has_probe { " probe |" } else { "" };
    let _ = writeln!(
        out,
        "| rule | dim | parameters | vs budget | held-out accuracy % |{probe} per seed | last third | rule GFLOP/step | s/run |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: |{} --- | ---: | ---: | ---: |",
        if r.has_probe { " ---: |" } else { "" }
    );
    for (m, flops) in r.matched.iter().zip(&r.flops_per_step) {
        let runs: Vec<_> = r.runs_of(&m.rule).collect();
        let acc: Vec<f64> = runs.iter().map(|x| x.accuracy).collect();
        let per_seed: Vec<String> = acc.iter().map(|&a| percent(a)).collect();
        let secs = if runs.is_empty() {
            "–".into()
        } else {
            format!(
                "{:.0}",
                mean_sd(&runs.iter().map(|x| x.seconds).collect::<Vec<_>>()).0
            )
        };
        let probe = if r.has_probe {
            let p: Vec<f64> = runs.iter().filter_map(|x| x.probe).collect();
            format!(" {} |", accuracy_cell(&p))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:+.1}% | {} |{probe} {} | {} | {:.2} | {} |",
            m.rule,
            m.config.dim,
            thousands(m.params),
            (m.params as f64 / r.budget as f64 - 1.0) * 100.0,
            accuracy_cell(&acc),
            per_seed.join(" / "),
            late_gain_cell(&runs, c.steps),
            flops / 1e9,
            secs
        );
    }
    if let Some(label) = &r.size_label {
        let sizes: Vec<usize> = r
            .runs
            .first()
            .map(|x| x.by_size.iter().map(|s| s.0).collect())
            .unwrap_or_default();
        let _ = writeln!(out, "\nHeld-out accuracy % by {label} (mean over seeds):\n");
        let _ = writeln!(
            out,
            "| rule | {} |",
            sizes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(out, "| --- |{}", " ---: |".repeat(sizes.len()));
        for m in &r.matched {
            let cells: Vec<String> = sizes
                .iter()
                .map(|&s| {
                    let v: Vec<f64> = r
                        .runs_of(&m.rule)
                        .filter_map(|x| x.by_size.iter().find(|b| b.0 == s).map(|b| b.1))
                        .collect();
                    if v.is_empty() {
                        "–".into()
                    } else {
                        percent(mean_sd(&v).0)
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", m.rule, cells.join(" | "));
        }
    }
    out
}

/// One CSV row per run.
pub fn csv(r: &TaskReport) -> String {
    let mut out = String::from(
        "task,rule,seed,dim,parameters,budget,accuracy,loss,probe,base_rate,rule_flops_per_step,seconds\n",
    );
    for run in &r.runs {
        let k = r
            .matched
            .iter()
            .position(|m| m.rule == run.rule)
            .unwrap_or(0);
        let m = &r.matched[k];
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{:.6},{:.6},{},{:.6},{:.4e},{:.2}",
            r.task,
            run.rule,
            run.seed,
            m.config.dim,
            m.params,
            r.budget,
            run.accuracy,
            run.loss,
            run.probe.map(|p| format!("{p:.6}")).unwrap_or_default(),
            r.base_rate,
            r.flops_per_step[k],
            run.seconds
        );
    }
    out
}

/// Held-out accuracy (mean over seeds) against `x` for every rule.
#[cfg(feature = "plots")]
fn mean_lines(r: &TaskReport, points: impl Fn(&super::RunResult) -> Vec<(f64, f64)>) -> Vec<Line> {
    r.matched
        .iter()
        .map(|m| {
            let per_run: Vec<Vec<(f64, f64)>> = r.runs_of(&m.rule).map(&points).collect();
            let xs: Vec<f64> = per_run
                .first()
                .map(|p| p.iter().map(|q| q.0).collect())
                .unwrap_or_default();
            let line = xs
                .iter()
                .enumerate()
                .map(|(k, &x)| {
                    let v: Vec<f64> = per_run
                        .iter()
                        .filter_map(|p| p.get(k).map(|q| q.1))
                        .collect();
                    (x, mean_sd(&v).0)
                })
                .collect();
            (m.rule.clone(), line)
        })
        .collect()
}

/// Writes the task's files under `dir`.
pub fn write_task(r: &TaskReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    write(&dir.join("results.md"), &markdown(r))?;
    write(&dir.join("results.csv"), &csv(r))?;
    #[cfg(feature = "plots")]
    plots(r, dir)?;
    if r.size_label.is_some() {
        let mut sizes = String::from("task,rule,seed,size,accuracy\n");
        for run in &r.runs {
            for (s, a) in &run.by_size {
                let _ = writeln!(sizes, "{},{},{},{s},{a:.6}", r.task, run.rule, run.seed);
            }
        }
        write(&dir.join("sizes.csv"), &sizes)?;
    }
    Ok(())
}

/// The task's plots: accuracy against steps and, for tasks with sizes, against the size.
#[cfg(feature = "plots")]
fn plots(r: &TaskReport, dir: &Path) -> Result<()> {
    let steps = mean_lines(r, |run| {
        run.curve.iter().map(|&(s, a)| (s as f64, a)).collect()
    });
    accuracy_lines(
        &dir.join("accuracy-vs-steps.png"),
        &format!(
            "{}: held-out accuracy (mean of {} seeds)",
            r.task, r.config.seeds
        ),
        "step",
        &steps,
    )?;
    if let Some(label) = &r.size_label {
        let lines = mean_lines(r, |run| {
            run.by_size.iter().map(|&(s, a)| (s as f64, a)).collect()
        });
        accuracy_lines(
            &dir.join("accuracy-vs-size.png"),
            &format!("{}: held-out accuracy by {label}", r.task),
            label,
            &lines,
        )?;
    }
    Ok(())
}

/// The suite's overview: one row per task, one column per rule (held-out accuracy %).
pub fn suite_markdown(reports: &[TaskReport]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let rules = &first.config.rules;
    let mut out = String::new();
    let _ = writeln!(out, "| task | majority class | {} |", rules.join(" | "));
    let _ = writeln!(out, "| --- | ---: |{}", " ---: |".repeat(rules.len()));
    for r in reports {
        let cells: Vec<String> = rules
            .iter()
            .map(|rule| {
                let acc: Vec<f64> = r.runs_of(rule).map(|x| x.accuracy).collect();
                accuracy_cell(&acc)
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            r.task,
            percent(r.base_rate),
            cells.join(" | ")
        );
    }
    out
}

/// `summary.md`: `header`, what has finished, the suite table, then every task's section.
pub fn summary(header: &str, plan: &super::Plan, collected: &super::Collected) -> String {
    let mut out = format!("{header}\n\n");
    let total = plan.jobs.len();
    let finished = total - collected.failed.len() - collected.missing.len();
    if finished < total {
        let _ = writeln!(
            out,
            "**{finished} of {total} jobs finished**: {} failed, {} not run yet; the tables \
             below hold the finished ones.\n",
            collected.failed.len(),
            collected.missing.len()
        );
        for (id, error) in &collected.failed {
            let _ = writeln!(out, "- job {id} failed: {error}");
        }
        if !collected.failed.is_empty() {
            out.push('\n');
        }
    }
    out.push_str(&suite_markdown(&collected.reports));
    for r in &collected.reports {
        out.push('\n');
        out.push_str(&markdown(r));
    }
    out
}

/// Writes every task's files (of the tasks with a finished run) and `summary.md` into `dir`;
/// returns the summary's path.
pub fn write_all(
    dir: &Path,
    header: &str,
    plan: &super::Plan,
    collected: &super::Collected,
) -> Result<std::path::PathBuf> {
    for r in collected.reports.iter().filter(|r| !r.runs.is_empty()) {
        write_task(r, &dir.join(&r.task))?;
    }
    let path = dir.join("summary.md");
    write(&path, &summary(header, plan, collected))?;
    Ok(path)
}

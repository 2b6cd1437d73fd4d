//! Several finished experiments side by side: each rule's held-out accuracy against the width
//! (and depth) its parameter budget was taken at, so a reader sees where a rule that fails at
//! small width catches up. `compare.md`, `compare.csv` and one `accuracy-vs-width-TASK.png`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::report::{accuracy_cell, late_gain};
use super::{collect, Plan};
use crate::error::{Error, Result};

/// One rule's runs on one task in one experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The experiment's folder.
    pub dir: PathBuf,
    /// The task.
    pub task: String,
    /// The rule as given.
    pub rule: String,
    /// Layers.
    pub depth: usize,
    /// The node width the parameter budget was taken at.
    pub budget_dim: usize,
    /// The rule's own matched width.
    pub dim: usize,
    /// Its parameter count.
    pub params: usize,
    /// Optimizer steps per run.
    pub steps: usize,
    /// Held-out accuracy per seed, in seed order.
    pub accuracies: Vec<(u64, f64)>,
    /// The rise over the last third of training per seed ([`late_gain`]).
    pub late_gains: Vec<f64>,
}

/// Every rule × task of the experiments in `dirs` that has finished runs. An experiment with
/// no finished run is an error naming it (a typo in a folder would otherwise vanish).
pub fn points(dirs: &[PathBuf]) -> Result<Vec<Point>> {
    let mut out = Vec::new();
    for dir in dirs {
        let plan = Plan::read(dir)?;
        let collected = collect(dir, &plan)?;
        let before = out.len();
        for r in &collected.reports {
            for m in &r.matched {
                let runs: Vec<_> = r.runs_of(&m.rule).collect();
                if runs.is_empty() {
                    continue;
                }
                out.push(Point {
                    dir: dir.clone(),
                    task: r.task.clone(),
                    rule: m.rule.clone(),
                    depth: r.config.depth,
                    budget_dim: r.config.widths.dim,
                    dim: m.config.dim,
                    params: m.params,
                    steps: r.config.steps,
                    accuracies: runs.iter().map(|x| (x.seed, x.accuracy)).collect(),
                    late_gains: runs
                        .iter()
                        .filter_map(|x| late_gain(x, r.config.steps))
                        .collect(),
                });
            }
        }
        if out.len() == before {
            return Err(Error::config(
                "experiment compare",
                format!("{} has no finished run", dir.display()),
            ));
        }
    }
    Ok(out)
}

/// A line's name: the rule, with its depth when the points mix depths.
fn series(p: &Point, mixed_depths: bool) -> String {
    if mixed_depths {
        format!("{} · depth {}", p.rule, p.depth)
    } else {
        p.rule.clone()
    }
}

fn tasks(points: &[Point]) -> Vec<String> {
    let mut seen = Vec::new();
    for p in points {
        if !seen.contains(&p.task) {
            seen.push(p.task.clone());
        }
    }
    seen
}

/// Per task: one row per rule (and depth), one column per budget width; cells are the mean ±
/// sd over seeds, with parameters, steps and the late rise below the table.
pub fn markdown(points: &[Point]) -> String {
    let mut out = String::new();
    for task in tasks(points) {
        let of_task: Vec<&Point> = points.iter().filter(|p| p.task == task).collect();
        let depths: BTreeSet<usize> = of_task.iter().map(|p| p.depth).collect();
        let mixed = depths.len() > 1;
        let dims: BTreeSet<usize> = of_task.iter().map(|p| p.budget_dim).collect();
        let mut names: Vec<String> = Vec::new();
        for p in &of_task {
            let s = series(p, mixed);
            if !names.contains(&s) {
                names.push(s);
            }
        }
        let _ = writeln!(out, "### {task}: held-out accuracy % against width\n");
        let _ = writeln!(
            out,
            "| rule | {} |",
            dims.iter()
                .map(|d| format!("dim {d}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(out, "| --- |{}", " ---: |".repeat(dims.len()));
        for name in &names {
            let cells: Vec<String> = dims
                .iter()
                .map(|&d| {
                    let acc: Vec<f64> = of_task
                        .iter()
                        .filter(|p| p.budget_dim == d && series(p, mixed) == *name)
                        .flat_map(|p| p.accuracies.iter().map(|a| a.1))
                        .collect();
                    accuracy_cell(&acc)
                })
                .collect();
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        }
        let _ = writeln!(
            out,
            "\n| rule | budget dim | depth | rule dim | parameters | steps | seeds | per seed | last third |"
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
        );
        for p in &of_task {
            let per_seed: Vec<String> = p
                .accuracies
                .iter()
                .map(|a| format!("{:.1}", a.1 * 100.0))
                .collect();
            let gain = if p.late_gains.is_empty() {
                "–".into()
            } else {
                format!(
                    "{:+.1}",
                    p.late_gains.iter().sum::<f64>() / p.late_gains.len() as f64 * 100.0
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {gain} |",
                p.rule,
                p.budget_dim,
                p.depth,
                p.dim,
                p.params,
                p.steps,
                p.accuracies.len(),
                per_seed.join(" / ")
            );
        }
        out.push('\n');
    }
    out
}

/// One row per run.
pub fn csv(points: &[Point]) -> String {
    let mut out =
        String::from("task,rule,depth,budget_dim,dim,parameters,steps,seed,accuracy,experiment\n");
    for p in points {
        for (seed, acc) in &p.accuracies {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{seed},{acc:.6},{}",
                p.task,
                p.rule,
                p.depth,
                p.budget_dim,
                p.dim,
                p.params,
                p.steps,
                p.dir.display()
            );
        }
    }
    out
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes `compare.md`, `compare.csv` and the plots into `out`; returns the Markdown.
pub fn write_all(points: &[Point], out: &Path) -> Result<String> {
    std::fs::create_dir_all(out).map_err(|e| Error::Io {
        path: out.display().to_string(),
        message: e.to_string(),
    })?;
    let md = markdown(points);
    write(&out.join("compare.md"), &md)?;
    write(&out.join("compare.csv"), &csv(points))?;
    #[cfg(feature = "plots")]
    for task in tasks(points) {
        plot(
            points,
            &task,
            &out.join(format!("accuracy-vs-width-{task}.png")),
        )?;
    }
    Ok(md)
}

/// Held-out accuracy (mean over seeds) against the budget width, one line per rule and depth
/// measured at two widths or more.
#[cfg(feature = "plots")]
fn plot(points: &[Point], task: &str, path: &Path) -> Result<()> {
    let of_task: Vec<&Point> = points.iter().filter(|p| p.task == task).collect();
    let mixed = of_task
        .iter()
        .map(|p| p.depth)
        .collect::<BTreeSet<_>>()
        .len()
        > 1;
    let mut lines: Vec<crate::train::plot::Line> = Vec::new();
    for p in &of_task {
        let name = series(p, mixed);
        let mean = p.accuracies.iter().map(|a| a.1).sum::<f64>() / p.accuracies.len() as f64;
        match lines.iter_mut().find(|l| l.0 == name) {
            Some(line) => line.1.push((p.budget_dim as f64, mean)),
            None => lines.push((name, vec![(p.budget_dim as f64, mean)])),
        }
    }
    // a rule measured at one width only is a row of the table, not a line
    lines.retain(|l| l.1.len() > 1);
    for line in &mut lines {
        line.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    crate::train::plot::accuracy_lines(
        path,
        &format!("{task}: held-out accuracy against width"),
        "budget width (dim)",
        &lines,
    )
}

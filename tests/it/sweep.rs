//! Sweeps in parts: `quartic experiment plan`, `run --job`, `report`. The parts, in two
//! processes at once, give the one-command run's tables; a job killed midway is finished by
//! the next run, which leaves the finished jobs alone.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quartic::experiment::{ExperimentConfig, Plan, TaskSettings};

use crate::common::{quartic, scratch, text};

fn ok(args: &[&str]) -> String {
    let out = quartic(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A CSV without its last column (seconds: the one value that differs run to run).
fn without_seconds(csv: &str) -> String {
    csv.lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The summary's suite table (its header names the command and the time taken).
fn suite_table(summary: &str) -> &str {
    let from = &summary[summary.find("| task |").expect("a suite table")..];
    &from[..from.find("\n\n").unwrap_or(from.len())]
}

/// Markdown without the last column of its tables (s/run).
fn without_last_column(md: &str) -> String {
    md.lines()
        .map(|l| match l.trim_end().strip_suffix('|') {
            Some(row) if l.starts_with('|') => row.rsplit_once('|').map_or(l, |(h, _)| h),
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// plan → run (two processes at once, half the jobs each) → report gives the same tables as the
/// one-command form; a rule given as a file path (with a space in it) runs in a folder of its
/// own inside the output folder.
#[test]
fn a_sweep_in_parts_equals_the_one_command_run() {
    let dir = scratch("sweep-parts");
    let rule_path = dir.join("my rule.rule");
    let (_, source) = quartic::rules::BUILTINS
        .iter()
        .find(|(n, _)| *n == "taylor")
        .unwrap();
    std::fs::write(&rule_path, source).unwrap();
    let rules = format!("baseline,{}", rule_path.display());
    let (one, parts) = (dir.join("one"), dir.join("parts"));
    let settings = |out: &Path| -> Vec<String> {
        [
            "--task",
            "relation-composition",
            "--rules",
            &rules,
            "--seeds",
            "2",
            "--first-seed",
            "5",
            "--steps",
            "12",
            "--batch",
            "8",
            "--eval-every",
            "6",
            "--eval-batches",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let mut args = vec!["experiment".to_string()];
    args.extend(settings(&one));
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // run again, with other threads and the folder spelled otherwise: nothing is retrained
    let mut again = args.clone();
    let at = again.len() - 1;
    again[at] = format!("{}/./", one.display());
    again.extend([
        "--jobs".to_string(),
        "1".into(),
        "--max-memory".into(),
        "unlimited".into(),
    ]);
    let skipped = ok(&again.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(skipped.matches("skipped").count(), 4, "{skipped}");
    let mut args = vec!["experiment".to_string(), "plan".to_string()];
    args.extend(settings(&parts));
    let planned = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(planned.contains("planned 4 jobs"), "{planned}");
    for f in ["plan.json", "jobs.jsonl", "slurm.sh", "run-local.sh"] {
        assert!(parts.join(f).exists(), "{f}");
    }
    let slurm = std::fs::read_to_string(parts.join("slurm.sh")).unwrap();
    assert!(slurm.contains("#SBATCH --array=0-0"), "{slurm}");
    let spawn = |jobs: &str| {
        Command::new(env!("CARGO_BIN_EXE_quartic"))
            .args(["experiment", "run", parts.to_str().unwrap(), "--job", jobs])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("0,2"), spawn("1-1,3"));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).matches("held-out accuracy").count(), 2);
    }
    ok(&["experiment", "report", parts.to_str().unwrap()]);
    let task = "relation-composition";
    let read = |root: &Path, f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    let csv = format!("{task}/results.csv");
    assert_eq!(
        without_seconds(&read(&one, &csv)),
        without_seconds(&read(&parts, &csv))
    );
    assert_eq!(read(&one, &csv).lines().count(), 5);
    let md = format!("{task}/results.md");
    assert_eq!(
        without_last_column(&read(&one, &md)),
        without_last_column(&read(&parts, &md))
    );
    assert!(read(&one, &md).contains("seeds 5, 6"));
    let (s1, s2) = (read(&one, "summary.md"), read(&parts, "summary.md"));
    assert_eq!(suite_table(&s1), suite_table(&s2));
    assert!(suite_table(&s1).contains("my rule.rule"), "{s1}");
    assert!(s2.contains("Planned by `quartic experiment plan"), "{s2}");
    // the rule file's runs are in the output folder, under its stem
    assert!(parts
        .join(task)
        .join("runs/my_rule/seed6/result.json")
        .exists());
    // the same plan again keeps what finished; other settings are refused
    let again = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(again.contains("planned 4 jobs"));
    let rerun = ok(&["experiment", "run", parts.to_str().unwrap(), "--all"]);
    assert_eq!(rerun.matches("skipped").count(), 4, "{rerun}");
    let mut other = args.clone();
    other[args.iter().position(|a| a == "--steps").unwrap() + 1] = "13".into();
    let refused = quartic(&other.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("holds a plan with other settings"),
        "{}",
        text(&refused.stderr)
    );
}

/// A job killed (SIGKILL) after its first checkpoint leaves no result; running the plan again
/// skips the finished job (its result untouched) and continues the killed one from its
/// checkpoint, to the result of a run that was never stopped.
#[test]
fn a_rerun_finishes_only_what_is_missing() {
    let dir = scratch("sweep-killed");
    let plan_args = |out: &Path| {
        vec![
            "experiment".to_string(),
            "plan".into(),
            "--task".into(),
            "relation-composition".into(),
            "--rules".into(),
            "baseline,taylor".into(),
            "--seeds".into(),
            "1".into(),
            "--steps".into(),
            "160".into(),
            "--batch".into(),
            "16".into(),
            "--eval-every".into(),
            "40".into(),
            "--eval-batches".into(),
            "2".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let (killed, whole) = (dir.join("killed"), dir.join("whole"));
    for out in [&killed, &whole] {
        ok(&plan_args(out)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>());
    }
    let k = killed.to_str().unwrap();
    ok(&["experiment", "run", k, "--job", "0"]);
    let first = killed.join("relation-composition/runs/baseline/seed0/result.json");
    let before = std::fs::read(&first).unwrap();
    let modified = std::fs::metadata(&first).unwrap().modified().unwrap();
    let job = killed.join("relation-composition/runs/taylor/seed0");
    let mut child = Command::new(env!("CARGO_BIN_EXE_quartic"))
        .args(["experiment", "run", k, "--job", "1", "--jobs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !job.join("checkpoint.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint was written");
        assert!(child.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !job.join("result.json").exists(),
        "the job finished before it was killed"
    );
    let report = ok(&["experiment", "report", k]);
    assert!(report.contains("1 of 2 jobs finished"), "{report}");
    let rerun = ok(&["experiment", "run", k, "--all"]);
    assert!(
        rerun.contains("job 0: relation-composition · baseline · seed 0: finished before"),
        "{rerun}"
    );
    assert!(
        rerun.contains("continued from its checkpoint at step"),
        "{rerun}"
    );
    assert_eq!(std::fs::read(&first).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&first).unwrap().modified().unwrap(),
        modified
    );
    ok(&["experiment", "run", whole.to_str().unwrap(), "--job", "1"]);
    let plan = Plan::read(&killed).unwrap();
    let record = |root: &Path| {
        quartic::experiment::jobs::read_record(root, &plan.jobs[1])
            .unwrap()
            .expect("finished")
            .status
    };
    let result = |s| match s {
        quartic::experiment::jobs::Status::Finished { result } => result,
        other => panic!("{other:?}"),
    };
    let (resumed, uninterrupted) = (result(record(&killed)), result(record(&whole)));
    assert_eq!(resumed.loss, uninterrupted.loss);
    assert_eq!(resumed.accuracy, uninterrupted.accuracy);
    assert_eq!(resumed.curve, uninterrupted.curve);
    assert_eq!(resumed.curve.len(), 4);
}

/// `--job` takes what `sbatch --array` takes and names a job that does not exist; a plan whose
/// job folder leaves the plan's folder is refused.
#[test]
fn job_selection_and_plan_files_are_checked() {
    let dir = scratch("sweep-select");
    let cfg = ExperimentConfig {
        rules: vec!["baseline".into()],
        seeds: 3,
        out: dir.to_path_buf(),
        ..ExperimentConfig::default()
    };
    let task = TaskSettings {
        task: "relation-composition".into(),
        steps: 2,
        batch: 4,
    };
    let plan = Plan::new(&[task], &cfg, "test").unwrap();
    assert_eq!(plan.select("0-1,2").unwrap(), vec![0, 1, 2]);
    assert_eq!(plan.select("2, 0").unwrap(), vec![0, 2]);
    for (spec, expected) in [
        ("3", "job 3 does not exist: the plan has 3 jobs"),
        ("2-1", "empty range"),
        ("x", "not a job number"),
        ("", "not a job number"),
    ] {
        let e = plan.select(spec).unwrap_err().to_string();
        assert!(e.contains(expected), "{spec}: {e}");
    }
    plan.write(&dir, 2).unwrap();
    assert_eq!(Plan::read(&dir).unwrap(), plan);
    let jobs = std::fs::read_to_string(dir.join("jobs.jsonl")).unwrap();
    std::fs::write(
        dir.join("jobs.jsonl"),
        jobs.replace("\"relation-composition/runs", "\"../runs"),
    )
    .unwrap();
    let e = Plan::read(&dir).unwrap_err().to_string();
    assert!(
        e.contains("line 1") && e.contains("inside the plan's folder"),
        "{e}"
    );
    let missing = Plan::read(&dir.join("nothing")).unwrap_err().to_string();
    assert!(missing.contains("no plan here"), "{missing}");
}

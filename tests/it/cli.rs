//! The `quartic` command: `--help` of every subcommand (snapshots), one clear line and a
//! non-zero status for bad input, and the original's weights end to end through
//! `import-reference` and `forward`.

use std::process::Command;

use crate::common::{quartic, text};

#[test]
fn help_of_every_subcommand() {
    for sub in [
        "",
        "train",
        "experiment",
        "experiment plan",
        "experiment run",
        "experiment report",
        "eval",
        "forward",
        "predict",
        "explain",
        "generate",
        "import-reference",
        "export-reference",
        "check",
    ] {
        let mut args: Vec<&str> = sub.split_whitespace().collect();
        args.push("--help");
        let out = quartic(&args);
        assert!(out.status.success(), "{sub} --help failed");
        let name = if sub.is_empty() {
            "quartic".to_string()
        } else {
            sub.replace(['-', ' '], "_")
        };
        insta::with_settings!({snapshot_path => "../../snapshots", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(format!("help__{name}"), text(&out.stdout));
        });
    }
}

/// Bad input: non-zero exit, an `error:` message naming the problem, no panic.
#[test]
fn bad_input_exits_with_one_clear_line() {
    let dir = crate::common::scratch("cli");
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"garbage").unwrap();
    let corrupt = corrupt.to_str().unwrap().to_string();
    let bad_rule = dir.join("bad.rule");
    std::fs::write(&bad_rule, "nodes[i] += gelux(nodes[i])\n").unwrap();
    let bad_rule = bad_rule.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--task", "nope", "--steps", "1"],
            "unknown task `nope`",
        ),
        (
            vec!["forward", "--tokens", "3,99"],
            "id 99 at batch 0, position 1 is out of range",
        ),
        (
            vec!["eval", "--checkpoint", &corrupt],
            "the checkpoint is not a safetensors file",
        ),
        (
            vec!["eval", "--checkpoint", "/nonexistent/x.safetensors"],
            "cannot read the checkpoint",
        ),
        (
            vec!["forward", "--tokens", "1,2", "--rule", "/nonexistent.rule"],
            "neither a built-in rule",
        ),
        (vec!["explain", &bad_rule], "unknown function `gelux`"),
        (vec!["explain", "triangel"], "did you mean `triangle`?"),
        (
            vec!["forward", "--tokens", "1,2", "--set", "heads=four"],
            "sets it to the word `four`",
        ),
        (
            vec!["train", "--data", "/nonexistent.txt", "--steps", "1"],
            "cannot read the training text",
        ),
        (
            vec!["forward", "--tokens", "1,2", "--set", "heads"],
            "not `name=value`",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (
            vec![
                "experiment",
                "--task",
                "nope",
                "--seeds",
                "1",
                "--steps",
                "1",
            ],
            "unknown task `nope`",
        ),
        (
            vec!["experiment", "--task", "match3", "--rules", "baseline,nope"],
            "neither a built-in rule",
        ),
        (
            vec!["experiment", "--task", "match3", "--seeds", "0"],
            "one rule, one seed and depth",
        ),
    ];
    for (args, expect) in cases {
        let out = quartic(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected `{expect}` in: {err}"
        );
        // a rule's located diagnostic shows its source line and caret under the message
        let located = err.contains("\n --> ");
        if !args.contains(&"explain") && args[0] != "frobnicate" && !located {
            assert_eq!(
                err.trim().lines().count(),
                1,
                "{args:?}: one line, got: {err}"
            );
        }
    }
}

/// `import-reference` on the original's weights, then `forward` from the shell prints its logits
/// (the one-stream model and the original's default, four residual streams).
#[test]
fn parity_through_the_command_line() {
    for name in ["quartic", "quartic_hyper"] {
        cli_parity(name);
    }
}

/// `quartic import-reference` on fixture `name`'s weights and config, into checkpoint `out`.
fn import_fixture(name: &str, out: &std::path::Path) {
    let fixtures = quartic::fixtures::fixture_dir();
    let file = |ext: &str| fixtures.join(format!("{name}.{ext}"));
    let imported = quartic(&[
        "import-reference",
        "--weights",
        file("safetensors").to_str().unwrap(),
        "--config",
        file("json").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        imported.status.success(),
        "{name}: {}",
        text(&imported.stderr)
    );
}

fn cli_parity(name: &str) {
    let fx = quartic::fixtures::Fixture::load(name).unwrap_or_else(|e| panic!("{e}"));
    let out = std::env::temp_dir().join(format!(
        "quartic-import-{name}-{}.safetensors",
        std::process::id()
    ));
    import_fixture(name, &out);
    let input = fx.tensor("input.0").unwrap();
    let n = input.dims[1];
    let tokens: Vec<String> = input.as_usize()[..n]
        .iter()
        .map(|t| t.to_string())
        .collect();
    let forward = quartic(&[
        "forward",
        "--checkpoint",
        out.to_str().unwrap(),
        "--tokens",
        &tokens.join(","),
    ]);
    assert!(
        forward.status.success(),
        "{name}: {}",
        text(&forward.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&forward.stdout).unwrap();
    let got: Vec<f64> = json["logits"][0]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    let want = &fx.tensor("output.main").unwrap().values[..got.len()];
    crate::common::assert_close(
        &format!("{name} logits via the CLI"),
        &got,
        want,
        1e-4,
        1e-3,
    );
    let _ = std::fs::remove_file(&out);
}

/// `import-reference` then `export-reference` from the shell gives back the original's
/// `state_dict` (every tensor, bit for bit in f32) and its constructor arguments.
#[test]
fn export_reference_gives_back_what_import_reference_read() {
    let dir = crate::common::scratch("export");
    for name in ["quartic_hyper", "relational", "multistream"] {
        let ckpt = dir.join(format!("{name}.safetensors"));
        import_fixture(name, &ckpt);
        let (weights, config) = (
            dir.join(format!("{name}.w")),
            dir.join(format!("{name}.json")),
        );
        let exported = quartic(&[
            "export-reference",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ]);
        assert!(
            exported.status.success(),
            "{name}: {}",
            text(&exported.stderr)
        );
        let fx = quartic::fixtures::Fixture::load(name).unwrap();
        let got = quartic::fixtures::read_safetensors(&weights).unwrap();
        let want = fx.params();
        assert_eq!(got.len(), want.len(), "{name}: tensor count");
        for (k, (dims, values)) in &want {
            let t = got.get(k).unwrap_or_else(|| panic!("{name}: no `{k}`"));
            assert_eq!(&t.dims, dims, "{name}: `{k}` shape");
            if !(name == "relational" && k == "final_norm.weight") {
                assert_eq!(&t.values, values, "{name}: `{k}` values");
            }
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        for (key, want) in fx.config.as_object().unwrap() {
            if key != "package" {
                let got = &json[key.as_str()];
                assert!(
                    got == want || got.as_f64().is_some_and(|g| Some(g) == want.as_f64()),
                    "{name}: `{key}` is {got}, the fixture has {want}"
                );
            }
        }
    }
    // a model of ours the original cannot compute is refused, and nothing is written
    let ours = dir.join("ours");
    let trained = quartic(&["train", "--steps", "1", "--out", ours.to_str().unwrap()]);
    assert!(trained.status.success(), "{}", text(&trained.stderr));
    let weights = dir.join("ours.w");
    let refused = quartic(&[
        "export-reference",
        "--checkpoint",
        ours.join("checkpoint.safetensors").to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--config",
        dir.join("ours.json").to_str().unwrap(),
    ]);
    let err = text(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("no counterpart in the original"),
        "{err}"
    );
    assert!(!weights.exists());
}

/// `train --config FILE.toml` reads `[train]` and `[model]`; flags win over the file.
#[test]
fn train_reads_a_toml_config() {
    let dir = crate::common::scratch("toml");
    let out = dir.join("run");
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[train]\ntask = \"sanity\"\nsteps = 50\nbatch = 4\neval_every = 3\neval_batches = 1\nout = \"{}\"\n\n[model]\nrule = \"baseline\"\ndim = 16\nheads = 2\ndim_head = 8\n",
            out.display()
        ),
    )
    .unwrap();
    let run = quartic(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--steps",
        "3",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("rule `baseline`") && stdout.contains("3 steps × batch 4"),
        "{stdout}"
    );
    let rows = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(rows.lines().count(), 4, "{rows}");
    std::fs::write(&config, "[train]\nstepz = 3\n").unwrap();
    let bad = quartic(&["train", "--config", config.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("stepz"), "{}", text(&bad.stderr));
}

/// A run's folder holds its resolved settings as `config.toml`, which trains the same run again
/// (the same metrics, step by step), and its metrics also as JSON Lines; its checkpoint names
/// the build that wrote it.
#[test]
fn a_run_folder_holds_a_config_that_reproduces_it() {
    let dir = crate::common::scratch("resolved");
    let (first, again) = (dir.join("first"), dir.join("again"));
    let run = quartic(&[
        "train",
        "--task",
        "k-hop",
        "--rule",
        "relational",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--set",
        "dim_head=8",
        "--residual-streams",
        "2",
        "--steps",
        "6",
        "--batch",
        "4",
        "--eval-every",
        "3",
        "--eval-batches",
        "1",
        "--seed",
        "7",
        "--out",
        first.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let config = first.join("config.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    for line in [
        "task = \"k-hop\"",
        "seed = 7",
        "residual_streams = 2",
        "\"dim_head=8\"",
    ] {
        assert!(toml.contains(line), "{line}: {toml}");
    }
    let rerun = quartic(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    // every column but the time
    let columns = |root: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(root.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(columns(&first), columns(&again));
    assert_eq!(columns(&first).len(), 7);
    let lines = std::fs::read_to_string(first.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[2]["step"], 3);
    assert!(rows[2]["eval_accuracy"].is_number() && rows[1]["eval_accuracy"].is_null());
    let eval = quartic(&[
        "eval",
        "--checkpoint",
        first.join("checkpoint.safetensors").to_str().unwrap(),
        "--batches",
        "1",
    ]);
    let said = text(&eval.stdout);
    assert!(
        said.contains(&format!(
            "written by quartic-transformer {}",
            env!("CARGO_PKG_VERSION")
        )) && said.contains("(commit "),
        "{said}"
    );
}

/// A graph task through `train` (edge inputs and the edge head set from the task) and a tiny
/// `experiment`, end to end.
#[test]
fn graph_tasks_train_and_experiment_end_to_end() {
    let dir = crate::common::scratch("graph");
    let out_dir = dir.to_str().unwrap().to_string();
    let run = quartic(&[
        "train",
        "--task",
        "path-composition",
        "--rule",
        "triangle",
        "--depth",
        "1",
        "--dim",
        "16",
        "--steps",
        "3",
        "--batch",
        "4",
        "--eval-every",
        "3",
        "--eval-batches",
        "1",
        "--out",
        &format!("{out_dir}/train"),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let trained = text(&run.stdout);
    assert!(trained.contains("held-out: loss"));
    // the accuracy at each path length, the same from `train` and from `eval` with the
    // training's held-out batches
    let by_length = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("by path length k (1 × 4 held-out sequences each): "))
            .unwrap_or_else(|| panic!("no by-length line in {out}"))
            .to_string()
    };
    let line = by_length(&trained);
    let lengths: Vec<&str> = line
        .split_once("each): ")
        .unwrap()
        .1
        .split(" | ")
        .map(|part| part.split_once(": ").unwrap().0)
        .collect();
    assert_eq!(lengths, ["2", "3", "4", "5", "6", "7", "8", "9", "10"]);
    let eval = quartic(&[
        "eval",
        "--checkpoint",
        &format!("{out_dir}/train/checkpoint.safetensors"),
        "--batches",
        "1",
        "--batch",
        "4",
    ]);
    assert!(eval.status.success(), "{}", text(&eval.stderr));
    assert_eq!(by_length(&text(&eval.stdout)), by_length(&trained));
    let exp = quartic(&[
        "experiment",
        "--task",
        "triangles",
        "--rules",
        "baseline,taylor",
        "--seeds",
        "1",
        "--steps",
        "2",
        "--batch",
        "4",
        "--eval-every",
        "1",
        "--eval-batches",
        "1",
        "--out",
        &format!("{out_dir}/exp"),
    ]);
    assert!(exp.status.success(), "{}", text(&exp.stderr));
    let summary = std::fs::read_to_string(dir.join("exp/summary.md")).unwrap();
    assert!(
        summary.contains("| triangles |") && summary.contains("(commit "),
        "{summary}"
    );
    for f in ["results.md", "results.csv", "accuracy-vs-steps.png"] {
        assert!(dir.join("exp/triangles").join(f).exists(), "{f}");
    }
}

/// `quartic check` runs every built-in rule's model with the fused kernels and with their
/// composite forms, and passes on this machine (in its own process: it switches the kernels).
#[test]
fn the_kernel_self_test_passes() {
    let out = quartic(&["check", "12"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for (rule, _) in quartic::rules::BUILTINS {
        for model in [rule.to_string(), format!("{rule}, causal")] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("{model} ")))
                .unwrap_or_else(|| panic!("no line for {model}: {stdout}"));
            assert!(line.ends_with(" ok"), "{line}");
        }
    }
    // each built-in plain and causal, the 4-stream taylor model and the multi-stream model
    let models = 2 * quartic::rules::BUILTINS.len() + 2;
    assert!(stdout.contains(&format!("all {models} agree")), "{stdout}");
}

/// `quartic check --ops` runs every backend op, plain, padded and causal, with the fused CPU
/// kernels and with the composite forms a GPU runs, and they agree (in its own process).
#[test]
fn the_op_self_test_passes_and_compares_two_paths() {
    let out = quartic(&["check", "--ops"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let ops = quartic::models::op_check::ops();
    let mut differ = 0;
    for (name, ..) in &ops {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {stdout}"));
        assert!(line.ends_with(" ok"), "{line}");
        let logits: f64 = line[name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        differ += usize::from(logits > 0.0);
    }
    // the two paths are different code: most ops differ in the last bits
    assert!(
        differ >= ops.len() / 2,
        "only {differ} ops differ at all: {stdout}"
    );
    assert!(
        stdout.contains(&format!("all {} agree", ops.len())),
        "{stdout}"
    );
}

/// `QUARTIC_STAY_WARM_MS` sets how long idle threads poll; a bad value stops the command
/// before it runs, naming the variable.
#[test]
fn the_polling_time_comes_from_the_environment_and_bad_values_are_refused() {
    let run = |value: &str| {
        Command::new(env!("CARGO_BIN_EXE_quartic"))
            .args(["check", "2"])
            .env(quartic::threads::STAY_WARM_ENV, value)
            .output()
            .expect("the binary runs")
    };
    for good in ["0", "5", "1000"] {
        let out = run(good);
        assert!(out.status.success(), "{good}: {}", text(&out.stderr));
    }
    for bad in ["-1", "1001", "2.5", "soon", ""] {
        let out = run(bad);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was taken");
        assert!(
            err.contains("QUARTIC_STAY_WARM_MS") && err.trim().lines().count() == 1,
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn help_lists_every_builtin_rule() {
    for sub in ["train", "forward", "explain"] {
        let help = text(&quartic(&[sub, "--help"]).stdout);
        for (name, _) in quartic::rules::BUILTINS {
            assert!(help.contains(name), "`{sub} --help` does not name `{name}`");
        }
    }
    // a list where one rule is expected says so
    let out = quartic(&["explain", "taylor,triangle"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is a list of rules"));
}

#[test]
fn graph_files_train_rerun_and_evaluate_from_the_command_line() {
    let dir = crate::common::scratch("cli-graphs");
    let sample = |f: &str| format!("{}/data/graphs/{f}", env!("CARGO_MANIFEST_DIR"));
    let out = dir.join("run");
    let (train_file, valid_file) = (
        sample("shortest_paths.train.jsonl"),
        sample("shortest_paths.valid.safetensors"),
    );
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--graphs", &train_file, "--valid", &valid_file];
        args.extend_from_slice(extra);
        quartic(&args)
    };
    let common = [
        "--target",
        "edge",
        "--rule",
        "triangle",
        "--depth",
        "1",
        "--dim",
        "16",
        "--dim-edges",
        "8",
        "--batch",
        "4",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
    ];
    let mut first = common.to_vec();
    first.extend(["--steps", "2", "--out", out.to_str().unwrap()]);
    let run = train(&first);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("task graphs:shortest_paths.train"),
        "{stdout}"
    );
    assert!(
        stdout.contains("400 training graphs, 100 held-out graphs"),
        "{stdout}"
    );
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        config.contains("target = \"edge\"") && config.contains("shortest_paths.valid.safetensors"),
        "{config}"
    );
    // the run's own config trains it again
    let rerun = quartic(&[
        "train",
        "--config",
        out.join("config.toml").to_str().unwrap(),
        "--steps",
        "1",
        "--out",
        dir.join("rerun").to_str().unwrap(),
    ]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    let ckpt = out.join("checkpoint.safetensors");
    for graphs in [None, Some(sample("shortest_paths.valid.jsonl"))] {
        let mut args = vec![
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--batches",
            "2",
        ];
        if let Some(g) = &graphs {
            args.extend(["--graphs", g]);
        }
        let eval = quartic(&args);
        assert!(eval.status.success(), "{}", text(&eval.stderr));
        let said = text(&eval.stdout);
        assert!(said.contains("task graphs:shortest_paths.train"), "{said}");
        assert!(said.contains("all 100 held-out examples"), "{said}");
    }
    // refused: no held-out file, no target, a pooling for node targets, another task beside graphs
    let refusals: [(&[&str], &str); 4] = [
        (
            &["train", "--graphs", "g.jsonl", "--target", "node"],
            "--valid FILE",
        ),
        (
            &["train", "--graphs", "g.jsonl", "--valid", "v.jsonl"],
            "`--target graph`, `node` or `edge`",
        ),
        (
            &[
                "train",
                "--graphs",
                &sample("triangles.train.jsonl"),
                "--valid",
                &sample("triangles.valid.jsonl"),
                "--target",
                "node",
                "--pool",
                "max",
            ],
            "graph-level target",
        ),
        (
            &["train", "--task", "sanity", "--graphs", "g.jsonl"],
            "train one or the other",
        ),
    ];
    for (args, want) in refusals {
        let r = quartic(&[args, &["--out", dir.join("refused").to_str().unwrap()]].concat());
        assert!(!r.status.success());
        assert!(
            text(&r.stderr).contains(want),
            "{args:?}: {}",
            text(&r.stderr)
        );
    }
    // graph targets: each pooling trains, the config keeps it, and eval reads the run back
    for pool in ["mean", "max", "attention"] {
        let out = dir.join(format!("graph-{pool}"));
        let r = quartic(
            &[
                "train",
                "--graphs",
                &sample("components.train.jsonl"),
                "--valid",
                &sample("components.valid.jsonl"),
                "--target",
                "graph",
                "--pool",
                pool,
            ]
            .iter()
            .chain(&SMALL_GRAPH_RUN)
            .chain(&["--out", out.to_str().unwrap()])
            .copied()
            .collect::<Vec<_>>(),
        );
        assert!(r.status.success(), "{pool}: {}", text(&r.stderr));
        assert!(
            text(&r.stdout).contains("graph classes; 400 training graphs"),
            "{}",
            text(&r.stdout)
        );
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        assert!(config.contains(&format!("pool = \"{pool}\"")), "{config}");
        let said = evaluate_run(&out);
        assert!(said.contains("all 100 held-out examples"), "{said}");
    }
    // node targets on a graph-level file name the graph and the field
    let r = quartic(&[
        "train",
        "--graphs",
        &sample("components.train.jsonl"),
        "--valid",
        &sample("components.valid.jsonl"),
        "--target",
        "node",
        "--out",
        dir.join("refused").to_str().unwrap(),
    ]);
    assert!(
        text(&r.stderr).contains("graph 0, field `y`: one value for the graph"),
        "{}",
        text(&r.stderr)
    );
}

/// What `quartic eval` says of the run in `out` (which must succeed).
fn evaluate_run(out: &std::path::Path) -> String {
    let checkpoint = out.join("checkpoint.safetensors");
    let eval = quartic(&["eval", "--checkpoint", checkpoint.to_str().unwrap()]);
    assert!(eval.status.success(), "{}", text(&eval.stderr));
    text(&eval.stdout)
}

/// A one-layer model of dim 16 trained for two steps: the graph-file runs that only need to run.
const SMALL_GRAPH_RUN: [&str; 10] = [
    "--dim",
    "16",
    "--dim-edges",
    "8",
    "--depth",
    "1",
    "--steps",
    "2",
    "--batch",
    "4",
];

#[test]
fn rules_that_read_the_input_graph_train_on_graph_files_only() {
    let dir = crate::common::scratch("cli-input-graph");
    let root = env!("CARGO_MANIFEST_DIR");
    let sample = |f: &str| format!("{root}/data/graphs/{f}");
    let small = [
        "--dim",
        "16",
        "--dim-edges",
        "8",
        "--heads",
        "2",
        "--dim-head",
        "4",
    ];
    let (train_file, valid_file) = (
        sample("triangles.train.jsonl"),
        sample("triangles.valid.safetensors"),
    );
    for rule in ["gat", "graph_transformer"] {
        let rule_file = format!("{root}/examples/rules/{rule}.rule");
        let out = dir.join(rule);
        let mut args = vec![
            "train",
            "--graphs",
            &train_file,
            "--valid",
            &valid_file,
            "--target",
            "node",
            "--rule",
            &rule_file,
            "--steps",
            "2",
            "--batch",
            "4",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(small);
        let run = quartic(&args);
        assert!(run.status.success(), "{rule}: {}", text(&run.stderr));
        assert!(
            text(&run.stdout).contains("held-out: loss"),
            "{}",
            text(&run.stdout)
        );
        // on a built-in task it is refused, naming the statement, before the folder is made
        let refused_dir = dir.join(format!("{rule}-refused"));
        let mut args = vec![
            "train",
            "--rule",
            &rule_file,
            "--steps",
            "2",
            "--out",
            refused_dir.to_str().unwrap(),
        ];
        args.extend(small);
        let r = quartic(&args);
        assert!(!r.status.success());
        let err = text(&r.stderr);
        assert!(
            err.contains(&format!("rule `{rule}`"))
                && err.contains("reads the input graph")
                && err.contains("--graphs"),
            "{err}"
        );
        assert!(
            !refused_dir.exists(),
            "{rule}: the refused run made its folder"
        );
    }
}

#[test]
fn graph_files_with_continuous_features_train_from_the_command_line() {
    use crate::graph_files::featured;
    let dir = crate::common::scratch("cli-features");
    let graphs: Vec<_> = (0..12)
        .map(|k| featured(3 + k % 4, k as u64, k % 5 != 0))
        .collect();
    let (train, valid) = (dir.join("train.jsonl"), dir.join("valid.jsonl"));
    quartic::data::graphs::write_jsonl(&train, &graphs).unwrap();
    quartic::data::graphs::write_jsonl(&valid, &graphs[..4]).unwrap();
    let out = dir.join("run");
    let run = quartic(
        &[
            "train",
            "--graphs",
            train.to_str().unwrap(),
            "--valid",
            valid.to_str().unwrap(),
            "--target",
            "node",
        ]
        .iter()
        .chain(&SMALL_GRAPH_RUN)
        .chain(&["--out", out.to_str().unwrap()])
        .copied()
        .collect::<Vec<_>>(),
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let eval = quartic(&[
        "eval",
        "--checkpoint",
        out.join("checkpoint.safetensors").to_str().unwrap(),
    ]);
    assert!(eval.status.success(), "{}", text(&eval.stderr));
    assert!(
        text(&eval.stdout).contains("all 4 held-out examples"),
        "{}",
        text(&eval.stdout)
    );
}

#[test]
fn a_text_file_trains_from_the_command_line() {
    let dir = crate::common::scratch("cli-text");
    let file = dir.join("t.txt");
    std::fs::write(&file, "a small text to learn from, repeated. ".repeat(20)).unwrap();
    let run = quartic(&[
        "train",
        "--data",
        file.to_str().unwrap(),
        "--context",
        "16",
        "--steps",
        "2",
        "--batch",
        "2",
        "--dim",
        "16",
        "--depth",
        "1",
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("task text:"),
        "{}",
        text(&run.stdout)
    );
}

#[test]
fn graph_regression_from_the_command_line() {
    let dir = crate::common::scratch("cli-graph-regression");
    let root = env!("CARGO_MANIFEST_DIR");
    let sample = |f: &str| format!("{root}/data/graphs/{f}");
    // one run per level: node values (clustering coefficients), edge values (path lengths),
    // graph values (component counts read as numbers)
    let runs = [
        ("clustering", "node", "mse"),
        ("shortest_paths", "edge", "mae"),
        ("components", "graph", "mse"),
    ];
    for (data, level, loss) in runs {
        let out = dir.join(format!("{data}-{loss}"));
        let train = sample(&format!("{data}.train.jsonl"));
        let valid = sample(&format!("{data}.valid.jsonl"));
        let r = quartic(
            &["train", "--graphs", &train, "--valid", &valid]
                .iter()
                .chain(&["--target", level, "--loss", loss])
                .chain(&SMALL_GRAPH_RUN)
                .chain(&["--out", out.to_str().unwrap()])
                .copied()
                .collect::<Vec<_>>(),
        );
        assert!(r.status.success(), "{data}: {}", text(&r.stderr));
        let said = text(&r.stdout);
        assert!(
            said.contains(&format!("{level} values (regression, loss {loss};")),
            "{said}"
        );
        assert!(said.contains("held-out: loss"), "{said}");
        assert!(said.contains("mean absolute error"), "{said}");
        let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        assert!(
            metrics.starts_with("step,loss,mae,lr,grad_norm,eval_loss,eval_mae,elapsed_s\n"),
            "{metrics}"
        );
        let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        assert!(lines.contains("\"eval_mae\":"), "{lines}");
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        assert!(config.contains(&format!("loss = \"{loss}\"")), "{config}");
        let said = evaluate_run(&out);
        assert!(said.contains("| mean absolute error "), "{said}");
    }
    // the resolved config trains the same run again
    let first = dir.join("clustering-mse");
    let again = quartic(&[
        "train",
        "--config",
        first.join("config.toml").to_str().unwrap(),
        "--out",
        dir.join("again").to_str().unwrap(),
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let metric = |d: &std::path::Path| {
        let m = std::fs::read_to_string(d.join("metrics.csv")).unwrap();
        m.lines()
            .last()
            .unwrap()
            .split(',')
            .nth(6)
            .unwrap()
            .to_string()
    };
    assert_eq!(metric(&first), metric(&dir.join("again")));
    // refused: a loss that is none, a loss for a task without graph files
    let refusals: [(&[&str], &str); 2] = [
        (
            &[
                "train",
                "--graphs",
                &sample("clustering.train.jsonl"),
                "--valid",
                &sample("clustering.valid.jsonl"),
                "--target",
                "node",
                "--loss",
                "huber",
            ],
            "`huber` is not a loss",
        ),
        (
            &["train", "--task", "sanity", "--loss", "mse"],
            "`valid`, `target` and `loss` go with graph files",
        ),
    ];
    for (args, want) in refusals {
        let out = dir.join("refused");
        let r = quartic(&[args, &["--out", out.to_str().unwrap()]].concat());
        assert!(!r.status.success());
        assert!(
            text(&r.stderr).contains(want),
            "{args:?}: {}",
            text(&r.stderr)
        );
        assert!(!out.exists(), "{args:?}: a refused run made its folder");
    }
}

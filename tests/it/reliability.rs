//! Nothing lost, nothing crashes: every bad input gets a located, clear refusal, NaN is
//! reported instead of hidden, runs never overwrite each other, checkpoints are checked on
//! load. The command-line half is in `reliability_cli.rs`; the seeded fuzz test in `fuzz.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use dfdx::prelude::*;
use quartic::models::{GraphConfig, Model, ModelConfig};
use quartic::nn::{HasParams, Init};
use quartic::rules::{Const, Rule, RuleConfig};
use quartic::train::checkpoint::{self, TrainState};
use quartic::train::run_dir::RunDir;
use quartic::train::tasks::{Split, Text};
use quartic::train::trainer::{self, Start, TrainConfig};

use crate::common::{scratch, StopAt};
use quartic::train::Task;
use quartic::Error;
use rand::SeedableRng;

fn cfg(dim: usize, dim_edges: usize) -> RuleConfig {
    RuleConfig {
        dim,
        dim_edges,
        causal: false,
        overrides: vec![],
    }
}

/// The message of a rule error, which must be located (line and column).
fn rule_error(source: &str, config: &RuleConfig) -> String {
    let err = Rule::parse("bad.rule", source)
        .and_then(|r| r.plan(config))
        .err()
        .expect("the rule is refused");
    match &err {
        Error::Rule(d) => assert!(d.line >= 1 && d.col >= 1, "unlocated: {err}"),
        other => panic!("not a located rule error: {other}"),
    }
    err.to_string()
}

pub fn graph_config(rule: &str, num_tokens: usize, n: usize) -> GraphConfig {
    GraphConfig {
        residual_streams: 1,
        num_tokens,
        dim: 16,
        dim_edges: 8,
        depth: 1,
        rule: rule.into(),
        rule_params: [
            ("heads", 2.0),
            ("dim_head", 8.0),
            ("edge_heads", 2.0),
            ("edge_dim_head", 4.0),
            ("ff_mult", 2.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Const::Num(v)))
        .collect(),
        causal: false,
        max_seq_len: n,
        absolute_positions: true,
        position_bias: true,
        final_norm: Some(1e-5),
        io: Default::default(),
    }
}

// ---- the fixtures travel with the repository ------------------------------------------

#[test]
fn the_repository_carries_every_reference_fixture() {
    let dir = Path::new(quartic::fixtures::DEFAULT_FIXTURES);
    assert!(
        dir.starts_with(env!("CARGO_MANIFEST_DIR")),
        "{}",
        dir.display()
    );
    for name in [
        "taylor_attention",
        "taylor_attention_masked",
        "coor_descent",
        "relational",
        "relational_causal",
        "quartic",
        "quartic_masked",
        "quartic_hyper",
        "multistream",
    ] {
        quartic::fixtures::Fixture::load_from(dir, name)
            .unwrap_or_else(|e| panic!("fixture `{name}` in the repository: {e}"));
    }
    assert!(dir.join("README.md").exists());
    match std::env::var_os(quartic::fixtures::FIXTURES_ENV) {
        Some(set) => assert_eq!(quartic::fixtures::fixture_dir(), PathBuf::from(set)),
        None => assert_eq!(quartic::fixtures::fixture_dir(), dir),
    }
}

// ---- the parser and the checker: bounded recursion, linear time, finite numbers ---------

#[test]
fn deep_nesting_and_long_sums_are_located_errors_not_stack_overflows() {
    let c = cfg(8, 4);
    let nested = format!(
        "nodes[i] += {}nodes[i]{}\n",
        "(".repeat(3000),
        ")".repeat(3000)
    );
    assert!(rule_error(&nested, &c).contains("nests more than"));
    let sum = vec!["nodes[i]"; 20_000].join(" + ");
    assert!(rule_error(&format!("nodes[i] += {sum}\n"), &c).contains("nests more than"));
    let negations = format!("nodes[i] += {}nodes[i]\n", "- ".repeat(5000));
    assert!(rule_error(&negations, &c).contains("nests more than"));
    let powers = format!(
        "rule r(a = {}2)\nnodes[i] += nodes[i] * a\n",
        "2 ** ".repeat(5000)
    );
    assert!(rule_error(&powers, &c).contains("nests more than"));
    let calls = format!(
        "nodes[i] += {}nodes[i]{}\n",
        "relu(".repeat(3000),
        ")".repeat(3000)
    );
    assert!(rule_error(&calls, &c).contains("nests more than"));
}

/// Every pass recurses over the syntax tree: at the deepest tree the parser accepts, parsing,
/// checking, building, running forward and backward and explaining fit in a small stack.
#[test]
fn the_deepest_accepted_rule_runs_in_a_small_stack() {
    let depth = quartic::rules::MAX_NESTING;
    // a chain of additions as tall as allowed (each `+` is one level above the leaf)
    let sum = vec!["nodes[i]"; depth].join(" + ");
    let nested_calls = format!(
        "{}nodes[i]{}",
        "relu(".repeat(depth - 2),
        ")".repeat(depth - 2)
    );
    for body in [sum, nested_calls] {
        let source = format!("nodes[i] += {body}\n");
        let run = move || {
            let rule = Rule::parse("deep.rule", &source).expect("parses");
            let plan = rule.plan(&cfg(8, 4)).expect("checks");
            let _ = quartic::rules::explain::explain(&plan, 1, 4);
            let dev = Cpu::default();
            let layer =
                quartic::rules::RuleLayer::<f32, Cpu>::new(plan, &Init::random(&dev, 0)).unwrap();
            let nodes: Tensor<(usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(1, 3, 8));
            let edges: Tensor<(usize, usize, usize, usize), f32, Cpu> =
                dev.sample_normal_like(&(1, 3, 3, 4));
            let (x, _) = layer
                .forward(
                    quartic::graph::Nodes::new(nodes.leaky_trace()),
                    quartic::graph::Edges::new(edges.retaped()).unwrap(),
                    &quartic::graph::GraphMask::full(1, 3),
                )
                .unwrap();
            x.into_tensor().sum().backward();
        };
        // a quarter of a spawned thread's default stack
        std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(run)
            .unwrap()
            .join()
            .expect("runs within 512 KiB of stack");
    }
}

/// 100 000 parameters and 20 000 statements took 21 s and 8 s when lookups were linear scans
/// and line numbers were counted from the start for every statement; the bound here is loose
/// (a quadratic checker misses it by an order of magnitude).
#[test]
fn the_checker_is_linear_in_parameters_and_statements() {
    let params: Vec<String> = (0..100_000).map(|k| format!("p{k} = {k}")).collect();
    let many_params = format!(
        "rule big({})\nnodes[i] += nodes[i] * p99999\n",
        params.join(", ")
    );
    let mut many_statements: String = (0..20_000)
        .map(|k| format!("let a{k}[i] = nodes[i] * {k}\n"))
        .collect();
    many_statements.push_str("nodes[i] += a19999[i]\n");
    let started = std::time::Instant::now();
    for source in [&many_params, &many_statements] {
        let plan = Rule::parse("big.rule", source)
            .unwrap()
            .plan(&cfg(8, 4))
            .unwrap();
        assert!(!plan.statements.is_empty());
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(secs < 3.0, "checking took {secs:.1} s");
}

#[test]
fn non_finite_and_out_of_range_numbers_are_refused_where_they_are_written() {
    let c = cfg(8, 4);
    for (source, expected) in [
        (
            "rule r(a = 1 / 0)\nnodes[i] += nodes[i] * a\n",
            "division by zero",
        ),
        (
            "rule r(a = 0 / 0)\nnodes[i] += nodes[i] * a\n",
            "division by zero",
        ),
        (
            "rule r(a = 1e400)\nnodes[i] += nodes[i] * a\n",
            "too large for a number",
        ),
        (
            "rule r(a = (0 - 1) ** 0.5)\nnodes[i] += nodes[i] * a\n",
            "not a finite number",
        ),
        (
            "rule r(a = 10 ** 400)\nnodes[i] += nodes[i] * a\n",
            "not a finite number",
        ),
        (
            "nodes[i] += rmsnorm(nodes[i], eps: 0 - 1)\n",
            "must not be negative",
        ),
        (
            "ff: nodes[i] += feedforward(nodes[i], mult: 1e30)\n",
            "hidden channels",
        ),
        (
            "ff: nodes[i] += feedforward(nodes[i], mult: 0.01)\n",
            "no hidden channels",
        ),
    ] {
        let e = rule_error(source, &c);
        assert!(e.contains(expected), "{source}: {e}");
    }
    // the same through the configuration (a checkpoint's or the command line's overrides)
    let taylor = Rule::builtin("taylor").unwrap();
    for (name, value, expected) in [
        ("ff_mult", f64::INFINITY, "not a finite number"),
        ("scale", f64::NAN, "not a finite number"),
        ("norm_eps", -1.0, "must not be negative"),
        ("ff_mult", 1e30, "hidden channels"),
    ] {
        let config = RuleConfig {
            overrides: vec![(name.into(), Const::Num(value))],
            ..cfg(16, 8)
        };
        let e = taylor.plan(&config).err().expect("refused").to_string();
        assert!(e.contains(expected), "{name} = {value}: {e}");
    }
}

#[test]
fn rule_errors_escape_control_characters() {
    let e = rule_error("nodes[i] += relu(nodes[i]) \x1b[31mRED\x07\n", &cfg(8, 4));
    assert!(!e.contains('\x1b') && !e.contains('\x07'), "{e:?}");
    assert!(e.contains("\\u{1b}"), "{e}");
    // the caret still sits under the escaped character
    let lines: Vec<&str> = e.lines().collect();
    let source = lines.iter().find(|l| l.contains("RED")).unwrap();
    let caret = lines.iter().find(|l| l.contains('^')).unwrap();
    assert_eq!(source.find("\\u{1b}"), caret.find('^'), "{e}");
}

// ---- NaN is carried to the output, never turned into a number ---------------------------

/// Every parameter the logits depend on, of every built-in rule's model, in turn set to NaN:
/// the logits must show it (a clamp, a `max` or a "no visible key" test that skips NaN would
/// hide it).
#[test]
fn a_nan_parameter_gives_nan_logits_in_every_builtin_rule() {
    let dev = Cpu::default();
    for rule in [
        "taylor",
        "quartic",
        "routed",
        "relational",
        "triangle",
        "baseline",
    ] {
        let mut config = graph_config(rule, 8, 5);
        let declared: Vec<String> = Rule::builtin(rule)
            .unwrap()
            .parameters()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        config.rule_params.retain(|k, _| declared.contains(k));
        let config = ModelConfig::Graph(config);
        let model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 0)).unwrap();
        let values: HashMap<String, (Vec<usize>, Vec<f64>)> = model
            .params()
            .iter()
            .map(|p| {
                let v = p.value.as_vec().iter().map(|&x| x as f64).collect();
                (p.name.clone(), (p.dims.clone(), v))
            })
            .collect();
        // the parameters the logits depend on (a layer's last edge update, say, reaches no
        // logit): those with a gradient
        let out = model
            .forward::<OwnedTape<f32, Cpu>>(&[1, 2, 3, 4, 5], 1, 5, None)
            .unwrap();
        let mut grads = out.logits.sum().backward();
        let used: Vec<String> = model
            .params()
            .iter()
            .filter(|p| {
                grads
                    .get_or_alloc_mut(&p.value)
                    .unwrap()
                    .iter()
                    .any(|&g| g != 0.0)
            })
            .map(|p| p.name.clone())
            .collect();
        assert!(used.len() * 2 > values.len(), "{rule}: {used:?}");
        for target in &used {
            let mut poisoned = values.clone();
            poisoned
                .get_mut(target)
                .unwrap()
                .1
                .iter_mut()
                .for_each(|x| *x = f64::NAN);
            let m = Model::<f32, Cpu>::new(&config, None, &Init::from_map(&dev, poisoned)).unwrap();
            let logits = m
                .forward::<NoneTape>(&[1, 2, 3, 4, 5], 1, 5, None)
                .unwrap()
                .logits
                .as_vec();
            assert!(
                logits.iter().any(|x| x.is_nan()),
                "{rule}: `{target}` set to NaN left the logits finite"
            );
        }
    }
}

// ---- the text task: held-out windows never overlap training windows --------------------

#[test]
fn held_out_text_windows_come_from_the_end_of_the_file_only() {
    let dir = scratch("text");
    let path = dir.join("text.txt");
    // 256 distinct bytes: a window's first token is where it starts
    let text: Vec<u8> = (0..=255u8).collect();
    std::fs::write(&path, &text).unwrap();
    let context = 8;
    let text = Text::from_file(path.to_str().unwrap(), context).unwrap();
    let held_out = text.held_out();
    let task = Task::new(text).unwrap();
    assert_eq!(held_out, 256 - 25, "the last 10 % is held out");
    assert!(task.split_note().unwrap().contains("the last 25"));
    let (mut first_test, mut last_train) = (usize::MAX, 0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..2000 {
        let train = task.example(&mut rng, Split::Train);
        let test = task.example(&mut rng, Split::Test);
        // a window covers its context and the byte after it (the last target)
        last_train = last_train.max(train.tokens[0] + context);
        first_test = first_test.min(test.tokens[0]);
        assert_eq!(
            train.targets.last().unwrap().unwrap(),
            train.tokens[0] + context
        );
    }
    assert!(
        last_train < held_out,
        "a training window reaches byte {last_train}"
    );
    assert!(
        first_test >= held_out,
        "a held-out window starts at byte {first_test}"
    );
    // every position of each part is used
    assert_eq!((last_train, first_test), (held_out - 1, held_out));
    // too short to hold out a window: refused
    std::fs::write(&path, b"short text").unwrap();
    let e = Task::from_name("text", Some(path.to_str().unwrap()), 8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("held out"), "{e}");
}

// ---- run folders, checkpoints, resume --------------------------------------------------

fn tiny_train(out: &Path, steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch: 4,
        eval_every: 1000,
        eval_batches: 1,
        checkpoint_every: 1000,
        warmup: 2,
        out: out.to_path_buf(),
        ..TrainConfig::default()
    }
}

fn tiny_model() -> ModelConfig {
    let task = Task::from_name("sanity", None, 64).unwrap();
    let mut g = graph_config("taylor", task.num_tokens(), task.max_len());
    g.depth = 1;
    ModelConfig::Graph(g)
}

/// A run stopped after `at` of `steps` steps, with its checkpoint in `out`.
pub fn interrupted_run(out: &Path, at: usize, steps: usize) {
    let dev = Cpu::default();
    let mut model = Model::<f32, Cpu>::new(&tiny_model(), None, &Init::random(&dev, 0)).unwrap();
    let flag = AtomicBool::new(false);
    let report = trainer::train(
        &mut model,
        &tiny_train(out, steps),
        Start::fresh(),
        Some(&flag),
        &mut StopAt { at, flag: &flag },
    )
    .unwrap();
    assert!(report.interrupted);
}

#[test]
fn a_fresh_run_refuses_a_folder_holding_a_run_and_overwrite_replaces_it() {
    let out = scratch("refuse");
    interrupted_run(&out, 2, 6);
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let dev = Cpu::default();
    let mut model = Model::<f32, Cpu>::new(&tiny_model(), None, &Init::random(&dev, 1)).unwrap();
    let e = trainer::train(
        &mut model,
        &tiny_train(&out, 3),
        Start::fresh(),
        None,
        &mut trainer::Silent,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        e.contains("already holds a run") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("checkpoint.safetensors")).unwrap(),
        before
    );
    let metrics = quartic::train::metrics::Metrics::read(&out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.len(), 2, "the old run's metrics are untouched");
    trainer::train(
        &mut model,
        &tiny_train(&out, 3),
        Start::overwrite(),
        None,
        &mut trainer::Silent,
    )
    .unwrap();
    let metrics = quartic::train::metrics::Metrics::read(&out.join("metrics.csv")).unwrap();
    assert_eq!(
        metrics.iter().map(|r| r.step).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[test]
fn two_runs_cannot_hold_one_folder() {
    let out = scratch("lock");
    let first = RunDir::open(&out, Default::default()).unwrap();
    let e = RunDir::open(&out, Default::default())
        .err()
        .expect("the folder is locked")
        .to_string();
    assert!(e.contains("another run is writing"), "{e}");
    drop(first);
    RunDir::open(&out, Default::default()).expect("free again once the first run ends");
}

#[test]
fn a_resumed_run_writes_where_its_checkpoint_was_read_not_where_it_was_saved() {
    let original = scratch("resume-a");
    interrupted_run(&original, 2, 5);
    let copy = scratch("resume-b");
    for f in ["checkpoint.safetensors", "metrics.csv"] {
        std::fs::copy(original.join(f), copy.join(f)).unwrap();
    }
    let untouched = std::fs::read(original.join("checkpoint.safetensors")).unwrap();
    let dev = Cpu::default();
    let (mut model, adam, saved, step) =
        trainer::resume::<f32, Cpu>(&copy.join("checkpoint.safetensors"), &dev).unwrap();
    assert_eq!(
        saved.out,
        copy.to_path_buf(),
        "the saved config said {}",
        original.display()
    );
    trainer::train(
        &mut model,
        &saved,
        Start::resume(adam, step),
        None,
        &mut trainer::Silent,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(original.join("checkpoint.safetensors")).unwrap(),
        untouched,
        "the original run was overwritten"
    );
    let resumed = checkpoint::load(&copy.join("checkpoint.safetensors")).unwrap();
    assert_eq!(resumed.train.step, 5);
    let rows = quartic::train::metrics::Metrics::read(&copy.join("metrics.csv")).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

/// Rewrites a checkpoint's metadata (and tensors) as the first format, which has no
/// checksums, so that one piece of state can be broken at a time.
fn rewrite_v1(
    path: &Path,
    edit_meta: impl FnOnce(&mut HashMap<String, String>),
    drop_tensor: Option<&str>,
) {
    let data = std::fs::read(path).unwrap();
    let (_, meta) = ::safetensors::SafeTensors::read_metadata(&data).unwrap();
    let mut meta: HashMap<String, String> = meta.metadata().clone().unwrap();
    meta.remove("checksums");
    meta.insert("format".into(), checkpoint::FORMAT_1.into());
    edit_meta(&mut meta);
    let tensors = ::safetensors::SafeTensors::deserialize(&data).unwrap();
    let kept: Vec<(String, ::safetensors::tensor::TensorView)> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| Some(name.as_str()) != drop_tensor)
        .collect();
    let out = ::safetensors::serialize(kept, &Some(meta)).unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn resume_refuses_state_that_does_not_belong_together() {
    let base = scratch("corrupt");
    interrupted_run(&base, 2, 5);
    let good = std::fs::read(base.join("checkpoint.safetensors")).unwrap();
    let dev = Cpu::default();
    let refused = |name: &str, edit: &dyn Fn(&Path), expected: &str| {
        let path = base.join(format!("{name}.safetensors"));
        std::fs::write(&path, &good).unwrap();
        edit(&path);
        let e = match checkpoint::load(&path) {
            Err(e) => e.to_string(),
            Ok(_) => trainer::resume::<f32, Cpu>(&path, &dev)
                .err()
                .unwrap_or_else(|| panic!("{name}: loaded and resumed"))
                .to_string(),
        };
        assert!(e.contains(expected), "{name}: {e}");
    };
    refused(
        "no-step",
        &|p| rewrite_v1(p, |m| drop(m.remove("adam_step")), None),
        "no optimizer step",
    );
    refused(
        "bad-step",
        &|p| {
            rewrite_v1(
                p,
                |m| drop(m.insert("adam_step".into(), "two".into())),
                None,
            )
        },
        "bad optimizer step",
    );
    refused(
        "other-step",
        &|p| rewrite_v1(p, |m| drop(m.insert("adam_step".into(), "7".into())), None),
        "does not belong together",
    );
    let moment = {
        let c = checkpoint::load(&base.join("checkpoint.safetensors")).unwrap();
        let name = c.adam.m.keys().next().unwrap().clone();
        format!("adam.m/{name}")
    };
    refused(
        "no-moment",
        &|p| rewrite_v1(p, |_| {}, Some(&moment)),
        "moment of",
    );
    // the current format: a flipped byte anywhere in a tensor is caught by its checksum
    refused(
        "flipped",
        &|p| {
            let mut bytes = std::fs::read(p).unwrap();
            let k = bytes.len() - 5;
            bytes[k] ^= 0x10;
            std::fs::write(p, bytes).unwrap();
        },
        "does not match its checksum",
    );
    // and in the metadata (here a digit of the model config)
    refused(
        "flipped-meta",
        &|p| {
            let mut bytes = std::fs::read(p).unwrap();
            let needle = br#"\"dim\":16"#;
            let k = bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("the config in the header")
                + needle.len()
                - 1;
            bytes[k] = b'7';
            std::fs::write(p, bytes).unwrap();
        },
        "does not match its checksum",
    );
    // the untouched copy still resumes
    let path = base.join("good.safetensors");
    std::fs::write(&path, &good).unwrap();
    trainer::resume::<f32, Cpu>(&path, &dev).expect("a good checkpoint resumes");
}

#[test]
fn a_non_finite_loss_names_the_step_and_only_a_checkpoint_that_exists() {
    // a rule that computes NaN from any weights: sqrt of a negative number
    let dir = scratch("nan-rule");
    let rule = dir.join("nan.rule");
    std::fs::write(&rule, "nodes[i] += sqrt(square(nodes[i]) * 0 - 1)\n").unwrap();
    let task = Task::from_name("sanity", None, 64).unwrap();
    let mut g = graph_config(rule.to_str().unwrap(), task.num_tokens(), task.max_len());
    g.rule_params.clear();
    let dev = Cpu::default();
    let mut model =
        Model::<f32, Cpu>::new(&ModelConfig::Graph(g), None, &Init::random(&dev, 0)).unwrap();
    let out = dir.join("run");
    let e = trainer::train(
        &mut model,
        &tiny_train(&out, 5),
        Start::fresh(),
        None,
        &mut trainer::Silent,
    )
    .err()
    .expect("NaN stops the run")
    .to_string();
    assert!(e.contains("at step 0"), "{e}");
    assert!(e.contains("no checkpoint of this run was written"), "{e}");
    assert!(!out.join("checkpoint.safetensors").exists());
    assert!(e.contains("outside its domain"), "{e}");
    assert!(!e.contains("lower --lr"), "blames the learning rate: {e}");
}

#[test]
fn checkpoint_writes_leave_no_temporary_file_even_when_they_fail() {
    let dir = scratch("atomic");
    let dev = Cpu::default();
    let model = Model::<f32, Cpu>::new(&tiny_model(), None, &Init::random(&dev, 0)).unwrap();
    // the target is a folder: the rename fails after the temporary file was written
    let target = dir.join("occupied.safetensors");
    std::fs::create_dir_all(target.join("inside")).unwrap();
    let e = checkpoint::save(&target, &model, None, &TrainState::default())
        .err()
        .expect("cannot replace a folder")
        .to_string();
    assert!(e.contains("cannot move"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["occupied.safetensors"], "left behind: {left:?}");
}

#[test]
fn files_that_never_end_or_are_too_large_are_refused_before_they_fill_memory() {
    let e = quartic::files::read_capped(Path::new("/dev/zero"), 1 << 20, "the rule")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("larger than 1.0 MiB"), "{e}");
    let e = checkpoint::load(Path::new("/dev/zero"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a safetensors file"), "{e}");
    let e = Rule::load("/dev/zero").err().unwrap().to_string();
    assert!(e.contains("larger than"), "{e}");
    // a truncated checkpoint and one with bytes past its data
    let dir = scratch("files");
    let dev = Cpu::default();
    let model = Model::<f32, Cpu>::new(&tiny_model(), None, &Init::random(&dev, 0)).unwrap();
    let path = dir.join("c.safetensors");
    checkpoint::save(&path, &model, None, &TrainState::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let e = checkpoint::load(&path).err().unwrap().to_string();
    assert!(e.contains("ends early"), "{e}");
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"tail");
    std::fs::write(&path, &longer).unwrap();
    let e = checkpoint::load(&path).err().unwrap().to_string();
    assert!(e.contains("goes on past"), "{e}");
}

#[test]
fn memory_estimates_refuse_what_cannot_fit_before_allocating() {
    use quartic::memory::Limit;
    use quartic::models::footprint::{estimate, parameter_count, Use};
    let config = tiny_model();
    let dev = Cpu::default();
    let model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 0)).unwrap();
    assert_eq!(
        parameter_count(&config, None).unwrap(),
        model.num_params() as u64,
        "the count is exact"
    );
    // deep models are counted by extrapolation, exactly
    let deep = config.with_depth(5);
    let built = Model::<f32, Cpu>::new(&deep, None, &Init::random(&dev, 0)).unwrap();
    assert_eq!(
        parameter_count(&deep, None).unwrap(),
        built.num_params() as u64
    );
    // absurd sizes cost nothing to estimate and are refused with both numbers
    let huge = ModelConfig::Graph(GraphConfig {
        residual_streams: 1,
        num_tokens: 100_000_000,
        dim: 100_000,
        ..graph_config("taylor", 16, 10_000)
    });
    let e = estimate(&huge, None, 32, 10_000, Use::Train { shards: 2 }).unwrap();
    let err = Limit::Bytes(8 << 30)
        .check("training", &e)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("needs about") && err.contains("8.0 GiB"),
        "{err}"
    );
    let deep = huge.with_depth(quartic::models::MAX_LAYERS);
    assert!(parameter_count(&deep, None).is_ok());
    let too_deep = huge.with_depth(quartic::models::MAX_LAYERS + 1);
    assert!(parameter_count(&too_deep, None).is_err());
    Limit::Unlimited
        .check("training", &e)
        .expect("unlimited is the user's choice");
    // sizes parse with units
    assert_eq!("512MiB".parse::<Limit>().unwrap(), Limit::Bytes(512 << 20));
    assert_eq!("2G".parse::<Limit>().unwrap(), Limit::Bytes(2 << 30));
    assert!("NaN".parse::<Limit>().is_err() && "-1G".parse::<Limit>().is_err());
}

//! Training: resumed runs equal uninterrupted ones, losses and logits match their snapshots,
//! checkpoints round-trip, bad states are not saved, task labels follow their definitions.

use std::sync::atomic::AtomicBool;

use dfdx::prelude::*;
use quartic::models::{Model, ModelConfig, QuarticConfig, RelationalConfig};
use quartic::nn::{HasParams, Init};
use quartic::train::checkpoint::{self, TrainState};

use quartic::train::trainer::{self, Start, TrainConfig};

use crate::common::{scratch, StopAt};

fn tiny_model(causal: bool, num_tokens: usize, max_len: usize) -> ModelConfig {
    let mut q = QuarticConfig::readme();
    q.num_residual_streams = 1;
    q.num_tokens = num_tokens;
    q.dim = 16;
    q.dim_edges = Some(4);
    q.heads = 2;
    q.dim_head = 4;
    q.linear_heads = 2;
    q.linear_dim_head = 2;
    q.ff_mult = 2.0;
    q.max_seq_len = max_len;
    q.causal = causal;
    ModelConfig::Graph(q.to_graph("taylor", false).unwrap())
}

fn tiny_train(out: &std::path::Path, steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch: 4,
        eval_every: 5,
        eval_batches: 2,
        checkpoint_every: 100,
        out: out.to_path_buf(),
        ..TrainConfig::default()
    }
}

#[test]
fn a_resumed_run_has_the_losses_of_an_uninterrupted_one() {
    assert_resumed_run_matches(&tiny_model(false, 16, 12), "taylor");
}

#[test]
fn a_resumed_run_draws_the_same_dropout() {
    let dir = scratch("dropout-rule");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("drop.rule");
    std::fs::write(
        &file,
        "rule drop()\nlet x[i] = rmsnorm(nodes[i])\n\
         a: nodes[i] += dropout(attend(x[i] -> x[j], heads: 2, dim_head: 4), p: 0.3)\n\
         f: nodes[i] += dropout(feedforward(nodes[i], mult: 2), p: 0.3)\n",
    )
    .unwrap();
    let ModelConfig::Graph(mut g) = tiny_model(false, 16, 12) else {
        unreachable!("a graph model")
    };
    g.rule = file.display().to_string();
    g.rule_params.clear();
    assert_resumed_run_matches(&ModelConfig::Graph(g), "dropout");
}

fn assert_resumed_run_matches(config: &ModelConfig, name: &str) {
    let dev = Cpu::default();
    let config = config.clone();
    let run_all = scratch(&format!("all-{name}"));
    let mut model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 0)).unwrap();
    let full = trainer::train(
        &mut model,
        &tiny_train(&run_all, 10),
        Start::fresh(),
        None,
        &mut trainer::Silent,
    )
    .unwrap();
    let full: Vec<f64> = full.records.iter().map(|r| r.loss).collect();

    let run_split = scratch(&format!("split-{name}"));
    let cfg = tiny_train(&run_split, 10);
    let mut model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 0)).unwrap();
    let flag = AtomicBool::new(false);
    let first = trainer::train(
        &mut model,
        &cfg,
        Start::fresh(),
        Some(&flag),
        &mut StopAt { at: 4, flag: &flag },
    )
    .unwrap();
    assert!(first.interrupted);
    assert_eq!(first.records.len(), 4);
    let (mut resumed, adam, saved, step) =
        trainer::resume::<f32, Cpu>(&cfg.checkpoint_path(), &dev).unwrap();
    assert_eq!((step, &saved), (4, &cfg));
    let second = trainer::train(
        &mut resumed,
        &saved,
        Start::resume(adam, step),
        None,
        &mut trainer::Silent,
    )
    .unwrap();
    let split: Vec<f64> = first
        .records
        .iter()
        .chain(&second.records)
        .map(|r| r.loss)
        .collect();
    assert_eq!(
        split, full,
        "{name}: resumed losses differ from the uninterrupted run"
    );
    // the metrics file holds each step once
    let rows = quartic::train::metrics::Metrics::read(&run_split.join("metrics.csv")).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(run_split.join("curves.png").exists());
}

#[test]
fn first_twenty_losses_of_a_fixed_seed_run() {
    let dev = Cpu::default();
    let config = tiny_model(false, 16, 12);
    let mut model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 7)).unwrap();
    let dir = scratch("twenty");
    let cfg = TrainConfig {
        seed: 7,
        eval_every: 20,
        ..tiny_train(&dir, 20)
    };
    let report =
        trainer::train(&mut model, &cfg, Start::fresh(), None, &mut trainer::Silent).unwrap();
    let losses: Vec<f64> = report
        .records
        .iter()
        .map(|r| (r.loss * 1e4).round() / 1e4)
        .collect();
    assert!(
        losses[19] < losses[0],
        "training lowers the loss: {losses:?}"
    );
    insta::with_settings!({snapshot_path => "../../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_json_snapshot!("training__first_20_losses", losses);
    });
}

#[test]
fn checkpoints_round_trip_exactly_and_leave_no_temporary_file() {
    let dev = Cpu::default();
    let dir = scratch("ckpt");
    let path = dir.join("model.safetensors");
    let config = tiny_model(true, 16, 8);
    let model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 3)).unwrap();
    checkpoint::save(&path, &model, None, &TrainState::default()).unwrap();
    assert!(!path.with_extension("safetensors.tmp").exists());
    let back = checkpoint::load(&path).unwrap();
    assert_eq!(back.config, config);
    let reloaded = back.model::<f32, Cpu>(&dev).unwrap();
    for (a, b) in model.params().iter().zip(reloaded.params()) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.value.as_vec(), b.value.as_vec());
    }
    // a corrupt file and a foreign file are errors, not panics
    std::fs::write(dir.join("bad.safetensors"), b"not a checkpoint").unwrap();
    let e = checkpoint::load(&dir.join("bad.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("the checkpoint is not a safetensors file"),
        "{e}"
    );
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dev = Cpu::default();
    let config = tiny_model(false, 16, 12);
    let out = scratch("nan");
    let mut model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 0)).unwrap();
    let cfg = TrainConfig {
        lr: 1e12,
        warmup: 1,
        clip: 0.0,
        checkpoint_every: 1,
        ..tiny_train(&out, 50)
    };
    let err = trainer::train(&mut model, &cfg, Start::fresh(), None, &mut trainer::Silent)
        .err()
        .expect("such a learning rate diverges");
    let text = err.to_string();
    assert!(
        text.contains("at step") || text.contains("gradient norm"),
        "{text}"
    );
    let saved = checkpoint::load(&cfg.checkpoint_path()).unwrap();
    let model = saved.model::<f32, Cpu>(&dev).unwrap();
    assert!(model
        .params()
        .iter()
        .all(|p| p.value.as_vec().iter().all(|x| x.is_finite())));
}

/// Logits of each model class on fixed tokens and a fixed seed.
#[test]
fn model_logits_match_their_snapshots() {
    let dev = Cpu::default();
    let tokens = [3usize, 1, 4, 1, 5, 9];
    let rel = RelationalConfig {
        num_tokens: 10,
        dim: 16,
        depth: 2,
        dim_edges: 4,
        dim_head: 4,
        heads: 2,
        causal: false,
        ff_mult: 2.0,
        max_seq_len: 8,
    };
    let ms = crate::common::small_multistream(10, 16, 2);
    let models = [
        ("quartic_taylor", tiny_model(false, 10, 8)),
        ("quartic_causal", tiny_model(true, 10, 8)),
        ("relational", ModelConfig::Graph(rel.to_graph(false))),
        ("multistream", ModelConfig::MultiStream(ms)),
    ];
    for (name, config) in models {
        let model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 11)).unwrap();
        let out = model
            .forward::<NoneTape>(&tokens, 1, tokens.len(), None)
            .unwrap();
        let logits: Vec<f64> = out
            .logits
            .as_vec()
            .iter()
            .map(|&x| (x as f64 * 1e4).round() / 1e4)
            .collect();
        let aux = out.aux.map(|a| (a.array() as f64 * 1e4).round() / 1e4);
        insta::with_settings!({snapshot_path => "../../snapshots", prepend_module_to_snapshot => false}, {
            insta::assert_json_snapshot!(format!("logits__{name}"), serde_json::json!({"logits": logits, "aux": aux}));
        });
    }
}

/// A task of the user's own (a type implementing `TaskDef`): every position predicts the
/// sequence's first token. The trainer takes it as a value, learns it, and refuses a config that
/// names another task.
#[test]
fn a_users_own_task_trains_through_the_task_trait() {
    use quartic::train::tasks::{Example, Split, TaskDef, Vocab};
    use quartic::train::Task;
    use rand::Rng;

    #[derive(Debug)]
    struct CopyFirst;
    impl TaskDef for CopyFirst {
        fn name(&self) -> String {
            "copy-first".into()
        }
        fn vocab(&self) -> Vocab {
            Vocab::nodes(8)
        }
        fn max_len(&self) -> usize {
            6
        }
        fn causal(&self) -> bool {
            false
        }
        fn example(&self, rng: &mut rand::rngs::StdRng, _split: Split) -> Example {
            let tokens: Vec<usize> = (0..6).map(|_| rng.gen_range(0..8)).collect();
            Example {
                targets: vec![Some(tokens[0]); 6],
                tokens,
                ..Example::default()
            }
        }
    }
    let task = Task::new(CopyFirst).unwrap();
    let dir = scratch("user-task");
    let cfg = TrainConfig {
        task: "copy-first".into(),
        steps: 300,
        batch: 16,
        warmup: 10,
        eval_every: 300,
        eval_batches: 2,
        checkpoint_every: 300,
        out: dir.to_path_buf(),
        ..TrainConfig::default()
    };
    let dev = Cpu::default();
    let mut model =
        Model::<f32, Cpu>::new(&tiny_model(false, 8, 6), None, &Init::random(&dev, 0)).unwrap();
    let wrong = TrainConfig {
        task: "sanity".into(),
        ..cfg.clone()
    };
    let e = trainer::train_task(
        &mut model,
        &task,
        &wrong,
        Start::fresh(),
        None,
        &mut trainer::Silent,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`sanity`") && e.contains("`copy-first`"), "{e}");
    let report = trainer::train_task(
        &mut model,
        &task,
        &cfg,
        Start::fresh(),
        None,
        &mut trainer::Silent,
    )
    .unwrap();
    let (_, accuracy) = report.eval.unwrap();
    // chance is 1/8
    assert!(accuracy > 0.6, "held-out accuracy {accuracy}");
}

//! The `quartic` command under bad input, signals and closed pipes: a clear refusal naming
//! what and where, the right exit status, nothing lost and nothing written where it should
//! not be.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::reliability::interrupted_run;

use crate::common::{quartic, scratch};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Fails with status 1 and a message containing `expected`, without a panic.
fn refused(args: &[&str], expected: &str) -> String {
    let out = quartic(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(expected),
        "{args:?}: expected `{expected}` in: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    err
}

fn ones(n: usize) -> String {
    vec!["1"; n].join(",")
}

/// A training run in the background, its first line of output already read.
fn started_train(out: &Path) -> (Child, impl Read) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quartic"))
        .args([
            "train",
            "--steps",
            "100000",
            "--eval-every",
            "1",
            "--eval-batches",
            "1",
        ])
        .args(["--batch", "4", "--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    // the banner, the rule parameters, then one line per step
    for _ in 0..3 {
        first.clear();
        lines.read_line(&mut first).unwrap();
    }
    assert!(first.starts_with("step"), "{first}");
    (child, lines)
}

/// Waits (at most a minute) for `child` to exit: its status and what it wrote to stderr.
fn finish(child: &mut Child) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn signals_save_a_checkpoint_and_exit_with_128_plus_the_signal() {
    for (signal, code) in [("TERM", 143), ("HUP", 129), ("INT", 130)] {
        let out = scratch(&format!("signal-{signal}"));
        let (mut child, mut lines) = started_train(&out);
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        // the rest of standard output, up to the notice the run prints when it stops
        let mut text = String::new();
        lines.read_to_string(&mut text).unwrap();
        let (status, err) = finish(&mut child);
        assert_eq!(status.code(), Some(code), "SIG{signal}: {err}");
        assert!(text.contains("checkpoint saved"), "SIG{signal}: {text}");
        assert!(err.contains(&format!("stopped by SIG{signal}")), "{err}");
        let saved = quartic::train::checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
        assert!(saved.train.step >= 1, "SIG{signal}");
    }
}

#[test]
fn a_closed_standard_output_ends_the_command_quietly() {
    // forward: the reader is gone before anything is written
    let mut child = Command::new(env!("CARGO_BIN_EXE_quartic"))
        .args(["forward", "--tokens", "1,2,3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let (status, err) = finish(&mut child);
    assert_eq!(status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // train: stops at the next line it would print, saving its checkpoint
    let out = scratch("pipe");
    let (mut child, stdout) = started_train(&out);
    drop(stdout);
    let (status, err) = finish(&mut child);
    assert_eq!(status.code(), Some(141), "{err}");
    assert!(err.contains("checkpoint saved"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.join("checkpoint.safetensors").exists());
}

#[test]
fn resume_writes_to_out_and_refuses_flags_it_would_ignore() {
    let original = scratch("cli-resume-a");
    interrupted_run(&original, 2, 4);
    let copy = scratch("cli-resume-b");
    for f in ["checkpoint.safetensors", "metrics.csv"] {
        std::fs::copy(original.join(f), copy.join(f)).unwrap();
    }
    let before = std::fs::read(original.join("checkpoint.safetensors")).unwrap();
    refused(
        &[
            "train",
            "--resume",
            "--out",
            copy.to_str().unwrap(),
            "--lr",
            "1",
        ],
        "--lr would be ignored",
    );
    // run from another working directory: the folder given is where it writes
    let out = Command::new(env!("CARGO_BIN_EXE_quartic"))
        .args(["train", "--resume", "--out", copy.to_str().unwrap()])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("out {}", copy.display())),
        "the banner names where it writes: {text}"
    );
    assert_eq!(
        std::fs::read(original.join("checkpoint.safetensors")).unwrap(),
        before,
        "the original run was written to"
    );
    let done = quartic::train::checkpoint::load(&copy.join("checkpoint.safetensors")).unwrap();
    assert_eq!(done.train.step, 4);
}

#[test]
fn a_fresh_train_refuses_a_folder_that_holds_a_run() {
    let out = scratch("cli-fresh");
    interrupted_run(&out, 1, 3);
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let err = refused(
        &["train", "--steps", "2", "--out", out.to_str().unwrap()],
        "already holds a run",
    );
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("checkpoint.safetensors")).unwrap(),
        before
    );
    let o = quartic(&[
        "train",
        "--steps",
        "2",
        "--batch",
        "4",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // a run holding the folder keeps a second one out
    let held = scratch("cli-held");
    let (mut child, _stdout) = started_train(&held);
    refused(
        &[
            "train",
            "--steps",
            "2",
            "--out",
            held.to_str().unwrap(),
            "--overwrite",
        ],
        "another run is writing to this folder",
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sizes_that_cannot_fit_are_refused_before_allocating() {
    let many = ones(10_000);
    let started = Instant::now();
    for args in [
        vec!["forward", "--tokens", many.as_str()],
        vec!["forward", "--tokens", "1,2", "--heads", "100000"],
        vec!["forward", "--tokens", "1,2", "--dim", "10000000"],
        vec![
            "forward", "--tokens", "1,2", "--depth", "100000", "--dim", "512",
        ],
        vec!["forward", "--tokens", "1,2", "--num-tokens", "1000000000"],
        vec!["train", "--batch", "100000000", "--steps", "1"],
        vec!["train", "--dim", "1000000", "--steps", "1"],
        vec!["check", "64", "--max-memory", "1MiB"],
        vec!["forward", "--tokens", "1,2", "--max-memory", "100KiB"],
    ] {
        let err = refused(&args, "needs about");
        assert!(err.contains("--max-memory"), "{err}");
    }
    // all of them refused at once, not after allocating
    assert!(started.elapsed() < Duration::from_secs(20));
    // the limit can be raised for a run that fits
    let ok = quartic(&["forward", "--tokens", "1,2", "--max-memory", "unlimited"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let o = quartic(&["forward", "--tokens", "1", "--max-memory", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`lots` is not a size"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn files_that_never_end_are_refused() {
    refused(
        &["forward", "--tokens", "1", "--rule", "/dev/zero"],
        "larger than 1.0 MiB",
    );
    refused(
        &["eval", "--checkpoint", "/dev/zero"],
        "not a safetensors file",
    );
    refused(&["train", "--config", "/dev/zero"], "larger than 16.0 MiB");
    refused(&["train", "--data", "/dev/zero"], "larger than 1.0 GiB");
    let dir = scratch("cli-import-zero");
    let out = dir.join("x.safetensors");
    refused(
        &[
            "import-reference",
            "--weights",
            "/dev/zero",
            "--config",
            "/dev/zero",
            "--out",
            out.to_str().unwrap(),
        ],
        "larger than 16.0 MiB",
    );
}

#[test]
fn bad_numbers_and_options_are_refused_with_their_place() {
    let dir = scratch("cli-numbers");
    refused(
        &["train", "--set", "ff_mult=inf", "--steps", "1"],
        "not a finite number",
    );
    refused(
        &["train", "--ff-mult", "1e30", "--steps", "1"],
        "hidden channels",
    );
    refused(
        &["train", "--set", "norm_eps=-1", "--steps", "1"],
        "must not be negative",
    );
    refused(&["train", "--clip", "NaN", "--steps", "1"], "`clip` is NaN");
    refused(&["train", "--lr", "inf", "--steps", "1"], "`lr` is inf");
    refused(
        &["explain", "taylor", "--set", "scale=nan"],
        "not a finite number",
    );
    let rule = dir.join("scale.rule");
    std::fs::write(&rule, "rule r(s = 0 / 0)\nnodes[i] += nodes[i] * s\n").unwrap();
    let err = refused(&["explain", rule.to_str().unwrap()], "division by zero");
    assert!(err.contains("scale.rule:1:16"), "{err}");
    // generate refuses a NaN temperature before reading anything else
    refused(
        &[
            "generate",
            "--checkpoint",
            "/nonexistent",
            "--temperature",
            "NaN",
        ],
        "--temperature",
    );
    // a model that computes a non-finite value: reported, never printed as a number or null
    let overflow = dir.join("overflow.rule");
    std::fs::write(&overflow, "nodes[i] += exp(nodes[i] * 1000)\n").unwrap();
    let err = refused(
        &[
            "forward",
            "--tokens",
            "1,2,3",
            "--rule",
            overflow.to_str().unwrap(),
        ],
        "not finite",
    );
    assert!(err.contains("position") && err.contains("class"), "{err}");
}

#[test]
fn only_the_flags_given_override_a_rules_defaults() {
    let dir = scratch("cli-defaults");
    let rule = dir.join("mine.rule");
    std::fs::write(
        &rule,
        "rule mine(heads = 2, dim_head = 8, ff_mult = 3)\n\
         let x[i] = rmsnorm(nodes[i])\n\
         attn: nodes[i] += attend(x[i] -> x[j], heads: heads, dim_head: dim_head)\n\
         ff: nodes[i] += feedforward(nodes[i], mult: ff_mult)\n",
    )
    .unwrap();
    let out = dir.join("run");
    let o = quartic(&[
        "train",
        "--rule",
        rule.to_str().unwrap(),
        "--steps",
        "1",
        "--batch",
        "2",
        "--eval-batches",
        "1",
        "--heads",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("rule parameters: heads = 4, dim_head = 8, ff_mult = 3"),
        "the banner prints every rule parameter: {text}"
    );
    // explain and train share one default model size
    let o = quartic(&["explain", "baseline"]);
    assert!(
        stdout(&o).contains("model: dim 64, dim_edges 16"),
        "{}",
        stdout(&o)
    );
    // a checkpoint brings its own model: flags that would be ignored are refused
    let ckpt = out.join("checkpoint.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let o = quartic(&[
        "forward",
        "--checkpoint",
        ckpt,
        "--tokens",
        "1,2",
        "--causal",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--causal"), "{}", stderr(&o));
    refused(
        &[
            "forward",
            "--checkpoint",
            ckpt,
            "--tokens",
            "1,2",
            "--dim",
            "8",
        ],
        "--dim would be ignored",
    );
}

#[test]
fn errors_escape_control_characters() {
    let dir = scratch("cli-escape");
    let rule = dir.join("esc.rule");
    std::fs::write(
        &rule,
        "nodes[i] += relu(nodes[i]) \x1b[2J\x1b]0;title\x07\n",
    )
    .unwrap();
    let o = quartic(&["explain", rule.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(err.contains("\\u{1b}"), "{err}");
    // not only rule errors: a task name with an escape
    let o = quartic(&["train", "--task", "\x1b[2Jx", "--steps", "1"]);
    assert!(!stderr(&o).contains('\x1b'), "{:?}", stderr(&o));
}

#[test]
fn a_failed_import_leaves_nothing_behind() {
    let dir = scratch("cli-import");
    let fixtures = quartic::fixtures::fixture_dir();
    let weights = fixtures.join("quartic.safetensors");
    let config = fixtures.join("quartic.json");
    // the target is a folder: the new file cannot take its place
    let out = dir.join("taken.safetensors");
    std::fs::create_dir_all(out.join("inside")).unwrap();
    refused(
        &[
            "import-reference",
            "--weights",
            weights.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "cannot move",
    );
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["taken.safetensors"], "{left:?}");
    // integer tensors are not weights
    let ints = dir.join("ints.safetensors");
    let data: Vec<u8> = (0..4i32).flat_map(|x| x.to_le_bytes()).collect();
    let view =
        ::safetensors::tensor::TensorView::new(::safetensors::Dtype::I32, vec![4], &data).unwrap();
    std::fs::write(
        &ints,
        ::safetensors::serialize([("token_emb.weight", view)], &None).unwrap(),
    )
    .unwrap();
    refused(
        &[
            "import-reference",
            "--weights",
            ints.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--out",
            dir.join("x.safetensors").to_str().unwrap(),
        ],
        "is not floating point",
    );
}

#[test]
fn deep_rules_in_a_checkpoint_are_refused_not_a_stack_overflow() {
    let dir = scratch("cli-deep");
    let out = dir.join("run");
    interrupted_run(&out, 1, 2);
    // replace the stored rule with a deeply nested one, in the first checkpoint format (no
    // checksums: the current format would refuse the edit before parsing the rule)
    let path = out.join("checkpoint.safetensors");
    let data = std::fs::read(&path).unwrap();
    let (_, meta) = ::safetensors::SafeTensors::read_metadata(&data).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    meta.remove("checksums");
    meta.insert("format".into(), quartic::train::checkpoint::FORMAT_1.into());
    meta.insert(
        "rule_source".into(),
        format!(
            "nodes[i] += {}nodes[i]{}\n",
            "(".repeat(3000),
            ")".repeat(3000)
        ),
    );
    let tensors = ::safetensors::SafeTensors::deserialize(&data).unwrap();
    let bytes = ::safetensors::serialize(tensors.tensors(), &Some(meta)).unwrap();
    std::fs::write(&path, bytes).unwrap();
    refused(
        &[
            "forward",
            "--checkpoint",
            path.to_str().unwrap(),
            "--tokens",
            "1,2",
        ],
        "nests more than",
    );
}

/// `train --init` on another task: the weights start where the checkpoint left them, the
/// optimizer and the step count start afresh, and the written config trains it again.
#[test]
fn init_starts_from_a_checkpoints_weights_on_another_task() {
    let first = scratch("cli-init-a");
    let small = ["--rule", "baseline", "--dim", "16", "--batch", "4"];
    let run = |args: &[&str]| {
        let out = quartic(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    let mut args = vec![
        "train",
        "--task",
        "match3",
        "--steps",
        "3",
        "--eval-every",
        "3",
    ];
    args.extend(small);
    args.extend(["--out", first.to_str().unwrap()]);
    run(&args);
    let from = first.join("checkpoint.safetensors");
    let (from_s, lr) = (from.to_str().unwrap(), 1e-3);
    let second = scratch("cli-init-b");
    let second_args = [
        "train",
        "--task",
        "match3-distinct",
        "--init",
        from_s,
        "--steps",
        "1",
        "--batch",
        "4",
        "--eval-every",
        "1",
        "--lr",
        "0.001",
        "--warmup",
        "0",
        "--out",
        second.to_str().unwrap(),
    ];
    let text = stdout(&run(&second_args));
    assert!(text.contains("weights from"), "{text}");
    let a = quartic::train::checkpoint::load(&from).unwrap();
    let b = quartic::train::checkpoint::load(&second.join("checkpoint.safetensors")).unwrap();
    assert_eq!(b.train.step, 1, "the step count starts afresh");
    assert_eq!(a.config, b.config, "the checkpoint's model");
    // one AdamW step moves a weight by at most about the learning rate (plus its decay);
    // a fresh random initialisation would be O(1) away
    let mut moved = 0;
    for (name, (shape, values)) in &a.params {
        let (shape_b, values_b) = &b.params[name];
        assert_eq!(shape, shape_b, "{name}");
        for (x, y) in values.iter().zip(values_b) {
            assert!(
                (x - y).abs() <= 1.5 * lr * (1.0 + x.abs()),
                "{name}: {x} → {y}"
            );
            moved += usize::from(x != y);
        }
    }
    assert!(moved > 0, "the step trained");
    // the written config names the checkpoint and no model, and trains the same run again
    let config = std::fs::read_to_string(second.join("config.toml")).unwrap();
    assert!(config.contains("init = "), "{config}");
    assert!(!config.contains("[model]"), "{config}");
    let third = scratch("cli-init-c");
    let config_path = second.join("config.toml");
    run(&[
        "train",
        "--config",
        config_path.to_str().unwrap(),
        "--out",
        third.to_str().unwrap(),
    ]);
    let c = quartic::train::checkpoint::load(&third.join("checkpoint.safetensors")).unwrap();
    assert_eq!(c.params, b.params, "the config reruns the same run");

    // model flags would be ignored; a task the model cannot read is refused by name
    let fourth = scratch("cli-init-d");
    let out_d = fourth.to_str().unwrap();
    refused(
        &["train", "--init", from_s, "--dim", "32", "--out", out_d],
        "--dim would be ignored",
    );
    let err = refused(
        &[
            "train",
            "--init",
            from_s,
            "--task",
            "relation-composition",
            "--out",
            out_d,
        ],
        "cannot learn task relation-composition",
    );
    assert!(err.contains("--init"), "{err}");
    refused(
        &[
            "train",
            "--init",
            "/nonexistent/checkpoint.safetensors",
            "--out",
            out_d,
        ],
        "/nonexistent/checkpoint.safetensors",
    );
    assert!(
        !fourth.join("checkpoint.safetensors").exists() && !fourth.join("config.toml").exists(),
        "a refused run writes nothing"
    );
    // with --resume it is a contradiction, which the parser refuses
    let out = quartic(&["train", "--resume", "--init", from_s, "--out", out_d]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

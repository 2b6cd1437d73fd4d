//! `--device cpu|cuda[:N]` on every subcommand that computes: `cpu` runs as before, a malformed
//! name is refused by the parser, and in a build without CUDA a `cuda` device is refused with
//! how to get one, before anything is written.

use crate::common::{quartic, scratch, text};

/// A one-run experiment of two steps into `out`.
fn tiny_experiment(out: &str) -> Vec<&str> {
    vec![
        "experiment",
        "--task",
        "sanity",
        "--rules",
        "baseline",
        "--seeds",
        "1",
        "--steps",
        "2",
        "--batch",
        "4",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--jobs",
        "1",
        "--out",
        out,
    ]
}

#[test]
fn device_cpu_runs_every_computing_subcommand_as_before() {
    let dir = scratch("cpu");
    let run = dir.join("run");
    let run = run.to_str().unwrap();
    let small = [
        "--task",
        "sanity",
        "--steps",
        "3",
        "--batch",
        "4",
        "--eval-every",
        "3",
        "--eval-batches",
        "1",
        "--rule",
        "baseline",
        "--dim",
        "16",
        "--set",
        "heads=2",
        "--set",
        "dim_head=8",
        "--quiet",
    ];
    let mut train = vec!["train", "--out", run, "--device", "cpu"];
    train.extend(small);
    let out = quartic(&train);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let checkpoint = format!("{run}/checkpoint.safetensors");
    let eval = |device: Option<&str>| {
        let mut args = vec!["eval", "--checkpoint", &checkpoint, "--batches", "2"];
        args.extend(device.map(|d| ["--device", d]).into_iter().flatten());
        let out = quartic(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(eval(Some("cpu")), eval(None));

    let forward = |device: Option<&str>| {
        let mut args = vec!["forward", "--tokens", "3,1,4,1,5", "--seed", "7"];
        args.extend(device.map(|d| ["--device", d]).into_iter().flatten());
        let out = quartic(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(forward(Some("cpu")), forward(None));
    assert!(forward(Some("cpu")).contains("\"logits\""));

    let sweep = dir.join("sweep");
    let mut args = tiny_experiment(sweep.to_str().unwrap());
    args.extend(["--device", "cpu"]);
    let out = quartic(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(sweep.join("summary.md").exists());
}

#[test]
fn a_device_name_that_is_not_one_is_refused() {
    for (name, expect) in [
        ("gpu", "no device `gpu`"),
        ("cuda:x", "`x` is not a device number"),
        ("CPU", "no device `CPU`"),
    ] {
        let out = quartic(&["forward", "--tokens", "1,2", "--device", name]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "--device {name} was taken");
        assert!(err.contains(expect), "--device {name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Without the `cuda` feature every computing subcommand refuses `cuda`, naming the flag and the
/// script that makes a CUDA build, and leaves no output behind.
#[test]
fn cuda_in_a_build_without_it_is_refused_before_anything_is_written() {
    if quartic::device::CUDA_BUILT {
        return;
    }
    let dir = scratch("cuda");
    let run = dir.join("run");
    let sweep = dir.join("sweep");
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "train",
            "--task",
            "sanity",
            "--steps",
            "2",
            "--out",
            run.to_str().unwrap(),
        ],
        vec!["forward", "--tokens", "1,2"],
        vec!["check", "4"],
        tiny_experiment(sweep.to_str().unwrap()),
    ];
    for mut args in cases {
        args.extend(["--device", "cuda:1"]);
        let out = quartic(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("--device")
                && err.contains("`cuda:1`: this build has no CUDA")
                && err.contains("scripts/cuda_build.sh"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(!run.exists(), "train wrote {}", run.display());
    assert!(!sweep.exists(), "experiment wrote {}", sweep.display());
}

/// The op check's path for another device, run with the CPU in that place: every case
/// passes, each f32 case carries the CPU's own f32 rounding against f64 on its inputs, and
/// the f64 case (routing) is held to the plain tolerance, with no rounding allowance.
#[test]
fn the_op_check_against_a_device_measures_the_cpus_own_rounding_in_f32() {
    use dfdx::prelude::Cpu;
    use quartic::models::op_check::{compare_op_on, ops, Precision};
    use quartic::models::self_check::TOLERANCE;

    let cases = ops();
    assert!(cases.iter().any(|(_, _, p)| *p == Precision::F64));
    for (k, (name, op, precision)) in cases.into_iter().enumerate() {
        let c = compare_op_on(&Cpu::default(), &name, op, precision, k as u64).unwrap();
        assert!(c.passes(), "{name}: {c:?}");
        match precision {
            Precision::F32 => {
                let r = c
                    .rounding
                    .unwrap_or_else(|| panic!("{name}: no rounding measured"));
                assert!(r.is_finite() && r >= 0.0, "{name}: rounding {r}");
            }
            Precision::F64 => assert_eq!(c.tolerance(), TOLERANCE, "{name}"),
        }
    }
}

//! A seeded fuzz test in the normal suite: the built-in rules and a checkpoint, mutated many
//! ways (bytes deleted, inserted, flipped; tokens, numbers and lines swapped in; files cut
//! short). Every mutant must give a valid result or a clear error: no panic, no abort, and rule
//! errors located (line and column).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dfdx::prelude::*;
use quartic::memory::Limit;
use quartic::models::footprint::{estimate, Use};
use quartic::models::Model;
use quartic::nn::Init;
use quartic::rules::{Rule, RuleConfig, BUILTINS};
use quartic::train::checkpoint::{self, TrainState};
use quartic::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::scratch;
use crate::reliability::graph_config;

const SNIPPETS: [&str; 30] = [
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "=",
    "+=",
    "->",
    "**",
    "/",
    "*",
    "-",
    "0",
    "1e999",
    "0 / 0",
    "nan",
    "inf",
    "attend(",
    "let ",
    "# ",
    "\n",
    "\u{0}",
    "é",
    "heads",
    "k",
    "sum[k](",
    "if ",
    "edges[i, j]",
    "nodes[i]",
];
const NUMBERS: [&str; 10] = [
    "0",
    "-1",
    "1e30",
    "1e-30",
    "0.5",
    "1e400",
    "3",
    "1000000000",
    "2.5",
    "-0",
];

/// One random edit of `src`.
fn mutate(src: &str, rng: &mut StdRng) -> String {
    let bytes = src.as_bytes();
    let at = rng.gen_range(0..=bytes.len());
    let mut out: Vec<u8> = match rng.gen_range(0..6) {
        0 => {
            let end = (at + rng.gen_range(1..12)).min(bytes.len());
            [&bytes[..at], &bytes[end..]].concat()
        }
        1 => {
            let s = SNIPPETS[rng.gen_range(0..SNIPPETS.len())].as_bytes();
            [&bytes[..at], s, &bytes[at..]].concat()
        }
        2 => {
            // a number replaced by another
            let digits: Vec<usize> = (0..bytes.len())
                .filter(|&i| bytes[i].is_ascii_digit())
                .collect();
            if digits.is_empty() {
                bytes.to_vec()
            } else {
                let i = digits[rng.gen_range(0..digits.len())];
                let mut end = i;
                while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.') {
                    end += 1;
                }
                let n = NUMBERS[rng.gen_range(0..NUMBERS.len())].as_bytes();
                [&bytes[..i], n, &bytes[end..]].concat()
            }
        }
        3 => {
            // a line repeated or dropped
            let lines: Vec<&str> = src.lines().collect();
            let k = rng.gen_range(0..lines.len());
            let mut v: Vec<&str> = lines.clone();
            if rng.gen_bool(0.5) {
                v.insert(k, lines[k]);
            } else {
                v.remove(k);
            }
            (v.join("\n") + "\n").into_bytes()
        }
        4 => {
            let mut v = bytes.to_vec();
            if !v.is_empty() {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen_range(0x20..0x7f);
            }
            v
        }
        _ => {
            // an operator's operand wrapped deep (bounded nesting)
            let depth = rng.gen_range(1..200);
            let open = "(".repeat(depth);
            let close = ")".repeat(depth);
            [
                &bytes[..at],
                open.as_bytes(),
                b"1",
                close.as_bytes(),
                &bytes[at..],
            ]
            .concat()
        }
    };
    if rng.gen_bool(0.2) {
        out = mutate(&String::from_utf8_lossy(&out), rng).into_bytes();
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses, checks and (when small enough) runs a rule forward and backward on 3 nodes.
fn try_rule(source: &str, causal: bool) -> Result<(), Error> {
    let rule = Rule::parse("mutant.rule", source)?;
    let cfg = RuleConfig {
        dim: 8,
        dim_edges: 4,
        causal,
        overrides: vec![],
    };
    let plan = rule.plan(&cfg)?;
    // what a mutant asks for may be huge (heads: 1e9): the command would refuse it by its
    // estimate, and so does this test
    let cost = quartic::rules::explain::plan_cost(&plan, 1, 3);
    if cost.params > 1e6 || cost.elements > 1e7 || cost.flops > 1e9 {
        return Ok(());
    }
    let dev = Cpu::default();
    let layer = quartic::rules::RuleLayer::<f32, Cpu>::new(plan, &Init::random(&dev, 0))?;
    let nodes: Tensor<(usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(1, 3, 8));
    let edges: Tensor<(usize, usize, usize, usize), f32, Cpu> =
        dev.sample_normal_like(&(1, 3, 3, 4));
    let mask = quartic::graph::GraphMask::full(1, 3).causal(causal);
    let (x, e) = layer.forward(
        quartic::graph::Nodes::new(nodes.leaky_trace()),
        quartic::graph::Edges::new(edges.retaped())?,
        &mask,
    )?;
    let _ = (x.into_tensor().sum() + e.into_tensor().sum()).backward();
    Ok(())
}

#[test]
fn mutated_rules_give_a_result_or_a_located_error() {
    let mut rng = StdRng::seed_from_u64(15);
    let (mut ran, mut refused) = (0, 0);
    for (name, source) in BUILTINS {
        for k in 0..250 {
            let mutant = mutate(source, &mut rng);
            let causal = k % 2 == 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| try_rule(&mutant, causal)));
            match outcome {
                Err(_) => panic!("{name}, mutant {k} panicked:\n{mutant}"),
                Ok(Ok(())) => ran += 1,
                Ok(Err(Error::Rule(d))) => {
                    assert!(
                        d.line >= 1 && d.col >= 1,
                        "{name} mutant {k}: unlocated {d}"
                    );
                    refused += 1;
                }
                // what the checker lets through must run: an error past it has no location
                Ok(Err(e)) => {
                    panic!("{name}, mutant {k}: an error past the checker: {e}\n{mutant}")
                }
            }
        }
    }
    eprintln!("rules: {ran} mutants ran, {refused} refused");
    // the mutations reach both sides
    assert!(ran > 20 && refused > 100, "ran {ran}, refused {refused}");
}

/// One random edit of a file's bytes.
fn mutate_bytes(data: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut v = data.to_vec();
    match rng.gen_range(0..5) {
        0 => {
            let i = rng.gen_range(0..v.len());
            v[i] ^= 1 << rng.gen_range(0..8);
        }
        1 => v.truncate(rng.gen_range(0..v.len())),
        2 => {
            let i = rng.gen_range(0..=v.len());
            let extra: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
            v.splice(i..i, extra);
        }
        3 => {
            // the header's length field
            let i = rng.gen_range(0..8);
            v[i] = rng.gen();
        }
        _ => {
            // a byte of the header's JSON changed into another printable one
            let header = 8 + u64::from_le_bytes(v[..8].try_into().unwrap()) as usize;
            let i = rng.gen_range(8..header.min(v.len()));
            v[i] = rng.gen_range(0x20..0x7f);
        }
    }
    v
}

/// Loads a checkpoint file as the command does: read and checked, estimated against a limit,
/// built, run forward.
fn try_checkpoint(path: &std::path::Path) -> Result<(), Error> {
    let c = checkpoint::load(path)?;
    Limit::Bytes(256 << 20).check(
        "the fuzz test",
        &estimate(&c.config, c.rule_source.as_deref(), 1, 4, Use::Forward)?,
    )?;
    let dev = Cpu::default();
    let model = c.model::<f32, Cpu>(&dev)?;
    let n = c.config.max_seq_len().min(4);
    let tokens: Vec<usize> = (0..n).map(|t| t % c.config.num_tokens()).collect();
    model.forward::<NoneTape>(&tokens, 1, n, None)?;
    Ok(())
}

#[test]
fn mutated_checkpoints_load_or_give_an_error() {
    let dir = scratch("fuzz-checkpoints");
    let dev = Cpu::default();
    let config = quartic::models::ModelConfig::Graph(graph_config("taylor", 8, 6));
    let model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 0)).unwrap();
    let good = dir.join("good.safetensors");
    checkpoint::save(&good, &model, None, &TrainState::default()).unwrap();
    let current = std::fs::read(&good).unwrap();
    // the first format has no checksums: its mutants reach the config, rule and shape checks
    let first = {
        let (_, meta) = ::safetensors::SafeTensors::read_metadata(&current).unwrap();
        let mut meta: HashMap<String, String> = meta.metadata().clone().unwrap();
        meta.remove("checksums");
        meta.insert("format".into(), checkpoint::FORMAT_1.into());
        let t = ::safetensors::SafeTensors::deserialize(&current).unwrap();
        ::safetensors::serialize(t.tensors(), &Some(meta)).unwrap()
    };
    let mut rng = StdRng::seed_from_u64(16);
    let mut outcomes: HashMap<&str, (usize, usize)> = HashMap::new();
    for (format, data) in [("current", &current), ("first", &first)] {
        for k in 0..400 {
            let mutant = mutate_bytes(data, &mut rng);
            if mutant == *data {
                continue;
            }
            let path = dir.join(format!("{format}-{k}.safetensors"));
            std::fs::write(&path, &mutant).unwrap();
            let outcome = catch_unwind(AssertUnwindSafe(|| try_checkpoint(&path)));
            let entry = outcomes.entry(format).or_default();
            match outcome {
                Err(_) => panic!("{format} mutant {k} panicked"),
                Ok(Ok(())) => entry.0 += 1,
                Ok(Err(e)) => {
                    assert!(!e.to_string().is_empty());
                    entry.1 += 1
                }
            }
        }
    }
    // with checksums no mutant of the current format loads (a header edit that keeps it
    // valid JSON and the same entries would be the only way, and the metadata's own
    // checksum covers that)
    eprintln!("checkpoints (loaded, refused): {outcomes:?}");
    let (loaded, _) = outcomes["current"];
    assert_eq!(loaded, 0, "a mutated checkpoint loaded: {outcomes:?}");
    assert!(outcomes["first"].1 > 50, "{outcomes:?}");
}

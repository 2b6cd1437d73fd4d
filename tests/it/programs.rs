//! Element-wise programs (`spec::pointwise`): the fused CPU kernel against the composite form
//! (one dfdx op per step), values and gradients, in f64 and f32, across the kernel's blocks
//! and tasks; a finite-difference check; NaN kept through `relu`, `min` and `max`; the
//! program checks; inputs read through gather tables (a permutation, broadcasts) against
//! the same inputs moved first; and a rule whose element-wise expressions read one tensor
//! several times.

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::ops::pointwise::pointwise_composite;
use quartic::rules::Rule;
use quartic::spec::pointwise::{BinaryFn, Program, Step, UnaryFn};

use crate::common::*;

/// Every step kind, inputs read several times:
/// `min(max((a·b + σ(c) − tanh a) / (1.5 b² + 0.25), silu c), exp a) · √(|b| + 0.5)
///  + relu c + ln(2|a| + 1) − (|b| + 1)^1.5 + leaky_relu c`.
fn every_step() -> Program {
    use BinaryFn::*;
    use Step::*;
    use UnaryFn::*;
    Program::new(vec![
        Input(0),
        Input(1),
        Binary(Mul, 0, 1),
        Input(2),
        Unary(Sigmoid, 3),
        Binary(Add, 2, 4),
        Input(0),
        Unary(Tanh, 6),
        Binary(Sub, 5, 7),
        Input(1),
        Unary(Square, 9),
        Affine {
            x: 10,
            mul: 1.5,
            add: 0.25,
        },
        Binary(Div, 8, 11),
        Input(2),
        Unary(Silu, 13),
        Binary(Max, 12, 14),
        Input(0),
        Unary(Exp, 16),
        Binary(Min, 15, 17),
        Input(1),
        Unary(Abs, 19),
        Affine {
            x: 20,
            mul: 1.0,
            add: 0.5,
        },
        Unary(Sqrt, 21),
        Binary(Mul, 18, 22),
        Input(2),
        Unary(Relu, 24),
        Binary(Add, 23, 25),
        Input(0),
        Unary(Abs, 27),
        Affine {
            x: 28,
            mul: 2.0,
            add: 1.0,
        },
        Unary(Ln, 29),
        Binary(Add, 26, 30),
        Input(1),
        Unary(Abs, 32),
        Affine {
            x: 33,
            mul: 1.0,
            add: 1.0,
        },
        Powf {
            x: 34,
            exponent: 1.5,
        },
        Binary(Sub, 31, 35),
        Input(2),
        Unary(LeakyRelu, 37),
        Binary(Add, 36, 38),
    ])
    .unwrap()
}

/// Values and the three inputs' gradients under a probe loss, fused or composite, in `E`.
fn run<E: quartic::tensor::Real>(
    fused: bool,
    program: &Program,
    inputs: &[Vec<f64>],
) -> Vec<Vec<f64>>
where
    Cpu: Backend<E>,
{
    let d = dev();
    let len = inputs[0].len();
    let plain: Vec<Tensor<(usize,), E, Cpu>> = inputs
        .iter()
        .map(|v| d.tensor_from_vec(v.iter().map(|&x| E::of(x)).collect(), (len,)))
        .collect();
    let traced: Vec<_> = plain.iter().map(|t| t.leaky_trace()).collect();
    let out = if fused {
        Backend::pointwise_fused(traced, program).unwrap()
    } else {
        pointwise_composite(traced, program).unwrap()
    };
    let values: Vec<f64> = out.as_vec().iter().map(|x| x.as_f64()).collect();
    let probe = d.tensor_from_vec(randn(9, len).iter().map(|&x| E::of(x)).collect(), (len,));
    let grads = (out * probe).sum().backward();
    let mut all = vec![values];
    for t in &plain {
        all.push(grads.get(t).as_vec().iter().map(|x| x.as_f64()).collect());
    }
    all
}

#[test]
fn fused_programs_match_their_composite_form() {
    // 3 tasks of the kernel and a part block at the end
    let len = 2 * 16384 + 3000 + 17;
    let inputs: Vec<Vec<f64>> = (0..3).map(|k| randn(20 + k, len)).collect();
    let program = every_step();
    let names = ["values", "d a", "d b", "d c"];
    let (f, c) = (
        run::<f64>(true, &program, &inputs),
        run::<f64>(false, &program, &inputs),
    );
    for ((f, c), name) in f.iter().zip(&c).zip(names) {
        assert_close(&format!("f64 {name}"), f, c, 1e-12, 1e-10);
    }
    let (f, c) = (
        run::<f32>(true, &program, &inputs),
        run::<f32>(false, &program, &inputs),
    );
    for ((f, c), name) in f.iter().zip(&c).zip(names) {
        assert_close(&format!("f32 {name}"), f, c, 1e-5, 1e-4);
    }
}

#[test]
fn fused_program_gradients_match_finite_differences() {
    let inputs: Vec<Vec<f64>> = (0..3).map(|k| randn(30 + k, 700)).collect();
    let program = every_step();
    gradcheck("element-wise program", &inputs, 40, |v| {
        probe_loss(Backend::pointwise_fused(v, &program).unwrap(), 3)
    });
}

#[test]
fn ties_of_min_and_max_split_the_gradient_in_both_forms() {
    for f in [BinaryFn::Min, BinaryFn::Max] {
        let program =
            Program::new(vec![Step::Input(0), Step::Input(1), Step::Binary(f, 0, 1)]).unwrap();
        let a = vec![0.5, -1.0, 2.0, 3.0];
        let b = vec![0.5, -1.0, 1.0, 4.0];
        let fused = run::<f64>(true, &program, &[a.clone(), b.clone()]);
        let composite = run::<f64>(false, &program, &[a, b]);
        assert_eq!(fused, composite, "{f:?}");
        let probe = randn(9, 4);
        // the first two entries tie: half the gradient each way
        assert_eq!(fused[1][0], 0.5 * probe[0], "{f:?}");
        assert_eq!(fused[2][1], 0.5 * probe[1], "{f:?}");
    }
}

#[test]
fn nan_stays_nan_through_relu_min_max_and_sigmoid() {
    let one = |f: UnaryFn| Program::new(vec![Step::Input(0), Step::Unary(f, 0)]).unwrap();
    let two = |f: BinaryFn| {
        Program::new(vec![Step::Input(0), Step::Input(1), Step::Binary(f, 0, 1)]).unwrap()
    };
    let x = vec![f64::NAN, -1.0, 2.0, f64::NAN];
    let y = vec![1.0, f64::NAN, -3.0, f64::NAN];
    for fused in [true, false] {
        for f in [
            UnaryFn::Relu,
            UnaryFn::LeakyRelu,
            UnaryFn::Sigmoid,
            UnaryFn::Tanh,
            UnaryFn::Abs,
        ] {
            let out = &run::<f64>(fused, &one(f), &[x.clone()])[0];
            assert!(
                out[0].is_nan() && out[3].is_nan(),
                "{f:?} fused {fused}: {out:?}"
            );
            assert!(out[1].is_finite() && out[2].is_finite(), "{f:?}: {out:?}");
        }
        for f in [BinaryFn::Min, BinaryFn::Max] {
            let out = &run::<f64>(fused, &two(f), &[x.clone(), y.clone()])[0];
            assert!(
                out[0].is_nan() && out[1].is_nan() && out[3].is_nan(),
                "{f:?}: {out:?}"
            );
            assert_eq!(out[2], if f == BinaryFn::Min { -3.0 } else { 2.0 });
        }
    }
    // the f32 kernel's vectorized exp keeps NaN too, and saturates without overflow
    let out = &run::<f32>(
        true,
        &one(UnaryFn::Sigmoid),
        &[vec![f64::NAN, -200.0, 200.0, 0.0]],
    )[0];
    assert!(out[0].is_nan(), "{out:?}");
    assert_eq!(&out[1..], &[0.0, 1.0, 0.5]);
}

#[test]
fn malformed_programs_are_refused_with_the_step() {
    use Step::*;
    let refused = |steps: Vec<Step>, what: &str| {
        let err = Program::new(steps).unwrap_err().to_string();
        assert!(err.contains(what), "{err}");
    };
    refused(vec![], "no steps");
    refused(
        vec![Input(0), Unary(UnaryFn::Exp, 1)],
        "step 1 reads step 1",
    );
    refused(vec![Input(1)], "step 0 reads input 1 before input 0");
    refused(
        vec![Input(0), Binary(BinaryFn::Mul, 0, 0)],
        "step 0 is read 2 times",
    );
    refused(vec![Input(0), Input(0)], "step 0 is read 0 times");
    refused(
        vec![
            Input(0),
            Affine {
                x: 0,
                mul: f64::NAN,
                add: 0.0,
            },
        ],
        "step 1 has a non-finite constant",
    );
    // inputs of different lengths, or too few, are refused before anything runs
    let d = dev();
    let program = Program::new(vec![Input(0), Input(1), Binary(BinaryFn::Add, 0, 1)]).unwrap();
    let t = |n: usize| d.zeros_like(&(n,)).leaky_trace();
    let pointwise = quartic::ops::pointwise::pointwise::<f64, Cpu, Tp>;
    let err = pointwise(vec![t(3), t(4)], &program).unwrap_err();
    assert!(err.to_string().contains("input 1 of 3 elements"), "{err}");
    let err = pointwise(vec![t(3)], &program).unwrap_err();
    assert!(err.to_string().contains("2 input tensors"), "{err}");
}

/// Three inputs of a `[b, i, j, k]` program, as a three-index rule's terms reach it: `a` over
/// (j, k) and `b` over (k, i), each read n times (broadcasts), and `c` over (i, j, k) stored
/// as (k, j, i) (a permutation).
fn three_index_tables(batch: usize, n: usize) -> Vec<Vec<usize>> {
    let mut tables = vec![Vec::new(), Vec::new(), Vec::new()];
    for b in 0..batch {
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    tables[0].push((b * n + j) * n + k);
                    tables[1].push((b * n + k) * n + i);
                    tables[2].push(((b * n + k) * n + j) * n + i);
                }
            }
        }
    }
    tables
}

/// 0..len in an order drawn from `seed`.
fn shuffled(len: usize, seed: u64) -> Vec<usize> {
    use rand::{seq::SliceRandom, SeedableRng};
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    order
}

/// A table's strides reproduce it over any range of its elements: transposes, broadcasts
/// (stride 0), merged contiguous digits, one element; a table of no such form has none.
#[test]
fn gather_tables_read_by_strides_reproduce_their_index() {
    use quartic::spec::GatherTable;
    let (batch, n) = (2, 5);
    let mut tables = three_index_tables(batch, n);
    // a channel axis of 3 inside: contiguous runs of 3, and of n · 3 where k is innermost
    tables.push(
        tables[0]
            .iter()
            .flat_map(|&i| (0..3).map(move |c| i * 3 + c))
            .collect(),
    );
    tables.push(vec![4]);
    tables.push(vec![0, 0, 0, 0]);
    for (t, table) in tables.iter().enumerate() {
        let source = table.iter().max().unwrap() + 1;
        let read = GatherTable::new(table.clone(), source).unwrap();
        let strides = read
            .strides()
            .unwrap_or_else(|| panic!("table {t} has strides"));
        for (start, len) in [
            (0, table.len()),
            (1, table.len() - 1),
            (7, 0),
            (3, 11),
            (table.len() - 1, 1),
        ] {
            if start + len > table.len() {
                continue;
            }
            let mut got = vec![usize::MAX; len];
            strides.runs(start, len, |at, from, count, stride| {
                for r in 0..count {
                    got[at + r] = from + r * stride;
                }
            });
            assert_eq!(
                got,
                table[start..start + len],
                "table {t}, elements {start}+{len}"
            );
        }
    }
    let mut runs = 0;
    let contiguous = GatherTable::new(tables[3].clone(), batch * n * n * 3).unwrap();
    contiguous
        .strides()
        .unwrap()
        .runs(0, tables[3].len(), |_, _, _, _| runs += 1);
    assert_eq!(
        runs,
        batch * n,
        "j, k and the channels in one run per (b, i)"
    );
    let scrambled = GatherTable::new(vec![0, 3, 1, 2], 4).unwrap();
    assert!(scrambled.strides().is_none());
    let uneven = GatherTable::new(vec![0, 1, 2, 0, 1], 3).unwrap();
    assert!(uneven.strides().is_none());
    // digits that cannot merge (binary digits at strides 3^d): twelve are read by strides,
    // and exactly, a thirteenth leaves the table to its index
    let digits = |count: u32| -> Vec<usize> {
        (0..1usize << count)
            .map(|e| (0..count).map(|d| (e >> d & 1) * 3usize.pow(d)).sum())
            .collect()
    };
    let twelve = digits(12);
    let read = GatherTable::new(twelve.clone(), *twelve.iter().max().unwrap() + 1).unwrap();
    let mut got = vec![usize::MAX; twelve.len() - 5];
    read.strides().expect("twelve digits have strides").runs(
        5,
        got.len(),
        |at, from, count, stride| {
            for r in 0..count {
                got[at + r] = from + r * stride;
            }
        },
    );
    assert_eq!(got, twelve[5..]);
    let thirteen = digits(13);
    let read = GatherTable::new(thirteen.clone(), *thirteen.iter().max().unwrap() + 1).unwrap();
    assert!(read.strides().is_none(), "13 digits: read by index");
}

/// `program` with input k read through `tables[k]` (fused, in place; or each moved first and
/// the composite run): values and every input's gradient under a probe loss.
fn run_gathered(
    fused: bool,
    program: &Program,
    inputs: &[Vec<f64>],
    tables: &[Option<Vec<usize>>],
) -> Vec<Vec<f64>> {
    use quartic::spec::GatherTable;
    use std::sync::Arc;
    let d = dev();
    let plain: Vec<Tensor<(usize,), f64, Cpu>> = inputs
        .iter()
        .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)))
        .collect();
    let out = if fused {
        let tables = tables
            .iter()
            .zip(inputs)
            .map(|(t, x)| {
                t.as_ref()
                    .map(|t| Arc::new(GatherTable::new(t.clone(), x.len()).unwrap()))
            })
            .collect();
        let traced = plain.iter().map(|t| t.leaky_trace()).collect();
        Backend::pointwise_gathered_fused(traced, tables, program).unwrap()
    } else {
        let moved = plain
            .iter()
            .zip(tables)
            .map(|(t, table)| match table {
                Some(idx) => t
                    .leaky_trace()
                    .gather(d.tensor_from_vec(idx.clone(), (idx.len(),))),
                None => t.leaky_trace(),
            })
            .collect();
        pointwise_composite(moved, program).unwrap()
    };
    let len = out.shape().0;
    let values = out.retaped::<NoneTape>().as_vec();
    let grads = (out * d.tensor_from_vec(randn(9, len), (len,)))
        .sum()
        .backward();
    let mut all = vec![values];
    for t in &plain {
        all.push(grads.get(t).as_vec());
    }
    all
}

/// `(a · b + σ(c)) · d − a`: inputs 0 and 1 broadcast, 2 permuted, 3 read directly.
fn gathered_program() -> Program {
    use BinaryFn::*;
    use Step::*;
    Program::new(vec![
        Input(0),
        Input(1),
        Binary(Mul, 0, 1),
        Input(2),
        Unary(UnaryFn::Sigmoid, 3),
        Binary(Add, 2, 4),
        Input(3),
        Binary(Mul, 5, 6),
        Input(0),
        Binary(Sub, 7, 8),
    ])
    .unwrap()
}

/// Inputs read through tables (two broadcasts read n times each, a permutation, and one read
/// directly) give what the same inputs moved first give, values and gradients, over several
/// parts of the backward; the same bits on one thread and on three; finite differences; bad
/// tables refused.
#[test]
fn inputs_read_through_tables_match_the_moved_inputs() {
    // 3 graphs of n = 24: 41 472 elements, several tasks and all eight parts
    let (batch, n) = (3, 24);
    let program = gathered_program();
    // the layout moves' tables are read by strides; the same tables with their sources
    // relabelled by a shuffle have none and are read index by index
    for scrambled in [false, true] {
        let mut t = three_index_tables(batch, n);
        if scrambled {
            for table in &mut t {
                let source = table.iter().max().unwrap() + 1;
                let relabel = shuffled(source, 61);
                table.iter_mut().for_each(|i| *i = relabel[*i]);
            }
        }
        let sources = [batch * n * n, batch * n * n, t[2].len()];
        for (table, &source) in t.iter().zip(&sources) {
            let read = quartic::spec::GatherTable::new(table.clone(), source).unwrap();
            assert_eq!(
                read.strides().is_some(),
                !scrambled,
                "scrambled {scrambled}"
            );
        }
        let len = t[0].len();
        let inputs = vec![
            randn(40, batch * n * n),
            randn(41, batch * n * n),
            randn(42, len),
            randn(43, len),
        ];
        let tables = vec![
            Some(t[0].clone()),
            Some(t[1].clone()),
            Some(t[2].clone()),
            None,
        ];
        let fused = run_gathered(true, &program, &inputs, &tables);
        let moved = run_gathered(false, &program, &inputs, &tables);
        for (k, (f, m)) in fused.iter().zip(&moved).enumerate() {
            assert_close(
                &format!("scrambled {scrambled}: output {k} (0: values, then gradients)"),
                f,
                m,
                1e-12,
                1e-10,
            );
        }
        let threads = |k: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .unwrap()
        };
        let one = threads(1).install(|| run_gathered(true, &program, &inputs, &tables));
        let three = threads(3).install(|| run_gathered(true, &program, &inputs, &tables));
        assert_eq!(
            one, three,
            "scrambled {scrambled}: one thread against three"
        );
    }

    // finite differences at n = 4 (each broadcast term read four times)
    let (batch, n) = (2, 4);
    let t = three_index_tables(batch, n);
    let small = vec![
        Some(t[0].clone()),
        Some(t[1].clone()),
        Some(t[2].clone()),
        None,
    ];
    let lens = [batch * n * n, batch * n * n, t[0].len(), t[0].len()];
    let xs: Vec<Vec<f64>> = lens
        .iter()
        .enumerate()
        .map(|(k, &l)| randn(50 + k as u64, l))
        .collect();
    gradcheck("program through tables", &xs, 40, |v| {
        use quartic::spec::GatherTable;
        use std::sync::Arc;
        let tables = small
            .iter()
            .zip(&lens)
            .map(|(t, &l)| {
                t.as_ref()
                    .map(|t| Arc::new(GatherTable::new(t.clone(), l).unwrap()))
            })
            .collect();
        probe_loss(
            Backend::pointwise_gathered_fused(v, tables, &program).unwrap(),
            3,
        )
    });

    // a table over a source of another length, and a table too few, are refused
    use quartic::spec::GatherTable;
    use std::sync::Arc;
    let d = dev();
    let x = |l: usize| -> Tensor<(usize,), f64, Cpu, Tp> { d.zeros_like(&(l,)).leaky_trace() };
    let add = Program::new(vec![
        Step::Input(0),
        Step::Input(1),
        Step::Binary(BinaryFn::Add, 0, 1),
    ])
    .unwrap();
    let table = Arc::new(GatherTable::new(vec![0, 1, 0, 1], 2).unwrap());
    let err =
        Backend::pointwise_gathered_fused(vec![x(3), x(4)], vec![Some(table.clone()), None], &add)
            .unwrap_err();
    assert!(err.to_string().contains("a gathered input"), "{err}");
    let err =
        Backend::pointwise_gathered_fused(vec![x(2), x(4)], vec![Some(table)], &add).unwrap_err();
    assert!(err.to_string().contains("gather tables"), "{err}");
}

/// A rule whose element-wise expressions read one stored tensor several times (one input of
/// the program, read twice) and broadcast node values over edges, checked against finite
/// differences through the layer.
#[test]
fn rules_with_repeated_reads_pass_a_gradient_check() {
    let rule = Rule::parse(
        "reads.rule",
        "rule reads()
let e[i, j] = edges[i, j] * 0.5
mix: edges[i, j] += sigmoid(e[i, j]) * e[i, j] - min(e[i, j], e[j, i]) / 2 + tanh(linear(nodes[i], dim_edges)) * e[j, i]
nodes[i] += relu(nodes[i]) * nodes[i] + max(nodes[i], 0.1 * nodes[i]) ** 3 + leaky_relu(nodes[i])
",
    );
    match rule {
        Ok(rule) => crate::rules::gradcheck_loaded_rule(&rule, false, vec![]),
        Err(e) => panic!("{e}"),
    }
}

/// `dot` whose factors each have an index the other lacks runs as batched matrix products
/// (with no index shared, with one shared, one channel per head, and one tensor on both
/// sides, read transposed too),
/// checked against finite differences through the layer; the values against the definitions
/// are `rules::every_lowering_matches_the_definitions` and the path attention's by-hand form.
#[test]
fn dots_as_matrix_products_pass_a_gradient_check() {
    let rule = Rule::parse(
        "dots.rule",
        "rule dots()
let s[i, j] = dot(nodes[i], linear(nodes[j], dim), heads: 2)
nodes[i] += sum[j](softmax[j](s[i, j]) * nodes[j])
edges[i, j] += sum[l](softmax[l](dot(edges[i, l], edges[l, j], heads: 2)) * edges[l, j])
edges[i, j] += tanh(dot(edges[j, i], edges[i, i], heads: 4)) * edges[i, j]
edges[i, j] += sum[k](softmax[k](dot(edges[i, k], edges[j, k], heads: 4)) * edges[k, j])
",
    );
    match rule {
        Ok(rule) => crate::rules::gradcheck_loaded_rule(&rule, false, vec![]),
        Err(e) => panic!("{e}"),
    }
}

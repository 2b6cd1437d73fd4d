//! The task generators: every label against a brute-force (or differently computed) version of
//! its definition, the decoding of edge tokens back into the structure, and the base rates.

use quartic::train::tasks::*;
use rand::SeedableRng;

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn task(name: &str) -> Task {
    Task::from_name(name, None, 0).unwrap()
}

/// The real nodes of graph `s` of a batch.
fn len_of(b: &Batch, s: usize) -> usize {
    (0..b.n)
        .filter(|&i| b.valid.as_ref().map_or(true, |v| v[s * b.n + i]))
        .count()
}

/// A relation decoded from the edge tokens A[i, j] + 2·A[j, i] (both halves must agree).
fn decode_relation(b: &Batch, s: usize) -> Vec<Vec<bool>> {
    let (n, len) = (b.n, len_of(b, s));
    let tok = |i: usize, j: usize| b.edge_tokens.as_ref().unwrap()[(s * n + i) * n + j];
    (0..len)
        .map(|i| {
            (0..len)
                .map(|j| {
                    assert_eq!(tok(i, j) >> 1 & 1, tok(j, i) & 1, "directions disagree");
                    tok(i, j) & 1 == 1
                })
                .collect()
        })
        .collect()
}

fn edge_target(b: &Batch, s: usize, i: usize, j: usize) -> Option<usize> {
    b.edge_targets.as_ref().unwrap()[(s * b.n + i) * b.n + j]
}

/// Boolean matrix product by counting paths.
fn paths_of_two(a: &[Vec<bool>]) -> Vec<Vec<usize>> {
    let n = a.len();
    let mut c = vec![vec![0; n]; n];
    for (i, row) in c.iter_mut().enumerate() {
        for (u, au) in a.iter().enumerate() {
            if a[i][u] {
                for (j, cell) in row.iter_mut().enumerate() {
                    *cell += au[j] as usize;
                }
            }
        }
    }
    c
}

#[test]
fn relation_composition_labels_count_two_step_paths() {
    let t = task("relation-composition");
    let (mut pos, mut total) = (0, 0);
    for seed in 0..10 {
        let b = t.sample(&mut rng(seed), 8);
        assert!(b.targets.iter().all(|x| x.is_none()), "read from the edges");
        for s in 0..b.b {
            let a = decode_relation(&b, s);
            let paths = paths_of_two(&a);
            let len = a.len();
            assert!((6..=8).contains(&len));
            for i in 0..b.n {
                for j in 0..b.n {
                    let want = (i < len && j < len).then(|| (paths[i][j] > 0) as usize);
                    assert_eq!(edge_target(&b, s, i, j), want, "graph {s} edge ({i}, {j})");
                    pos += want.unwrap_or(0);
                    total += want.is_some() as usize;
                }
            }
        }
    }
    let rate = pos as f64 / total as f64;
    assert!((0.45..0.65).contains(&rate), "positive rate {rate}");
}

#[test]
fn quotient_composition_labels_by_colour_classes() {
    // differently computed: for some colour c, N(i) and N(j) both meet class c, and not both
    // in the same single node
    let t = task("quotient-composition");
    let (mut pos, mut total) = (0, 0);
    for seed in 0..10 {
        let b = t.sample(&mut rng(100 + seed), 8);
        for s in 0..b.b {
            let a = decode_relation(&b, s);
            let len = a.len();
            let colour: Vec<usize> = (0..len).map(|i| b.tokens[s * b.n + i]).collect();
            for i in 0..len {
                for j in 0..len {
                    let want = (0..5).any(|c| {
                        let ni: Vec<usize> =
                            (0..len).filter(|&u| a[i][u] && colour[u] == c).collect();
                        let nj: Vec<usize> =
                            (0..len).filter(|&u| a[j][u] && colour[u] == c).collect();
                        !ni.is_empty()
                            && !nj.is_empty()
                            && !(ni.len() == 1 && nj.len() == 1 && ni[0] == nj[0])
                    });
                    assert_eq!(edge_target(&b, s, i, j), Some(want as usize));
                    pos += want as usize;
                    total += 1;
                }
            }
        }
    }
    let rate = pos as f64 / total as f64;
    assert!((0.35..0.65).contains(&rate), "positive rate {rate}");
}

#[test]
fn function_composition_is_balanced_and_labelled_at_the_start() {
    let t = task("function-composition");
    let (mut pos, mut total) = (0, 0);
    for seed in 0..40 {
        let b = t.sample(&mut rng(200 + seed), 16);
        for s in 0..b.b {
            let len = len_of(&b, s);
            assert!((25..=30).contains(&len));
            let x: Vec<usize> = (0..len).map(|i| b.tokens[s * b.n + i]).collect();
            assert!(x.iter().all(|&v| v < len));
            let want = x[x[0]] == 0;
            assert_eq!(b.targets[s * b.n], Some(want as usize));
            assert!((1..b.n).all(|i| b.targets[s * b.n + i].is_none()));
            pos += want as usize;
            total += 1;
        }
    }
    let rate = pos as f64 / total as f64;
    assert!((0.45..0.55).contains(&rate), "positive rate {rate}");
}

#[test]
fn match3_positives_are_spread_over_bins() {
    let t = task("match3");
    let mut bins = [0usize; 5];
    let mut sequences = 0;
    for seed in 0..30 {
        let b = t.sample(&mut rng(300 + seed), 8);
        for s in 0..b.b {
            let len = len_of(&b, s);
            let x: Vec<usize> = (0..len).map(|i| b.tokens[s * b.n + i]).collect();
            let mut positives = 0;
            for (i, &xi) in x.iter().enumerate() {
                let want = x
                    .iter()
                    .any(|&xj| x.iter().any(|&xk| (xi + xj + xk) % 37 == 0));
                assert_eq!(b.targets[s * b.n + i], Some(want as usize));
                positives += want as usize;
            }
            let frac = positives as f64 / len as f64;
            bins[((frac * 5.0) as usize).min(4)] += 1;
            sequences += 1;
        }
    }
    // every fifth of the range [0, 1] holds at least 5% of the sequences
    for (k, &c) in bins.iter().enumerate() {
        assert!(
            c * 20 >= sequences,
            "bin {k}: {c} of {sequences} ({bins:?})"
        );
    }
    assert_eq!(match3_labels(&[1, 35], 37), vec![true, true]);
    assert_eq!(match3_labels(&[1, 2], 37), vec![false, false]);
}

#[test]
fn match3_distinct_needs_three_distinct_residues_and_labels_by_brute_force() {
    check_match3_distinct("match3-distinct", 24..=32, 0.4..=0.56);
    check_match3_distinct("match3-distinct-short", 12..=16, 0.28..=0.44);
}

fn check_match3_distinct(
    name: &str,
    lengths: std::ops::RangeInclusive<usize>,
    positive_rate: std::ops::RangeInclusive<f64>,
) {
    let t = task(name);
    assert_eq!(t.max_len(), *lengths.end(), "{name}");
    let (mut positives, mut total) = (0usize, 0usize);
    for seed in 0..30 {
        let b = t.sample(&mut rng(400 + seed), 8);
        for s in 0..b.b {
            let len = len_of(&b, s);
            assert!(lengths.contains(&len), "{name}: {len} values");
            let x: Vec<usize> = (0..len).map(|i| b.tokens[s * b.n + i]).collect();
            let mut distinct = x.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(
                distinct.len() <= 8 && distinct.iter().all(|&v| v < 37),
                "{x:?}"
            );
            for (i, &xi) in x.iter().enumerate() {
                let mut witnesses = (0..len)
                    .flat_map(|j| (0..len).map(move |k| (j, k)))
                    .filter(|&(j, k)| (xi + x[j] + x[k]) % 37 == 0);
                let want = witnesses.clone().next().is_some();
                assert_eq!(b.targets[s * b.n + i], Some(want as usize));
                // no witness repeats a value: two equal residues would mean a + 2b ≡ 0
                assert!(
                    witnesses.all(|(j, k)| xi != x[j] && xi != x[k] && x[j] != x[k]),
                    "a two-value witness in {x:?}"
                );
                positives += want as usize;
                total += 1;
            }
        }
    }
    let rate = positives as f64 / total as f64;
    assert!(
        positive_rate.contains(&rate),
        "{name}: positive rate {rate}"
    );
}

/// How often "positive exactly when a witness repeats a value" (x_i + 2·x_j ≡ 0 or 2·x_i + x_k ≡ 0,
/// one comparison of two values, which a quadratic model can make) gives the label.
fn two_value_oracle_accuracy(name: &str) -> f64 {
    let t = task(name);
    let (mut right, mut total) = (0usize, 0usize);
    for seed in 0..30 {
        let b = t.sample(&mut rng(600 + seed), 8);
        for s in 0..b.b {
            let x: Vec<usize> = (0..len_of(&b, s)).map(|i| b.tokens[s * b.n + i]).collect();
            for (i, &xi) in x.iter().enumerate() {
                let guess = x
                    .iter()
                    .any(|&y| (xi + 2 * y) % 37 == 0 || (2 * xi + y) % 37 == 0);
                right += (b.targets[s * b.n + i] == Some(guess as usize)) as usize;
                total += 1;
            }
        }
    }
    right as f64 / total as f64
}

#[test]
fn two_value_witnesses_decide_most_of_match3_and_none_of_match3_distinct() {
    // match3: about 80 % (short runs stay below, 12 000 steps pass it: experiments/match3.md)
    let plain = two_value_oracle_accuracy("match3");
    assert!((0.75..=0.85).contains(&plain), "{plain}");
    // match3-distinct: the oracle never fires, so it scores the negative rate (about 52 %)
    let distinct = two_value_oracle_accuracy("match3-distinct");
    assert!((0.44..=0.6).contains(&distinct), "{distinct}");
}

/// Edge Match2's labels by counting each residue once per graph; returns how many edges were
/// seen, how many were positive, and how many positives have no partner sharing a node.
fn edge_match2_counts(name: &str) -> (usize, usize, usize) {
    let t = task(name);
    let (mut edges, mut positives, mut disjoint_only) = (0usize, 0usize, 0usize);
    for seed in 0..4 {
        let b = t.sample(&mut rng(500 + seed), 64);
        let n = b.n;
        for s in 0..b.b {
            let len = len_of(&b, s);
            assert!((7..=8).contains(&len), "{len} nodes");
            let tok = |i: usize, j: usize| b.edge_tokens.as_ref().unwrap()[(s * n + i) * n + j];
            // how many edges carry each residue, counted once per graph
            let mut count = [0usize; 17];
            for i in 0..len {
                assert_eq!(tok(i, i), 0, "no loops");
                for j in 0..len {
                    count[tok(i, j)] += (tok(i, j) > 0) as usize;
                }
            }
            for i in 0..len {
                for j in 0..len {
                    let v = tok(i, j);
                    if v == 0 {
                        assert_eq!(edge_target(&b, s, i, j), None, "({i}, {j}) is absent");
                        continue;
                    }
                    // 17 is odd, so v ≠ 17 − v and the edge is never its own partner
                    let want = count[17 - v] > 0;
                    assert_eq!(edge_target(&b, s, i, j), Some(want as usize), "({i}, {j})");
                    edges += 1;
                    positives += want as usize;
                    let shares_a_node = (0..len).any(|k| {
                        [(i, k), (k, i), (j, k), (k, j)]
                            .iter()
                            .any(|&(a, c)| tok(a, c) == 17 - v)
                    });
                    disjoint_only += (want && !shares_a_node) as usize;
                }
            }
        }
    }
    (edges, positives, disjoint_only)
}

#[test]
fn edge_match2_labels_count_partners_by_value() {
    let (edges, positives, disjoint_only) = edge_match2_counts("edge-match2");
    let rate = positives as f64 / edges as f64;
    assert!(
        (0.45..=0.55).contains(&rate),
        "{positives} of {edges} positive"
    );
    // many positives (43 % over 20 000 sampled graphs) have no partner sharing a node with them
    assert!(
        disjoint_only * 100 > positives * 35,
        "{disjoint_only} of {positives}"
    );
    assert_eq!(
        edge_match2_labels(&[Some(1), None, Some(16), Some(2), Some(2)], 17),
        vec![Some(true), None, Some(true), Some(false), Some(false)]
    );
}

#[test]
fn edge_match2_disjoint_partners_never_share_a_node() {
    let (edges, positives, disjoint_only) = edge_match2_counts("edge-match2-disjoint");
    let rate = positives as f64 / edges as f64;
    assert!(
        (0.42..=0.58).contains(&rate),
        "{positives} of {edges} positive"
    );
    assert_eq!(
        disjoint_only, positives,
        "a positive edge has a partner next to it"
    );
}

/// Applies permutations of (0, 1, 2) in turn, written out as maps.
fn apply_all(labels: &[usize]) -> [usize; 3] {
    let mut at = [0, 1, 2];
    for &g in labels {
        for v in at.iter_mut() {
            *v = S3[g][*v];
        }
    }
    at
}

#[test]
fn path_composition_composes_the_chain() {
    // the short task trains on one composition, the long one on one or two
    for (name, train_ks) in [
        ("path-composition", 2..=2),
        ("path-composition-long", 2..=3),
    ] {
        check_path_composition(&task(name), train_ks);
    }
}

fn check_path_composition(t: &Task, train_ks: std::ops::RangeInclusive<usize>) {
    let mut class_counts = [0usize; 6];
    for (split, ks) in [
        (Split::Train, train_ks.clone()),
        (Split::Test, train_ks),
        (Split::Size(7), 7..=7),
    ] {
        let mut seen = std::collections::BTreeSet::new();
        let b = t.sample_split(&mut rng(400), 64, split);
        let n = b.n;
        assert_eq!(n, 11);
        for s in 0..b.b {
            let tok = |i: usize, j: usize| b.edge_tokens.as_ref().unwrap()[(s * n + i) * n + j];
            let query: Vec<(usize, usize)> = (0..n * n)
                .map(|e| (e / n, e % n))
                .filter(|&(i, j)| tok(i, j) == PATH_QUERY)
                .collect();
            assert_eq!(query.len(), 1, "one query edge");
            let (start, end) = query[0];
            assert_eq!(tok(end, start), PATH_QUERY_BACKWARD);
            // walk the labelled edges from the start
            let mut labels = Vec::new();
            let mut at = start;
            while at != end {
                let next: Vec<usize> = (0..n)
                    .filter(|&j| (PATH_FORWARD..PATH_FORWARD + 6).contains(&tok(at, j)))
                    .collect();
                assert_eq!(next.len(), 1, "a chain");
                let g = tok(at, next[0]) - PATH_FORWARD;
                assert_eq!(
                    tok(next[0], at),
                    PATH_BACKWARD + g,
                    "the reverse carries the label"
                );
                labels.push(g);
                at = next[0];
            }
            let labelled: Vec<usize> = (0..n * n)
                .filter(|&e| b.edge_targets.as_ref().unwrap()[s * n * n + e].is_some())
                .collect();
            assert_eq!(labelled, vec![start * n + end]);
            let want = apply_all(&labels);
            let got = edge_target(&b, s, start, end).unwrap();
            assert_eq!(S3[got], want, "{labels:?}");
            seen.insert(labels.len());
            class_counts[got] += 1;
        }
        assert!(seen.iter().all(|k| ks.contains(k)), "{split:?}: {seen:?}");
        assert_eq!(seen.len(), ks.clone().count(), "{split:?}: {seen:?}");
    }
    let total: usize = class_counts.iter().sum();
    assert!(
        class_counts.iter().all(|&c| c * 12 >= total),
        "{class_counts:?}"
    );
}

#[test]
fn s3_is_a_group() {
    for f in 0..6 {
        assert_eq!(s3_then(f, 0), f);
        assert_eq!(s3_then(0, f), f);
        assert_eq!(
            (0..6).filter(|&g| s3_then(f, g) == 0).count(),
            1,
            "one inverse"
        );
        for g in 0..6 {
            assert_eq!(S3[s3_then(f, g)], apply_all(&[f, g]));
        }
    }
    // not abelian
    assert!((0..6).any(|f| (0..6).any(|g| s3_then(f, g) != s3_then(g, f))));
}

#[test]
fn triangle_labels_match_the_cube_of_the_adjacency() {
    let t = task("triangles");
    let (mut pos, mut total) = (0, 0);
    for seed in 0..20 {
        let b = t.sample(&mut rng(500 + seed), 8);
        assert!(b.edge_targets.is_none());
        for s in 0..b.b {
            let len = len_of(&b, s);
            let adj: Vec<Vec<usize>> = (0..len)
                .map(|i| {
                    (0..len)
                        .map(|j| b.edge_tokens.as_ref().unwrap()[(s * b.n + i) * b.n + j])
                        .collect()
                })
                .collect();
            for i in 0..len {
                assert_eq!(adj[i][i], 0);
                // (A³)[i][i] counts closed walks of length 3: positive exactly on triangles
                let mut walks = 0;
                for a in 0..len {
                    for c in 0..len {
                        walks += adj[i][a] * adj[a][c] * adj[c][i];
                    }
                }
                assert_eq!(b.targets[s * b.n + i], Some((walks > 0) as usize));
                pos += (walks > 0) as usize;
                total += 1;
            }
        }
    }
    let rate = pos as f64 / total as f64;
    assert!((0.35..0.65).contains(&rate), "positive rate {rate}");
    let probe = t.probe().unwrap();
    assert_eq!(probe.targets[..6], vec![Some(1); 6], "two triangles");
    assert_eq!(probe.targets[6..], vec![Some(0); 6], "the 6-cycle");
}

/// k-hop by a forward pass that remembers where each symbol was last seen.
fn k_hop_forward(x: &[usize], k: usize) -> Vec<Option<usize>> {
    let mut last = std::collections::HashMap::new();
    let mut hop = vec![None; x.len()];
    for (i, &v) in x.iter().enumerate() {
        hop[i] = last.get(&v).map(|&j: &usize| j + 1);
        last.insert(v, i);
    }
    (0..x.len())
        .map(|i| {
            let mut at = i;
            for _ in 0..k {
                at = hop[at]?;
            }
            Some(x[at])
        })
        .collect()
}

#[test]
fn k_hop_labels_follow_the_hops() {
    let t = task("k-hop");
    let mut none = 0;
    let mut total = 0;
    for k in 1..=4 {
        let b = t.sample_split(&mut rng(600 + k as u64), 16, Split::Size(k));
        for s in 0..b.b {
            let len = len_of(&b, s);
            assert!(len <= 32);
            assert_eq!(b.tokens[s * b.n], 4 + k - 1, "the first token says k");
            assert_eq!(b.targets[s * b.n], None);
            let body: Vec<usize> = (1..len).map(|i| b.tokens[s * b.n + i]).collect();
            for (i, want) in k_hop_forward(&body, k).into_iter().enumerate() {
                assert_eq!(b.targets[s * b.n + 1 + i], Some(want.unwrap_or(4)));
                none += want.is_none() as usize;
                total += 1;
            }
        }
    }
    assert!((none as f64 / total as f64) < 0.5);
}

#[test]
fn padding_carries_no_edge_tokens_or_targets() {
    let b = task("relation-composition").sample(&mut rng(7), 16);
    let valid = b.valid.as_ref().expect("lengths 6–8 pad");
    for s in 0..b.b {
        for i in 0..b.n {
            for j in 0..b.n {
                let e = (s * b.n + i) * b.n + j;
                if !(valid[s * b.n + i] && valid[s * b.n + j]) {
                    assert_eq!(b.edge_tokens.as_ref().unwrap()[e], 0);
                    assert_eq!(b.edge_targets.as_ref().unwrap()[e], None);
                }
            }
        }
    }
    assert!(Task::from_name("nope", None, 0).is_err());
}

#[test]
fn every_built_in_task_is_found_by_its_own_name() {
    for entry in BUILT_IN {
        let t = Task::from_name(entry.name, None, 0).unwrap();
        assert_eq!(t.name(), entry.name, "the registry and the task disagree");
        assert!(t.max_len() > 0 && t.num_tokens() > 0, "{}", entry.name);
        assert_eq!(
            t.readout() == Readout::Edges,
            t.edge_classes() > 0,
            "{}",
            entry.name
        );
    }
    let e = Task::from_name("nope", None, 0).unwrap_err().to_string();
    for entry in BUILT_IN {
        assert!(
            e.contains(entry.name),
            "the error lists {}: {e}",
            entry.name
        );
    }
}

#[test]
fn the_separation_suite_names_built_in_tasks() {
    for t in quartic::experiment::SEPARATION_SUITE {
        assert!(
            built_in(t.task).is_some(),
            "{} is not a built-in task",
            t.task
        );
    }
}

#[test]
fn the_readme_task_table_lists_every_built_in_task() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for entry in BUILT_IN {
        let row = format!("| `{}` |", entry.name);
        assert!(
            readme.contains(&row),
            "README's task table has no row {row}"
        );
    }
}

/// The error of making `task`, which must be refused.
fn refusal(task: impl TaskDef + 'static) -> String {
    Task::new(task).expect_err("refused").to_string()
}

#[test]
fn impossible_match3_sizes_are_refused_not_sampled_forever() {
    // no 18 residues mod 37 avoid every x + 2y ≡ 0 often: the sampler would draw forever
    let e = refusal(Match3 {
        min_values: 18,
        max_values: 18,
        ..Match3::distinct()
    });
    assert!(
        e.contains("match3-distinct") && e.contains("18 residues"),
        "{e}"
    );
    assert!(e.contains("fewer than 1 in 1000"), "{e}");
    // without the witness rule the same sizes are fine
    assert!(Task::new(Match3 {
        min_values: 18,
        max_values: 18,
        ..Match3::default()
    })
    .is_ok());
    // more residues than there are is refused, not quietly cut to 37
    let e = refusal(Match3 {
        max_values: 40,
        ..Match3::default()
    });
    assert!(
        e.contains("`max_values` (40) is above `modulus` (37)"),
        "{e}"
    );
    let e = refusal(Match3 {
        min_len: 9,
        max_len: 8,
        ..Match3::default()
    });
    assert!(e.contains("`min_len` (9) is above `max_len` (8)"), "{e}");
}

#[test]
fn impossible_edge_match2_settings_are_refused() {
    // mod 3 every connected set of edges must carry one residue; on 150 sparse nodes, edges
    // drawn apart with 1 and 2 almost surely meet later
    let e = refusal(EdgeMatch2 {
        min_nodes: 150,
        max_nodes: 150,
        p: 0.01,
        modulus: 3,
        ..EdgeMatch2::disjoint()
    });
    assert!(
        e.contains("edge-match2-disjoint") && e.contains("150 nodes"),
        "{e}"
    );
    // the same graphs mod 17 fit
    assert!(Task::new(EdgeMatch2 {
        min_nodes: 150,
        max_nodes: 150,
        p: 0.01,
        ..EdgeMatch2::disjoint()
    })
    .is_ok());
    // mod 2 the only residue is its own negative: touching edges can never both be drawn
    let e = refusal(EdgeMatch2 {
        modulus: 2,
        ..EdgeMatch2::disjoint()
    });
    assert!(e.contains("`modulus` is 2; it must be ≥ 3"), "{e}");
    let e = refusal(EdgeMatch2 {
        p: f64::NAN,
        ..EdgeMatch2::default()
    });
    assert!(e.contains("`p` is NaN"), "{e}");
}

#[test]
fn other_tasks_refuse_empty_ranges_and_bad_probabilities() {
    let e = refusal(Triangles {
        p: 1.5,
        ..Triangles::default()
    });
    assert!(e.contains("triangles") && e.contains("`p` is 1.5"), "{e}");
    let e = refusal(RelationComposition {
        min_nodes: 0,
        ..RelationComposition::default()
    });
    assert!(e.contains("`min_nodes` is 0; it must be ≥ 1"), "{e}");
    let e = refusal(QuotientComposition {
        colours: 0,
        ..QuotientComposition::default()
    });
    assert!(e.contains("`colours` is 0"), "{e}");
    let e = refusal(FunctionComposition {
        min_len: 1,
        max_len: 4,
    });
    assert!(e.contains("`min_len` is 1; it must be ≥ 2"), "{e}");
    let e = refusal(KHop {
        max_k: 0,
        ..KHop::default()
    });
    assert!(e.contains("`max_k` is 0"), "{e}");
    // chains of up to 10 edges need 11 nodes
    let e = refusal(PathComposition {
        nodes: 6,
        ..PathComposition::default()
    });
    assert!(
        e.contains("a chain of 10 edges needs 11 nodes; `nodes` is 6"),
        "{e}"
    );
    let e = refusal(PathComposition {
        train_k: (1, 2),
        ..PathComposition::default()
    });
    assert!(e.contains("`train_k.0` is 1; it must be ≥ 2"), "{e}");
}

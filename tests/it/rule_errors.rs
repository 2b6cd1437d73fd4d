//! Malformed rule programs: each is rejected at load with a located message (never a panic);
//! the rendered messages are kept as snapshots in `snapshots/`.

use quartic::rules::{Const, Rule, RuleConfig};
use quartic::Error;

/// `(name, causal, source)`; the model has dim 16 and dim_edges 8.
const CORPUS: &[(&str, bool, &str)] = &[
    ("unknown_function", false, "ff: nodes[i] += gelux(nodes[i])\n"),
    ("unknown_option", false, "rule r()\nlet x[i] = rmsnorm(nodes[i])\nattn: nodes[i] += attend(x[i] -> x[j], head: 4)\n"),
    ("edges_with_one_index", false, "nodes[i] += edges[i]\n"),
    ("nodes_with_two_indices", false, "nodes[i] += nodes[i, j]\n"),
    ("unbound_index", false, "nodes[i] += nodes[j]\n"),
    ("update_channel_mismatch", false, "proj: nodes[i] += linear(nodes[i], 3)\n"),
    ("binary_channel_mismatch", false, "proj: edges[i, j] += edges[i, j] * linear(edges[i, j], 3)\n"),
    ("unclosed_paren", false, "nodes[i] += gelu(nodes[i]\n"),
    ("mismatched_bracket", false, "nodes[i] += gelu(nodes[i)]\n"),
    ("unexpected_character", false, "nodes[i] += nodes[i] @ 2\n"),
    ("missing_value", false, "nodes[i] +=\n"),
    ("let_is_immutable", false, "let x[i] = nodes[i]\nx[i] += nodes[i]\n"),
    ("unknown_target", false, "node[i] += nodes[i]\n"),
    ("duplicate_binding", false, "let x[i] = nodes[i]\nlet x[i] = gelu(nodes[i])\n"),
    ("parameter_without_default", false, "rule r(heads)\nnodes[i] += nodes[i]\n"),
    ("misspelled_parameter", false, "rule r(heads = 2)\nattn: nodes[i] += attend(nodes[i] -> nodes[j], heads: hedas)\n"),
    ("parameters_need_a_label", false, "nodes[i] += linear(nodes[i], dim)\n"),
    ("causal_global_routing", true, "rule r()\nlet e[i, j] = edges[i, j]\nr: edges[i, j] += attend(e[i, j] -> e[k, l], heads: 2, dim_head: 4, route: top(4, by: linear(e[i, j], 1), per: all))\n"),
    ("causal_pooling_everything", true, "nodes[i] += mean[j](nodes[j])\n"),
    ("reduction_index_in_use", false, "nodes[i] += sum[i](nodes[i])\n"),
    ("reduction_over_unused_index", false, "nodes[i] += sum[k](nodes[i])\n"),
    ("softmax_over_unbound_index", false, "let a[i] = softmax[j](nodes[i])\n"),
    ("attend_without_arrow", false, "attn: nodes[i] += attend(nodes[i], heads: 2)\n"),
    ("node_query_edge_key", false, "attn: nodes[i] += attend(nodes[i] -> edges[i, k], heads: 2)\n"),
    ("key_without_new_index", false, "attn: nodes[i] += attend(nodes[i] -> nodes[i])\n"),
    ("edge_probabilities", false, "let o[i, j], p[i, j] = attend(edges[i, j] -> edges[i, k], heads: 2, dim_head: 4)\n"),
    ("bias_channels", false, "attn: nodes[i] += attend(nodes[i] -> nodes[j], heads: 2, bias: edges[i, j])\n"),
    ("four_free_indices", false, "edges[i, j] += sum[k](sum[l](edges[i, k] * edges[j, l] * edges[k, l]))\n"),
    ("unknown_word", false, "ff: nodes[i] += feedforward(nodes[i], mult: big)\n"),
    ("eps_with_softmax", false, "attn: nodes[i] += attend(nodes[i] -> nodes[j], eps: 0.001)\n"),
    ("unknown_kernel", false, "attn: nodes[i] += attend(nodes[i] -> nodes[j], kernel: taylr)\n"),
    ("positional_after_named", false, "p: nodes[i] += linear(nodes[i], bias: true, 16)\n"),
    ("number_to_tensor_power", false, "nodes[i] += 2 ** nodes[i]\n"),
    ("empty_rule", false, "rule empty()\n# nothing here\n"),
    ("malformed_number", false, "nodes[i] += nodes[i] * 1.2.3\n"),
    ("repeated_binding_index", false, "let d[i, i] = edges[i, i]\n"),
    ("routing_two_tensors", false, "let x[i, j] = edges[i, j]\nr: edges[i, j] += attend(x[i, j] -> edges[k, l], heads: 2, dim_head: 4, route: top(4, by: linear(x[i, j], 1)))\n"),
    ("routing_score_channels", false, "let x[i, j] = edges[i, j]\nr: edges[i, j] += attend(x[i, j] -> x[k, l], heads: 2, dim_head: 4, route: top(4, by: x[i, j]))\n"),
    ("gate_and_gates", false, "a: nodes[i] += attend(nodes[i] -> nodes[j], heads: 2, gate, gates: linear(nodes[i], 2))\n"),
    ("division_by_zero", false, "nodes[i] += nodes[i] / 0\n"),
    ("tensor_without_indices", false, "nodes[i] += nodes\n"),
    ("two_statements_on_a_line", false, "nodes[i] += nodes[i] nodes[i] += nodes[i]\n"),
    ("top_outside_route", false, "nodes[i] += top(2, by: nodes[i])\n"),
    ("index_on_a_plain_function", false, "nodes[i] += gelu[j](nodes[i])\n"),
    ("power_with_a_caret", false, "nodes[i] += nodes[i] ^ 2\n"),
    ("line_ends_in_an_operator", false, "nodes[i] += nodes[i] +\n    nodes[i]\n"),
    ("assigning_a_number", false, "nodes[i] = 0\n"),
    ("diagonal_key_off_diagonal_query", false, "p: edges[i, i] += attend(edges[i, j] -> edges[k, k], heads: 2, dim_head: 4)\n"),
    ("min_of_a_number", false, "nodes[i] += min(nodes[i], 0)\n"),
    ("path_with_two_new_indices", false, "p: edges[i, j] += attend(edges[i, l] -> edges[l, m], heads: 2, dim_head: 4)\n"),
    ("path_ends_meet", false, "p: edges[i, j] += attend(edges[i, l] -> edges[l, i], heads: 2, dim_head: 4)\n"),
    ("path_node_query", false, "p: edges[i, j] += attend(nodes[l] -> edges[l, j], heads: 2, dim_head: 4)\n"),
    ("function_uses_indices", false, "def f(x) = x + nodes[i]\n"),
    ("function_calls_itself", false, "def f(x) = f(x) * 2\n"),
    ("function_calls_a_later_function", false, "def f(x) = g(x)\ndef g(x) = x\n"),
    ("function_repeats_a_parameter", false, "def f(x, x) = x\n"),
    ("function_parameter_shadows_a_rule_parameter", false, "rule r(width = 4)\ndef f(width) = width\n"),
    ("function_wrong_argument_count", false, "def f(x, y) = x * y\nnodes[i] += f(nodes[i])\n"),
    ("function_named_argument", false, "def f(x) = x\nnodes[i] += f(x: nodes[i])\n"),
    ("function_without_call", false, "def f(x) = x\nnodes[i] += f\n"),
    ("function_named_like_a_builtin", false, "def gelu(x) = x\n"),
    ("function_with_a_label", false, "g: def f(x) = x\n"),
    ("function_body_error_names_the_calls", false, "def h(x) = linear(x, 3) + x\ndef k(x) = h(x) * 2\nf: nodes[i] += k(nodes[i])\n"),
    ("function_call_without_a_label", false, "def f(x) = linear(x, dim)\nnodes[i] += f(nodes[i])\n"),
    ("three_index_binding_with_parameters", false, "let a[i, k, j] = linear(edges[i, k], 8) * edges[k, j]\n"),
    ("three_index_binding_read_with_two", false, "let a[i, k, j] = edges[i, k] * edges[k, j]\nedges[i, j] += sum[k](a[i, k])\n"),
    ("three_index_binding_left_unreduced", false, "let a[i, k, j] = edges[i, k] * edges[k, j]\nedges[i, j] += a[i, k, j]\n"),
    ("chained_comparison", false, "nodes[i] += nodes[i] * (0 < nodes[i] < 1)\n"),
    ("where_with_a_number", false, "nodes[i] += where(nodes[i] > 0, nodes[i], 0)\n"),
    ("where_with_two_arguments", false, "nodes[i] += where(nodes[i] > 0, nodes[i])\n"),
    ("value_over_other_indices", false, "a: nodes[i] += attend(nodes[i] -> nodes[j], heads: 2, dim_head: 4, value: edges[i, j])\n"),
    ("value_on_a_path", false, "p: edges[i, j] += attend(edges[i, l] -> edges[l, j], heads: 2, dim_head: 4, value: edges[l, j])\n"),
    ("value_with_routing", false, "let x[i, j] = edges[i, j]\nr: edges[i, j] += attend(x[i, j] -> x[k, l], heads: 2, dim_head: 4, value: x[k, l], route: top(4, by: linear(x[i, j], 1)))\n"),
    ("four_index_binding", false, "let a[i, k, j, l] = edges[i, k] * edges[j, l]\n"),
    ("three_index_binding_with_probabilities", false, "let a[i, k, j], p[i, j] = attend(nodes[i] -> nodes[j])\n"),
    ("path_with_bias", false, "p: edges[i, j] += attend(edges[i, l] -> edges[l, j], heads: 2, dim_head: 4, bias: linear(edges[i, j], 2))\n"),
    ("path_with_gate_flag", false, "p: edges[i, j] += attend(edges[i, l] -> edges[l, j], heads: 2, dim_head: 4, gate)\n"),
    ("path_gates_on_the_path", false, "p: edges[i, j] += attend(edges[i, l] -> edges[l, j], heads: 2, dim_head: 4, gates: linear(edges[i, l], 2))\n"),
    ("causal_node_routing", true, "a: nodes[i] += attend(nodes[i] -> nodes[j], heads: 2, dim_head: 4, route: top(2, by: linear(nodes[i], 1)))\n"),
    ("node_routing_per_row", false, "f: nodes[i] += feedforward(nodes[i], route: top(2, by: linear(nodes[i], 1), per: row))\n"),
    ("row_routing_with_per", false, "r: edges[i, j] += attend(edges[i, j] -> edges[i, k], heads: 2, dim_head: 4, route: top(2, by: linear(edges[i, j], 1), per: all))\n"),
    ("path_with_routing", false, "p: edges[i, j] += attend(edges[i, l] -> edges[l, j], heads: 2, dim_head: 4, route: top(2, by: linear(edges[i, j], 1)))\n"),
    ("routed_attention_with_probabilities", false, "let a[i], p[i, j] = attend(nodes[i] -> nodes[j], heads: 2, dim_head: 4, route: top(2, by: linear(nodes[i], 1)))\nnodes[i] += a[i]\n"),
    ("routing_score_over_other_indices", false, "f: nodes[i] += feedforward(nodes[i], route: top(2, by: linear(edges[i, j], 1)))\n"),
    ("causal_feedforward_routing_over_all_edges", true, "f: edges[i, j] += feedforward(edges[i, j], route: top(2, by: linear(edges[i, j], 1), per: all))\n"),
    ("routing_scope_misspelled", false, "f: edges[i, j] += feedforward(edges[i, j], route: top(2, by: linear(edges[i, j], 1), per: colum))\n"),
    ("dropout_probability_one", false, "nodes[i] += dropout(nodes[i], p: 1)\n"),
    ("dropout_probability_negative", false, "nodes[i] += dropout(nodes[i], p: -0.1)\n"),
    ("dropout_probability_a_tensor", false, "nodes[i] += dropout(nodes[i], p: nodes[i])\n"),
    ("adjacency_without_indices", false, "nodes[i] += nodes[i] * sum[j](adjacency)\n"),
    ("mask_not_the_adjacency", false, "nodes[i] += sum[j](nodes[j], mask: edges[j, i])\n"),
    ("mask_without_the_reduced_index", false, "nodes[i] += sum[j](edges[j, i], mask: adjacency[i, i])\n"),
    ("attention_mask_over_the_query_only", false, "a: nodes[i] += attend(nodes[i] -> nodes[j], heads: 2, dim_head: 4, mask: adjacency[i, i])\n"),
    ("row_attention_mask_over_the_query", false, "a: edges[i, j] += attend(edges[i, j] -> edges[i, k], heads: 2, dim_head: 4, mask: adjacency[i, j])\n"),
    ("path_with_a_mask", false, "p: edges[i, j] += attend(edges[i, l] -> edges[l, j], heads: 2, dim_head: 4, mask: adjacency[i, l])\n"),
    ("routing_with_a_mask", false, "a: nodes[i] += attend(nodes[i] -> nodes[j], heads: 2, dim_head: 4, mask: adjacency[j, i], route: top(2, by: linear(nodes[i], 1)))\n"),
];

fn load(source: &str, causal: bool, overrides: Vec<(String, Const)>) -> quartic::Result<()> {
    let rule = Rule::parse("bad.rule", source)?;
    rule.plan(&RuleConfig {
        dim: 16,
        dim_edges: 8,
        causal,
        overrides,
    })
    .map(|_| ())
}

#[test]
fn malformed_rules_are_rejected_with_located_messages() {
    assert!(CORPUS.len() >= 30);
    for &(name, causal, source) in CORPUS {
        let err = match load(source, causal, vec![]) {
            Ok(()) => panic!("{name}: the program was accepted"),
            Err(Error::Rule(d)) => d,
            Err(other) => panic!("{name}: expected a located rule error, got {other}"),
        };
        assert!(err.line >= 1 && err.col >= 1, "{name}: no location");
        let rendered = format!("{err}");
        assert!(rendered.contains(&format!("bad.rule:{}:{}", err.line, err.col)));
        insta::with_settings!({
            snapshot_path => "../../snapshots",
            prepend_module_to_snapshot => false,
            description => source,
        }, {
            insta::assert_snapshot!(format!("rule_error__{name}"), rendered);
        });
    }
}

#[test]
fn overriding_an_undeclared_parameter_is_rejected() {
    let src = "rule r(heads = 2)\nattn: nodes[i] += attend(nodes[i] -> nodes[j], heads: heads)\n";
    let err = load(src, false, vec![("head".into(), Const::Num(4.0))]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`head`") && text.contains("did you mean `heads`"),
        "{text}"
    );
}

/// A word where the rule declares a number is the setting's mistake: the message says where
/// the value came from and names the parameter, not the rule line that uses it.
#[test]
fn a_word_set_for_a_number_names_the_setting() {
    let src = "rule r(heads = 2, kernel = softmax)\nattn: nodes[i] += attend(nodes[i] -> nodes[j], heads: heads, kernel: kernel)\n";
    let err = load(
        src,
        false,
        vec![("heads".into(), Const::Word("four".into()))],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`heads` is a number (default 2)")
            && text.contains("the word `four`")
            && text.contains("--set heads=2")
            && text.contains("bad.rule:1:8"),
        "{text}"
    );
    // a word parameter still takes words
    load(
        src,
        false,
        vec![("kernel".into(), Const::Word("taylor".into()))],
    )
    .unwrap();
}

/// `+= 0` turns a statement off: `if flag then … else 0` with the flag off leaves the statement
/// (and its parameters) out of the plan; with it on, the statement runs.
#[test]
fn adding_zero_turns_a_statement_off() {
    let src = "rule r(extra = 1)\nff: nodes[i] += feedforward(nodes[i])\nmore: nodes[i] += if extra then linear(nodes[i], dim) else 0\n";
    let plan = |extra: f64| {
        Rule::parse("r.rule", src)
            .unwrap()
            .plan(&RuleConfig {
                dim: 16,
                dim_edges: 8,
                causal: false,
                overrides: vec![("extra".into(), Const::Num(extra))],
            })
            .unwrap()
    };
    let names = |p: quartic::rules::Plan| -> Vec<String> {
        p.statements.iter().map(|s| s.name.clone()).collect()
    };
    assert_eq!(names(plan(1.0)), ["ff", "more"]);
    assert_eq!(names(plan(0.0)), ["ff"]);
}

#[test]
fn every_builtin_rule_checks_causal_and_not() {
    for (name, _) in quartic::rules::BUILTINS {
        for causal in [false, true] {
            let rule = Rule::builtin(name).unwrap();
            rule.plan(&RuleConfig {
                dim: 64,
                dim_edges: 16,
                causal,
                overrides: vec![],
            })
            .unwrap_or_else(|e| panic!("{name} (causal {causal}): {e}"));
        }
    }
}

/// dsl/README.md's function table is the registry's (`rules::builtins::readme_table`): names,
/// arguments, options and their defaults come from the one list the checker uses.
#[test]
fn the_readme_function_table_is_the_registry() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dsl/README.md")).unwrap();
    let begin = "<!-- functions: from src/rules/builtins.rs -->\n";
    let start = readme.find(begin).expect("the table's marker") + begin.len();
    let end = start
        + readme[start..]
            .find("<!-- end functions -->")
            .expect("its end");
    let table = quartic::rules::builtins::readme_table();
    assert_eq!(
        &readme[start..end],
        table,
        "dsl/README.md's function table is out of date; it should read:\n{table}"
    );
}

/// Every error of a file is reported, in order (syntax errors line by line, then the checker's
/// statement by statement), without the echoes of a failed binding, and at most
/// `MAX_ERRORS` of them.
#[test]
fn every_error_in_a_file_is_reported() {
    let checked = "rule r()
let x[i] = gelux(nodes[i])
y: nodes[i] += x[i]
p: nodes[i] += linear(nodes[i], 3)
ff: nodes[i] += feedforward(nodes[i], mult: big)
edges[i, j] += edges[i]
";
    let Err(Error::Rule(d)) = load(checked, false, vec![]) else {
        panic!("accepted")
    };
    let rendered = format!("{d}");
    let lines: Vec<usize> = std::iter::once(d.line)
        .chain(d.also.iter().map(|e| e.line))
        .collect();
    // line 3 reads the failed `x`: skipped, not reported again
    assert_eq!(lines, [2, 4, 5, 6], "{rendered}");
    assert!(rendered.ends_with("4 errors in bad.rule"), "{rendered}");
    insta::with_settings!({
        snapshot_path => "../../snapshots",
        prepend_module_to_snapshot => false,
        description => checked,
    }, {
        insta::assert_snapshot!("rule_error__several_in_one_file", rendered);
    });

    let syntax = "nodes[i] += nodes[i] ^ 2\nnodes[i] += (nodes[i]\n  + 1\nnodes[i] +=\nnodes[i] += nodes[i]\n";
    let Err(Error::Rule(d)) = load(syntax, false, vec![]) else {
        panic!("accepted")
    };
    // the lexer stops at its first error (an unexpected character)
    assert!(d.also.is_empty());
    // the parser goes on at the next line after each error
    let error_lines = |source: &str| {
        let Err(Error::Rule(d)) = load(source, false, vec![]) else {
            panic!("accepted")
        };
        std::iter::once(d.line)
            .chain(d.also.iter().map(|e| e.line))
            .collect::<Vec<usize>>()
    };
    let parse = "nodes[i] = = 2\nedges[i, j] += , edges[i, j]\nnodes[i] += nodes[i]\nnodes[i] += nodes[i] nodes[i]\n";
    assert_eq!(error_lines(parse), [1, 2, 4]);
    // a line cut after an operator takes its next line with it (no echo error there)
    let cut = "nodes[i] += nodes[i] +\n    nodes[i]\nnodes[i] = = 2\n";
    assert_eq!(error_lines(cut), [1, 3]);

    let many: String = (0..25)
        .map(|k| format!("s{k}: nodes[i] += linear(nodes[i], 3)\n"))
        .collect();
    let Err(Error::Rule(d)) = load(&many, false, vec![]) else {
        panic!("accepted")
    };
    assert_eq!(1 + d.also.len(), quartic::diagnostic::MAX_ERRORS);
    assert!(format!("{d}").ends_with("(checking stopped there)"));
}

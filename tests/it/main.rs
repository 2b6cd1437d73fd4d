//! The one integration-test binary (each file under tests/ would link dfdx again).

mod affine;
mod api;
mod attend_value;
mod axis;
mod cli;
mod common;
mod device;
mod device_step;
mod dropout;
mod edge_self_attention;
mod experiment;
mod flash;
mod fuzz;
mod graph;
mod graph_files;
mod graph_readout;
mod hyper;
mod input_graph;
mod layers;
mod loss;
mod match3_by_hand;
mod nn;
mod parity;
mod path;
#[path = "../../benches/path_by_hand.rs"]
mod path_by_hand;
mod patterns;
mod pointwise;
mod predict;
mod programs;
mod regression;
mod reliability;
mod reliability_cli;
mod reuse;
mod routed_rules;
mod routing;
mod rule_errors;
mod rules;
mod shards;
mod sweep;
mod tasks;
mod taylor;
#[path = "../../benches/taylor_by_hand.rs"]
mod taylor_by_hand;
mod training;
mod weights;

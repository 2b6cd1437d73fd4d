//! Load the PyTorch original's weights and check that our model computes what it computed:
//! reads a reference fixture (a `state_dict` as safetensors, its constructor config, the inputs
//! and the logits the original produced), imports the weights, runs the same tokens and prints
//! the largest difference. The shell equivalent is `quartic import-reference`.
//!
//!     cargo run --release --example load_reference [-- quartic|quartic_masked|relational|relational_causal|multistream]

use dfdx::prelude::*;
use quartic::fixtures::Fixture;
use quartic::models::reference::ReferenceModel;
use quartic::models::Model;
use quartic::nn::{HasParams, Init};

fn main() -> quartic::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "quartic".into());
    let fx = Fixture::load(&name)?;
    let reference = ReferenceModel::from_config(&fx.config)?;
    let params = reference.import(&fx.params())?;
    let dev = Cpu::default();
    let model = Model::<f32, Cpu>::new(
        &reference.model_config()?,
        None,
        &Init::from_map(&dev, params),
    )?;
    let input = fx.tensor("input.0")?;
    let (b, n) = (input.dims[0], input.dims[1]);
    let valid = fx.tensors.get("input.1").map(|m| m.as_bool());
    let out = model.forward::<NoneTape>(&input.as_usize(), b, n, valid.as_deref())?;
    let want = &fx.tensor("output.main")?.values;
    let worst = out
        .logits
        .as_vec()
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    println!(
        "{name}: {} parameters imported; logits {:?}; max |ours − original| = {worst:.2e}",
        model.num_params(),
        out.logits.shape()
    );
    Ok(())
}

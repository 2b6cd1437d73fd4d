//! Datasets read from files: graphs in PyTorch Geometric's field names ([`graphs`]).

pub mod graphs;

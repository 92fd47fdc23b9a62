//! The agent: the pipeline after framing and what drives it.
//!
//! [`pipeline::Mirroring`] takes captured segments through reassembly and framing
//! (`mirror-flow`, `mirror-http`), then [`select`] (match, sample), [`rewrite`] and the
//! shadow queues (`mirror-shadow`). [`live`] drives it from the kernel tap (`mirror run`),
//! [`replay`] from a capture file (`mirror replay`). [`metrics`] serves Prometheus metrics,
//! [`watch`] the stream `mirror dump --watch` reads. Settings arrive typed and valid
//! ([`pipeline::MirrorSettings`]); nothing here prints.
mod accept;
pub mod admin;
pub mod compare;
mod compare_metrics;
pub mod control;
pub mod cri;
pub mod follow;
pub mod live;
pub mod metrics;
pub mod pipeline;
pub mod pods;
pub mod privileges;
pub mod replay;
pub mod rewrite;
pub mod select;
mod streams;
pub mod watch;

//! The mirror agent as a library.
//!
//! The pipeline, one module per stage:
//!
//! capture source ([`capture`]: the live kernel [`tap`], later pcap files and tests)
//! -> typed [`segment::Segment`]s -> TCP [`reassembly`] -> [`http`] framing ->
//! [`select`] (match, sample) -> [`rewrite`] -> [`shadow`] replay. [`agent`] runs them live
//! (`mirror run`), configured by [`config`], observed through [`metrics`].
pub mod agent;
pub mod capture;
pub mod config;
pub mod filter;
pub mod format;
pub mod http;
pub mod metrics;
pub mod packet;
pub mod pcap;
pub mod reassembly;
pub mod replay;
pub mod rewrite;
pub mod segment;
pub mod select;
pub mod shadow;
pub mod synth;
pub mod tap;
pub mod watch;

//! The mirror agent as a library.
//!
//! The pipeline, one module per stage:
//!
//! capture source ([`capture`]: the live kernel [`tap`], later pcap files and tests)
//! -> typed [`segment::Segment`]s -> TCP [`reassembly`] -> [`http`] framing ->
//! [`select`] (match, sample) -> [`rewrite`] -> [`shadow`] replay. [`agent`] runs them live
//! (`mirror run`), configured by [`config`], observed through [`metrics`].
pub mod agent;
pub mod config;
pub mod filter;
pub mod format;
pub mod metrics;
pub mod replay;
pub mod rewrite;
pub mod select;
pub mod watch;

//! The mirror agent as a library.
//!
//! The pipeline, one module per stage:
//!
//! capture source ([`capture`]: the live kernel [`tap`], later pcap files and tests)
//! -> typed [`segment::Segment`]s -> TCP reassembly -> HTTP framing -> select / sample /
//! rewrite -> replay to the shadow.
pub mod capture;
pub mod http;
pub mod reassembly;
pub mod segment;
pub mod synth;
pub mod tap;

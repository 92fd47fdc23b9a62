//! The comparison: where the primary's answer, captured off the wire, meets the candidate's
//! and the secondary's, replayed at the same moment.
//!
//! [`compare`] decodes each answer once ([`body`]: chunked, gzip, deflate, br, capped) and
//! diffs them pairwise by field ([`diff`], Diffy's kinds), leaving out what [`IgnoreRules`]
//! say. Noise is cancelled twice: on the request itself (a field the primary and the
//! secondary disagree on the same way is not held against the candidate) and across
//! requests, where [`Results`] counts every field per endpoint ([`EndpointNamer`]) and
//! reports it with Diffy's thresholds. Results are bounded ([`Caps`]) and merge exactly,
//! so one verdict can come from many agents.
pub mod body;
pub mod diff;
pub mod endpoint;
mod exchange;
pub mod ignore;
pub mod json;
pub mod latency;
mod results;
pub mod sample;
mod store;

pub use diff::{FieldDiff, Kind};
pub use endpoint::{EndpointNamer, Template, TemplateError};
pub use exchange::{compare, Answer, CompareRules, Comparison, Problems};
pub use ignore::{IgnoreError, IgnoreRules, IgnoreSpec};
pub use results::{
    Caps, EndpointReport, EndpointStats, FieldCounts, FieldReport, LatencyReport, Percentiles,
    Report, Results, Thresholds,
};
pub use sample::{Sample, SampleAnswer};
pub use store::{Saved, Store, StoreError};

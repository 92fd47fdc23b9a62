//! The comparison's counts as Prometheus counters, so the verdict of a cluster can be read
//! from the Prometheus it already runs (sum by endpoint, field and kind over the agents, then
//! Diffy's rule). Read from the shared results at each scrape: exact, and nothing copied per
//! comparison. Label sets are bounded: the [`MAX_ENDPOINTS`] endpoints with the most
//! requests, and in each the [`MAX_FIELDS`] fields the candidate differs in most; what is
//! left out is counted (`mirror_compare_unexported`).
use std::fmt;

use mirror_compare::{EndpointStats, FieldCounts, FieldDiff};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::compare::SharedVerdicts;

pub(crate) const MAX_ENDPOINTS: usize = 200;
pub(crate) const MAX_FIELDS: usize = 20;

#[derive(Debug)]
pub(crate) struct CompareCollector(pub(crate) SharedVerdicts);

impl Collector for CompareCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let v = self.0.lock().expect("not poisoned");
        let mut endpoints: Vec<(&String, &EndpointStats)> = v.results.endpoints.iter().collect();
        endpoints.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
        let unexported_endpoints = endpoints.len().saturating_sub(MAX_ENDPOINTS);
        endpoints.truncate(MAX_ENDPOINTS);

        let mut family = encoder.encode_descriptor(
            "compare_requests",
            "Requests of an endpoint offered for comparison, compared, and compared with a difference",
            None,
            MetricType::Counter,
        )?;
        for (name, e) in &endpoints {
            for (count, value) in
                [("offered", e.requests), ("compared", e.compared), ("differing", e.differing)]
            {
                let labels = [("endpoint", name.as_str()), ("count", count)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut unexported_fields = 0;
        let mut family = encoder.encode_descriptor(
            "compare_field_differences",
            "Requests on which a field differed, by side: candidate (after per-request noise cancellation), noise (primary against secondary), drift (only the primary)",
            None,
            MetricType::Counter,
        )?;
        for (name, e) in &endpoints {
            let mut fields: Vec<(&FieldDiff, &FieldCounts)> = e.fields.iter().collect();
            fields.sort_by(|a, b| b.1.candidate.cmp(&a.1.candidate).then(a.0.cmp(b.0)));
            unexported_fields += fields.len().saturating_sub(MAX_FIELDS);
            for (d, c) in fields.iter().take(MAX_FIELDS) {
                for (side, value) in
                    [("candidate", c.candidate), ("noise", c.noise), ("drift", c.drift)]
                {
                    let labels = [
                        ("endpoint", name.as_str()),
                        ("field", d.field.as_str()),
                        ("kind", d.kind.name()),
                        ("side", side),
                    ];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "compare_skipped",
            "Requests to compare that were not, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in v.skipped.fields() {
            ConstCounter::new(value).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        for (reason, value) in &v.replay_drops {
            let labels = [("reason", "replay_dropped"), ("drop", reason)];
            ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "compare_unexported",
            "What the bounded label sets leave out: endpoints, fields, and requests of endpoints beyond the results' cap",
            None,
            MetricType::Gauge,
        )?;
        for (what, value) in [
            ("endpoints", unexported_endpoints as i64),
            ("fields", unexported_fields as i64),
            ("untracked_requests", v.results.untracked_requests as i64),
        ] {
            ConstGauge::new(value).encode(family.encode_family(&[("what", what)])?)?;
        }
        Ok(())
    }
}

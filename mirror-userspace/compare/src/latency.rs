//! Latency distributions that merge exactly: counts in logarithmic buckets, four per
//! doubling (each bucket spans 19 %), kept sparse (an endpoint's latencies fill a dozen
//! buckets, not the few hundred that cover 1 µs to an hour). Two agents' histograms add
//! bucket by bucket, so a cluster's percentiles are those of all its traffic.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const PER_DOUBLING: f64 = 4.0;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Bucket index -> count; bucket `i` holds latencies in [2^(i/4), 2^((i+1)/4)) ns.
    buckets: BTreeMap<u16, u64>,
    count: u64,
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        let i = ((ns.max(1) as f64).log2() * PER_DOUBLING).floor() as u16;
        *self.buckets.entry(i).or_default() += 1;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (i, n) in &other.buckets {
            *self.buckets.entry(*i).or_default() += n;
        }
        self.count += other.count;
    }

    /// The `q` quantile (0..=1) in milliseconds, at its bucket's geometric middle; `None`
    /// when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(2f64.powf((*i as f64 + 0.5) / PER_DOUBLING) / 1e6);
            }
        }
        None
    }
}

/// The latencies of one endpoint: the primary's from the wire (its request's last byte to
/// its response's first), the secondary's and the candidate's as replayed now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latencies {
    pub primary: Histogram,
    pub secondary: Histogram,
    pub candidate: Histogram,
}

impl Latencies {
    pub fn merge(&mut self, other: &Latencies) {
        self.primary.merge(&other.primary);
        self.secondary.merge(&other.secondary);
        self.candidate.merge(&other.candidate);
    }

    /// The candidate's median against the secondary's (the primary's without a secondary):
    /// a regression when it is more than `ratio` times slower and by more than `min_ms`.
    /// Medians, not tails: one stall on a shared machine moves a p99, not a median.
    pub fn regression(&self, ratio: f64, min_ms: f64) -> Option<(f64, f64)> {
        let base = if self.secondary.count() > 0 { &self.secondary } else { &self.primary };
        let (c, b) = (self.candidate.quantile_ms(0.5)?, base.quantile_ms(0.5)?);
        (c > b * ratio && c - b > min_ms).then_some((c, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_a_bucket_and_exact_merges() {
        let mut a = Histogram::default();
        for ms in 1..=100u64 {
            a.record(ms * 1_000_000);
        }
        let p50 = a.quantile_ms(0.5).unwrap();
        assert!((45.0..=60.0).contains(&p50), "{p50}");
        let p99 = a.quantile_ms(0.99).unwrap();
        assert!((90.0..=110.0).contains(&p99), "{p99}");
        let (mut left, mut right) = (Histogram::default(), Histogram::default());
        for ms in 1..=100u64 {
            if ms % 3 == 0 { &mut left } else { &mut right }.record(ms * 1_000_000);
        }
        left.merge(&right);
        assert_eq!(left, a);
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn a_slower_candidate_is_a_regression_beyond_ratio_and_margin() {
        let mut l = Latencies::default();
        for _ in 0..10 {
            l.secondary.record(2_000_000);
            l.candidate.record(202_000_000);
        }
        assert!(l.regression(1.5, 10.0).is_some());
        let mut jitter = Latencies::default();
        for _ in 0..10 {
            jitter.secondary.record(1_000_000);
            jitter.candidate.record(3_000_000);
        }
        assert!(jitter.regression(1.5, 10.0).is_none(), "3x, but 2 ms");
    }
}

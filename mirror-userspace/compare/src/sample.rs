//! Samples: a few requests of an endpoint on which the candidate differed, with the three
//! answers side by side, so a reported field can be looked at rather than believed.
//!
//! Each endpoint keeps at most [`Caps::samples`](crate::Caps) of them, a uniform sample of
//! its differing requests (reservoir sampling: the k-th differing request replaces a kept
//! one with probability samples/k, so the work per request stays small when every request
//! differs); each answer's body is kept as text up to [`MAX_SAMPLE_BODY`] bytes.
use serde::{Deserialize, Serialize};

use crate::{
    body::{self, Body},
    exchange::Answer,
    FieldDiff,
};

/// Bytes of an answer's body kept in a sample.
pub const MAX_SAMPLE_BODY: usize = 4096;

/// One compared request with its three answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The request's head as captured.
    pub request: String,
    pub primary: SampleAnswer,
    pub secondary: Option<SampleAnswer>,
    pub candidate: SampleAnswer,
    /// The fields the candidate differed in on this request.
    pub fields: Vec<FieldDiff>,
}

impl Sample {
    /// Bytes the sample holds (what the sample budget counts).
    pub fn size(&self) -> usize {
        let answer = |a: &SampleAnswer| {
            a.body.len() + a.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
        };
        self.request.len()
            + answer(&self.primary)
            + self.secondary.as_ref().map_or(0, answer)
            + answer(&self.candidate)
            + self.fields.iter().map(|f| f.field.len()).sum::<usize>()
    }
}

/// An answer as a sample shows it: status, headers, the body decoded as text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// JSON pretty-printed, text as it is, anything else described; cut at
    /// [`MAX_SAMPLE_BODY`] bytes.
    pub body: String,
    pub truncated: bool,
    pub latency_ms: Option<f64>,
}

impl SampleAnswer {
    pub fn of(answer: &Answer<'_>, max_decoded: usize) -> SampleAnswer {
        let decoded = body::decode(answer.head, answer.body, max_decoded);
        let mut text = match decoded.body().0 {
            Body::Empty => String::new(),
            // Shown as serde_json writes it (a sample is rare: a second parse is fine).
            Body::Json(_) => serde_json::from_slice::<serde_json::Value>(&decoded.bytes)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or_default(),
            Body::Text(t) => t.to_string(),
            Body::Binary { len, hash } => format!("<{len} bytes, hash {hash:016x}>"),
        };
        let truncated = text.len() > MAX_SAMPLE_BODY;
        if truncated {
            let mut cut = MAX_SAMPLE_BODY;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        SampleAnswer {
            status: answer.head.status().unwrap_or(0),
            headers: answer
                .head
                .headers()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            body: text,
            truncated,
            latency_ms: answer.latency_ns.map(|ns| ns as f64 / 1e6),
        }
    }
}

//! Masking of secret values in what a step produces: every occurrence of
//! the value of a secret the step received is replaced by `***` in its
//! captured log (as the output streams in, before the bounded log sees it,
//! so neither the file nor the database copy ever holds it), in its outputs
//! and in its failure message.
//!
//! Every non-empty value is masked, however short: a one-character secret
//! mangles the log, which is the admin's choice to make, not a leak to
//! allow. Only the exact bytes are masked; an encoding of the value (base64,
//! URL-escaped, split by the program) is not recognised.
//!
//! Hand-written rather than with `aho-corasick`: a step has a handful of
//! secrets, and the streaming rule here (hold back a tail only while it can
//! still grow into a value, preferring the longest value) is the whole job.

use serde_json::{Map, Value};

use crate::domain::outcome::StepOutcome;

/// What a value is replaced with.
pub const MASK: &[u8] = b"***";

/// A streaming masker. Memory: the values, plus at most the longest value
/// less one byte held back between chunks.
#[derive(Clone)]
pub struct Masker {
    /// Distinct non-empty values, longest first.
    values: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl Masker {
    pub fn new<I, S>(values: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .map(|v| v.as_ref().to_vec())
            .filter(|v| !v.is_empty())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Masker {
            values,
            pending: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Masks `data` following what came before. Bytes that may be the start
    /// of a value cut by the chunk boundary are held back until the next
    /// call or [`Masker::finish`].
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.values.is_empty() {
            return data.to_vec();
        }
        self.pending.extend_from_slice(data);
        self.drain(false)
    }

    /// Masks and returns what was held back: the stream has ended.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, at_end: bool) -> Vec<u8> {
        let buf = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            let rest = &buf[i..];
            // A longer value may still complete here: wait for more bytes.
            if !at_end && self.values.iter().any(|v| v.len() > rest.len() && v.starts_with(rest)) {
                self.pending = rest.to_vec();
                return out;
            }
            match self.values.iter().find(|v| rest.starts_with(v)) {
                Some(v) => {
                    out.extend_from_slice(MASK);
                    i += v.len();
                }
                None => {
                    out.push(buf[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// Masks a whole text.
    pub fn text(&self, s: &str) -> String {
        if self.values.is_empty() {
            return s.to_string();
        }
        let mut whole = Masker {
            values: self.values.clone(),
            pending: s.as_bytes().to_vec(),
        };
        // A valid UTF-8 value only matches on character boundaries, so the
        // result is valid UTF-8; lossy conversion is only a safeguard.
        String::from_utf8_lossy(&whole.drain(true)).into_owned()
    }

    /// Masks every string, key, number and boolean in a JSON value. A
    /// number or boolean whose text holds a value becomes a string with the
    /// value masked: a numeric secret written unquoted is still a secret.
    pub fn json(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Number(_) | Value::Bool(_) => {
                let text = v.to_string();
                let masked = self.text(&text);
                if masked == text {
                    v.clone()
                } else {
                    Value::String(masked)
                }
            }
            Value::Array(a) => Value::Array(a.iter().map(|c| self.json(c)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, c)| (self.text(k), self.json(c)))
                    .collect::<Map<String, Value>>(),
            ),
            other => other.clone(),
        }
    }

    /// Masks what an outcome carries that a step could have printed: its
    /// properties (outputs), metadata and message.
    pub fn outcome(&self, outcome: StepOutcome) -> StepOutcome {
        if self.values.is_empty() {
            return outcome;
        }
        match outcome {
            StepOutcome::Succeeded {
                properties,
                metadata,
                exit_code,
                key,
            } => StepOutcome::Succeeded {
                properties: self.json(&properties),
                metadata: self.json(&metadata),
                exit_code,
                key,
            },
            StepOutcome::Failed {
                error_type,
                message,
                metadata,
                exit_code,
                by_fail_step,
            } => StepOutcome::Failed {
                error_type,
                message: self.text(&message),
                metadata: self.json(&metadata),
                exit_code,
                by_fail_step,
            },
            StepOutcome::Stopped { message } => StepOutcome::Stopped {
                message: self.text(&message),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn streamed(values: &[&str], chunks: &[&[u8]]) -> Vec<u8> {
        let mut m = Masker::new(values);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(m.push(c));
        }
        out.extend(m.finish());
        out
    }

    #[test]
    fn values_are_masked_across_every_chunk_boundary() {
        let text = b"start s3cr3t-value middle s3cr3t-value end s3cr3t";
        let expected = b"start *** middle *** end s3cr3t".to_vec();
        for size in 1..text.len() {
            let chunks: Vec<&[u8]> = text.chunks(size).collect();
            assert_eq!(streamed(&["s3cr3t-value"], &chunks), expected, "chunk size {size}");
        }
    }

    #[test]
    fn the_longest_value_wins_and_nothing_is_held_needlessly() {
        assert_eq!(streamed(&["abc", "abcdef"], &[b"xabcd", b"efy abcz"]), b"x***y ***z");
        let mut m = Masker::new(["secret"]);
        // Nothing that cannot start a value is held back.
        assert_eq!(m.push(b"progress 50%\n"), b"progress 50%\n");
        assert_eq!(m.push(b"almost sec"), b"almost ");
        assert_eq!(m.finish(), b"sec");
        assert_eq!(streamed(&[], &[b"a", b"b"]), b"ab");
        assert_eq!(streamed(&[""], &[b"ab"]), b"ab");
        assert_eq!(streamed(&["x"], &[b"xax"]), b"***a***");
    }

    #[test]
    fn texts_json_and_outcomes_are_masked() {
        let m = Masker::new(["tok3n"]);
        assert_eq!(m.text("a tok3n é tok3n"), "a *** é ***");
        assert_eq!(
            m.json(&json!({"k": ["tok3n!", 1], "tok3n": true})),
            json!({"k": ["***!", 1], "***": true})
        );
        let numeric = Masker::new(["1165613882", "true"]);
        assert_eq!(
            numeric.json(&json!({"num": 1165613882, "big": 11656138820_i64, "f": 1.5, "b": true, "n": false})),
            json!({"num": "***", "big": "***0", "f": 1.5, "b": "***", "n": false})
        );
        match m.outcome(StepOutcome::failed("Command.FAILED", "bad tok3n")) {
            StepOutcome::Failed { message, .. } => assert_eq!(message, "bad ***"),
            other => panic!("{other:?}"),
        }
    }
}

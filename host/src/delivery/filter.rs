//! JMES filters per source topic, ANDed; pure.
//!
//! A value that is not JSON fails any filter; a topic without filters passes
//! everything. A value is parsed once per message, and only as far as the
//! topic's filters can read it ([`JmesReads`]).

use std::collections::HashMap;

use crate::domain::{JmesDocument, JmesFilter, JmesReads, SubscriptionSpec};

use super::record::Record;

pub struct SourceFilters {
    by_topic: HashMap<String, TopicFilters>,
}

struct TopicFilters {
    filters: Vec<JmesFilter>,
    /// What all of them read together.
    reads: JmesReads,
}

impl SourceFilters {
    pub fn new(spec: &SubscriptionSpec) -> Self {
        Self {
            by_topic: spec
                .source
                .iter()
                .filter(|s| !s.jmes_filters.is_empty())
                .map(|s| {
                    let reads = s
                        .jmes_filters
                        .iter()
                        .map(|f| f.reads().clone())
                        .fold(JmesReads::nothing(), JmesReads::union);
                    let filters = s.jmes_filters.clone();
                    (
                        s.topic.as_str().to_string(),
                        TopicFilters { filters, reads },
                    )
                })
                .collect(),
        }
    }

    /// Whether `record` passes its topic's filters. A value it parsed is
    /// marked as JSON ([`Record::value_is_json`]), so the body need not
    /// check it again.
    pub fn passes(&self, record: &mut Record) -> bool {
        let Some(topic) = self.by_topic.get(&record.topic) else {
            return true;
        };
        let Some(document) = record
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|text| JmesDocument::read(text, &topic.reads))
        else {
            return false;
        };
        // The partial parse checked all of it as JSON, as the body would.
        record.value_is_json = true;
        topic.filters.iter().all(|f| f.matches(&document))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SubscriptionRequest, SubscriptionSpec};

    fn filters(topics: serde_json::Value) -> SourceFilters {
        let request: SubscriptionRequest = serde_json::from_value(serde_json::json!({
            "name": "f",
            "destination": {"kind": "webhook", "webhook": {"url": "http://h/"}},
            "source": topics,
        }))
        .unwrap();
        SourceFilters::new(&SubscriptionSpec::parse(request, None).unwrap())
    }

    fn record(topic: &str, value: &[u8]) -> Record {
        Record {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            value: Some(value.to_vec()),
            headers: vec![],
            value_is_json: false,
        }
    }

    #[test]
    fn filters_are_anded_per_topic() {
        let f = filters(serde_json::json!([
            {"topic": "a", "jmes_filters": ["amount > `10`", "currency == 'EUR'"]},
            {"topic": "b"}
        ]));
        assert!(f.passes(&mut record("a", br#"{"amount": 11, "currency": "EUR"}"#)));
        assert!(!f.passes(&mut record("a", br#"{"amount": 11, "currency": "USD"}"#)));
        assert!(!f.passes(&mut record("a", br#"{"amount": 1, "currency": "EUR"}"#)));
        assert!(f.passes(&mut record("b", b"not json at all")));
    }

    #[test]
    fn a_value_that_is_not_json_fails_any_filter() {
        let f = filters(serde_json::json!([{"topic": "a", "jmes_filters": ["`true`"]}]));
        assert!(!f.passes(&mut record("a", b"plain")));
        assert!(f.passes(&mut record("a", b"{}")));
    }
}

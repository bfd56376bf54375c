//! The report: what was expected, what arrived, and how fast. Pure.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

/// One delivered message as the receiver stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub id: u64,
    pub published_us: i64,
    pub received_us: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub min: f64,
    pub avg: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Rows the broker acknowledged: these must all arrive.
    pub expected: u64,
    /// Distinct expected rows that arrived.
    pub received: u64,
    pub missing: u64,
    /// Deliveries beyond the first of a row.
    pub duplicates: u64,
    /// Rows whose publish the broker refused (not expected).
    pub publish_failed: u64,
    /// Publish to first receipt, in milliseconds.
    pub latency_ms: Option<Latency>,
    /// Distinct rows delivered per second, from the first publish to the last first receipt.
    pub messages_per_second: f64,
}

pub fn compute(expected: &HashSet<u64>, publish_failed: u64, receipts: &[Receipt]) -> Report {
    let mut first: HashMap<u64, Receipt> = HashMap::with_capacity(receipts.len());
    for receipt in receipts {
        first
            .entry(receipt.id)
            .and_modify(|kept| {
                if receipt.received_us < kept.received_us {
                    *kept = *receipt;
                }
            })
            .or_insert(*receipt);
    }
    let received = expected.iter().filter(|id| first.contains_key(id)).count() as u64;
    let mut latencies: Vec<f64> = first
        .values()
        .map(|r| (r.received_us - r.published_us) as f64 / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let latency_ms = (!latencies.is_empty()).then(|| Latency {
        min: latencies[0],
        avg: latencies.iter().sum::<f64>() / latencies.len() as f64,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies[latencies.len() - 1],
    });
    let start = first.values().map(|r| r.published_us).min();
    let end = first.values().map(|r| r.received_us).max();
    let messages_per_second = match (start, end) {
        (Some(s), Some(e)) if e > s => first.len() as f64 / ((e - s) as f64 / 1e6),
        _ => 0.0,
    };
    Report {
        expected: expected.len() as u64,
        received,
        missing: expected.len() as u64 - received,
        duplicates: (receipts.len() - first.len()) as u64,
        publish_failed,
        latency_ms,
        messages_per_second,
    }
}

impl Report {
    /// Why this run failed, each reason a sentence; empty when it passed. A
    /// run fails when a row is missing, when the broker refused any row (the
    /// test did not test what it was asked to), or when nothing was published
    /// or delivered (it tested nothing).
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.publish_failed > 0 {
            failures.push(format!(
                "the broker refused {} rows: check that the topics exist and that \
                 this client may write to them",
                self.publish_failed
            ));
        }
        if self.expected == 0 {
            failures.push("nothing was published: no row was acknowledged by the broker".into());
        } else if self.received == 0 {
            failures.push("nothing was delivered: the receiver got none of the rows".into());
        }
        if self.missing > 0 {
            failures.push(format!("{} acknowledged rows never arrived", self.missing));
        }
        failures
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(id: u64, published: i64, received: i64) -> Receipt {
        Receipt {
            id,
            published_us: published,
            received_us: received,
        }
    }

    #[test]
    fn counts_missing_duplicates_and_latency_from_the_first_receipt() {
        let expected: HashSet<u64> = [1, 2, 3].into();
        let receipts = [
            receipt(1, 0, 1_000),
            receipt(1, 0, 5_000),
            receipt(2, 1_000, 3_000),
        ];
        let report = compute(&expected, 0, &receipts);
        assert_eq!(
            (report.received, report.missing, report.duplicates),
            (2, 1, 1)
        );
        let latency = report.latency_ms.unwrap();
        assert_eq!((latency.min, latency.max), (1.0, 2.0));
        assert_eq!(latency.avg, 1.5);
        // 2 distinct rows from t=0 to t=3 ms.
        assert!((report.messages_per_second - 2.0 / 0.003).abs() < 1e-6);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn a_run_where_everything_arrived_passes() {
        let report = compute(&[1, 2].into(), 0, &[receipt(1, 0, 1), receipt(2, 0, 1)]);
        assert_eq!(report.failures(), Vec::<String>::new());
    }

    #[test]
    fn a_run_that_published_nothing_fails_even_with_nothing_missing() {
        let report = compute(&HashSet::new(), 0, &[]);
        assert_eq!(report.missing, 0);
        let failures = report.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("nothing was published"),
            "{failures:?}"
        );
    }

    #[test]
    fn a_run_whose_rows_were_all_refused_fails_and_says_so() {
        let report = compute(&HashSet::new(), 2000, &[]);
        let failures = report.failures().join("; ");
        assert!(failures.contains("refused 2000 rows"), "{failures}");
        assert!(failures.contains("nothing was published"), "{failures}");
    }

    #[test]
    fn one_refused_row_fails_a_run_that_delivered_the_rest() {
        let report = compute(&[1].into(), 1, &[receipt(1, 0, 1)]);
        assert_eq!(report.failures().len(), 1);
    }

    #[test]
    fn a_run_that_delivered_nothing_fails() {
        let report = compute(&[1, 2].into(), 0, &[]);
        let failures = report.failures().join("; ");
        assert!(failures.contains("nothing was delivered"), "{failures}");
        assert!(
            failures.contains("2 acknowledged rows never arrived"),
            "{failures}"
        );
    }

    #[test]
    fn nothing_received_reports_everything_missing() {
        let report = compute(&[1, 2].into(), 3, &[]);
        assert_eq!((report.missing, report.publish_failed), (2, 3));
        assert!(report.latency_ms.is_none());
    }
}

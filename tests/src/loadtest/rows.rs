//! The rows to publish: generated in memory, each with its publish time. Pure.
//!
//! Row `i` goes to topic `i mod topics` at `duration × i / rows` after the
//! start, so the rows spread evenly over the duration and across topics.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub id: u64,
    pub topic: usize,
    /// When to publish it, from the start of the run.
    pub at: Duration,
}

pub fn schedule(rows: u64, duration: Duration, topics: usize) -> impl Iterator<Item = Row> {
    let topics = topics.max(1) as u64;
    (0..rows).map(move |id| Row {
        id,
        topic: (id % topics) as usize,
        at: if rows == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos((duration.as_nanos() * id as u128 / rows as u128) as u64)
        },
    })
}

/// The message value for a row: its id, its topic and the moment it was
/// published (microseconds since the epoch), padded to about `bytes`.
pub fn value(row: &Row, topic: &str, published_us: i64, bytes: usize) -> String {
    let head = format!(
        r#"{{"id":{},"topic":"{topic}","published_us":{published_us},"pad":""#,
        row.id
    );
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_spread_over_the_duration_and_topics() {
        let rows: Vec<Row> = schedule(6, Duration::from_secs(60), 3).collect();
        assert_eq!(
            rows.iter().map(|r| r.topic).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(rows[0].at, Duration::ZERO);
        assert_eq!(rows[3].at, Duration::from_secs(30));
        assert!(rows[5].at < Duration::from_secs(60));
    }

    #[test]
    fn values_are_json_of_about_the_asked_size() {
        let row = Row {
            id: 7,
            topic: 0,
            at: Duration::ZERO,
        };
        let v = value(&row, "t", 123, 200);
        let parsed: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(parsed["id"], 7);
        assert_eq!(parsed["published_us"], 123);
        assert_eq!(v.len(), 200);
    }
}

//! `POST /log`: seed 001's record, checked field by field, then produced —
//! compacted, as sent — to `--log-topic`, keyed by `user_id` (one user's
//! records stay in order on one partition). Answered 200 `{topic, partition,
//! offset, timestamp}` once the brokers acknowledged it; 400 naming the field
//! that is missing or wrong (`meta.logins[0].time: …`). Like every route but
//! the probes, it needs a bearer token. Each request is logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::IngestError;
use super::json::compact;
use super::record::Outgoing;
use super::{Ingest, read_body};
use crate::api::ApiError;
use crate::api::auth::Principal;
use crate::api::json::{parse, require_json};

/// Seed 001's record. Read to check it; what is produced is the body as
/// sent (compacted), unknown fields included.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code, reason = "the fields are the schema: serde checks them")]
struct LogRecord {
    user_id: i64,
    total: f64,
    title: String,
    meta: Meta,
    completed: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code, reason = "the fields are the schema: serde checks them")]
struct Meta {
    logins: Vec<Login>,
    /// `{"home": "555-1212", "mobile": "123-5555"}`: labels to numbers.
    phone_numbers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code, reason = "the fields are the schema: serde checks them")]
struct Login {
    #[schema(value_type = String, format = DateTime)]
    time: Rfc3339,
    #[schema(value_type = String)]
    ip: std::net::IpAddr,
}

/// A time in RFC 3339 (`2020-08-08T01:52:50Z`), strictly.
#[derive(Debug)]
struct Rfc3339;

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|_| Rfc3339)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "must be an RFC 3339 time such as 2020-08-08T01:52:50Z: {e}"
                ))
            })
    }
}

#[utoipa::path(
    post,
    path = "/log",
    tag = "ingest",
    request_body = LogRecord,
    responses(
        (status = 200, description = "Produced to the log topic and acknowledged", body = crate::api::openapi::Written),
        (status = 404, description = "The log topic does not exist", body = crate::api::openapi::ErrorAnswer),
        crate::api::openapi::ProduceErrors,
    ),
    security(("bearer" = []))
)]
pub(super) async fn accept(
    State(ingest): State<Arc<Ingest>>,
    principal: Principal,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let topic = ingest.settings.log_topic.as_str().to_string();
    let answer = produce(&ingest, &principal, &topic, request).await;
    match &answer {
        Ok(body) => tracing::info!(
            topic,
            partition = body["partition"].as_i64(),
            offset = body["offset"].as_i64(),
            "POST /log: record accepted."
        ),
        Err(error) => tracing::info!(
            topic,
            status = error.status_and_code().0.as_u16(),
            error = %error,
            "POST /log: record refused."
        ),
    }
    answer.map(Json)
}

async fn produce(
    ingest: &Ingest,
    principal: &Principal,
    topic: &str,
    request: Request,
) -> Result<Value, ApiError> {
    principal.may_write(topic)?;
    require_json(request.headers())?;
    let body = read_body(request, ingest.settings.max_record_bytes).await?;
    let record: LogRecord = parse(&body)?;
    let value = compact(&body).map_err(IngestError::InvalidJson)?;
    let outgoing = Outgoing {
        key: Some(record.user_id.to_string().into_bytes()),
        value,
    };
    ingest.check_target(topic, None).await?;
    let pending = ingest
        .send(topic, None, &[], &outgoing, ingest.queue_deadline())
        .await?;
    let written = ingest.written(topic, pending).await?;
    Ok(json!({
        "topic": topic,
        "partition": written.partition,
        "offset": written.offset,
        "timestamp": written.timestamp,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_record() -> Value {
        json!({
            "user_id": 1,
            "total": 1.65,
            "title": "delectus aut autem",
            "meta": {
                "logins": [{"time": "2020-08-08T01:52:50Z", "ip": "0.0.0.0"}],
                "phone_numbers": {"home": "555-1212", "mobile": "123-5555"}
            },
            "completed": false
        })
    }

    fn refused_field(change: impl FnOnce(&mut Value)) -> String {
        let mut record = seed_record();
        change(&mut record);
        match parse::<LogRecord>(record.to_string().as_bytes()).unwrap_err() {
            ApiError::InvalidField { field, message } => format!("{field}: {message}"),
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn the_seeds_example_is_accepted() {
        parse::<LogRecord>(seed_record().to_string().as_bytes()).unwrap();
    }

    #[test]
    fn each_wrong_field_is_named() {
        type Change = fn(&mut Value);
        let cases: [(Change, &str); 6] = [
            (|r| r["user_id"] = json!(1.5), "user_id"),
            (|r| r["total"] = json!("1.65"), "total"),
            (|r| r["completed"] = json!("no"), "completed"),
            (
                |r| r["meta"]["logins"][0]["time"] = json!("yesterday"),
                "meta.logins[0].time",
            ),
            (
                |r| r["meta"]["logins"][0]["ip"] = json!("300.1.1.1"),
                "meta.logins[0].ip",
            ),
            (
                |r| r["meta"]["phone_numbers"]["home"] = json!(5551212),
                "meta.phone_numbers.home",
            ),
        ];
        for (change, field) in cases {
            let refused = refused_field(change);
            assert!(refused.starts_with(&format!("{field}: ")), "{refused}");
        }
        let missing = refused_field(|r| {
            r.as_object_mut().unwrap().remove("title");
        });
        assert!(
            missing.starts_with("title: missing field `title`"),
            "{missing}"
        );
        let missing = refused_field(|r| {
            r["meta"]["logins"][0].as_object_mut().unwrap().remove("ip");
        });
        assert!(
            missing.starts_with("meta.logins[0].ip: missing"),
            "{missing}"
        );
    }
}

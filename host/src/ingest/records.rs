//! `POST /1/Topic/{topic}/Records`: the body produced to the topic.
//!
//! One record: answered 200 `{topic, partition, offset, timestamp}` once the
//! brokers acknowledged it, or 202 at once with `?ack=none`. An NDJSON batch
//! (`application/x-ndjson`): each non-blank line one record, answered with
//! one NDJSON result per line, in order — `{"line", "status", …}` with where
//! it was written, or the `code` and `message` of its failure — and 200 when
//! every line succeeded (202 with `ack=none`), 207 when any failed. Checks
//! that concern the whole request come first and fail it whole: the token and
//! the tenant's ACL, the headers, the size, the topic (404) and the partition.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::IngestError;
use super::producer::Pending;
use super::record::{Ack, BodyKind, Options, RecordsQuery, lines};
use super::{Ingest, read_body};
use crate::api::ApiError;
use crate::api::auth::Principal;
use crate::domain::TopicName;

#[utoipa::path(
    post,
    path = "/1/Topic/{topic}/Records",
    tag = "ingest",
    params(
        ("topic" = String, Path, description = "The topic to produce to"),
        RecordsQuery,
        ("wasmhook-key" = Option<String>, Header, description = "The record's key"),
        ("wasmhook-partition" = Option<i32>, Header,
            description = "The partition (-1 or absent: the partitioner chooses)"),
    ),
    request_body(
        description = "One record (`application/json` is checked and compacted; other types \
            are taken as sent), or an NDJSON batch of one record per line",
        content(
            (serde_json::Value = "application/json"),
            (String = "application/x-ndjson"),
            (String = "application/octet-stream"),
        ),
    ),
    responses(
        (status = 200, description = "Acknowledged by the brokers; a batch answers one NDJSON \
            line per record (`line`, `topic`, `status` and where it was written)", content(
            (crate::api::openapi::Written = "application/json"),
            (String = "application/x-ndjson"),
        )),
        (status = 202, description = "With `ack=none`: queued", content(
            (crate::api::openapi::Queued = "application/json"),
            (String = "application/x-ndjson"),
        )),
        (status = 207, description = "A batch in which some lines failed (each with its \
            `status`, `code` and `message`)", body = String, content_type = "application/x-ndjson"),
        (status = 404, description = "No such topic or partition", body = crate::api::openapi::ErrorAnswer),
        crate::api::openapi::ProduceErrors,
    ),
    security(("bearer" = []))
)]
pub(super) async fn produce(
    State(ingest): State<Arc<Ingest>>,
    principal: Principal,
    Path(topic): Path<String>,
    query: Result<Query<RecordsQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    // A name Kafka refuses cannot name a topic.
    let topic = TopicName::parse(topic.clone())
        .map_err(|reason| ApiError::NotFound(format!("no topic {topic:?}: the name {reason}")))?;
    let topic = topic.as_str();
    principal.may_write(topic)?;
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let options = Options::parse(request.headers(), &query)?;
    let settings = &ingest.settings;
    let limit = match options.kind {
        BodyKind::Ndjson => settings.max_request_bytes,
        BodyKind::Json | BodyKind::Raw => settings.max_record_bytes,
    };
    let body = read_body(request, limit).await?;
    ingest.check_target(topic, options.partition).await?;
    let response = match options.kind {
        BodyKind::Ndjson => batch(&ingest, topic, &options, &body).await?,
        BodyKind::Json | BodyKind::Raw => single(&ingest, topic, &options, &body).await?,
    };
    tracing::debug!(
        topic,
        status = response.status().as_u16(),
        "Records request answered."
    );
    Ok(response)
}

async fn single(
    ingest: &Arc<Ingest>,
    topic: &str,
    options: &Options,
    body: &[u8],
) -> Result<Response, ApiError> {
    let record = options.record(body, ingest.settings.max_record_bytes)?;
    let pending = ingest
        .send(
            topic,
            options.partition,
            &options.headers,
            &record,
            ingest.queue_deadline(),
        )
        .await?;
    Ok(match options.ack {
        Ack::None => {
            ingest.watch(topic, vec![pending]);
            (
                StatusCode::ACCEPTED,
                Json(json!({"topic": topic, "records": 1})),
            )
                .into_response()
        }
        Ack::All => {
            let written = ingest.written(topic, pending).await?;
            Json(json!({
                "topic": topic,
                "partition": written.partition,
                "offset": written.offset,
                "timestamp": written.timestamp,
            }))
            .into_response()
        }
    })
}

/// A line's fate before the brokers answer.
enum Line {
    Sent(Pending),
    Failed(IngestError),
}

async fn batch(
    ingest: &Arc<Ingest>,
    topic: &str,
    options: &Options,
    body: &[u8],
) -> Result<Response, ApiError> {
    let limit = ingest.settings.max_records;
    // Counted first: a batch over the limit is refused whole, before any line is produced.
    let count = lines(body).take(limit + 1).count();
    if count > limit {
        return Err(IngestError::TooManyRecords { limit }.into());
    }
    if count == 0 {
        return Err(ApiError::BadRequest(
            "the batch has no records: send one JSON value per line".into(),
        ));
    }
    // Every line is queued before any answer is awaited, so the brokers get
    // them together (librdkafka batches them) and in order.
    let mut sent = Vec::with_capacity(count);
    let deadline = ingest.queue_deadline();
    for (number, value) in lines(body) {
        let line = match options.record(value, ingest.settings.max_record_bytes) {
            Err(error) => Line::Failed(error),
            Ok(record) => match ingest
                .send(
                    topic,
                    options.partition,
                    &options.headers,
                    &record,
                    deadline,
                )
                .await
            {
                Ok(pending) => Line::Sent(pending),
                Err(error) => Line::Failed(error),
            },
        };
        sent.push((number, line));
    }
    let results: Vec<(usize, Result<Value, IngestError>)> = match options.ack {
        Ack::None => {
            let mut pending = Vec::new();
            let results = sent
                .into_iter()
                .map(|(number, line)| match line {
                    Line::Sent(p) => {
                        pending.push(p);
                        (number, Ok(json!({"status": 202})))
                    }
                    Line::Failed(error) => (number, Err(error)),
                })
                .collect();
            ingest.watch(topic, pending);
            results
        }
        Ack::All => {
            let answers = sent.into_iter().map(|(number, line)| async move {
                let answer = match line {
                    Line::Failed(error) => Err(error),
                    Line::Sent(pending) => ingest.written(topic, pending).await.map(|w| {
                        json!({
                            "status": 200,
                            "partition": w.partition,
                            "offset": w.offset,
                            "timestamp": w.timestamp,
                        })
                    }),
                };
                (number, answer)
            });
            futures::future::join_all(answers).await
        }
    };
    let all_fine = results.iter().all(|(_, r)| r.is_ok());
    let mut text = String::new();
    for (number, result) in results {
        let outcome = match result {
            Ok(written) => written,
            Err(error) => {
                let message = error.to_string();
                let (status, code) = ApiError::from(error).status_and_code();
                json!({"status": status.as_u16(), "code": code, "message": message})
            }
        };
        let mut line = serde_json::Map::new();
        line.insert("line".into(), json!(number));
        line.insert("topic".into(), json!(topic));
        if let Value::Object(fields) = outcome {
            line.extend(fields);
        }
        text.push_str(&Value::Object(line).to_string());
        text.push('\n');
    }
    let status = match (all_fine, options.ack) {
        (false, _) => StatusCode::MULTI_STATUS,
        (true, Ack::All) => StatusCode::OK,
        (true, Ack::None) => StatusCode::ACCEPTED,
    };
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

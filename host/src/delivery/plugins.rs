//! The plugin stages of a pipeline: filter and policy plugins per source
//! topic, then the serialiser plugin (or the built-in JSON body). Together
//! they prepare one delivery attempt: which messages go, and the body.
//!
//! Each attached plugin is a [`PluginInstance`] owned by the pipeline,
//! loaded on first use and kept across batches. This module turns plugin
//! answers into outcomes per message: a filter's `false` (filtered) and a
//! policy's deny (denied) are final; a redaction replaces the value. Any
//! plugin failure — a trap, an overrun, an error value, a plugin that cannot
//! be loaded or is suspended — fails the whole attempt, which the pipeline
//! retries and finally dead-letters: nothing is dropped because a plugin
//! broke or the host was slow. It does not send, retry or commit.
//!
//! A tenant's mandatory policy (set by the admin on the tenant) runs on every
//! topic after the subscription's own policy, and sees its redactions.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use uuid::Uuid;

use super::record::{self, Record};
use crate::domain::{BodyFormat, PluginAttachment, PluginRole, SubscriptionSpec};
use crate::plugin::loader::{self, AttachmentError};
use crate::plugin::{
    Decision, Message, PluginEngine, PluginError, PluginInstance, SubscriberContext,
};
use crate::registry::Registry;

/// One attached plugin of the pipeline.
struct Slot {
    /// The field that attaches it, e.g. `source[0].filter_plugin`.
    field: String,
    role: PluginRole,
    attachment: PluginAttachment,
    /// Whose view resolves the plugin's name: the owning tenant's (its own,
    /// else shared), or `None` for shared plugins only.
    tenant: Option<Uuid>,
    /// Loaded on first use; kept (and rebuilt by itself) afterwards.
    instance: Option<PluginInstance>,
}

impl Slot {
    /// "filter plugin field-match@1.0.0 (source[0].filter_plugin)".
    fn label(&self) -> String {
        format!("{} plugin {} ({})", self.role, self.attachment, self.field)
    }

    async fn instance(
        &mut self,
        registry: &Registry,
        engine: &PluginEngine,
    ) -> Result<&mut PluginInstance, AttachmentError> {
        let instance = match self.instance.take() {
            Some(instance) => instance,
            None => loader::load(registry, engine, self.tenant, &self.attachment, self.role)
                .await?
                .deferred(engine, &self.attachment),
        };
        Ok(self.instance.insert(instance))
    }

    /// Runs `call` on the instance (loading it first if needed); a failure
    /// says which plugin failed and whether it keeps failing.
    async fn run<T>(
        &mut self,
        registry: &Registry,
        engine: &PluginEngine,
        call: impl AsyncFnOnce(&mut PluginInstance) -> Result<T, PluginError>,
    ) -> Result<T, StageFailure> {
        let started = std::time::Instant::now();
        let result = match self.instance(registry, engine).await {
            Ok(instance) => call(instance).await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        crate::telemetry::plugin_call(
            &format!("{}@{}", self.attachment.name, self.attachment.version),
            self.role.as_str(),
            started.elapsed(),
            result.is_err(),
        );
        result.map_err(|error| self.failure(&error))
    }

    /// Why this plugin fails the attempt, and whether it keeps failing.
    fn failure(&self, error: &dyn std::fmt::Display) -> StageFailure {
        StageFailure {
            reason: format!("{} failed: {error}", self.label()),
            suspended: self
                .instance
                .as_ref()
                .and_then(PluginInstance::suspension)
                .map(|why| format!("{} keeps failing: {why}", self.label())),
        }
    }
}

/// Why an attempt could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFailure {
    /// Names the plugin, the field attaching it, and what went wrong.
    pub reason: String,
    /// Set when the plugin is suspended by its circuit breaker: it keeps
    /// failing, which makes the subscription unhealthy.
    pub suspended: Option<String>,
}

/// One attempt, ready to send.
#[derive(Debug)]
pub struct Prepared<'a> {
    /// Messages to deliver, in batch order, redacted where a policy said so.
    pub kept: Cow<'a, [Record]>,
    /// Removed by a filter plugin.
    pub filtered: usize,
    /// Refused by a policy plugin.
    pub denied: usize,
    /// The request body and its content type (empty when nothing is kept).
    pub body: Bytes,
    pub content_type: String,
}

/// The plugins of one pipeline.
pub struct PluginStages {
    subscription: Uuid,
    subscription_name: String,
    registry: Registry,
    engine: PluginEngine,
    filters: HashMap<String, Slot>,
    policies: HashMap<String, Slot>,
    /// The tenant's mandatory policy, for every topic.
    mandatory: Option<Slot>,
    serialiser: Option<Slot>,
    /// What the built-in JSON body holds, when there is no serialiser.
    body_format: BodyFormat,
}

enum Fate {
    Keep,
    Filtered,
    Denied,
}

impl PluginStages {
    /// The stages of a subscription owned by `tenant` (`None`: the admin),
    /// with the tenant's mandatory policy if it has one; nothing is loaded yet.
    pub fn new(
        id: Uuid,
        spec: &SubscriptionSpec,
        tenant: Option<Uuid>,
        mandatory: Option<&PluginAttachment>,
        registry: &Registry,
        engine: &PluginEngine,
    ) -> Self {
        let mut stages = PluginStages {
            subscription: id,
            subscription_name: spec.name.as_str().to_string(),
            registry: registry.clone(),
            engine: engine.clone(),
            filters: HashMap::new(),
            policies: HashMap::new(),
            mandatory: mandatory.map(|a| Slot {
                field: "the tenant's mandatory_policy".into(),
                role: PluginRole::Policy,
                attachment: a.clone(),
                tenant: None,
                instance: None,
            }),
            serialiser: None,
            body_format: spec.configuration.body_format,
        };
        let slot = |field: String, role, attachment: &PluginAttachment| Slot {
            field,
            role,
            attachment: attachment.clone(),
            tenant,
            instance: None,
        };
        for (i, source) in spec.source.iter().enumerate() {
            let topic = source.topic.as_str();
            if let Some(a) = &source.filter_plugin {
                let field = format!("source[{i}].filter_plugin");
                stages
                    .filters
                    .insert(topic.into(), slot(field, PluginRole::Filter, a));
            }
            if let Some(a) = &source.policy_plugin {
                let field = format!("source[{i}].policy_plugin");
                stages
                    .policies
                    .insert(topic.into(), slot(field, PluginRole::Policy, a));
            }
        }
        if let Some(a) = &spec.configuration.serialiser_plugin {
            let field = "configuration.serialiser_plugin".to_string();
            stages.serialiser = Some(slot(field, PluginRole::Serialiser, a));
        }
        stages
    }

    /// Loads and instantiates every plugin now, so the first batch does not
    /// wait for it and a plugin that cannot start shows at once. Returns the
    /// failures; the plugins that failed are tried again with each attempt.
    pub async fn warm(&mut self) -> Vec<StageFailure> {
        let (registry, engine) = (self.registry.clone(), self.engine.clone());
        let mut failures = Vec::new();
        let slots = self
            .filters
            .values_mut()
            .chain(self.policies.values_mut())
            .chain(self.mandatory.as_mut())
            .chain(self.serialiser.as_mut());
        for slot in slots {
            let warmed = match slot.instance(&registry, &engine).await {
                Ok(instance) => instance.warm().await.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            if let Err(error) = warmed {
                failures.push(slot.failure(&error));
            }
        }
        failures
    }

    /// Runs the plugins on a batch: per topic the filter then the policy
    /// (one call each), then the serialiser on what is kept.
    pub async fn prepare<'a>(
        &mut self,
        records: &'a [Record],
    ) -> Result<Prepared<'a>, StageFailure> {
        let (kept, filtered, denied) =
            if self.filters.is_empty() && self.policies.is_empty() && self.mandatory.is_none() {
                (Cow::Borrowed(records), 0, 0)
            } else {
                self.screen(records).await?
            };
        if kept.is_empty() {
            return Ok(Prepared {
                kept,
                filtered,
                denied,
                body: Bytes::new(),
                content_type: String::new(),
            });
        }
        let (body, content_type) = match self.serialiser.as_mut() {
            None => (
                Bytes::from(match self.body_format {
                    BodyFormat::Envelope => record::json_body(&kept),
                    BodyFormat::Values => record::values_body(&kept),
                }),
                record::JSON_CONTENT_TYPE.to_string(),
            ),
            Some(slot) => {
                let batch: Vec<Message> = kept.iter().map(message).collect();
                let out = slot
                    .run(&self.registry, &self.engine, async |p| {
                        p.serialise(batch).await
                    })
                    .await?;
                (Bytes::from(out.body), out.content_type)
            }
        };
        Ok(Prepared {
            kept,
            filtered,
            denied,
            body,
            content_type,
        })
    }

    async fn screen<'a>(
        &mut self,
        records: &'a [Record],
    ) -> Result<(Cow<'a, [Record]>, usize, usize), StageFailure> {
        let mut topics: Vec<&str> = Vec::new();
        for record in records {
            if !topics.contains(&record.topic.as_str()) {
                topics.push(&record.topic);
            }
        }
        let mut fates: Vec<Fate> = records.iter().map(|_| Fate::Keep).collect();
        let mut redactions: HashMap<usize, Vec<u8>> = HashMap::new();
        for topic in topics {
            let mut indices: Vec<usize> = (0..records.len())
                .filter(|&i| records[i].topic == topic)
                .collect();
            if let Some(slot) = self.filters.get_mut(topic) {
                let batch: Vec<Message> = indices.iter().map(|&i| message(&records[i])).collect();
                let keep = slot
                    .run(&self.registry, &self.engine, async |p| {
                        p.filter(batch).await
                    })
                    .await?;
                for (&i, keep) in indices.iter().zip(&keep) {
                    if !keep {
                        fates[i] = Fate::Filtered;
                    }
                }
                indices.retain(|&i| matches!(fates[i], Fate::Keep));
            }
            if indices.is_empty() {
                continue;
            }
            let ctx = SubscriberContext {
                subscription_id: self.subscription.to_string(),
                subscription_name: self.subscription_name.clone(),
                topic: topic.to_string(),
            };
            let chain = self
                .policies
                .get_mut(topic)
                .into_iter()
                .chain(self.mandatory.as_mut());
            for slot in chain {
                if indices.is_empty() {
                    break;
                }
                let batch: Vec<Message> = indices
                    .iter()
                    .map(|&i| {
                        let mut m = message(&records[i]);
                        if let Some(value) = redactions.get(&i) {
                            m.value = value.clone();
                        }
                        m
                    })
                    .collect();
                let ctx = ctx.clone();
                let decisions = slot
                    .run(&self.registry, &self.engine, async |p| {
                        p.authorise(ctx, batch).await
                    })
                    .await?;
                for (&i, decision) in indices.iter().zip(decisions) {
                    match decision {
                        Decision::Allow => {}
                        Decision::Deny(reason) => {
                            tracing::debug!(subscription = %self.subscription, topic = %topic, offset = records[i].offset, reason = %reason, "Message denied by policy.");
                            fates[i] = Fate::Denied;
                        }
                        Decision::Redact(value) => {
                            redactions.insert(i, value);
                        }
                    }
                }
                indices.retain(|&i| matches!(fates[i], Fate::Keep));
            }
        }

        let (mut filtered, mut denied) = (0, 0);
        let mut kept = Vec::with_capacity(records.len());
        for (i, (record, fate)) in records.iter().zip(fates).enumerate() {
            let redacted = redactions.remove(&i);
            match fate {
                Fate::Keep => {
                    let mut record = record.clone();
                    if let Some(value) = redacted {
                        record.value = Some(value);
                        record.value_is_json = false;
                    }
                    kept.push(record);
                }
                Fate::Filtered => filtered += 1,
                Fate::Denied => denied += 1,
            }
        }
        Ok((Cow::Owned(kept), filtered, denied))
    }
}

/// A record as plugins see it: an absent value or header value is empty.
fn message(record: &Record) -> Message {
    Message {
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        timestamp: record.timestamp,
        key: record.key.clone(),
        value: record.value.clone().unwrap_or_default(),
        headers: record
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
            .collect(),
    }
}

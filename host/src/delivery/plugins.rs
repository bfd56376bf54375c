//! The plugin stages of a pipeline: filter and policy plugins per source
//! topic, and the serialiser plugin, each a [`PluginInstance`] owned by the
//! pipeline and called once per batch on tokio's blocking pool.
//!
//! This module turns plugin results and failures into outcomes per message;
//! it does not send, retry or commit (the pipeline does). The outcomes
//! (issue 4): a filter that fails sends its messages to the dead letter; a
//! policy that fails denies every message of its batch (fail closed); a
//! serialiser that fails fails the delivery attempt, which is retried.

use std::collections::HashMap;

use uuid::Uuid;

use super::record::Record;
use crate::domain::{PluginAttachment, SubscriptionSpec};
use crate::plugin::{
    CompiledPlugin, Decision, Message, PluginEngine, PluginError, PluginInstance, PluginRole,
    Serialised, SubscriberContext,
};
use crate::registry::{Registry, RegistryError};

/// Why an attached plugin could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no plugin {0} is uploaded; upload it with POST /1/Plugin")]
    Missing(String),
    #[error("plugin {plugin} is a {actual} plugin, not a {expected}")]
    WrongRole {
        plugin: String,
        actual: PluginRole,
        expected: PluginRole,
    },
    #[error("plugin {plugin}: {source}")]
    Plugin {
        plugin: String,
        #[source]
        source: PluginError,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Finds an attached plugin in the registry and compiles it (or takes it from
/// the engine's cache by sha256), checking it has the role it is attached as.
pub async fn load(
    registry: &Registry,
    engine: &PluginEngine,
    attachment: &PluginAttachment,
    role: PluginRole,
) -> Result<CompiledPlugin, LoadError> {
    let (name, version) = (attachment.name.as_str(), attachment.version.as_str());
    let plugin = attachment.to_string();
    let stored = registry
        .get_plugin(name, version)
        .await?
        .ok_or_else(|| LoadError::Missing(plugin.clone()))?;
    if stored.role != role {
        return Err(LoadError::WrongRole {
            plugin,
            actual: stored.role,
            expected: role,
        });
    }
    let compiled = match engine.compiled(role, &stored.sha256) {
        Some(compiled) => compiled,
        None => {
            let (_, wasm) = registry
                .plugin_with_wasm(name, version)
                .await?
                .ok_or_else(|| LoadError::Missing(plugin.clone()))?;
            engine.compile_async(role, wasm).await
        }
    };
    compiled.map_err(|source| LoadError::Plugin { plugin, source })
}

/// Loads an attached plugin and instantiates it with its configuration
/// (which runs its `init`), on the blocking pool.
pub async fn instantiate(
    registry: &Registry,
    engine: &PluginEngine,
    attachment: &PluginAttachment,
    role: PluginRole,
) -> Result<PluginInstance, LoadError> {
    let compiled = load(registry, engine, attachment, role).await?;
    let engine = engine.clone();
    let config = attachment.config.pairs().to_vec();
    let plugin = attachment.to_string();
    tokio::task::spawn_blocking(move || PluginInstance::new(&engine, &compiled, config))
        .await
        .map_err(|e| PluginError::Runtime(format!("instantiation task failed: {e}")))
        .and_then(|r| r)
        .map_err(|source| LoadError::Plugin { plugin, source })
}

/// One attached plugin's instance, moved to a blocking thread for each call.
struct Slot {
    /// `name@version`, for logs and dead-letter reasons.
    label: String,
    /// `None` only if a call's blocking task itself died (not on a trap: the
    /// instance rebuilds itself after those); the next call makes a new one.
    instance: Option<PluginInstance>,
    engine: PluginEngine,
    compiled: CompiledPlugin,
    config: Vec<(String, String)>,
}

impl Slot {
    fn new(attachment: &PluginAttachment, instance: PluginInstance, engine: &PluginEngine) -> Self {
        Slot {
            label: attachment.to_string(),
            compiled: instance.compiled().clone(),
            instance: Some(instance),
            engine: engine.clone(),
            config: attachment.config.pairs().to_vec(),
        }
    }

    async fn call<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut PluginInstance) -> Result<R, PluginError> + Send + 'static,
    ) -> Result<R, PluginError> {
        let instance = self.instance.take();
        let (engine, config) = (self.engine.clone(), self.config.clone());
        let compiled = self.compiled.clone();
        // The call blocks for up to the CPU deadline: never on an async worker.
        let joined = tokio::task::spawn_blocking(move || {
            let mut instance = match instance {
                Some(instance) => instance,
                None => match PluginInstance::new(&engine, &compiled, config) {
                    Ok(instance) => instance,
                    Err(error) => return (None, Err(error)),
                },
            };
            let result = f(&mut instance);
            (Some(instance), result)
        })
        .await;
        match joined {
            Ok((instance, result)) => {
                self.instance = instance;
                result
            }
            Err(e) => Err(PluginError::Runtime(format!(
                "plugin call task failed: {e}"
            ))),
        }
    }
}

/// What the filter and policy plugins made of a batch.
#[derive(Debug, Default)]
pub struct Screened {
    /// Messages to deliver, in batch order, redacted where a policy said so.
    pub kept: Vec<Record>,
    /// Removed by a filter plugin.
    pub filtered: usize,
    /// Refused by a policy plugin, or by a failing one.
    pub denied: usize,
    /// Messages whose filter plugin failed, with the reason: they go to the
    /// dead letter.
    pub failed: Vec<(Vec<Record>, String)>,
}

/// The plugins of one pipeline.
pub struct PluginStages {
    subscription: Uuid,
    subscription_name: String,
    filters: HashMap<String, Slot>,
    policies: HashMap<String, Slot>,
    serialiser: Option<Slot>,
}

enum Fate {
    Keep,
    Filtered,
    Denied,
    Failed(usize),
}

impl PluginStages {
    /// Instantiates every plugin the subscription attaches; the first that
    /// cannot be made ready is returned with the field that attaches it.
    pub async fn build(
        id: Uuid,
        spec: &SubscriptionSpec,
        registry: &Registry,
        engine: &PluginEngine,
    ) -> Result<Self, (String, LoadError)> {
        let mut stages = PluginStages {
            subscription: id,
            subscription_name: spec.name.as_str().to_string(),
            filters: HashMap::new(),
            policies: HashMap::new(),
            serialiser: None,
        };
        let slot =
            |attachment: &PluginAttachment, instance| Slot::new(attachment, instance, engine);
        for (i, source) in spec.source.iter().enumerate() {
            let topic = source.topic.as_str().to_string();
            if let Some(a) = &source.filter_plugin {
                let instance = instantiate(registry, engine, a, PluginRole::Filter)
                    .await
                    .map_err(|e| (format!("source[{i}].filter_plugin"), e))?;
                stages.filters.insert(topic.clone(), slot(a, instance));
            }
            if let Some(a) = &source.policy_plugin {
                let instance = instantiate(registry, engine, a, PluginRole::Policy)
                    .await
                    .map_err(|e| (format!("source[{i}].policy_plugin"), e))?;
                stages.policies.insert(topic, slot(a, instance));
            }
        }
        if let Some(a) = &spec.configuration.serialiser_plugin {
            let instance = instantiate(registry, engine, a, PluginRole::Serialiser)
                .await
                .map_err(|e| ("configuration.serialiser_plugin".to_string(), e))?;
            stages.serialiser = Some(slot(a, instance));
        }
        Ok(stages)
    }

    /// True when a filter or policy plugin may change a batch.
    pub fn screens(&self) -> bool {
        !self.filters.is_empty() || !self.policies.is_empty()
    }

    pub fn has_serialiser(&self) -> bool {
        self.serialiser.is_some()
    }

    /// Runs the filter, then the policy plugin of each topic on that topic's
    /// messages (one call per topic and plugin), and sorts the batch by outcome.
    pub async fn screen(&mut self, mut records: Vec<Record>) -> Screened {
        let mut topics: Vec<String> = Vec::new();
        for record in &records {
            if !topics.contains(&record.topic) {
                topics.push(record.topic.clone());
            }
        }
        let mut fates: Vec<Fate> = records.iter().map(|_| Fate::Keep).collect();
        let mut reasons: Vec<String> = Vec::new();
        for topic in topics {
            let mut indices: Vec<usize> = (0..records.len())
                .filter(|&i| records[i].topic == topic)
                .collect();
            if let Some(slot) = self.filters.get_mut(&topic) {
                let batch: Vec<Message> = indices.iter().map(|&i| message(&records[i])).collect();
                match slot.call(move |p| p.filter(&batch)).await {
                    Ok(keep) => {
                        for (&i, keep) in indices.iter().zip(&keep) {
                            if !keep {
                                fates[i] = Fate::Filtered;
                            }
                        }
                        indices.retain(|&i| matches!(fates[i], Fate::Keep));
                    }
                    Err(error) => {
                        tracing::warn!(subscription = %self.subscription, plugin = %slot.label, topic = %topic, error = %error, "Filter plugin failed; its messages go to the dead letter.");
                        reasons.push(format!("filter plugin {} failed: {error}", slot.label));
                        for &i in &indices {
                            fates[i] = Fate::Failed(reasons.len() - 1);
                        }
                        continue;
                    }
                }
            }
            if indices.is_empty() {
                continue;
            }
            if let Some(slot) = self.policies.get_mut(&topic) {
                let batch: Vec<Message> = indices.iter().map(|&i| message(&records[i])).collect();
                let ctx = SubscriberContext {
                    subscription_id: self.subscription.to_string(),
                    subscription_name: self.subscription_name.clone(),
                    topic: topic.clone(),
                };
                match slot.call(move |p| p.authorise(&ctx, &batch)).await {
                    Ok(decisions) => {
                        for (&i, decision) in indices.iter().zip(decisions) {
                            match decision {
                                Decision::Allow => {}
                                Decision::Deny(reason) => {
                                    tracing::debug!(subscription = %self.subscription, topic = %topic, offset = records[i].offset, reason = %reason, "Message denied by policy.");
                                    fates[i] = Fate::Denied;
                                }
                                Decision::Redact(value) => records[i].value = Some(value),
                            }
                        }
                    }
                    Err(error) => {
                        // Fail closed: a policy that cannot decide allows nothing.
                        tracing::warn!(subscription = %self.subscription, plugin = %slot.label, topic = %topic, messages = indices.len(), error = %error, "Policy plugin failed; denying its messages.");
                        for &i in &indices {
                            fates[i] = Fate::Denied;
                        }
                    }
                }
            }
        }

        let mut screened = Screened::default();
        let mut failed: Vec<Vec<Record>> = reasons.iter().map(|_| Vec::new()).collect();
        for (record, fate) in records.into_iter().zip(fates) {
            match fate {
                Fate::Keep => screened.kept.push(record),
                Fate::Filtered => screened.filtered += 1,
                Fate::Denied => screened.denied += 1,
                Fate::Failed(reason) => failed[reason].push(record),
            }
        }
        screened.failed = failed.into_iter().zip(reasons).collect();
        screened
    }

    /// Serialises a batch with the serialiser plugin; `None` when there is
    /// none (the built-in JSON body applies). `Err` says why it failed.
    pub async fn serialise(&mut self, records: &[Record]) -> Option<Result<Serialised, String>> {
        let slot = self.serialiser.as_mut()?;
        let batch: Vec<Message> = records.iter().map(message).collect();
        let result = slot.call(move |p| p.serialise(&batch)).await;
        Some(result.map_err(|error| {
            tracing::warn!(subscription = %self.subscription, plugin = %slot.label, error = %error, "Serialiser plugin failed.");
            format!("serialiser plugin {} failed: {error}", slot.label)
        }))
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

//! From an attachment (`name`, `version`, `config`) to a running plugin: find
//! the plugin in the registry, check it has the role it is attached as,
//! compile it (or take it from the cache) and resolve its limits. Used by the
//! API, which instantiates once to check an attachment, and by the
//! pipelines, which keep a [`PluginInstance`] per attachment.

use uuid::Uuid;

use super::engine::{CompiledPlugin, PluginEngine};
use super::error::PluginError;
use super::instance::PluginInstance;
use super::limits::PluginLimits;
use crate::domain::{PluginAttachment, PluginRole};
use crate::registry::{Registry, RegistryError};

/// Why an attached plugin could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
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

/// An attached plugin, compiled, with the limits its instances run under.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub compiled: CompiledPlugin,
    pub limits: PluginLimits,
}

impl Loaded {
    /// An instance that starts on its first call (see [`PluginInstance::deferred`]).
    pub fn deferred(&self, engine: &PluginEngine, attachment: &PluginAttachment) -> PluginInstance {
        PluginInstance::deferred(
            engine,
            &self.compiled,
            attachment.init_config(),
            self.limits,
        )
    }
}

/// Finds an attached plugin in the registry as `tenant` sees it (its own,
/// else the shared one; `None`: the admin, shared only) and compiles it (or
/// takes it from the engine's cache by sha256), checking it has the role it
/// is attached as.
pub async fn load(
    registry: &Registry,
    engine: &PluginEngine,
    tenant: Option<Uuid>,
    attachment: &PluginAttachment,
    role: PluginRole,
) -> Result<Loaded, AttachmentError> {
    let (name, version) = (attachment.name.as_str(), attachment.version.as_str());
    let plugin = attachment.to_string();
    let stored = registry
        .resolve_plugin(tenant, name, version)
        .await?
        .ok_or_else(|| AttachmentError::Missing(plugin.clone()))?;
    if stored.role != role {
        return Err(AttachmentError::WrongRole {
            plugin,
            actual: stored.role,
            expected: role,
        });
    }
    let compiled = match engine.compiled(role, &stored.sha256) {
        Some(compiled) => compiled,
        None => {
            let (_, wasm) = registry
                .plugin_with_wasm(stored.owner, name, version)
                .await?
                .ok_or_else(|| AttachmentError::Missing(plugin.clone()))?;
            let compiled = engine.compile(role, wasm).await;
            // These bytes are stored: the compiled code may be kept.
            if let Ok(compiled) = &compiled {
                engine.remember(compiled);
            }
            compiled
        }
    };
    let compiled = compiled.map_err(|source| AttachmentError::Plugin {
        plugin: plugin.clone(),
        source,
    })?;
    Ok(Loaded {
        compiled,
        limits: engine.limits().resolve(stored.limits),
    })
}

/// Loads an attached plugin and instantiates it with its configuration
/// (which runs its `init`), within the plugin's limits.
pub async fn instantiate(
    registry: &Registry,
    engine: &PluginEngine,
    tenant: Option<Uuid>,
    attachment: &PluginAttachment,
    role: PluginRole,
) -> Result<PluginInstance, AttachmentError> {
    let loaded = load(registry, engine, tenant, attachment, role).await?;
    PluginInstance::new(
        engine,
        &loaded.compiled,
        attachment.init_config(),
        loaded.limits,
    )
    .await
    .map_err(|source| AttachmentError::Plugin {
        plugin: attachment.to_string(),
        source,
    })
}

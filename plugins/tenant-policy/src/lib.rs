//! `tenant-policy`: a policy that only lets a subscriber see its own
//! tenant's messages, with listed fields removed.
//!
//! Configuration:
//! - `tenant` (required): the tenant this subscription belongs to.
//! - `tenant-field` (optional, default `tenant`): where the message's tenant
//!   is, as a dotted path (`meta.tenant`) or JSON Pointer (`/meta/tenant`).
//! - `redact` (optional): comma-separated paths of fields to remove from
//!   allowed messages, e.g. `customer.email,card`.
//!
//! Decisions, per message: `deny` when the value is not a JSON object, has
//! no tenant field, or names another tenant (fail closed: an unreadable
//! message is never delivered to a tenant); `redact` with the new value when
//! a listed field was present; `allow` otherwise.

use serde_json::Value;
use wasmhook_guest_sdk::{Config, Decision, Message, Policy, SubscriberContext, config};
use wasmhook_plugin_common::{FieldPath, scalar_text};

/// The parsed configuration.
#[derive(Debug)]
pub struct TenantPolicy {
    tenant: String,
    tenant_field: FieldPath,
    redact: Vec<FieldPath>,
}

impl TenantPolicy {
    fn decide(&self, message: &Message) -> Decision {
        let mut value = match serde_json::from_slice::<Value>(&message.value) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Decision::Deny("value is not a JSON object".into()),
        };
        let Some(tenant) = self.tenant_field.get(&value).and_then(scalar_text) else {
            return Decision::Deny(format!("no tenant at `{}`", self.tenant_field));
        };
        if tenant != self.tenant {
            // The other tenant's name is left out of the reason: reasons are
            // logged against this subscriber.
            return Decision::Deny("message belongs to another tenant".into());
        }
        // Every path must be tried: `|` rather than `||`, which would stop at the first.
        let removed = self
            .redact
            .iter()
            .fold(false, |any, path| path.remove(&mut value) | any);
        if !removed {
            return Decision::Allow;
        }
        match serde_json::to_vec(&value) {
            Ok(bytes) => Decision::Redact(bytes),
            Err(e) => Decision::Deny(format!("re-encoding redacted value: {e}")),
        }
    }
}

impl Policy for TenantPolicy {
    fn init(config: Config) -> Result<Self, String> {
        config::reject_unknown(&config, &["tenant", "tenant-field", "redact"])?;
        let tenant = config::require(&config, "tenant")?.trim().to_string();
        if tenant.is_empty() {
            return Err("`tenant` must not be empty".into());
        }
        let tenant_field =
            FieldPath::parse(config::get(&config, "tenant-field").unwrap_or("tenant"))?;
        let redact = config::list(&config, "redact")
            .iter()
            .map(|p| FieldPath::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TenantPolicy {
            tenant,
            tenant_field,
            redact,
        })
    }

    fn authorise(
        &mut self,
        _ctx: &SubscriberContext,
        batch: &[Message],
    ) -> Result<Vec<Decision>, String> {
        Ok(batch.iter().map(|m| self.decide(m)).collect())
    }
}

wasmhook_guest_sdk::export_policy!(TenantPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin(pairs: &[(&str, &str)]) -> Result<TenantPolicy, String> {
        TenantPolicy::init(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn ctx() -> SubscriberContext {
        SubscriberContext {
            subscription_id: "sub-1".into(),
            subscription_name: "acme orders".into(),
            topic: "orders".into(),
        }
    }

    fn msg(value: &str) -> Message {
        Message {
            topic: "orders".into(),
            partition: 0,
            offset: 1,
            timestamp: None,
            key: None,
            value: value.as_bytes().to_vec(),
            headers: vec![],
        }
    }

    fn decide(p: &mut TenantPolicy, values: &[&str]) -> Vec<Decision> {
        let batch: Vec<Message> = values.iter().map(|v| msg(v)).collect();
        p.authorise(&ctx(), &batch).unwrap()
    }

    #[test]
    fn other_tenants_and_unreadable_messages_are_denied() {
        let mut p = plugin(&[("tenant", "acme")]).unwrap();
        let out = decide(
            &mut p,
            &[
                r#"{"tenant":"acme"}"#,
                r#"{"tenant":"globex"}"#,
                r#"{"x":1}"#,
                "[1]",
                "nope",
            ],
        );
        assert_eq!(out[0], Decision::Allow);
        assert_eq!(
            out[1],
            Decision::Deny("message belongs to another tenant".into())
        );
        assert!(matches!(&out[2], Decision::Deny(r) if r.contains("no tenant")));
        assert!(matches!(&out[3], Decision::Deny(r) if r.contains("not a JSON object")));
        assert!(matches!(&out[4], Decision::Deny(r) if r.contains("not a JSON object")));
    }

    #[test]
    fn listed_fields_are_removed_from_allowed_messages() {
        let mut p = plugin(&[
            ("tenant", "acme"),
            ("tenant-field", "/meta/tenant"),
            ("redact", "customer.email, card"),
        ])
        .unwrap();
        let out = decide(
            &mut p,
            &[
                r#"{"meta":{"tenant":"acme"},"customer":{"email":"a@b","name":"A"},"card":"4111","total":3}"#,
                r#"{"meta":{"tenant":"acme"},"total":4}"#,
            ],
        );
        let Decision::Redact(bytes) = &out[0] else {
            panic!("expected redact, got {:?}", out[0]);
        };
        let redacted: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(
            redacted,
            json!({"meta":{"tenant":"acme"},"customer":{"name":"A"},"total":3})
        );
        assert_eq!(out[1], Decision::Allow);
    }

    #[test]
    fn numeric_tenants_compare_by_their_text() {
        let mut p = plugin(&[("tenant", "42")]).unwrap();
        assert_eq!(decide(&mut p, &[r#"{"tenant":42}"#]), [Decision::Allow]);
    }

    #[test]
    fn bad_configuration_is_rejected_with_a_reason() {
        assert!(plugin(&[]).unwrap_err().contains("tenant"));
        assert!(plugin(&[("tenant", " ")]).unwrap_err().contains("empty"));
        assert!(
            plugin(&[("tenant", "a"), ("redact", "a..b")])
                .unwrap_err()
                .contains("invalid field path")
        );
        assert!(
            plugin(&[("tenant", "a"), ("tenants", "b")])
                .unwrap_err()
                .contains("tenants")
        );
    }
}

//! Standard Webhooks signing: a per-subscription secret and the `webhook-*` headers.
//!
//! The signature is HMAC-SHA256 over `{id}.{timestamp}.{body}` with the secret's
//! key bytes, sent as `v1,<base64>` (<https://www.standardwebhooks.com/>), so any
//! Standard Webhooks verifier checks it. While a rotated-out secret is still
//! in its overlap window, both signatures are sent, space-separated, as the
//! specification allows, so receivers can switch secrets without a gap.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A signing secret in its `whsec_<base64 key>` form.
#[derive(Clone)]
pub struct SigningSecret {
    text: String,
    key: Vec<u8>,
}

impl SigningSecret {
    /// A fresh 32-byte key from the OS's generator.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self {
            text: format!("{PREFIX}{}", STANDARD.encode(&key)),
            key,
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("a signing secret starts with {PREFIX}"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|e| format!("a signing secret is base64 after {PREFIX}: {e}"))?;
        Ok(Self {
            text: text.to_string(),
            key,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The `webhook-signature` value for one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The secret a rotation replaced, still signing until `expires_at`.
#[derive(Debug, Clone)]
pub struct PreviousSecret {
    pub secret: SigningSecret,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// The `webhook-signature` value: the current secret's signature, then the
/// previous secret's while `now` is before its expiry.
pub fn signature_header(
    current: &SigningSecret,
    previous: Option<&PreviousSecret>,
    id: &str,
    timestamp: i64,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let mut header = current.sign(id, timestamp, body);
    if let Some(previous) = previous.filter(|p| now < p.expires_at) {
        header.push(' ');
        header.push_str(&previous.secret.sign(id, timestamp, body));
    }
    header
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(********)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The example in the Standard Webhooks specification.
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_previous_secret_signs_too_until_it_expires() {
        let (current, old) = (SigningSecret::generate(), SigningSecret::generate());
        let now = chrono::Utc::now();
        let previous = PreviousSecret {
            secret: old.clone(),
            expires_at: now + chrono::Duration::seconds(1),
        };
        let both = signature_header(&current, Some(&previous), "m", 1, b"{}", now);
        assert_eq!(
            both,
            format!(
                "{} {}",
                current.sign("m", 1, b"{}"),
                old.sign("m", 1, b"{}")
            )
        );
        let later = now + chrono::Duration::seconds(1);
        let one = signature_header(&current, Some(&previous), "m", 1, b"{}", later);
        assert_eq!(one, current.sign("m", 1, b"{}"));
        assert_eq!(signature_header(&current, None, "m", 1, b"{}", now), one);
        assert!(!format!("{previous:?}").contains(old.as_str()));
    }

    #[test]
    fn generated_secrets_parse_back() {
        let s = SigningSecret::generate();
        assert_eq!(SigningSecret::parse(s.as_str()).unwrap().key, s.key);
        assert!(SigningSecret::parse("nope").is_err());
        assert_eq!(format!("{s:?}"), "SigningSecret(********)");
    }
}

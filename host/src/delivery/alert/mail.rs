//! The email channel: one SMTP transport (plain, STARTTLS or implicit TLS,
//! optionally authenticated), built and checked once at start-up.
//!
//! Certificates are always verified, against the public roots plus the CA
//! file the operator names (`--smtp-ca-file`). The password is read here,
//! once, and never logged.

use std::path::Path;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::AlertError;
use crate::config::{SmtpCredentials, SmtpPassword, SmtpSettings, SmtpTls};
use crate::domain::EmailAddress;

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the alert email could not be built: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("the SMTP server did not take the alert email: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

impl MailError {
    /// A refusal that another attempt would get again (a 5xx, a bad message).
    pub fn is_permanent(&self) -> bool {
        match self {
            MailError::Build(_) => true,
            MailError::Smtp(error) => error.is_permanent(),
        }
    }
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(settings: &SmtpSettings) -> Result<Self, AlertError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|_| AlertError::BadFrom(settings.from.clone()))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .timeout(Some(SMTP_TIMEOUT));
        let tls = || tls_parameters(&settings.host, settings.ca_file.as_deref());
        builder = match settings.tls {
            SmtpTls::None => builder.tls(Tls::None),
            SmtpTls::Starttls => builder.tls(Tls::Required(tls()?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls()?)),
        };
        if let Some(credentials) = &settings.credentials {
            if settings.tls == SmtpTls::None {
                tracing::warn!(
                    "The SMTP password is sent without TLS (--smtp-tls none): use a relay on a trusted network only."
                );
            }
            builder = builder.credentials(credentials_of(credentials)?);
        }
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }

    pub async fn send(
        &self,
        to: &[EmailAddress],
        subject: &str,
        text: String,
    ) -> Result<(), MailError> {
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for address in to {
            match address.as_str().parse::<Mailbox>() {
                Ok(mailbox) => builder = builder.to(mailbox),
                Err(_) => tracing::warn!(
                    address = address.as_str(),
                    "Skipping an alert address lettre cannot use."
                ),
            }
        }
        let message = builder.body(text)?;
        self.transport.send(message).await?;
        Ok(())
    }
}

/// Verification against the public roots and, when given, the CA file's.
fn tls_parameters(host: &str, ca_file: Option<&Path>) -> Result<TlsParameters, AlertError> {
    let mut builder = TlsParameters::builder(host.to_string());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| AlertError::CaFile {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |problem: String| AlertError::BadCa {
            path: path.to_path_buf(),
            problem,
        };
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| bad(error.to_string()))?;
        // lettre would take a file without any silently, and trust nothing more.
        if certificates.is_empty() {
            return Err(bad("no BEGIN CERTIFICATE block".into()));
        }
        for der in certificates {
            let certificate =
                Certificate::from_der(der.to_vec()).map_err(|error| bad(error.to_string()))?;
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build_rustls()
        .map_err(|error| AlertError::Tls(error.to_string()))
}

fn credentials_of(credentials: &SmtpCredentials) -> Result<Credentials, AlertError> {
    let password = match &credentials.password {
        None => return Err(AlertError::NoPassword),
        Some(SmtpPassword::Text(text)) => text.0.clone(),
        Some(SmtpPassword::File(path)) => read_password(path)?,
    };
    Ok(Credentials::new(credentials.user.clone(), password))
}

/// The file's text without its trailing line end (`echo pw > file` adds one).
fn read_password(path: &Path) -> Result<String, AlertError> {
    let text = std::fs::read_to_string(path).map_err(|source| AlertError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(AlertError::EmptyPassword(path.to_path_buf()));
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::HiddenText;

    fn settings(tls: SmtpTls) -> SmtpSettings {
        SmtpSettings {
            tls,
            ..SmtpSettings::plain("mail.example", 25, "wasmhook@example.com")
        }
    }

    #[tokio::test]
    async fn every_tls_mode_builds_with_verification_on() {
        for tls in [SmtpTls::None, SmtpTls::Starttls, SmtpTls::Tls] {
            assert!(Mailer::new(&settings(tls)).is_ok(), "{tls:?}");
        }
    }

    #[tokio::test]
    async fn start_up_names_what_is_wrong_with_the_smtp_settings() {
        let mut bad = settings(SmtpTls::Starttls);
        bad.from = "not a mailbox".into();
        assert!(matches!(Mailer::new(&bad), Err(AlertError::BadFrom(_))));

        let mut bad = settings(SmtpTls::Starttls);
        bad.ca_file = Some("/nonexistent/ca.pem".into());
        let error = Mailer::new(&bad).err().unwrap().to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        bad.ca_file = Some(garbage);
        assert!(matches!(Mailer::new(&bad), Err(AlertError::BadCa { .. })));

        let mut bad = settings(SmtpTls::Starttls);
        bad.credentials = Some(SmtpCredentials {
            user: "alerts".into(),
            password: None,
        });
        assert!(matches!(Mailer::new(&bad), Err(AlertError::NoPassword)));

        let empty = dir.path().join("password");
        std::fs::write(&empty, "\n").unwrap();
        bad.credentials = Some(SmtpCredentials {
            user: "alerts".into(),
            password: Some(SmtpPassword::File(empty)),
        });
        assert!(matches!(
            Mailer::new(&bad),
            Err(AlertError::EmptyPassword(_))
        ));
    }

    #[test]
    fn a_password_file_loses_its_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, " s3cret \r\n").unwrap();
        assert_eq!(read_password(&path).unwrap(), " s3cret ");
        let credentials = SmtpCredentials {
            user: "u".into(),
            password: Some(SmtpPassword::Text(HiddenText("hunter2".into()))),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
        assert!(credentials_of(&credentials).is_ok());
    }
}

//! Secrets at rest: the platform's [`SecretKey`] and the sealed text form of a
//! secret value (`enc:v1:<base64(nonce || ciphertext)>`).
//!
//! Values are sealed with XChaCha20-Poly1305 under a random 24-byte nonce each,
//! with associated data naming where the value belongs (a subscription and a
//! field), so a sealed value copied to another row or field does not open.
//! Where the key comes from (a variable, a file, or one generated beside the
//! SQLite file) is decided here too; what is sealed, and when, is the
//! registry's business.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroize;

/// What every sealed value starts with; the version names the algorithm.
const SEALED_PREFIX: &str = "enc:v1:";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// Why a sealed value could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the value is not sealed (no enc:v1: prefix)")]
    NotSealed,
    #[error("the sealed value is corrupt: {0}")]
    Corrupt(&'static str),
    /// Wrong key, tampered ciphertext or a value moved from where it was sealed:
    /// the AEAD cannot tell these apart, and neither can we.
    #[error(
        "the sealed value does not open with this key (another key sealed it, or it was altered)"
    )]
    WrongKey,
}

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{what} must be the base64 of 32 bytes (make one with `openssl rand -base64 32`): {problem}"
    )]
    Malformed { what: String, problem: String },
    #[error("could not read the secret key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not create the secret key file {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a PostgreSQL registry needs a secret key to seal the secrets it stores: set \
         WASMHOOK_SECRET_KEY (the base64 of 32 random bytes, e.g. `openssl rand -base64 32`), \
         the same on every host, or --secret-key-file / WASMHOOK_SECRET_KEY_FILE"
    )]
    NoneForPostgres,
    #[error(
        "cannot tell where the SQLite database file of {0:?} is, to keep its secret key beside it; set WASMHOOK_SECRET_KEY"
    )]
    NoSqliteFile(String),
}

/// The 32-byte key that seals every secret the registry stores.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_BYTES]);

impl SecretKey {
    /// A fresh key from the OS's generator.
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    /// Parses the base64 form (surrounding whitespace ignored); `what` names
    /// the source in the error, which never repeats the text.
    pub fn from_base64(text: &str, what: &str) -> Result<Self, KeyError> {
        let malformed = |problem: String| KeyError::Malformed {
            what: what.to_string(),
            problem,
        };
        let mut bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| malformed("it is not base64".into()))?;
        let key = <[u8; KEY_BYTES]>::try_from(bytes.as_slice())
            .map_err(|_| malformed(format!("it decodes to {} bytes", bytes.len())));
        bytes.zeroize();
        key.map(Self)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&self.0))
    }

    /// Seals `plaintext` for the place named by `context` (e.g.
    /// `subscription:<id>:signing_secret`), under a fresh random nonce.
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut out = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a value [`seal`](Self::seal)ed for the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, SealError> {
        let encoded = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealError::NotSealed)?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SealError::Corrupt("not base64"))?;
        if bytes.len() < NONCE_BYTES {
            return Err(SealError::Corrupt("shorter than its nonce"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plaintext = self
            .cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::WrongKey)?;
        String::from_utf8(plaintext).map_err(|_| SealError::Corrupt("not UTF-8 inside"))
    }
}

/// True when `text` has the sealed form (whether or not it opens).
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED_PREFIX)
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(********)")
    }
}

/// Text that must not be shown (a key given on the command line or in the
/// environment, before it is parsed): `Debug` masks it.
#[derive(Clone)]
pub struct HiddenText(pub String);

impl fmt::Debug for HiddenText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// Where the secret key was configured to come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The key itself (tests build settings this way).
    Key(SecretKey),
    /// `WASMHOOK_SECRET_KEY`: base64 text, parsed at start-up.
    Base64(HiddenText),
    /// `--secret-key-file`: a file holding the base64 text.
    File(PathBuf),
}

/// Where the key in use came from, for the start-up banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Configured,
    /// Generated now beside the SQLite file.
    Generated(PathBuf),
    /// Read from the file beside the SQLite file, generated by an earlier start.
    Beside(PathBuf),
    /// An in-memory SQLite registry: a key that lives as long as it does.
    Ephemeral,
}

impl KeyOrigin {
    /// The banner line, when there is something to say.
    pub fn banner(&self) -> Option<String> {
        match self {
            KeyOrigin::Configured => None,
            KeyOrigin::Generated(path) => Some(format!(
                "Secret key GENERATED beside the SQLite file: {} (mode 0600; keep it with the \
                 database: stored secrets cannot be read without it. In production set \
                 WASMHOOK_SECRET_KEY)",
                path.display()
            )),
            KeyOrigin::Beside(path) => Some(format!(
                "Secret key read from beside the SQLite file: {}",
                path.display()
            )),
            KeyOrigin::Ephemeral => {
                Some("Secret key generated in memory, like the registry itself".to_string())
            }
        }
    }
}

/// The key to use: the configured one, else (SQLite only) the one kept beside
/// the database file, generated on first start.
pub fn resolve_key(
    source: Option<&KeySource>,
    database_url: &str,
) -> Result<(SecretKey, KeyOrigin), KeyError> {
    match source {
        Some(KeySource::Key(key)) => Ok((key.clone(), KeyOrigin::Configured)),
        Some(KeySource::Base64(text)) => Ok((
            SecretKey::from_base64(&text.0, "WASMHOOK_SECRET_KEY")?,
            KeyOrigin::Configured,
        )),
        Some(KeySource::File(path)) => Ok((read_key_file(path)?, KeyOrigin::Configured)),
        None if database_url.starts_with("sqlite:") => match sqlite_key_path(database_url) {
            SqliteFile::InMemory => Ok((SecretKey::generate(), KeyOrigin::Ephemeral)),
            SqliteFile::Unknown => Err(KeyError::NoSqliteFile(database_url.to_string())),
            SqliteFile::Path(path) => key_beside(&path),
        },
        None => Err(KeyError::NoneForPostgres),
    }
}

fn read_key_file(path: &Path) -> Result<SecretKey, KeyError> {
    let mut text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let key = SecretKey::from_base64(&text, &format!("the secret key file {}", path.display()));
    text.zeroize();
    key
}

/// Reads the key file beside the database, or creates it (0600) if there is
/// none; of two hosts creating it at once, one wins and the other reads it.
fn key_beside(path: &Path) -> Result<(SecretKey, KeyOrigin), KeyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            let key = SecretKey::generate();
            let mut text = key.to_base64();
            text.push('\n');
            let written = file
                .write_all(text.as_bytes())
                .and_then(|()| file.sync_all());
            text.zeroize();
            written.map_err(|source| KeyError::Create {
                path: path.to_path_buf(),
                source,
            })?;
            Ok((key, KeyOrigin::Generated(path.to_path_buf())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok((read_key_file(path)?, KeyOrigin::Beside(path.to_path_buf())))
        }
        Err(source) => Err(KeyError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SqliteFile {
    InMemory,
    Unknown,
    /// Where its key file goes: `<database file>.key`.
    Path(PathBuf),
}

/// `sqlite://data/wasmhook.db?mode=rwc` → `data/wasmhook.db.key`.
fn sqlite_key_path(url: &str) -> SqliteFile {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (file, query) = rest.split_once('?').unwrap_or((rest, ""));
    if file == ":memory:" || file.is_empty() || query.split('&').any(|p| p == "mode=memory") {
        return if file.is_empty() {
            SqliteFile::Unknown
        } else {
            SqliteFile::InMemory
        };
    }
    let decoded = percent_decode(file);
    let mut path = decoded.into_os_string();
    path.push(".key");
    SqliteFile::Path(PathBuf::from(path))
}

/// sqlx reads the URL's path percent-decoded; the key file must sit beside
/// the same file.
fn percent_decode(text: &str) -> PathBuf {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(text).collect();
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_and_context() {
        let key = SecretKey::generate();
        let sealed = key.seal("Bearer s3cret", "subscription:1:header");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            key.open(&sealed, "subscription:1:header").unwrap(),
            "Bearer s3cret"
        );
        // A fresh nonce each time: equal secrets do not look equal at rest.
        assert_ne!(sealed, key.seal("Bearer s3cret", "subscription:1:header"));
    }

    #[test]
    fn another_key_is_refused() {
        let sealed = SecretKey::generate().seal("x", "c");
        assert_eq!(
            SecretKey::generate().open(&sealed, "c"),
            Err(SealError::WrongKey)
        );
    }

    #[test]
    fn a_tampered_value_is_refused() {
        let key = SecretKey::generate();
        let sealed = key.seal("hello", "c");
        let mut bytes = STANDARD
            .decode(sealed.strip_prefix(SEALED_PREFIX).unwrap())
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("{SEALED_PREFIX}{}", STANDARD.encode(&bytes));
        assert_eq!(key.open(&tampered, "c"), Err(SealError::WrongKey));
        assert_eq!(
            key.open("enc:v1:AAAA", "c"),
            Err(SealError::Corrupt("shorter than its nonce"))
        );
        assert_eq!(
            key.open("enc:v1:!!", "c"),
            Err(SealError::Corrupt("not base64"))
        );
        assert_eq!(key.open("plain", "c"), Err(SealError::NotSealed));
    }

    #[test]
    fn a_value_moved_to_another_place_is_refused() {
        let key = SecretKey::generate();
        let sealed = key.seal("whsec_x", "subscription:a:signing_secret");
        assert_eq!(
            key.open(&sealed, "subscription:b:signing_secret"),
            Err(SealError::WrongKey)
        );
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes_without_echoing_the_text() {
        let key = SecretKey::generate();
        assert_eq!(
            SecretKey::from_base64(&format!(" {}\n", key.to_base64()), "k").unwrap(),
            key
        );
        let short = STANDARD.encode([7u8; 16]);
        let error = SecretKey::from_base64(&short, "WASMHOOK_SECRET_KEY")
            .unwrap_err()
            .to_string();
        assert!(error.contains("WASMHOOK_SECRET_KEY"), "{error}");
        assert!(error.contains("16 bytes"), "{error}");
        assert!(!error.contains(&short), "{error}");
        assert!(SecretKey::from_base64("not base64!", "k").is_err());
        assert_eq!(format!("{key:?}"), "SecretKey(********)");
        assert!(!format!("{:?}", KeySource::Key(key.clone())).contains(&key.to_base64()));
        assert_eq!(
            format!("{:?}", KeySource::Base64(HiddenText("abc".into()))),
            "Base64(********)"
        );
    }

    #[test]
    fn the_key_file_sits_beside_the_sqlite_file() {
        assert_eq!(
            sqlite_key_path("sqlite://data/wasmhook.db?mode=rwc"),
            SqliteFile::Path("data/wasmhook.db.key".into())
        );
        assert_eq!(
            sqlite_key_path("sqlite:///var/lib/w h.db"),
            SqliteFile::Path("/var/lib/w h.db.key".into())
        );
        assert_eq!(
            sqlite_key_path("sqlite:///tmp/a%20b.db"),
            SqliteFile::Path("/tmp/a b.db.key".into())
        );
        assert_eq!(sqlite_key_path("sqlite::memory:"), SqliteFile::InMemory);
        assert_eq!(
            sqlite_key_path("sqlite://x.db?mode=memory"),
            SqliteFile::InMemory
        );
    }

    #[test]
    fn without_a_key_sqlite_generates_one_beside_its_file_and_reuses_it() {
        let dir = tempfile_dir();
        let url = format!("sqlite://{}", dir.join("w.db").display());
        let (first, origin) = resolve_key(None, &url).unwrap();
        let path = dir.join("w.db.key");
        assert_eq!(origin, KeyOrigin::Generated(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (second, origin) = resolve_key(None, &url).unwrap();
        assert_eq!(origin, KeyOrigin::Beside(path.clone()));
        assert_eq!(first, second);
        let (third, _) = resolve_key(Some(&KeySource::File(path)), "postgres://h/db").unwrap();
        assert_eq!(first, third);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_a_key_postgresql_refuses_to_start() {
        let error = resolve_key(None, "postgres://u@h/db").unwrap_err();
        assert!(error.to_string().contains("set WASMHOOK_SECRET_KEY"));
        let error = resolve_key(
            Some(&KeySource::Base64(HiddenText("c2hvcnQ=".into()))),
            "postgres://u@h/db",
        )
        .unwrap_err();
        assert!(error.to_string().contains("5 bytes"), "{error}");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wasmhook-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

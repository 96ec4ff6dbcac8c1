//! Authentication: who may connect, and as whom.
//!
//! - [`Authenticator`] is the hook an embedding program can replace.
//! - [`ConfiguredAuth`] is the built-in one, from the `[auth]` section: anonymous access,
//!   a password file of argon2id hashes (`password_file.rs`) and JWT bearer tokens
//!   (`jwt.rs`).
//! - [`LoginBackoff`] slows down password guessing per IP address.
//!
//! Authorization (who may use which topic) is in `acl.rs`.

pub mod acl;
mod backoff;
mod jwt;
pub mod password_file;

use std::net::SocketAddr;

use parking_lot::RwLock;

pub use backoff::LoginBackoff;
pub use jwt::JwtVerifier;
pub use password_file::PasswordFile;

/// What a client presented in CONNECT.
pub struct AuthRequest<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
}

/// What an accepted client may do beyond the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The identity to use instead of the CONNECT username (a token's `sub`).
    pub username: Option<String>,
    /// Unix seconds after which the connection is closed (a token's `exp`):
    /// 5.0 DISCONNECT 0xA0 Maximum connect time.
    pub expires_unix: Option<u64>,
    /// The rooms this client may join, exactly; `None` follows the room
    /// configuration.
    pub rooms: Option<Vec<String>>,
}

/// The answer to a CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthDecision {
    Allow(Grant),
    /// 5.0 CONNACK 0x86, 3.1.1 return code 4.
    BadCredentials,
    /// 5.0 CONNACK 0x87, 3.1.1 return code 5.
    NotAuthorized,
}

/// Decides whether a CONNECT may proceed. Called on a blocking thread when
/// the client sent a password (hash checks are slow on purpose).
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision;

    /// Re-reads files (password file, keys) on SIGHUP; errors are logged
    /// and the old state stays.
    fn reload(&self) {}
}

/// The simplest policy: anyone, or anyone with a username.
pub struct AnonymousPolicy {
    pub allow_anonymous: bool,
}

impl Authenticator for AnonymousPolicy {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision {
        if request.username.is_none() && !self.allow_anonymous {
            AuthDecision::NotAuthorized
        } else {
            AuthDecision::Allow(Grant::default())
        }
    }
}

/// The `[auth]` configuration at work.
pub struct ConfiguredAuth {
    allow_anonymous: bool,
    passwords: Option<RwLock<PasswordFile>>,
    jwt: Option<JwtVerifier>,
}

impl ConfiguredAuth {
    /// Loads the password file and key named by the configuration; the
    /// error names the file at fault.
    pub fn load(config: &crate::config::AuthConfig, allow_anonymous: bool) -> Result<Self, String> {
        let passwords = match &config.password_file {
            Some(path) => Some(RwLock::new(PasswordFile::load(path)?)),
            None => None,
        };
        let jwt = match (&config.jwt_secret, &config.jwt_public_key) {
            (Some(_), Some(_)) => {
                return Err("set `auth.jwt_secret` or `auth.jwt_public_key`, not both".into())
            }
            (Some(secret), None) => Some(JwtVerifier::hs256(secret, &config.jwt_rooms_claim)),
            (None, Some(path)) => Some(JwtVerifier::public_key(path, &config.jwt_rooms_claim)?),
            (None, None) => None,
        };
        Ok(ConfiguredAuth {
            allow_anonymous,
            passwords,
            jwt,
        })
    }
}

impl Authenticator for ConfiguredAuth {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision {
        if let (Some(jwt), Some(password)) = (&self.jwt, request.password) {
            if jwt::looks_like_jwt(password) {
                let token = std::str::from_utf8(password).unwrap_or_default();
                return match jwt.verify(token) {
                    // A username, if given, must be the token's subject.
                    Some(grant)
                        if request
                            .username
                            .is_none_or(|u| u.is_empty() || u == grant.username) =>
                    {
                        AuthDecision::Allow(Grant {
                            username: Some(grant.username),
                            expires_unix: Some(grant.expires_unix),
                            rooms: grant.rooms,
                        })
                    }
                    _ => AuthDecision::BadCredentials,
                };
            }
        }
        match (&self.passwords, request.username, request.password) {
            (Some(file), Some(user), Some(password)) => {
                if file.read().verify(user, password) {
                    AuthDecision::Allow(Grant::default())
                } else {
                    AuthDecision::BadCredentials
                }
            }
            // A password file is configured: a username without a
            // password (or a password for no user) does not get in.
            (Some(_), Some(_), None) | (Some(_), None, Some(_)) => AuthDecision::BadCredentials,
            (_, None, None) if !self.allow_anonymous => AuthDecision::NotAuthorized,
            (None, _, _) if self.jwt.is_some() && !self.allow_anonymous => AuthDecision::BadCredentials,
            _ => AuthDecision::Allow(Grant::default()),
        }
    }

    fn reload(&self) {
        if let Some(file) = &self.passwords {
            let path = file.read().path.clone();
            match PasswordFile::load(&path) {
                Ok(fresh) => {
                    *file.write() = fresh;
                    tracing::info!(path = %path.display(), "password file reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "password file reload failed; the old one stays in use")
                }
            }
        }
    }
}

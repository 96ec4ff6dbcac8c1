//! Authentication: who may connect, and as whom.
//!
//! - [`Authenticator`] is the hook an embedding program can replace.
//! - [`ConfiguredAuth`] is the built-in one, from the `[auth]` section: anonymous access,
//!   a password file of argon2id hashes (`password_file.rs`) and JWT bearer tokens
//!   (`jwt.rs`).
//! - [`LoginBackoff`] slows down password guessing per IP address.
//!
//! Authorization: `acl.rs` holds the topic rules, and `gate.rs` the one
//! access decision that every message the broker writes for a client goes
//! through (PUBLISH, will, history reply, alert copy).
//!
//! How a client's identity is derived (also in `docs/security.md`):
//! - with an authenticator that verifies names (a password file, JWT, or a
//!   certificate's CN on a listener with `use_identity_as_username`), the
//!   username is the verified name and nothing else: a client without
//!   credentials is anonymous, with no username and no chat identity, and
//!   its client id never stands in for a name;
//! - without one (the loopback default), names are claims: the username
//!   is what the client sent, and the chat identity is the username, or the
//!   client id without one.

pub mod acl;
mod argon2_check;
mod backoff;
pub mod gate;
mod jwt;
mod login_pool;
pub mod password_file;

use std::net::SocketAddr;

use parking_lot::RwLock;

pub use backoff::LoginBackoff;
pub use jwt::JwtVerifier;
pub use login_pool::LoginPool;
pub use password_file::PasswordFile;

/// Whether `name` can be a client's identity: one topic level, because
/// the broker writes it into topics (`$presence/{user}`,
/// `rooms/{room}/msg/{sender}/...`, `users/{user}/history/...`). So not
/// empty, and no `/`, `+`, `#` or control character (U+0000 included).
/// `topics.md` (*Identity*) states the rule; CONNECT refuses other names
/// (`session/connect.rs`), and `roomq passwd` refuses them and a few more.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c == '/' || c == '+' || c == '#' || c.is_control())
}

/// What a client presented in CONNECT. A certificate's name is settled
/// before this is asked (see `session/connect.rs`).
pub struct AuthRequest<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
}

/// What an accepted client may do beyond the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The verified name: the password file's user, a token's `sub`. `None`
    /// means the CONNECT username as the authenticator accepted it (a
    /// custom authenticator that checked it), or an anonymous client when
    /// the CONNECT had none.
    pub username: Option<String>,
    /// Unix seconds after which the connection is closed (a token's `exp`):
    /// 5.0 DISCONNECT 0xA0 Maximum connect time.
    pub expires_unix: Option<u64>,
    /// The rooms this client may join, exactly; `None` follows the room
    /// configuration.
    pub rooms: Option<Vec<String>>,
    /// The rooms this client moderates besides the configured moderators
    /// (a token's `mod_rooms` claim); she may join them too.
    pub moderates: Option<Vec<String>>,
    /// Whether [`Authenticator::revoked`] applies to this login: a
    /// password checked against a file that a reload can change.
    pub revocable: bool,
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

    /// Whether this authenticator verifies names, so that a name can only
    /// be had with its credentials. When true, an anonymous client gets no
    /// chat identity (its client id does not stand in for one). A custom
    /// authenticator verifies names unless it says otherwise.
    fn verifies_names(&self) -> bool {
        true
    }

    /// Whether a client that logged in with a password as `username` may
    /// no longer do so (removed from the password file by a reload): its
    /// connections are closed after the reload (5.0 DISCONNECT 0x87).
    fn revoked(&self, _username: &str) -> bool {
        false
    }
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

    fn verifies_names(&self) -> bool {
        false
    }
}

/// The `[auth]` configuration at work.
pub struct ConfiguredAuth {
    allow_anonymous: bool,
    /// Some listener names clients by their certificate's CN: a username
    /// without credentials is then refused everywhere.
    certificate_names: bool,
    passwords: Option<RwLock<PasswordFile>>,
    jwt: Option<JwtVerifier>,
}

impl ConfiguredAuth {
    /// Loads the password file and key named by the configuration; the
    /// error names the file at fault.
    pub fn load(config: &crate::config::Config) -> Result<Self, String> {
        let allow_anonymous = config.effective_allow_anonymous();
        let certificate_names = config.certificate_names_used();
        let config = &config.auth;
        let passwords = match &config.password_file {
            Some(path) => Some(RwLock::new(PasswordFile::load(path)?)),
            None => None,
        };
        let jwt = match (&config.jwt_secret, &config.jwt_public_key) {
            (Some(_), Some(_)) => {
                return Err("set `auth.jwt_secret` or `auth.jwt_public_key`, not both".into())
            }
            (Some(secret), None) if secret.is_empty() => {
                return Err("key `auth.jwt_secret`: an empty secret would let anyone sign tokens".into())
            }
            (Some(secret), None) => Some(JwtVerifier::hs256(secret, config)),
            (None, Some(path)) => Some(JwtVerifier::public_key(path, config)?),
            (None, None) => None,
        };
        Ok(ConfiguredAuth {
            allow_anonymous,
            certificate_names,
            passwords,
            jwt,
        })
    }
}

impl ConfiguredAuth {
    /// Whether any credential check is configured (password file, JWT,
    /// client certificates that name users).
    fn checks_credentials(&self) -> bool {
        self.passwords.is_some() || self.jwt.is_some() || self.certificate_names
    }
}

impl Authenticator for ConfiguredAuth {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision {
        if let (Some(jwt), Some(password)) = (&self.jwt, request.password) {
            if jwt::looks_like_jwt(password) {
                let token = std::str::from_utf8(password).unwrap_or_default();
                return match jwt.verify(token) {
                    // A username, if given, must be the token's subject
                    // (an empty one is no name, so it is not).
                    Some(grant) if request.username.is_none_or(|u| u == grant.username) => {
                        AuthDecision::Allow(Grant {
                            username: Some(grant.username),
                            expires_unix: Some(grant.expires_unix),
                            rooms: grant.rooms,
                            moderates: grant.moderates,
                            revocable: false,
                        })
                    }
                    _ => AuthDecision::BadCredentials,
                };
            }
        }
        match (&self.passwords, request.username, request.password) {
            (Some(file), Some(user), Some(password)) => {
                if file.read().verify(user, password) {
                    AuthDecision::Allow(Grant {
                        username: Some(user.to_string()),
                        revocable: true,
                        ..Grant::default()
                    })
                } else {
                    AuthDecision::BadCredentials
                }
            }
            // No credentials at all: anonymous, when allowed.
            (_, None, None) if self.allow_anonymous => AuthDecision::Allow(Grant::default()),
            (_, None, None) => AuthDecision::NotAuthorized,
            // Credentials that no configured check accepts (a username
            // without a password, a password that is neither a known
            // user's nor a token): a name is never had without them.
            _ if self.checks_credentials() => AuthDecision::BadCredentials,
            // No authenticator: names are claims, and only taken when
            // anonymous access is on (without it, nobody gets in).
            _ if self.allow_anonymous => AuthDecision::Allow(Grant::default()),
            _ => AuthDecision::NotAuthorized,
        }
    }

    fn verifies_names(&self) -> bool {
        self.checks_credentials()
    }

    fn revoked(&self, username: &str) -> bool {
        self.passwords
            .as_ref()
            .is_some_and(|file| !file.read().has_user(username))
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

//! Authentication hook. The default allows everyone (or everyone with a
//! username, when `allow_anonymous = false`); password files, tokens and
//! ACLs plug in behind the same trait.

use std::net::SocketAddr;

/// What a client presented in CONNECT.
pub struct AuthRequest<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
}

/// The answer to a CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthDecision {
    Allow,
    /// 5.0 CONNACK 0x86, 3.1.1 return code 4.
    BadCredentials,
    /// 5.0 CONNACK 0x87, 3.1.1 return code 5.
    NotAuthorized,
}

/// Decides whether a CONNECT may proceed.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision;

    /// Re-reads files (password file, keys) on SIGHUP; errors are logged
    /// and the old state stays.
    fn reload(&self) {}
}

/// The built-in policy: anyone, or anyone with a username.
pub struct AnonymousPolicy {
    pub allow_anonymous: bool,
}

impl Authenticator for AnonymousPolicy {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision {
        if request.username.is_none() && !self.allow_anonymous {
            AuthDecision::NotAuthorized
        } else {
            AuthDecision::Allow
        }
    }
}

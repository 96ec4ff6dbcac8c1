//! Bearer tokens: a JWT passed as the MQTT password. HS256 with a shared
//! secret, or RS256/ES256 with a public key file. `sub` is the username,
//! `exp` is required and enforced (also while connected), `nbf` is
//! enforced when present, `aud` and `iss` are checked when
//! `auth.jwt_audience` / `auth.jwt_issuer` are set (and ignored
//! otherwise), and an optional claim (`jwt_rooms_claim`, default `rooms`)
//! lists the rooms the user may join, another (`jwt_moderators_claim`,
//! default `mod_rooms`) the rooms she moderates. An empty `sub` is refused: the
//! subject is the identity (and, like every name, refused at CONNECT
//! unless it is one topic level: `auth::is_valid_name`).

use std::path::Path;

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::AuthConfig;

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    rooms_claim: String,
    moderators_claim: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// What a valid token says.
pub struct TokenGrant {
    pub username: String,
    pub expires_unix: u64,
    pub rooms: Option<Vec<String>>,
    /// The rooms the user moderates (`jwt_moderators_claim`).
    pub moderates: Option<Vec<String>>,
}

impl JwtVerifier {
    /// HS256 tokens signed with `secret` (checked non-empty by the caller).
    pub fn hs256(secret: &str, config: &AuthConfig) -> Self {
        Self::new(
            DecodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
            config,
        )
    }

    /// An RSA or EC public key in PEM: RS256 or ES256 tokens.
    pub fn public_key(path: &Path, config: &AuthConfig) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::new(key, Algorithm::RS256, config));
        }
        DecodingKey::from_ec_pem(&pem)
            .map(|key| Self::new(key, Algorithm::ES256, config))
            .map_err(|e| format!("{}: not an RSA or EC public key: {e}", path.display()))
    }

    fn new(key: DecodingKey, algorithm: Algorithm, config: &AuthConfig) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Most identity providers put an `aud` in every token: checked when
        // configured, else ignored (jsonwebtoken would refuse it).
        match &config.jwt_audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.jwt_issuer {
            validation.set_issuer(&[issuer]);
        }
        JwtVerifier {
            key,
            validation,
            rooms_claim: config.jwt_rooms_claim.clone(),
            moderators_claim: config.jwt_moderators_claim.clone(),
        }
    }

    /// The grant of a valid, unexpired token; `None` otherwise.
    pub fn verify(&self, token: &str) -> Option<TokenGrant> {
        let data = decode::<Claims>(token, &self.key, &self.validation).ok()?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return None;
        }
        let list = |claim: &str| {
            claims.other.get(claim).and_then(|v| v.as_array()).map(|list| {
                list.iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
        };
        let (rooms, moderates) = (list(&self.rooms_claim), list(&self.moderators_claim));
        Some(TokenGrant {
            username: claims.sub,
            expires_unix: claims.exp,
            rooms,
            moderates,
        })
    }
}

/// Whether a password looks like a JWT (three base64url parts).
pub fn looks_like_jwt(password: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(password) else {
        return false;
    };
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

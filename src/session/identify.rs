//! Who a connecting client is: its certificate name or credentials
//! (checked through the login back-off and the bounded login pool), and the
//! principal the rest of its connection is judged as.

use std::sync::Arc;

use super::connect::Refusal;
use super::io::CertName;
use super::Shared;
use crate::auth::gate::Principal;
use crate::auth::{AuthDecision, AuthRequest, Grant};
use crate::protocol::{Connect, ConnectAckReason};

/// Who the client is: from its certificate on an mTLS listener that takes
/// names from certificates, else from its credentials. A will must be a
/// publish this identity could make now.
pub(super) async fn identify(
    shared: &Arc<Shared>,
    peer: std::net::SocketAddr,
    connect: &Connect,
    client_id: &str,
    cert_name: CertName,
) -> Result<(Grant, Principal), Refusal> {
    let grant = match cert_name {
        // The certificate is the credential and its CN the name; CONNECT's
        // username and password are not used.
        CertName::Name(name) => Grant {
            username: Some(name),
            ..Grant::default()
        },
        CertName::Unusable => {
            shared.metrics.auth_failures.inc();
            return Err(Refusal::Connack(
                ConnectAckReason::NotAuthorized,
                "the client certificate has no Common Name usable as a username",
            ));
        }
        CertName::NotUsed => authenticate(peer, shared, client_id, connect)
            .await
            .map_err(Refusal::Logged)?,
    };
    let principal = principal_of(shared, &grant, connect, client_id, peer)?;
    if let Some(will) = &connect.last_will {
        let kind = crate::chat::Classified::of(&will.topic);
        if let Err(reason) = shared.gate.may_write(&principal, client_id, &will.topic, kind) {
            shared.metrics.acl_denied.inc();
            tracing::info!(%client_id, topic = %will.topic, ?reason, "will refused by the access rules");
            return Err(Refusal::Connack(
                ConnectAckReason::NotAuthorized,
                "will topic not allowed",
            ));
        }
    }
    Ok((grant, principal))
}

/// Asks the authenticator about CONNECT's credentials, after the address's
/// login back-off (so a flood of guesses costs no hashing), and on a
/// blocking thread when a password must be hashed. A refusal is counted
/// and logged and gives the CONNACK reason.
async fn authenticate(
    peer: std::net::SocketAddr,
    shared: &Arc<Shared>,
    client_id: &str,
    connect: &Connect,
) -> Result<Grant, ConnectAckReason> {
    let username = connect.username.as_deref().map(str::to_string);
    let password = connect.password.clone();
    let ip = peer.ip();
    let decision = if password.is_some() {
        // A login that would find no place in the queue (full, or this
        // address's share taken) is refused at once: before the back-off,
        // and without counting as a failed password (it was not checked),
        // so a busy broker never makes a client wait for its 0x89.
        if !shared.logins.has_place_for(ip) {
            tracing::info!(%client_id, %peer, "login refused: max_pending_logins(_per_ip) are waiting");
            return Err(ConnectAckReason::ServerBusy);
        }
        // The back-off next: guesses from one address at one username,
        // however many in parallel, are checked one delay apart, and while
        // they wait they hold no place in the login queue (so one account's
        // guesses do not fill it for everyone else).
        let backoff_key = username.as_deref().unwrap_or("");
        let wait = shared.login_backoff.wait_before_attempt(ip, backoff_key);
        tokio::time::sleep(wait).await;
        // Then a bounded queue for the hash: beyond it, refused unhashed.
        let Some(queued) = shared.logins.enter(ip) else {
            shared.login_backoff.attempt_not_checked(ip, backoff_key);
            tracing::info!(%client_id, %peer, "login refused: max_pending_logins(_per_ip) are waiting");
            return Err(ConnectAckReason::ServerBusy);
        };
        let Some(_hashing) = shared.logins.hashing_slot(&queued).await else {
            shared.login_backoff.attempt_not_checked(ip, backoff_key);
            tracing::info!(%client_id, %peer, "login not checked: the login queue is closed");
            return Err(ConnectAckReason::ServerUnavailable);
        };
        let (auth, id) = (shared.auth.clone(), client_id.to_string());
        let (user, pass) = (username.clone(), password.clone());
        let decision = tokio::task::spawn_blocking(move || {
            auth.authenticate(&AuthRequest {
                client_id: &id,
                username: user.as_deref(),
                password: pass.as_deref(),
                peer,
            })
        })
        .await
        .unwrap_or(AuthDecision::NotAuthorized);
        let succeeded = matches!(decision, AuthDecision::Allow(_));
        shared.login_backoff.attempt_done(ip, backoff_key, succeeded);
        if succeeded {
            shared.logins.succeeded(ip);
        }
        decision
    } else {
        shared.auth.authenticate(&AuthRequest {
            client_id,
            username: username.as_deref(),
            password: None,
            peer,
        })
    };
    match decision {
        AuthDecision::Allow(grant) => Ok(grant),
        refused => {
            shared.metrics.auth_failures.inc();
            tracing::info!(
                %client_id,
                username = username.as_deref().unwrap_or(""),
                %peer,
                "login failed"
            );
            Err(match refused {
                AuthDecision::BadCredentials => ConnectAckReason::BadUserNameOrPassword,
                _ => ConnectAckReason::NotAuthorized,
            })
        }
    }
}

/// The identity rules (`auth/mod.rs`): the verified name when the broker
/// verifies names, else the claimed one; the client id stands in for a
/// chat identity only where names are claims. A name must be one topic
/// level (`auth::is_valid_name`), whichever path it came by (claimed,
/// password file, token `sub`, a custom authenticator): else a username
/// is refused with 0x86 (3.1.1 code 4) and a client id standing in for
/// the identity with 0x85 (code 2).
fn principal_of(
    shared: &Shared,
    grant: &Grant,
    connect: &Connect,
    client_id: &str,
    peer: std::net::SocketAddr,
) -> Result<Principal, Refusal> {
    let username: Option<Arc<str>> = grant
        .username
        .as_deref()
        .or(connect.username.as_deref())
        .filter(|u| !u.is_empty())
        .map(Arc::from);
    if username
        .as_deref()
        .is_some_and(|u| !crate::auth::is_valid_name(u))
    {
        shared.metrics.auth_failures.inc();
        return Err(Refusal::Connack(
            ConnectAckReason::BadUserNameOrPassword,
            "the username is not one topic level (`/`, `+`, `#` or a control character)",
        ));
    }
    let names_verified = shared.auth.verifies_names() || shared.config.certificate_names_used();
    let identity = match username.clone() {
        Some(name) => Some(name),
        None if names_verified => None,
        None if crate::auth::is_valid_name(client_id) => Some(Arc::from(client_id)),
        // Any UTF-8 string is a valid client id (`paho/1a2b`), so the
        // client is served, but a client id that is not one topic level
        // cannot be a chat name (`$presence/#`): it connects without one,
        // like an anonymous client.
        None => None,
    };
    // Claimed names are free to mint: on a broker that does not verify
    // them the address pays (and one client claiming another's name does
    // not spend that one's budget), but for the machine's own processes.
    let name_pays =
        names_verified || (shared.config.per_user.claimed_names_budget_on_loopback && is_loopback(peer.ip()));
    let account = crate::budget::account_of(identity.as_deref().filter(|_| name_pays), Some(peer.ip()));
    Ok(Principal {
        username,
        identity,
        account,
        room_grant: grant
            .rooms
            .clone()
            .map(|rooms| Arc::new(rooms.into_iter().collect())),
        mod_grant: grant
            .moderates
            .clone()
            .map(|rooms| Arc::new(rooms.into_iter().collect())),
    })
}

/// Loopback, also as an IPv4-mapped IPv6 address (a dual-stack listener).
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
    }
}

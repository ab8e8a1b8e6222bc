//! Bearer tokens for people: a short-lived alternative to a client certificate for the human
//! roles (operator, deployer, auditor), for those who cannot keep a key file at hand (a shared
//! jump host, a browser-less CI job that gets a secret injected).
//!
//! A token is signed by the cluster CA's key (`sovctl ca token`) and checked by the schedulers
//! with the CA certificate they already trust, so there is nothing new to distribute and no
//! token store to replicate. It carries the same identity URIs a certificate would
//! (`spiffe://sov/deployer/alice`, `sov://scope/namespace/team-a-`), read back with the same
//! checks ([`Identity::from_uris`]), an issue and an expiry time, and a random id:
//!
//! ```text
//! sov1.<base64url(JSON claims)>.<base64url(ECDSA P-256 signature)>
//! ```
//!
//! The signature covers [`DOMAIN`] followed by the claims' bytes, so no other thing the CA
//! signs (certificates) can pass for a token. Tokens cannot be revoked one by one: they live at
//! most [`TTL_MAX`] (the default is [`TTL_DEFAULT`]), and rotating the CA ends them all. A
//! scheduler accepts them only when its operator enabled them (`[tls] bearer_tokens`), and
//! never on the Raft port; agents and schedulers always need certificates.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rcgen::SigningKey;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{Identity, Role};
use crate::tls::{Ca, TlsError};

/// What every token starts with; also names the format's version.
pub const PREFIX: &str = "sov1.";
/// What the CA signs: this, then the claims' bytes.
pub const DOMAIN: &[u8] = b"sov bearer token v1\n";
/// Longest life a token may have: a week. A scheduler refuses a longer one even if the CA
/// signed it.
pub const TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Life of a token unless asked otherwise: a working day.
pub const TTL_DEFAULT: Duration = Duration::from_secs(12 * 3600);
/// Longest token accepted (an HTTP header): claims are a few hundred bytes.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Tolerated clock difference between the machine that issued a token and a scheduler.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The roles a token may carry: people's. Agents and schedulers are machines with keys.
pub const TOKEN_ROLES: [Role; 3] = [Role::Operator, Role::Deployer, Role::Auditor];

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    /// The identity, as a certificate's URI names.
    uris: Vec<String>,
    /// Issued and expiry time, seconds since the Unix epoch.
    iat: u64,
    exp: u64,
    /// Random, so two tokens for the same person differ (and have different fingerprints).
    id: String,
}

/// A token [`issue`] made.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    /// What history records for calls made with it ([`fingerprint`]).
    pub fingerprint: String,
    pub not_after: SystemTime,
}

/// A token a scheduler accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub identity: Identity,
    pub fingerprint: String,
    pub not_after: SystemTime,
}

fn secs(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An opaque id of a token, like a certificate's fingerprint: the first 16 bytes of the
/// SHA-256 of the whole token, hex. `sovctl ca token` prints it beside the person's name.
pub fn fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.trim().as_bytes())[..16])
}

/// Signs a token for `identity` with the CA's key, valid from now for `ttl`.
pub fn issue(ca: &Ca, identity: &Identity, ttl: Duration) -> Result<Issued, TlsError> {
    if !TOKEN_ROLES.contains(&identity.role) {
        return Err(TlsError::Invalid(format!(
            "tokens are for people: operator, deployer or auditor, not {}; machines get \
             certificates (sovctl ca issue)",
            identity.role
        )));
    }
    if ttl.is_zero() || ttl > TTL_MAX {
        return Err(TlsError::Invalid(format!(
            "a token lives at most {} hours (asked for {} s): tokens cannot be revoked one by one",
            TTL_MAX.as_secs() / 3600,
            ttl.as_secs()
        )));
    }
    let now = SystemTime::now();
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| TlsError::Invalid("no randomness from the operating system".into()))?;
    let claims = Claims {
        uris: identity.uris(),
        iat: secs(now),
        exp: secs(now + ttl),
        id: hex::encode(id),
    };
    let body = serde_json::to_vec(&claims).map_err(|e| TlsError::Invalid(e.to_string()))?;
    let signature = ca.key().sign(&[DOMAIN, &body].concat())?;
    let token = format!("{PREFIX}{}.{}", B64.encode(&body), B64.encode(signature));
    Ok(Issued {
        fingerprint: fingerprint(&token),
        token,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp),
    })
}

/// Checks tokens against the cluster CA's certificate (every certificate of the CA file: during a
/// CA rotation it may hold the old and the new one).
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The CAs' public keys (uncompressed P-256 points).
    keys: Vec<Vec<u8>>,
}

impl Verifier {
    /// From the CA certificates schedulers trust (PEM). Only P-256 keys can sign tokens, which
    /// is what `sovctl ca init` makes; a file with none is refused.
    pub fn from_ca_pem(ca_pem: &str) -> Result<Verifier, TlsError> {
        let mut keys = Vec::new();
        for pem in x509_parser::pem::Pem::iter_from_buffer(ca_pem.as_bytes()) {
            let pem = pem.map_err(|e| TlsError::Invalid(format!("the CA file is not PEM: {e}")))?;
            let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
                .map_err(|e| TlsError::Invalid(format!("unreadable CA certificate: {e}")))?;
            let spki = cert.public_key();
            let is_p256 = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|oid| oid == x509_parser::oid_registry::OID_EC_P256);
            if is_p256 {
                keys.push(spki.subject_public_key.data.to_vec());
            }
        }
        if keys.is_empty() {
            return Err(TlsError::Invalid(
                "bearer tokens need a CA with an ECDSA P-256 key (what `sovctl ca init` makes)"
                    .into(),
            ));
        }
        Ok(Verifier { keys })
    }

    /// The identity a token carries, if the CA signed it and it is valid at `now`; else why
    /// not, in words for the caller.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Verified, String> {
        let token = token.trim();
        if token.len() > TOKEN_BYTES_MAX {
            return Err(format!(
                "the bearer token is {} bytes long; at most {TOKEN_BYTES_MAX}",
                token.len()
            ));
        }
        let rest = token
            .strip_prefix(PREFIX)
            .ok_or("the bearer token is not a sov token (it should start with sov1.)")?;
        let (body, signature) = rest
            .split_once('.')
            .ok_or("the bearer token is cut short (no signature)")?;
        let decode = |part: &str, what: &str| {
            B64.decode(part)
                .map_err(|_| format!("the bearer token's {what} is not base64url"))
        };
        let (body, signature) = (decode(body, "claims")?, decode(signature, "signature")?);
        let signed = [DOMAIN, &body].concat();
        if !self.keys.iter().any(|key| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
                .verify(&signed, &signature)
                .is_ok()
        }) {
            return Err(
                "the bearer token was not signed by this cluster's CA (or was altered)".to_owned(),
            );
        }
        // Signed by the CA: from here on, the claims are the operator's own words, checked
        // anyway as a certificate's would be.
        let claims: Claims = serde_json::from_slice(&body)
            .map_err(|e| format!("the bearer token's claims are unreadable: {e}"))?;
        let identity = Identity::from_uris(claims.uris.iter().map(String::as_str))
            .map_err(|e| format!("the bearer token names no valid identity: {e}"))?;
        if !TOKEN_ROLES.contains(&identity.role) {
            return Err(format!(
                "a bearer token cannot carry the {} role",
                identity.role
            ));
        }
        let now_s = secs(now);
        let skew = CLOCK_SKEW.as_secs();
        if claims.iat > now_s + skew {
            return Err("the bearer token was issued in the future; check the clocks".into());
        }
        if claims.exp.saturating_sub(claims.iat) > TTL_MAX.as_secs() {
            return Err(format!(
                "the bearer token lives longer than {} hours; issue a shorter one",
                TTL_MAX.as_secs() / 3600
            ));
        }
        if claims.exp <= now_s {
            return Err(format!(
                "the bearer token expired {} s ago; get a new one (sovctl ca token)",
                now_s - claims.exp
            ));
        }
        Ok(Verified {
            identity,
            fingerprint: fingerprint(token),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp),
        })
    }
}

/// The expiry a token claims, read without checking its signature: for sovctl's warnings only.
pub fn claimed_expiry(token: &str) -> Option<SystemTime> {
    let rest = token.trim().strip_prefix(PREFIX)?;
    let (body, _) = rest.split_once('.')?;
    let claims: Claims = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_ca(dir: &std::path::Path) -> Ca {
        Ca::init(dir, "test CA").unwrap()
    }

    #[test]
    fn a_token_carries_its_identity_and_is_checked_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path());
        let alice = Identity::new(Role::Deployer, "alice")
            .unwrap()
            .with_namespace("team-a-")
            .unwrap();
        let issued = issue(&ca, &alice, TTL_DEFAULT).unwrap();
        assert!(issued.token.starts_with(PREFIX));
        let verifier = Verifier::from_ca_pem(ca.cert_pem()).unwrap();
        let now = SystemTime::now();
        let ok = verifier.verify(&issued.token, now).unwrap();
        assert_eq!(ok.identity, alice);
        assert_eq!(ok.fingerprint, issued.fingerprint);
        assert_eq!(claimed_expiry(&issued.token), Some(issued.not_after));
        // Two tokens for the same person differ.
        let again = issue(&ca, &alice, TTL_DEFAULT).unwrap();
        assert_ne!(again.fingerprint, issued.fingerprint);

        // Expired.
        let err = verifier
            .verify(&issued.token, now + TTL_DEFAULT + Duration::from_secs(1))
            .unwrap_err();
        assert!(err.contains("expired"), "{err}");
        // Another CA's.
        let other_dir = tempfile::tempdir().unwrap();
        let other_ca = new_ca(other_dir.path());
        let other = Verifier::from_ca_pem(other_ca.cert_pem()).unwrap();
        let err = other.verify(&issued.token, now).unwrap_err();
        assert!(err.contains("not signed by this cluster's CA"), "{err}");
        // A CA file holding both (a rotation) accepts tokens of either.
        let both =
            Verifier::from_ca_pem(&format!("{}{}", other_ca.cert_pem(), ca.cert_pem())).unwrap();
        assert!(both.verify(&issued.token, now).is_ok());
        // Altered claims: an operator's URI swapped in.
        let (_, rest) = issued.token.split_at(PREFIX.len());
        let (_, signature) = rest.split_once('.').unwrap();
        let forged_claims = Claims {
            uris: Identity::new(Role::Operator, "alice").unwrap().uris(),
            iat: secs(now),
            exp: secs(now) + 60,
            id: "00".into(),
        };
        let forged = format!(
            "{PREFIX}{}.{signature}",
            B64.encode(serde_json::to_vec(&forged_claims).unwrap())
        );
        let err = verifier.verify(&forged, now).unwrap_err();
        assert!(err.contains("not signed"), "{err}");
        // Not a token at all, cut short, oversized.
        for bad in ["Bearer x", "sov1.abc", &"a".repeat(TOKEN_BYTES_MAX + 1)] {
            assert!(verifier.verify(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn machines_and_long_lives_get_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path());
        for role in [Role::Agent, Role::Scheduler] {
            let who = Identity::new(role, "m-1").unwrap();
            let err = issue(&ca, &who, TTL_DEFAULT).unwrap_err().to_string();
            assert!(err.contains("tokens are for people"), "{err}");
        }
        let bob = Identity::new(Role::Auditor, "bob").unwrap();
        let err = issue(&ca, &bob, TTL_MAX + Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 168 hours"), "{err}");
        assert!(issue(&ca, &bob, Duration::ZERO).is_err());
        assert!(issue(&ca, &bob, TTL_MAX).is_ok());
    }
}

//! Amazon Cognito user-pool JWTs: RS256 only, keys from the issuer's JWKS (cached, fetched again
//! on an unknown `kid` at most once per interval), `iss`, `token_use`, the app client
//! (`client_id` of an access token, `aud` of an id token) against an allow-list, `exp`/`nbf`
//! with a small leeway. The actor is the token's `sub`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;
/// The JWKS is fetched again on an unknown `kid` at most this often.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// After a failed JWKS fetch, requests that need it get 503 for this long without fetching.
const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(5);
/// A JWKS document larger than this is refused (Cognito's holds two keys, about 1 KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where tokens come from and whom they are for.
#[derive(Debug, Clone)]
pub(crate) struct CognitoConfig {
    /// `https://cognito-idp.<region>.amazonaws.com/<user pool id>`.
    pub(crate) issuer: String,
    /// The app clients whose tokens are accepted.
    pub(crate) client_ids: HashSet<String>,
    /// The JWKS URL (default `<issuer>/.well-known/jwks.json`).
    pub(crate) jwks_url: String,
}

impl CognitoConfig {
    /// From `COGNITO_ISSUER` (or `COGNITO_USER_POOL_ID` with `AWS_REGION`),
    /// `COGNITO_CLIENT_IDS` (comma-separated) and `COGNITO_JWKS_URL` (optional). `None` when no
    /// issuer is configured; an error names what is missing.
    pub(crate) fn from_env() -> Result<Option<Self>, String> {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let issuer = match (var("COGNITO_ISSUER"), var("COGNITO_USER_POOL_ID")) {
            (Some(issuer), _) => issuer.trim_end_matches('/').to_owned(),
            (None, Some(pool)) => {
                let region =
                    var("AWS_REGION").or_else(|| pool.split('_').next().map(str::to_owned));
                let Some(region) = region else {
                    return Err("COGNITO_USER_POOL_ID needs AWS_REGION".to_owned());
                };
                format!("https://cognito-idp.{region}.amazonaws.com/{pool}")
            }
            (None, None) => return Ok(None),
        };
        let client_ids: HashSet<String> = var("COGNITO_CLIENT_IDS")
            .unwrap_or_default()
            .split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        if client_ids.is_empty() {
            return Err(
                "COGNITO_CLIENT_IDS is not set: name the app client ids whose tokens are accepted"
                    .to_owned(),
            );
        }
        let jwks_url =
            var("COGNITO_JWKS_URL").unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
        Ok(Some(Self {
            issuer,
            client_ids,
            jwks_url,
        }))
    }
}

/// Why a request is not authenticated (sent in `WWW-Authenticate`; it names no key material).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("algorithm {0} is not accepted (RS256 only)")]
    Algorithm(String),
    #[error("the token has no key id")]
    NoKeyId,
    #[error("the token is signed by an unknown key")]
    UnknownKey,
    #[error("the signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is from another issuer")]
    Issuer,
    #[error("the token is for another client")]
    Client,
    #[error("the token is neither an access nor an id token")]
    TokenUse,
    #[error("the token's subject is not a user id")]
    Subject,
    #[error("the issuer's keys cannot be fetched: {0}")]
    Jwks(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    token_use: Option<String>,
    client_id: Option<String>,
    aud: Option<Audience>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Verifies tokens of one user pool.
pub(crate) struct CognitoVerifier {
    config: CognitoConfig,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the JWKS was last fetched, and when a fetch last failed; held while fetching, so
    /// one request fetches at a time.
    fetched: Mutex<Fetches>,
}

#[derive(Default)]
struct Fetches {
    succeeded: Option<Instant>,
    failed: Option<Instant>,
}

impl CognitoVerifier {
    pub(crate) fn new(config: CognitoConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            config,
            http,
            keys: RwLock::new(HashMap::new()),
            fetched: Mutex::new(Fetches::default()),
        })
    }

    /// The actor id (`sub`) of a valid token.
    pub(crate) async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(AuthError::NoKeyId)?;
        // The read guard must be gone before a refresh takes the write lock.
        let known = self.keys.read().await.get(&kid).cloned();
        let key = match known {
            Some(key) => key,
            None => self.refreshed_key(&kid).await?,
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        // The client is checked below: Cognito's access tokens carry it in `client_id`.
        validation.validate_aud = false;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Issuer,
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::InvalidAlgorithm => AuthError::Algorithm("mismatch".to_owned()),
                _ => AuthError::Malformed,
            }
        })?;
        let claims = data.claims;
        let client_ok = match claims.token_use.as_deref() {
            Some("access") => claims
                .client_id
                .as_ref()
                .is_some_and(|c| self.config.client_ids.contains(c)),
            Some("id") => match &claims.aud {
                Some(Audience::One(a)) => self.config.client_ids.contains(a),
                Some(Audience::Many(all)) => all.iter().any(|a| self.config.client_ids.contains(a)),
                None => false,
            },
            _ => return Err(AuthError::TokenUse),
        };
        if !client_ok {
            return Err(AuthError::Client);
        }
        // Session keys are `<sub>.<session id>`: a subject with anything but letters, digits and
        // `-` could make two users' keys meet.
        let sub_ok = !claims.sub.is_empty()
            && claims.sub.len() <= 128
            && claims
                .sub
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !sub_ok {
            return Err(AuthError::Subject);
        }
        Ok(claims.sub)
    }

    /// The key `kid` after fetching the JWKS again, unless it was fetched less than
    /// [`MIN_REFRESH_INTERVAL`] ago (a token with a made-up `kid` cannot make the service hammer
    /// the issuer).
    async fn refreshed_key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        let mut fetched = self.fetched.lock().await;
        // Another request may have fetched while this one waited.
        let known = self.keys.read().await.get(kid).cloned();
        if let Some(key) = known {
            return Ok(key);
        }
        if fetched
            .succeeded
            .is_some_and(|at| at.elapsed() < MIN_REFRESH_INTERVAL)
        {
            return Err(AuthError::UnknownKey);
        }
        // A failed fetch is not a verdict on the token (503, not 401), and is not repeated by
        // every request while the issuer is down.
        if fetched
            .failed
            .is_some_and(|at| at.elapsed() < FAILED_FETCH_BACKOFF)
        {
            return Err(AuthError::Jwks(
                "the last fetch failed moments ago".to_owned(),
            ));
        }
        let keys = match self.fetch().await {
            Ok(keys) => keys,
            Err(e) => {
                fetched.failed = Some(Instant::now());
                return Err(e);
            }
        };
        fetched.succeeded = Some(Instant::now());
        let key = keys.get(kid).cloned();
        *self.keys.write().await = keys;
        key.ok_or(AuthError::UnknownKey)
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, AuthError> {
        let jwks_error = |e: String| AuthError::Jwks(e);
        let mut response = self
            .http
            .get(&self.config.jwks_url)
            .send()
            .await
            .map_err(|e| jwks_error(e.to_string()))?;
        if !response.status().is_success() {
            return Err(jwks_error(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| jwks_error(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(jwks_error(format!("larger than {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| jwks_error(format!("not a JWKS: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // Only RSA keys; a key that cannot be read is skipped, not fatal.
            if let (Some(kid), Ok(key)) = (&jwk.common.key_id, DecodingKey::from_jwk(jwk))
                && matches!(
                    jwk.algorithm,
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
                )
            {
                keys.insert(kid.clone(), key);
            }
        }
        Ok(keys)
    }
}

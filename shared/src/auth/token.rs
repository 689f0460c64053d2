//! Verifying bearer tokens: the signature and algorithm with
//! `jsonwebtoken` (HS256 with the gateway's secret, RS256/ES256 with the
//! issuer's [`super::jwks`]), then the claims against the caller's clock.

use super::*;

/// Verifies bearer tokens: HS256 signed with the configured secret, and
/// RS256/ES256 (and their 384/512 and PSS forms) signed by a key of the
/// issuer's JWKS. Signatures are checked by `jsonwebtoken`; the claims
/// (`exp` required, `nbf`, `iss`, `aud`, the maximum lifetime) here, against
/// the clock the caller gives.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    secret: Option<JwtSecret>,
    jwks: Option<std::sync::Arc<jwks::Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    /// Refuse tokens that expire further than this in the future.
    max_ttl_secs: Option<u64>,
    /// Tokens whose signature was already checked (shared by clones).
    verified: std::sync::Arc<verified::VerifiedTokens>,
}

impl TokenVerifier {
    /// `issuer` / `audience`, when set, must match the token's `iss` / `aud`
    /// (`audience` may list several, separated by commas).
    pub fn new(secret: JwtSecret, issuer: Option<String>, audience: Option<String>) -> Self {
        Self {
            secret: Some(secret),
            jwks: None,
            issuer,
            audience,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_ttl_secs: None,
            verified: std::sync::Arc::default(),
        }
    }

    /// A verifier of JWKS-signed tokens only (no HS256 secret).
    pub fn for_jwks(
        jwks: std::sync::Arc<jwks::Jwks>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Self {
        Self {
            secret: None,
            jwks: Some(jwks),
            issuer,
            audience,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_ttl_secs: None,
            verified: std::sync::Arc::default(),
        }
    }

    /// Also accepts tokens signed by a key of `jwks`.
    #[must_use]
    pub fn with_jwks(mut self, jwks: std::sync::Arc<jwks::Jwks>) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Refuses tokens whose `exp` is more than `secs` away (`BYOK_JWT_MAX_TTL_SECS`).
    #[must_use]
    pub fn with_max_ttl(mut self, secs: Option<u64>) -> Self {
        self.max_ttl_secs = secs;
        self
    }

    /// The issuer's key set, when tokens may be JWKS-signed.
    pub fn jwks(&self) -> Option<&std::sync::Arc<jwks::Jwks>> {
        self.jwks.as_ref()
    }

    /// Replaces the default clock-skew leeway of [`DEFAULT_LEEWAY_SECS`].
    pub fn with_leeway(mut self, leeway_secs: u64) -> Self {
        self.leeway_secs = leeway_secs;
        self
    }

    /// Checks signature, algorithm, `exp`, `nbf`, `iss` and `aud`, then maps
    /// the claims to a [`Principal`].
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Principal, AuthError> {
        principal_from_claims(&*self.verify_claims(token, now_unix)?)
    }

    /// [`Self::verify`]'s checks, returning the verified claims. A token
    /// whose signature was checked lately is not checked again
    /// ([`verified`]); its claims are, against `now_unix`, every time.
    pub fn verify_claims(
        &self,
        token: &str,
        now_unix: i64,
    ) -> Result<std::sync::Arc<Map<String, Value>>, AuthError> {
        let claims = match self.verified.get(token, now_unix) {
            Some(claims) => claims,
            None => {
                let claims = std::sync::Arc::new(self.verify_signature(token)?);
                // A token without a readable `exp` is refused below and
                // never remembered.
                if let Some(exp) = claims.get("exp").and_then(numeric_date) {
                    self.verified.put(token, &claims, exp, now_unix);
                }
                claims
            }
        };
        self.check_claims(&claims, now_unix)?;
        Ok(claims)
    }

    /// The token's shape, algorithm and signature; its claims, unchecked.
    fn verify_signature(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        if URL_SAFE_NO_PAD.decode(signature_b64).is_err() {
            return Err(AuthError::Malformed);
        }
        let header = decode_object(header_b64)?;
        // serde_json keeps the last of two equal keys: a token saying `sub`
        // twice means whatever its reader wants it to, so it is refused.
        if has_duplicate_keys(header_b64) || has_duplicate_keys(payload_b64) {
            return Err(AuthError::Malformed);
        }
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let (key, algorithm) = match alg {
            "HS256" => {
                // Never a JWKS key: an HS256 token "signed" with a public key
                // (algorithm confusion) finds no secret to match.
                let secret = self
                    .secret
                    .as_ref()
                    .ok_or(AuthError::UnsupportedAlgorithm)?;
                (
                    jsonwebtoken::DecodingKey::from_secret(secret.expose_bytes()),
                    jsonwebtoken::Algorithm::HS256,
                )
            }
            _ => {
                let algorithm = jwks::asymmetric(alg).ok_or(AuthError::UnsupportedAlgorithm)?;
                let jwks = self.jwks.as_ref().ok_or(AuthError::UnsupportedAlgorithm)?;
                let kid = header.get("kid").and_then(Value::as_str);
                (jwks.key(kid, algorithm)?, algorithm)
            }
        };
        // Only the signature and algorithm here; the claims are checked
        // below against the caller's clock.
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let verified =
            jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| jwt_error(&e))?;
        let Value::Object(claims) = verified.claims else {
            return Err(AuthError::Malformed);
        };
        Ok(claims)
    }

    /// `exp` (required), the maximum lifetime, `nbf`, `iss` and `aud`,
    /// against the caller's clock.
    fn check_claims(&self, claims: &Map<String, Value>, now_unix: i64) -> Result<(), AuthError> {
        let leeway = i64::try_from(self.leeway_secs).unwrap_or(i64::MAX);

        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(AuthError::Malformed)?;
        if exp.saturating_add(leeway) < now_unix {
            return Err(AuthError::Expired);
        }
        if let Some(max) = self.max_ttl_secs
            && exp.saturating_sub(now_unix) > i64::try_from(max).unwrap_or(i64::MAX)
        {
            return Err(AuthError::TooLongLived);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(nbf).ok_or(AuthError::Malformed)?;
            if nbf.saturating_sub(leeway) > now_unix {
                return Err(AuthError::NotYetValid);
            }
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }
        if let Some(audience) = &self.audience {
            // One audience, or several separated by commas (any of them).
            let accepted = |aud: &str| audience.split(',').any(|a| a.trim() == aud);
            let matches = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
                // Cognito access tokens name their app client as
                // `client_id` and carry no `aud`; API Gateway's JWT
                // authorizer accepts either, and so does this.
                None => claims
                    .get("client_id")
                    .and_then(Value::as_str)
                    .is_some_and(accepted),
                _ => false,
            };
            if !matches {
                return Err(AuthError::WrongAudience);
            }
        }
        Ok(())
    }
}

/// An error of `jsonwebtoken` as ours.
fn jwt_error(err: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match err.kind() {
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            AuthError::UnsupportedAlgorithm
        }
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidIssuer => AuthError::WrongIssuer,
        K::InvalidAudience => AuthError::WrongAudience,
        _ => AuthError::Malformed,
    }
}

/// Decodes one base64url (no padding) segment holding a JSON object.
fn decode_object(segment: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed),
    }
}

/// The last second a NumericDate may name: 9999-12-31T23:59:59Z. Beyond it
/// (`exp: 1e300`) a date is not a date, and a token with it never expires.
const LAST_NUMERIC_DATE: i64 = 253_402_300_799;

/// A JWT NumericDate: a JSON number, or a string of digits as API Gateway
/// forwards it, between 1970 and 9999. Fractions are truncated.
fn numeric_date(value: &Value) -> Option<i64> {
    let date = match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() <= LAST_NUMERIC_DATE as f64)
                .map(|f| f.trunc() as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    (0..=LAST_NUMERIC_DATE).contains(&date).then_some(date)
}

/// True if the base64url JSON object in `segment` names a key twice at its
/// top level (or cannot be read: decoding refuses it later anyway).
fn has_duplicate_keys(segment: &str) -> bool {
    struct UniqueKeys;
    impl<'de> serde::Deserialize<'de> for UniqueKeys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(UniqueKeys)
        }
    }
    impl<'de> serde::de::Visitor<'de> for UniqueKeys {
        type Value = UniqueKeys;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key) {
                    return Err(serde::de::Error::custom("a key is given twice"));
                }
            }
            Ok(UniqueKeys)
        }
    }
    URL_SAFE_NO_PAD
        .decode(segment)
        .ok()
        .is_none_or(|bytes| serde_json::from_slice::<UniqueKeys>(&bytes).is_err())
}

//! From claims to the caller: the user (`sub`), admin membership (a
//! groups or roles claim) and the tenant, whether the claims come from a
//! verified token or from an API Gateway authorizer.

use super::*;

/// The claim at a dotted `path` (a claim whose own name has dots, such as a
/// namespaced Auth0 claim, wins over a nested lookup).
pub(super) fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The tenant in claim `name`: a string (or a number, as text) that is a
/// valid [`TenantId`]; anything else attributes no tenant.
pub fn tenant_from_claims(claims: &Map<String, Value>, name: &str) -> Option<TenantId> {
    match claims.get(name)? {
        Value::String(s) => TenantId::new(s.trim()),
        Value::Number(n) => TenantId::new(n.to_string()),
        _ => None,
    }
}

/// Extracts the caller from claims, whether from a verified token or from an
/// API Gateway authorizer: `sub` is the user, membership of `admin` in
/// `cognito:groups` or `groups` grants admin. Checks nothing else (expiry
/// was checked by whoever verified the claims).
pub fn principal_from_claims(claims: &Map<String, Value>) -> Result<Principal, AuthError> {
    let user = claims
        .get("sub")
        .and_then(Value::as_str)
        .and_then(UserId::new)
        .ok_or(AuthError::MissingSubject)?;
    let admin = ["cognito:groups", "groups"]
        .iter()
        .filter_map(|key| claims.get(*key))
        .any(|groups| group_names(groups).any(|g| g == ADMIN_GROUP));
    Ok(Principal {
        user,
        admin,
        tenant: None,
    })
}

/// Group names from a JSON array, or from the stringified forms API Gateway
/// produces: `"[admin x]"`, `"[admin, x]"`, `"admin"`, `"admin,x"`.
pub(super) fn group_names(value: &Value) -> Box<dyn Iterator<Item = &str> + '_> {
    match value {
        Value::Array(items) => Box::new(items.iter().filter_map(Value::as_str).map(str::trim)),
        Value::String(s) => {
            let s = s.trim();
            let s = s
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .unwrap_or(s);
            Box::new(
                s.split(|c: char| c == ',' || c.is_whitespace())
                    .map(|g| g.trim_matches('"'))
                    .filter(|g| !g.is_empty()),
            )
        }
        _ => Box::new(std::iter::empty()),
    }
}

//! The model catalog: the models the gateway lists on `GET /v1/models`, with
//! context windows and list prices (USD per 1M tokens), and which of them a
//! user can reach.
//!
//! The project ships one catalog (`shared/catalog/models.json`, read with
//! [`Catalog::builtin`]); operators refresh it from the Vercel AI Gateway's
//! public model list with [`refresh_from_gateway_list`] (pure: the download
//! and the file write belong to the operator command). Whether a user can
//! reach a model is the resolution contract itself ([`accessibility`]).

use crate::domain::ModelId;
use crate::resolve::{ResolutionPath, TeamCredentials, Upstreams};
use crate::store::UserSnapshot;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// The catalog shipped with the project.
const BUILTIN_JSON: &str = include_str!("../catalog/models.json");

/// The catalog file format this version reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Where a refreshed catalog comes from.
const GATEWAY_SOURCE: &str = "Vercel AI Gateway public model list (https://ai-gateway.vercel.sh/v1/models), \
     merged over the previous catalog; prices in USD per 1M tokens.";

const PER_MILLION: f64 = 1_000_000.0;

/// Why a catalog (or a gateway model list) was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("not JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("catalog format version {0} is not supported (expected {FORMAT_VERSION})")]
    Version(u32),
    #[error("`updated` must be a YYYY-MM-DD date")]
    Updated,
    #[error("model id {0:?} is not a canonical provider/model id")]
    Id(String),
    #[error("model {0} is listed twice")]
    Duplicate(String),
    #[error("model {0}: context_window must be positive")]
    ContextWindow(String),
    #[error("model {0}: prices must be finite and non-negative")]
    Price(String),
    #[error("the gateway model list holds no usable language model")]
    EmptyGatewayList,
}

/// List prices in USD per 1M tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Per 1M prompt (input) tokens.
    pub input: f64,
    /// Per 1M completion (output) tokens.
    pub output: f64,
}

impl Pricing {
    /// The cost in USD of a request with these token counts.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input + completion_tokens as f64 * self.output) / PER_MILLION
    }

    fn is_valid(&self) -> bool {
        [self.input, self.output]
            .iter()
            .all(|p| p.is_finite() && *p >= 0.0)
    }
}

/// One model of the catalog; its id is canonical `provider/model`.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogModel {
    id: String,
    model: ModelId,
    name: String,
    context_window: u64,
    max_output_tokens: Option<u64>,
    pricing: Pricing,
}

impl CatalogModel {
    /// Canonical `provider/model`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The parsed id, as resolution takes it.
    pub fn model_id(&self) -> &ModelId {
        &self.model
    }

    /// The provider namespace (`openai` in `openai/gpt-4o`).
    pub fn owned_by(&self) -> &str {
        self.model.namespace()
    }

    /// The name people know the model by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Prompt and completion tokens together, at most.
    pub fn context_window(&self) -> u64 {
        self.context_window
    }

    /// Largest completion, where known.
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_output_tokens
    }

    pub fn pricing(&self) -> Pricing {
        self.pricing
    }
}

/// The catalog file as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    version: u32,
    updated: String,
    #[serde(default)]
    source: String,
    models: Vec<ModelEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    id: String,
    name: String,
    context_window: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    pricing: Pricing,
}

/// A validated model catalog: ids canonical and unique, context windows
/// positive, prices finite and non-negative.
#[derive(Clone, Debug)]
pub struct Catalog {
    updated: String,
    /// `updated` at midnight UTC, as Unix seconds: the `created` of every listed model.
    created: i64,
    source: String,
    models: Vec<CatalogModel>,
    /// Canonical id → position in `models`.
    index: HashMap<String, usize>,
}

impl Catalog {
    /// The catalog shipped with the project. Parses on every call: build it
    /// once at start and hold it (the HTTP state keeps it in an `Arc`).
    pub fn builtin() -> Result<Self, CatalogError> {
        Self::from_json(BUILTIN_JSON)
    }

    /// Reads and validates a catalog file (the format of `shared/catalog/models.json`).
    pub fn from_json(json: &str) -> Result<Self, CatalogError> {
        let file: CatalogFile = serde_json::from_str(json)?;
        if file.version != FORMAT_VERSION {
            return Err(CatalogError::Version(file.version));
        }
        let models = file
            .models
            .into_iter()
            .map(|entry| {
                let model =
                    canonical_id(&entry.id).ok_or_else(|| CatalogError::Id(entry.id.clone()))?;
                Ok(CatalogModel {
                    id: entry.id,
                    model,
                    name: entry.name,
                    context_window: entry.context_window,
                    max_output_tokens: entry.max_output_tokens,
                    pricing: entry.pricing,
                })
            })
            .collect::<Result<Vec<_>, CatalogError>>()?;
        Self::build(file.updated, file.source, models)
    }

    fn build(
        updated: String,
        source: String,
        models: Vec<CatalogModel>,
    ) -> Result<Self, CatalogError> {
        let created = unix_midnight(&updated).ok_or(CatalogError::Updated)?;
        let mut index = HashMap::with_capacity(models.len());
        for (i, m) in models.iter().enumerate() {
            if m.context_window == 0 {
                return Err(CatalogError::ContextWindow(m.id.clone()));
            }
            if !m.pricing.is_valid() {
                return Err(CatalogError::Price(m.id.clone()));
            }
            if index.insert(m.id.clone(), i).is_some() {
                return Err(CatalogError::Duplicate(m.id.clone()));
            }
        }
        Ok(Self {
            updated,
            created,
            source,
            models,
            index,
        })
    }

    /// The catalog file text (pretty JSON), for the operator command to write.
    pub fn to_json(&self) -> Result<String, CatalogError> {
        let file = CatalogFile {
            version: FORMAT_VERSION,
            updated: self.updated.clone(),
            source: self.source.clone(),
            models: self
                .models
                .iter()
                .map(|m| ModelEntry {
                    id: m.id.clone(),
                    name: m.name.clone(),
                    context_window: m.context_window,
                    max_output_tokens: m.max_output_tokens,
                    pricing: m.pricing,
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&file)?;
        text.push('\n');
        Ok(text)
    }

    /// The same catalog dated `updated` (`YYYY-MM-DD`): a refresh keeps the
    /// previous date, the command that writes it stamps its own.
    pub fn with_updated(mut self, updated: &str) -> Result<Self, CatalogError> {
        self.created = unix_midnight(updated).ok_or(CatalogError::Updated)?;
        self.updated = updated.to_owned();
        Ok(self)
    }

    /// Every model, in catalog order.
    pub fn models(&self) -> &[CatalogModel] {
        &self.models
    }

    /// The model with this id: canonical `provider/model`, or a bare id the
    /// gateway maps to a provider (`gpt-4o`).
    pub fn get(&self, id: &str) -> Option<&CatalogModel> {
        let position = match self.index.get(id) {
            Some(i) => Some(*i),
            None => ModelId::parse(id)
                .ok()
                .and_then(|m| self.index.get(&m.canonical()).copied()),
        };
        position.and_then(|i| self.models.get(i))
    }

    /// The list-price cost in USD of a request to `id`; `None` for a model
    /// the catalog does not know.
    pub fn price(&self, id: &str, prompt_tokens: u64, completion_tokens: u64) -> Option<f64> {
        self.get(id)
            .map(|m| m.pricing.cost(prompt_tokens, completion_tokens))
    }

    /// The catalog's date, `YYYY-MM-DD`.
    pub fn updated(&self) -> &str {
        &self.updated
    }

    /// The catalog's date at midnight UTC, in Unix seconds.
    pub fn created(&self) -> i64 {
        self.created
    }

    /// Where the catalog's data comes from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// How `snapshot`'s user would reach `model`: the path resolution would
/// take, or `None` when no credential may serve it (no credential, or only
/// a team one without consent). Runs the resolution contract itself.
pub fn accessibility(
    snapshot: &UserSnapshot,
    model: &ModelId,
    team: &TeamCredentials,
    upstreams: &Upstreams,
) -> Option<ResolutionPath> {
    // Span-free: `/v1/models` asks this for every catalog entry at once.
    crate::resolve::choose(snapshot, model, team, upstreams)
        .ok()
        .map(|r| r.path)
}

/// One entry of the gateway's list, read leniently: an entry that does not
/// fit is skipped, not fatal.
#[derive(Deserialize)]
struct GatewayModel {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    context_window: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    pricing: Option<GatewayPricing>,
}

#[derive(Deserialize)]
struct GatewayPricing {
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    output: Option<Value>,
}

#[derive(Deserialize)]
struct GatewayList {
    data: Vec<Value>,
}

/// Merges the Vercel AI Gateway's public model list (`GET
/// https://ai-gateway.vercel.sh/v1/models`: `{"object":"list","data":[…]}`,
/// prices per token as decimal strings) over `current`.
///
/// Only language models (`type` `"language"` or absent) are read. A model
/// in both takes the gateway's name, context window, output limit and
/// prices, each only where the gateway gives a usable value; a model only
/// in `current` is kept; a new model needs a context window and both prices
/// and is appended (sorted by id) after `current`'s models. The result keeps
/// `current`'s date ([`Catalog::with_updated`] sets a new one). A list with
/// no usable language model is refused, so a bad download never empties a
/// catalog.
pub fn refresh_from_gateway_list(json: &str, current: &Catalog) -> Result<Catalog, CatalogError> {
    let list: GatewayList = serde_json::from_str(json)?;
    let mut models = current.models.clone();
    let mut added = Vec::new();
    let mut seen = HashSet::new();
    for raw in list.data {
        let Ok(entry) = serde_json::from_value::<GatewayModel>(raw) else {
            continue;
        };
        if entry.kind.as_deref().is_some_and(|k| k != "language") {
            continue;
        }
        let Some(model) = canonical_id(&entry.id) else {
            continue;
        };
        if !seen.insert(entry.id.clone()) {
            continue;
        }
        let existing = current
            .index
            .get(&entry.id)
            .and_then(|i| current.models.get(*i));
        let name = entry
            .name
            .filter(|n| !n.trim().is_empty())
            .or_else(|| existing.map(|m| m.name.clone()))
            .unwrap_or_else(|| entry.id.clone());
        let context_window = entry
            .context_window
            .as_ref()
            .and_then(positive_integer)
            .or_else(|| existing.map(|m| m.context_window));
        let max_output_tokens = entry
            .max_tokens
            .as_ref()
            .and_then(positive_integer)
            .or_else(|| existing.and_then(|m| m.max_output_tokens));
        let gateway_pricing = entry.pricing.and_then(|p| {
            Some(Pricing {
                input: per_million(p.input.as_ref()?)?,
                output: per_million(p.output.as_ref()?)?,
            })
        });
        let pricing = gateway_pricing.or_else(|| existing.map(|m| m.pricing));
        let (Some(context_window), Some(pricing)) = (context_window, pricing) else {
            continue;
        };
        let merged = CatalogModel {
            id: entry.id,
            model,
            name,
            context_window,
            max_output_tokens,
            pricing,
        };
        match current
            .index
            .get(&merged.id)
            .and_then(|i| models.get_mut(*i))
        {
            Some(slot) => *slot = merged,
            None => added.push(merged),
        }
    }
    if seen.is_empty() {
        return Err(CatalogError::EmptyGatewayList);
    }
    added.sort_by(|a, b| a.id.cmp(&b.id));
    models.extend(added);
    Catalog::build(current.updated.clone(), GATEWAY_SOURCE.to_owned(), models)
}

/// The id parsed, if it is already canonical `provider/model`.
fn canonical_id(id: &str) -> Option<ModelId> {
    ModelId::parse(id).ok().filter(|m| m.canonical() == id)
}

/// A positive integer given as a JSON number (or a numeric string).
fn positive_integer(value: &Value) -> Option<u64> {
    let n = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 1.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    (n > 0).then_some(n)
}

/// A per-token price (decimal string or number) as USD per 1M tokens,
/// rounded to 1e-9 so `"0.0000025"` becomes exactly `2.5`.
fn per_million(value: &Value) -> Option<f64> {
    let per_token = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    let per_m = (per_token * PER_MILLION * 1e9).round() / 1e9;
    (per_m.is_finite() && per_m >= 0.0).then_some(per_m)
}

/// `YYYY-MM-DD` at midnight UTC, in Unix seconds.
fn unix_midnight(date: &str) -> Option<i64> {
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    let date = time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(id: &str, input: f64, context: u64) -> String {
        format!(
            r#"{{"version":1,"updated":"2026-01-02","source":"t","models":[
                {{"id":"{id}","name":"M","context_window":{context},"pricing":{{"input":{input},"output":1.0}}}}]}}"#
        )
    }

    #[test]
    fn builtin_catalog_is_valid() {
        let catalog = Catalog::builtin().unwrap();
        assert!(catalog.models().len() >= 30);
        assert_eq!(catalog.created(), 1_793_491_200); // 2026-11-01T00:00:00Z
        let mini = catalog.get("openai/gpt-4o-mini").unwrap();
        assert_eq!(mini.owned_by(), "openai");
        assert_eq!(
            mini.pricing(),
            Pricing {
                input: 0.15,
                output: 0.6
            }
        );
        assert_eq!(
            catalog.get("gpt-4o-mini").map(CatalogModel::id),
            Some("openai/gpt-4o-mini")
        );
        assert!(catalog.get("openai/no-such-model").is_none());
    }

    #[test]
    fn prices_requests() {
        let catalog = Catalog::builtin().unwrap();
        let cost = catalog
            .price("openai/gpt-4o-mini", 1_000_000, 500_000)
            .unwrap();
        assert!((cost - 0.45).abs() < 1e-12, "{cost}");
        assert_eq!(catalog.price("openai/gpt-4o-mini", 0, 0), Some(0.0));
        assert_eq!(catalog.price("nobody/nothing", 10, 10), None);
    }

    #[test]
    fn refuses_invalid_catalogs() {
        assert!(Catalog::from_json(&one("openai/x", 1.0, 10)).is_ok());
        assert!(matches!(
            Catalog::from_json(&one("gpt-4o", 1.0, 10)),
            Err(CatalogError::Id(_))
        ));
        assert!(matches!(
            Catalog::from_json(&one("Open/x", 1.0, 10)),
            Err(CatalogError::Id(_))
        ));
        assert!(matches!(
            Catalog::from_json(&one("openai/x", -1.0, 10)),
            Err(CatalogError::Price(_))
        ));
        assert!(matches!(
            Catalog::from_json(&one("openai/x", 1.0, 0)),
            Err(CatalogError::ContextWindow(_))
        ));
        let twice = r#"{"version":1,"updated":"2026-01-02","models":[
            {"id":"a/b","name":"B","context_window":1,"pricing":{"input":0,"output":0}},
            {"id":"a/b","name":"B","context_window":1,"pricing":{"input":0,"output":0}}]}"#;
        assert!(matches!(
            Catalog::from_json(twice),
            Err(CatalogError::Duplicate(_))
        ));
        let v2 = one("openai/x", 1.0, 10).replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            Catalog::from_json(&v2),
            Err(CatalogError::Version(2))
        ));
        let bad_date = one("openai/x", 1.0, 10).replace("2026-01-02", "2026-13-02");
        assert!(matches!(
            Catalog::from_json(&bad_date),
            Err(CatalogError::Updated)
        ));
        let unknown = one("openai/x", 1.0, 10).replace("\"name\"", "\"nme\"");
        assert!(matches!(
            Catalog::from_json(&unknown),
            Err(CatalogError::Json(_))
        ));
    }

    #[test]
    fn round_trips_through_json() {
        let catalog = Catalog::builtin().unwrap();
        let again = Catalog::from_json(&catalog.to_json().unwrap()).unwrap();
        assert_eq!(again.models(), catalog.models());
        assert_eq!(again.updated(), catalog.updated());
        let dated = again.with_updated("2027-03-04").unwrap();
        assert_eq!(dated.updated(), "2027-03-04");
        assert!(dated.with_updated("yesterday").is_err());
    }

    #[test]
    fn converts_per_token_prices() {
        let s = |t: &str| per_million(&Value::String(t.to_owned()));
        assert_eq!(s("0.0000025"), Some(2.5));
        assert_eq!(s("0.00000015"), Some(0.15));
        assert_eq!(s("0.000075"), Some(75.0));
        assert_eq!(s("0"), Some(0.0));
        assert_eq!(s("-0.000001"), None);
        assert_eq!(s("free"), None);
        assert_eq!(per_million(&serde_json::json!(3e-6)), Some(3.0));
    }
}

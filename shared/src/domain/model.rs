//! Model ids: `provider/model`, or a bare id mapped to its provider by prefix.

use super::Service;
use super::provider::ModelIds;

/// A parsed model id: the provider namespace and the model name within it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelId {
    namespace: String,
    name: String,
}

/// Why a model id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("model is required")]
    Empty,
    #[error("model ids are provider/model (e.g. openai/gpt-4o-mini) or a known bare id")]
    Malformed,
    #[error("no provider is known for a bare model id like this; use provider/model")]
    UnknownBareId,
}

const MAX_LEN: usize = 256;

impl ModelId {
    pub fn parse(raw: &str) -> Result<Self, ModelError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(ModelError::Empty);
        }
        if raw.len() > MAX_LEN || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ModelError::Malformed);
        }
        if let Some((namespace, name)) = raw.split_once('/') {
            let ns_ok = !namespace.is_empty()
                && namespace
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !ns_ok || name.is_empty() || name.starts_with('/') {
                return Err(ModelError::Malformed);
            }
            return Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        let service = bare_id_owner(raw).ok_or(ModelError::UnknownBareId)?;
        Ok(Self {
            namespace: service.as_str().to_owned(),
            name: raw.to_owned(),
        })
    }

    /// The provider namespace (`openai` in `openai/gpt-4o-mini`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The model name within the namespace (`gpt-4o-mini`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `provider/model`.
    pub fn canonical(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The service that can serve this model directly with its own key, if
    /// the namespace names one (never the gateway: it is not a model provider).
    pub fn direct_service(&self) -> Option<Service> {
        self.namespace
            .parse::<Service>()
            .ok()
            .filter(|svc| svc.provider().hosts_models)
    }

    /// The id `service` receives upstream: `provider/model` for gateway and
    /// OpenRouter, the bare name for a direct provider. Anthropic's own API
    /// names versions with dashes (`claude-sonnet-4-5`) where the gateway and
    /// OpenRouter catalogues use dots (`claude-sonnet-4.5`), so a dot between
    /// two digits becomes a dash for direct Anthropic calls.
    pub fn upstream_for(&self, service: Service) -> String {
        match service.provider().model_ids {
            ModelIds::Namespaced => self.canonical(),
            ModelIds::BareDashedVersions => dashed_version(&self.name),
            ModelIds::Bare => self.name.clone(),
            ModelIds::Prefixed(_) if self.name.contains('/') => self.name.clone(),
            ModelIds::Prefixed(prefix) => format!("{prefix}{}", self.name),
        }
    }
}

/// The provider a bare id belongs to: one whose family it names whole
/// (`o1`), else one whose prefix it starts with (`gpt-`).
fn bare_id_owner(raw: &str) -> Option<Service> {
    let owns = |svc: &&Service| svc.provider().bare_model_names.contains(&raw);
    Service::ALL.iter().find(owns).copied().or_else(|| {
        Service::ALL.into_iter().find(|svc| {
            svc.provider()
                .bare_model_prefixes
                .iter()
                .any(|prefix| raw.starts_with(prefix))
        })
    })
}

/// `claude-sonnet-4.5` → `claude-sonnet-4-5`; other dots are kept.
fn dashed_version(name: &str) -> String {
    let bytes = name.as_bytes();
    name.char_indices()
        .map(|(i, c)| {
            let between_digits = c == '.'
                && i > 0
                && bytes[i - 1].is_ascii_digit()
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
            if between_digits { '-' } else { c }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespaced_and_bare_ids() {
        let cases = [
            ("openai/gpt-4o-mini", "openai", "gpt-4o-mini"),
            (
                "anthropic/claude-3-5-sonnet",
                "anthropic",
                "claude-3-5-sonnet",
            ),
            ("mistral/mistral-large", "mistral", "mistral-large"),
            (
                "meta-llama/llama-3.1-8b:free",
                "meta-llama",
                "llama-3.1-8b:free",
            ),
            ("openrouter/auto", "openrouter", "auto"),
            ("gpt-4o", "openai", "gpt-4o"),
            ("o1-mini", "openai", "o1-mini"),
            ("o3-mini", "openai", "o3-mini"),
            ("o4-mini", "openai", "o4-mini"),
            ("o3", "openai", "o3"),
            ("claude-3-haiku", "anthropic", "claude-3-haiku"),
            ("gemini-2.0-flash", "google", "gemini-2.0-flash"),
            ("grok-2", "xai", "grok-2"),
            (" openai/gpt-4o ", "openai", "gpt-4o"),
        ];
        for (raw, ns, name) in cases {
            let id = ModelId::parse(raw).expect(raw);
            assert_eq!((id.namespace(), id.name()), (ns, name), "{raw}");
        }
    }

    #[test]
    fn refuses_bad_ids() {
        let cases = [
            ("", ModelError::Empty),
            ("llama-3", ModelError::UnknownBareId),
            ("o2-mini", ModelError::UnknownBareId),
            ("/gpt-4o", ModelError::Malformed),
            ("openai/", ModelError::Malformed),
            ("OpenAI/gpt-4o", ModelError::Malformed),
            ("openai//gpt", ModelError::Malformed),
            ("openai/gpt 4o", ModelError::Malformed),
        ];
        for (raw, want) in cases {
            assert_eq!(ModelId::parse(raw), Err(want), "{raw:?}");
        }
        assert_eq!(ModelId::parse(&"a".repeat(300)), Err(ModelError::Malformed));
    }

    #[test]
    fn upstream_ids_per_service() {
        let id = ModelId::parse("gpt-4o-mini").unwrap();
        assert_eq!(id.upstream_for(Service::OpenAi), "gpt-4o-mini");
        assert_eq!(id.upstream_for(Service::Gateway), "openai/gpt-4o-mini");
        assert_eq!(id.upstream_for(Service::OpenRouter), "openai/gpt-4o-mini");
        assert_eq!(id.direct_service(), Some(Service::OpenAi));
        assert_eq!(
            ModelId::parse("meta-llama/x").unwrap().direct_service(),
            None
        );
        let service = |id: &str| id.parse::<Service>().unwrap();
        // Fireworks names models under its account path; a full id stays.
        let fireworks = ModelId::parse("fireworks/gpt-oss-120b").unwrap();
        assert_eq!(
            fireworks.upstream_for(service("fireworks")),
            "accounts/fireworks/models/gpt-oss-120b"
        );
        let full = ModelId::parse("fireworks/accounts/acme/models/tuned").unwrap();
        assert_eq!(
            full.upstream_for(service("fireworks")),
            "accounts/acme/models/tuned"
        );
        // Together's ids are org/model.
        let llama = ModelId::parse("together/meta-llama/Llama-3.3-70B-Instruct-Turbo").unwrap();
        assert_eq!(llama.direct_service(), Some(service("together")));
        assert_eq!(
            llama.upstream_for(service("together")),
            "meta-llama/Llama-3.3-70B-Instruct-Turbo"
        );
        // Bare ids only where one provider owns the name.
        for (bare, owner) in [
            ("mistral-large-latest", "mistral"),
            ("deepseek-v4-flash", "deepseek"),
            ("sonar", "perplexity"),
            ("sonar-pro", "perplexity"),
            ("command-a-03-2025", "cohere"),
        ] {
            assert_eq!(
                ModelId::parse(bare).unwrap().direct_service(),
                Some(service(owner)),
                "{bare}"
            );
        }
        assert_eq!(
            ModelId::parse("Llama-3.3-70B-Instruct-Turbo"),
            Err(ModelError::UnknownBareId),
            "hosted by several: no bare owner"
        );
        assert_eq!(ModelId::parse("gateway/x").unwrap().direct_service(), None);
        let claude = ModelId::parse("anthropic/claude-sonnet-4.5").unwrap();
        assert_eq!(claude.upstream_for(Service::Anthropic), "claude-sonnet-4-5");
        assert_eq!(
            claude.upstream_for(Service::OpenRouter),
            "anthropic/claude-sonnet-4.5"
        );
        let dated = ModelId::parse("claude-3-5-haiku-latest").unwrap();
        assert_eq!(
            dated.upstream_for(Service::Anthropic),
            "claude-3-5-haiku-latest"
        );
    }
}

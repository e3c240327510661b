//! The price table: US dollars per million tokens per model, shipped in `prices.toml` and
//! replaceable model by model with the operator's `PRICES_FILE`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

const SHIPPED: &str = include_str!("prices.toml");

/// Tokens billed for one turn (or a sum of turns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenCounts {
    /// Every input token, cached ones included.
    pub input: u64,
    pub cached_input: u64,
    /// Every output token, reasoning ones included.
    pub output: u64,
    pub reasoning: u64,
    /// Tokens of the embeddings call of the turn's knowledge-base lookup.
    pub embedding: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    models: BTreeMap<String, ModelPrice>,
}

#[derive(Clone, Debug)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    /// The shipped table.
    pub fn shipped() -> Self {
        let file: PriceFile = toml::from_str(SHIPPED).expect("the shipped price table parses");
        Self { models: file.models }
    }

    /// The shipped table with the models of `path` replacing or adding to it. Errors name the file,
    /// the line and the key.
    pub fn with_overrides(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("invalid setting PRICES_FILE: cannot read {}: {e}", path.display()))?;
        let file: PriceFile = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1).unwrap_or(0);
            anyhow::anyhow!("invalid setting PRICES_FILE: {}, line {line}: {}", path.display(), e.message())
        })?;
        for (model, p) in &file.models {
            if [p.input, p.cached_input, p.output].iter().any(|v| !v.is_finite() || *v < 0.0) {
                anyhow::bail!("invalid setting PRICES_FILE: {}: model {model:?} has a negative or invalid price", path.display());
            }
        }
        let mut table = Self::shipped();
        table.models.extend(file.models);
        Ok(table)
    }

    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }

    /// The cost of `tokens` of a chat `model` (embeddings priced with `embedding_model`), in
    /// millionths of a dollar.
    pub fn micro_usd(&self, model: &str, embedding_model: &str, tokens: &TokenCounts) -> u64 {
        let mut usd = 0.0;
        if let Some(p) = self.get(model) {
            let uncached = tokens.input.saturating_sub(tokens.cached_input);
            usd += (uncached as f64 * p.input + tokens.cached_input as f64 * p.cached_input + tokens.output as f64 * p.output) / 1e6;
        }
        if let Some(p) = self.get(embedding_model) {
            usd += tokens.embedding as f64 * p.input / 1e6;
        }
        (usd * 1e6).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_prices_the_readme_models() {
        let t = PriceTable::shipped();
        for model in ["gpt-4.1-mini", "text-embedding-3-small"] {
            assert!(t.get(model).is_some(), "{model}");
        }
        // 1M uncached input + 1M cached + 1M output of gpt-4.1-mini: 0.40 + 0.10 + 1.60 dollars.
        let tokens = TokenCounts { input: 2_000_000, cached_input: 1_000_000, output: 1_000_000, ..Default::default() };
        assert_eq!(t.micro_usd("gpt-4.1-mini", "text-embedding-3-small", &tokens), 2_100_000);
        let embedding = TokenCounts { embedding: 1_000_000, ..Default::default() };
        assert_eq!(t.micro_usd("unknown-model", "text-embedding-3-small", &embedding), 20_000);
    }

    #[test]
    fn an_override_file_replaces_models_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.toml");
        std::fs::write(&path, "[models.\"gpt-4.1-mini\"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\n").unwrap();
        let t = PriceTable::with_overrides(&path).unwrap();
        assert_eq!(t.get("gpt-4.1-mini").unwrap().input, 1.0);
        assert!(t.get("gpt-4.1").is_some(), "shipped models stay");
        std::fs::write(&path, "[models.\"x\"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\nprompt = 3\n").unwrap();
        let err = PriceTable::with_overrides(&path).unwrap_err().to_string();
        assert!(err.contains("PRICES_FILE") && err.contains("line 5") && err.contains("prompt"), "{err}");
    }
}

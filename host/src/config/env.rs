//! Reading settings from a variable lookup: one parser per kind of value, each error naming
//! the variable.

use std::collections::BTreeSet;

use super::{ConfigError, invalid};

pub(crate) struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    pub(crate) fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { get }
    }

    /// The raw value, as set (possibly empty).
    pub(crate) fn raw(&self, name: &str) -> Option<String> {
        (self.get)(name)
    }

    /// The trimmed value; unset and blank are the same.
    pub(crate) fn text(&self, name: &str) -> Option<String> {
        self.raw(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    pub(crate) fn is_set(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    /// `true`/`false` (and `1`/`0`, `yes`/`no`, `on`/`off`), `None` when unset.
    pub(crate) fn flag_opt(&self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.text(name) {
            None => Ok(None),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(invalid(name, format!("expected true or false, got {v:?}"))),
            },
        }
    }

    pub(crate) fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.flag_opt(name)?.unwrap_or(default))
    }

    pub(crate) fn number(&self, name: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        match self.text(name) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(invalid(name, format!("expected an integer from {min} to {max}, got {v:?}"))),
            },
        }
    }

    /// Telegram user ids separated by commas, spaces or semicolons.
    pub(crate) fn ids(&self, name: &'static str) -> Result<Option<BTreeSet<i64>>, ConfigError> {
        let Some(v) = self.text(name) else { return Ok(None) };
        v.split([',', ' ', ';'])
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<i64>().map_err(|_| invalid(name, format!("{s:?} is not a Telegram user id"))))
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Some)
    }
}

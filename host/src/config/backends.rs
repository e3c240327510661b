//! Per-backend settings: where a backend's API is, which environment variable holds its key,
//! its model, instructions, timeouts and the options only its plugin understands.
//!
//! They come from the config file (`SWAPBOT_CONFIG`, default `swapbot.toml` when present) and the
//! environment. The most specific value wins: `BACKEND_<NAME>_<FIELD>` (and the shipped
//! backends' own variables such as `RESPONSES_STREAM`), then the file's `[backends.<name>]`, then
//! the process-wide `OPENAI_*` variables, then the built-in defaults. A backend with no section
//! (a plugin dropped into `PLUGIN_DIR`) gets the process-wide values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// A backend's name: its plugin file is `<name>.wasm`.
pub fn valid_backend_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 64
}

/// The backend a plugin file serves: `<name>.wasm` with a valid name. Dot-files, editor temp
/// files and other extensions are not plugins.
pub fn backend_of_file(path: &Path) -> Option<&str> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".wasm")?;
    valid_backend_name(stem).then_some(stem)
}

/// One backend's resolved settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    pub base_url: String,
    /// The environment variable that holds its API key; `None` for a server that needs none.
    pub api_key_env: Option<String>,
    pub model: String,
    pub instructions: String,
    /// Bound on one non-streamed request, and on a stream's silence.
    pub request_timeout: Duration,
    pub poll_interval: Duration,
    /// How long a run, a background response or a stream may take.
    pub deadline: Duration,
    /// `settings.options` of its plugin, in the order written, later keys replacing earlier ones.
    pub options: Vec<(String, String)>,
}

impl BackendConfig {
    fn set_option(&mut self, key: String, value: String) {
        match self.options.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.options.push((key, value)),
        }
    }

    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Every backend's settings, plus the values a backend without a section gets.
#[derive(Clone, Debug)]
pub struct Backends {
    defaults: BackendConfig,
    sections: BTreeMap<String, BackendConfig>,
    /// The value of every key variable any backend names (read once at start: nothing reads the
    /// environment while the bot serves).
    keys: BTreeMap<String, String>,
}

impl Backends {
    /// The settings of `name`, configured or not.
    pub fn get(&self, name: &str) -> BackendConfig {
        self.sections.get(name).cloned().unwrap_or_else(|| self.defaults.clone())
    }

    /// Backends with a section in the file or the environment.
    pub fn configured(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// The API key of a backend: `Ok(None)` when it needs none, an error naming the variable
    /// when it needs one that is not set.
    pub fn api_key(&self, config: &BackendConfig) -> Result<Option<&str>, ConfigError> {
        match &config.api_key_env {
            None => Ok(None),
            Some(var) => self.keys.get(var).map(|k| Some(k.as_str())).ok_or_else(|| ConfigError {
                // The process-wide key is named as ever; another variable is the section's choice.
                name: if var == "OPENAI_API_KEY" { "OPENAI_API_KEY" } else { "api_key_env" },
                message: format!("{var} is not set (the backend's api_key_env names it; make sandbox prints a local one)"),
            }),
        }
    }

    /// Every key value, for redaction from the logs.
    pub fn key_values(&self) -> impl Iterator<Item = &str> {
        self.keys.values().map(String::as_str)
    }
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub routing: Option<FileRouting>,
    #[serde(default)]
    pub backends: BTreeMap<String, FileBackend>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouting {
    pub default: Option<String>,
    pub canary: Option<String>,
    pub canary_enabled: Option<bool>,
    pub canary_percent: Option<u8>,
    pub test_users: Option<BTreeSet<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    base_url: Option<String>,
    /// `""` for a server that needs no key.
    api_key_env: Option<String>,
    model: Option<String>,
    instructions: Option<String>,
    instructions_file: Option<PathBuf>,
    timeout_secs: Option<u64>,
    poll_interval_ms: Option<u64>,
    deadline_secs: Option<u64>,
    #[serde(default)]
    options: BTreeMap<String, OptionValue>,
}

/// An option's value as TOML allows writing it; plugins get text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OptionValue {
    Text(String),
    Bool(bool),
    Integer(i64),
    Float(f64),
}

impl OptionValue {
    fn into_text(self) -> String {
        match self {
            OptionValue::Text(s) => s,
            OptionValue::Bool(b) => b.to_string(),
            OptionValue::Integer(n) => n.to_string(),
            OptionValue::Float(x) => x.to_string(),
        }
    }
}

/// Reads the config file; errors name the file, the line and the key.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("SWAPBOT_CONFIG", format!("cannot read {}: {e}", path.display())))?;
    parse_file(path, &text)
}

pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let (line, source) = match e.span() {
            Some(span) => {
                let line = text[..span.start].matches('\n').count() + 1;
                (line, text.lines().nth(line - 1).unwrap_or_default().trim().to_owned())
            }
            None => (0, String::new()),
        };
        invalid("SWAPBOT_CONFIG", format!("{}, line {line} (`{source}`): {}", path.display(), e.message().trim()))
    })?;
    for name in file.backends.keys() {
        if !valid_backend_name(name) {
            return Err(invalid(
                "SWAPBOT_CONFIG",
                format!("{}: [backends.{name}]: a backend name is [a-z][a-z0-9-]* (the plugin file is <name>.wasm)", path.display()),
            ));
        }
    }
    Ok(file)
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The fields a backend may be given in the environment.
const ENV_FIELDS: [&str; 5] = ["BASE_URL", "API_KEY_ENV", "MODEL", "INSTRUCTIONS", "OPTIONS"];

/// The backends that `BACKEND_<NAME>_<FIELD>` variables name (`_` in the name stands for `-`).
pub fn names_in_env(variables: &[String]) -> BTreeSet<String> {
    variables
        .iter()
        .filter_map(|var| {
            let rest = var.strip_prefix("BACKEND_")?;
            let field = ENV_FIELDS.iter().find(|f| rest.ends_with(&format!("_{f}")))?;
            let name = rest[..rest.len() - field.len() - 1].to_ascii_lowercase().replace('_', "-");
            valid_backend_name(&name).then_some(name)
        })
        .collect()
}

/// `BACKEND_CHAT_BASE_URL` for backend `chat` and field `BASE_URL`.
pub fn env_name(backend: &str, field: &str) -> String {
    format!("BACKEND_{}_{field}", backend.to_ascii_uppercase().replace('-', "_"))
}

fn duration(
    value: Option<u64>,
    what: &str,
    unit: fn(u64) -> Duration,
    range: std::ops::RangeInclusive<u64>,
    file: &Path,
    backend: &str,
) -> Result<Option<Duration>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if range.contains(&v) => Ok(Some(unit(v))),
        Some(v) => Err(invalid(
            "SWAPBOT_CONFIG",
            format!("{}: backends.{backend}.{what} = {v}: expected {} to {}", file.display(), range.start(), range.end()),
        )),
    }
}

/// Resolves every backend's settings: `defaults` from the process-wide environment, the file's
/// sections over them, then the per-backend environment (`legacy_options` included) over those.
pub fn resolve(
    defaults: BackendConfig,
    file: Option<(&Path, FileConfig)>,
    legacy_options: Vec<(&'static str, Vec<(String, String)>)>,
    get: Lookup<'_>,
    more_names: BTreeSet<String>,
) -> Result<(Backends, Option<FileRouting>), ConfigError> {
    let mut sections = BTreeMap::new();
    let mut routing = None;
    if let Some((path, file)) = file {
        routing = file.routing;
        for (name, section) in file.backends {
            let mut b = defaults.clone();
            if let Some(url) = section.base_url {
                b.base_url = url;
            }
            if let Some(var) = section.api_key_env {
                b.api_key_env = Some(var).filter(|v| !v.trim().is_empty());
            }
            if let Some(model) = section.model {
                b.model = model;
            }
            match (section.instructions, section.instructions_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "SWAPBOT_CONFIG",
                        format!("{}: backends.{name}: set instructions or instructions_file, not both", path.display()),
                    ));
                }
                (Some(text), None) => b.instructions = text,
                (None, Some(file)) => {
                    let file = path.parent().unwrap_or(Path::new(".")).join(file);
                    b.instructions = std::fs::read_to_string(&file)
                        .map_err(|e| {
                            invalid("SWAPBOT_CONFIG", format!("{}: backends.{name}.instructions_file: cannot read {}: {e}", path.display(), file.display()))
                        })?
                        .trim()
                        .to_owned();
                }
                (None, None) => {}
            }
            if let Some(d) = duration(section.timeout_secs, "timeout_secs", Duration::from_secs, 1..=3600, path, &name)? {
                b.request_timeout = d;
            }
            if let Some(d) = duration(section.poll_interval_ms, "poll_interval_ms", Duration::from_millis, 50..=60_000, path, &name)? {
                b.poll_interval = d;
            }
            if let Some(d) = duration(section.deadline_secs, "deadline_secs", Duration::from_secs, 1..=3600, path, &name)? {
                b.deadline = d;
            }
            for (key, value) in section.options {
                b.set_option(key, value.into_text());
            }
            sections.insert(name, b);
        }
    }
    // The shipped backends' own variables: they configure those two even without a section.
    for (name, options) in legacy_options {
        if options.is_empty() {
            continue;
        }
        let b = sections.entry(name.to_owned()).or_insert_with(|| defaults.clone());
        for (key, value) in options {
            b.set_option(key, value);
        }
    }
    // `BACKEND_<NAME>_*` for every backend the file or the routing names.
    let mut names: BTreeSet<String> = sections.keys().cloned().collect();
    names.extend(more_names);
    if let Some(r) = &routing {
        names.extend(r.default.iter().chain(r.canary.iter()).cloned());
    }
    for var in ["DEFAULT_BACKEND", "CANARY_BACKEND"] {
        names.extend(get(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()));
    }
    for name in names {
        let text = |field: &str| get(&env_name(&name, field)).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if ENV_FIELDS.iter().all(|f| text(f).is_none()) && get(&env_name(&name, "API_KEY_ENV")).is_none() {
            continue;
        }
        let b = sections.entry(name.clone()).or_insert_with(|| defaults.clone());
        if let Some(url) = text("BASE_URL") {
            b.base_url = url;
        }
        if let Some(var) = get(&env_name(&name, "API_KEY_ENV")) {
            b.api_key_env = Some(var.trim().to_owned()).filter(|v| !v.is_empty());
        }
        if let Some(model) = text("MODEL") {
            b.model = model;
        }
        if let Some(instructions) = text("INSTRUCTIONS") {
            b.instructions = instructions;
        }
        if let Some(options) = text("OPTIONS") {
            // `key=value` pairs separated by `;` or newlines (values may hold spaces and commas).
            for pair in options.split([';', '\n']).map(str::trim).filter(|p| !p.is_empty()) {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(ConfigError {
                        name: "BACKEND_<NAME>_OPTIONS",
                        message: format!("{}: expected key=value;key=value, got {pair:?}", env_name(&name, "OPTIONS")),
                    });
                };
                b.set_option(key.trim().to_owned(), value.trim().to_owned());
            }
        }
    }
    for (name, b) in &sections {
        if !(b.base_url.starts_with("http://") || b.base_url.starts_with("https://")) {
            return Err(invalid("SWAPBOT_CONFIG", format!("backend {name}: base_url must start with http:// or https://, got {:?}", b.base_url)));
        }
    }
    let mut keys = BTreeMap::new();
    for var in defaults.api_key_env.iter().chain(sections.values().filter_map(|b| b.api_key_env.as_ref())) {
        if let Some(value) = get(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
            keys.insert(var.clone(), value);
        }
    }
    Ok((Backends { defaults, sections, keys }, routing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn defaults() -> BackendConfig {
        BackendConfig {
            base_url: "https://api.example/v1".into(),
            api_key_env: Some("OPENAI_API_KEY".into()),
            model: "m0".into(),
            instructions: "be brief".into(),
            request_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            deadline: Duration::from_secs(90),
            options: vec![],
        }
    }

    fn resolve_with(toml: &str, env: &[(&str, &str)]) -> Result<Backends, ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let path = Path::new("swapbot.toml");
        let file = parse_file(path, toml)?;
        let names = names_in_env(&env.keys().cloned().collect::<Vec<_>>());
        resolve(defaults(), Some((path, file)), vec![], &|k| env.get(k).cloned(), names).map(|(b, _)| b)
    }

    #[test]
    fn a_section_overrides_the_defaults_and_the_environment_overrides_the_section() {
        let toml = r#"
[backends.chat]
base_url = "http://127.0.0.1:11434/v1"
api_key_env = ""
model = "llama3"
[backends.chat.options]
stream = false
history-tokens = 4000
"#;
        let b = resolve_with(toml, &[("OPENAI_API_KEY", "sk-test-key")]).unwrap();
        let chat = b.get("chat");
        assert_eq!((chat.base_url.as_str(), chat.model.as_str(), chat.api_key_env.as_deref()), ("http://127.0.0.1:11434/v1", "llama3", None));
        assert_eq!(chat.options, vec![("history-tokens".to_string(), "4000".to_string()), ("stream".into(), "false".into())]);
        assert_eq!(b.api_key(&chat).unwrap(), None, "a local server gets no key");
        let unknown = b.get("echo");
        assert_eq!(unknown, defaults(), "a backend without a section gets the process-wide values");
        assert_eq!(b.api_key(&unknown).unwrap(), Some("sk-test-key"));

        let b = resolve_with(
            toml,
            &[("BACKEND_CHAT_MODEL", "qwen"), ("BACKEND_CHAT_OPTIONS", "stream=true; temperature=0.2"), ("BACKEND_CHAT_API_KEY_ENV", "GROQ_KEY")],
        )
        .unwrap();
        let chat = b.get("chat");
        assert_eq!(chat.model, "qwen");
        assert_eq!(chat.option("stream"), Some("true"));
        assert_eq!(chat.option("temperature"), Some("0.2"));
        assert_eq!(chat.option("history-tokens"), Some("4000"));
        let err = b.api_key(&chat).unwrap_err();
        assert!(err.message.contains("GROQ_KEY"), "{err}");
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let err = resolve_with("[backends.chat]\nbase_url = \"http://x\"\nmdoel = \"llama3\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("swapbot.toml, line 3"), "{err}");
        assert!(err.to_string().contains("mdoel"), "{err}");
        let err = resolve_with("[backends.Chat]\n", &[]).unwrap_err();
        assert!(err.to_string().contains("backends.Chat"), "{err}");
        let err = resolve_with("[backends.chat]\nbase_url = \"ftp://x\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("base_url"), "{err}");
        let err = resolve_with("[backends.chat]\ntimeout_secs = 0\n", &[]).unwrap_err();
        assert!(err.to_string().contains("backends.chat.timeout_secs"), "{err}");
    }

    #[test]
    fn the_environment_configures_a_backend_no_file_names() {
        let b = resolve_with("", &[("BACKEND_ECHO_2_MODEL", "m2"), ("BACKEND_X_NOPE", "1")]).unwrap();
        assert_eq!(b.get("echo-2").model, "m2");
        assert_eq!(names_in_env(&["BACKEND_ECHO_2_MODEL".into(), "BACKEND__MODEL".into(), "OPENAI_MODEL".into()]), ["echo-2".to_string()].into());
    }

    #[test]
    fn names_are_plugin_file_stems() {
        for ok in ["chat", "responses", "echo-2", "a"] {
            assert!(valid_backend_name(ok), "{ok}");
        }
        for bad in ["", "Chat", "2chat", "chat.v2", "../x", "chat_x", ".hidden"] {
            assert!(!valid_backend_name(bad), "{bad}");
        }
    }
}

//! Loading a [`Config`] from its layers: built-in defaults < TOML file <
//! `ROOMQ_*` environment variables < command-line flags, with errors a
//! newcomer can act on (the variable, the valid values) and relative paths
//! in a file taken from the file's folder.

use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Visitor};

use super::{
    Access, AuthConfig, ClusterConfig, Config, ConfigError, Durability, ListenerKind, LogFormat,
    RoomsDefault, StorageKind,
};

/// Environment variables are `ROOMQ_` and a field in capitals; a field of
/// a section (`[auth]`, `[cluster]`) follows the section's name after
/// this (field names themselves hold single underscores).
const SECTION_SEPARATOR: &str = "__";

impl Config {
    /// Loads the layers: defaults, then `file` (TOML) if given, then
    /// `ROOMQ_*` environment variables (e.g. `ROOMQ_MAX_CONNECTIONS=10`,
    /// `ROOMQ_AUTH__PASSWORD_FILE=/etc/roomq/passwords`), then `overrides`
    /// (key, value) pairs from command-line flags. A relative path written
    /// in the file is relative to the file's folder.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Config, ConfigError> {
        // Variables that are not UTF-8 cannot be roomq's: skipped.
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Config::load_from(file, env, overrides)
    }

    /// [`Config::load`] with the environment given as (name, value) pairs;
    /// names not starting with `ROOMQ_` are ignored, and one that starts
    /// with it but names no setting is an error naming the variable.
    pub fn load_from(
        file: Option<&Path>,
        env: Vec<(String, String)>,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.map(Path::to_path_buf),
            message,
        };
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with("ROOMQ_"))
            .collect();
        for name in env.keys() {
            check_env_name(name).map_err(|message| ConfigError { file: None, message })?;
        }
        let mut builder = config::Config::builder();
        let mut from_file = None;
        if let Some(path) = file {
            if !path.is_file() {
                return Err(err("the file does not exist or is not a regular file".into()));
            }
            let source = config::File::from(path).format(config::FileFormat::Toml);
            builder = builder.add_source(source.clone());
            from_file = Some(source);
        }
        builder = builder.add_source(
            config::Environment::with_prefix("ROOMQ")
                .prefix_separator("_")
                .separator(SECTION_SEPARATOR)
                .try_parsing(true)
                .source(Some(env)),
        );
        for (key, value) in overrides {
            builder = builder
                .set_override(*key, value.as_str())
                .map_err(|e| err(e.to_string()))?;
        }
        let layered = builder.build().map_err(|e| err(e.to_string()))?;
        let mut config: Config = layered
            .try_deserialize()
            .map_err(|e| err(with_valid_values(e.to_string())))?;
        if let (Some(path), Some(source)) = (file, from_file) {
            let folder = path.parent().unwrap_or(Path::new(""));
            let layer = config::Config::builder()
                .add_source(source)
                .build()
                .map_err(|e| err(e.to_string()))?;
            let written: Config = layer
                .clone()
                .try_deserialize()
                .map_err(|e| err(with_valid_values(e.to_string())))?;
            config.resolve_paths(&written, |key| layer.get::<config::Value>(key).is_ok(), folder);
        }
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Makes the relative paths that came from the file (`written`, with
    /// `in_file` telling which keys it set) relative to its `folder`, so a
    /// configuration works from any working directory. A path from a flag
    /// or a variable is the user's own and stays as given.
    fn resolve_paths(&mut self, written: &Config, in_file: impl Fn(&str) -> bool, folder: &Path) {
        let under = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        };
        let under_some = |path: &mut Option<PathBuf>, from_file: &Option<PathBuf>| {
            if let Some(p) = path.as_mut().filter(|p| Some(&**p) == from_file.as_ref()) {
                under(p);
            }
        };
        if in_file("data_dir") && self.data_dir == written.data_dir {
            under(&mut self.data_dir);
        }
        if in_file("web_root") && self.web_root == written.web_root {
            under(&mut self.web_root);
        }
        under_some(&mut self.auth.password_file, &written.auth.password_file);
        under_some(&mut self.auth.jwt_public_key, &written.auth.jwt_public_key);
        if let (Some(cluster), Some(from_file)) = (&mut self.cluster, &written.cluster) {
            under_some(&mut cluster.tls_ca, &from_file.tls_ca);
        }
        // Lists come from the file only.
        if self.listeners == written.listeners {
            for listener in &mut self.listeners {
                for path in [&mut listener.cert, &mut listener.key, &mut listener.client_ca]
                    .into_iter()
                    .flatten()
                {
                    under(path);
                }
            }
        }
        if self.alerts == written.alerts {
            for path in self.alerts.iter_mut().filter_map(|a| a.hmac_key_file.as_mut()) {
                under(path);
            }
        }
    }
}

/// Whether the variable `name` (`ROOMQ_…`) names a setting; else why not,
/// with the spelling that would.
fn check_env_name(name: &str) -> Result<(), String> {
    let key = name.trim_start_matches("ROOMQ_").to_ascii_lowercase();
    let parts: Vec<&str> = key.split(SECTION_SEPARATOR).collect();
    let known = match parts[..] {
        [field] => names_of::<Config>().contains(&field),
        ["auth", field] => names_of::<AuthConfig>().contains(&field),
        ["cluster", field] => names_of::<ClusterConfig>().contains(&field),
        _ => false,
    };
    if known {
        return Ok(());
    }
    let hint = ["auth", "cluster"]
        .iter()
        .find_map(|section| {
            let field = key.strip_prefix(section)?.strip_prefix('_')?;
            let sections: &[&str] = if *section == "auth" {
                names_of::<AuthConfig>()
            } else {
                names_of::<ClusterConfig>()
            };
            sections.contains(&field).then(|| {
                format!(
                    "; for `{section}.{field}` write ROOMQ_{}{SECTION_SEPARATOR}{}",
                    section.to_ascii_uppercase(),
                    field.to_ascii_uppercase()
                )
            })
        })
        .unwrap_or_else(|| {
            "; a setting is `ROOMQ_` and its name in capitals (ROOMQ_MAX_CONNECTIONS), a field of a section after two underscores (ROOMQ_AUTH__PASSWORD_FILE); docs/configuration.md lists them".into()
        });
    Err(format!("environment variable {name} names no setting{hint}"))
}

/// The config crate says "enum Durability does not have variant
/// constructor fast for key `durability`": add the values that would do.
fn with_valid_values(message: String) -> String {
    let Some(name) = message
        .split("enum ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
    else {
        return message;
    };
    let values = match name {
        "Durability" => names_of::<Durability>(),
        "StorageKind" => names_of::<StorageKind>(),
        "ListenerKind" => names_of::<ListenerKind>(),
        "LogFormat" => names_of::<LogFormat>(),
        "RoomsDefault" => names_of::<RoomsDefault>(),
        "Access" => names_of::<Access>(),
        _ => return message,
    };
    let values: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
    format!("{message}; valid values: {}", values.join(", "))
}

/// The field names of a struct, or the variant names of an enum, as
/// `T`'s `Deserialize` spells them (renames applied): the derive hands
/// them to the deserializer, and [`Probe`] keeps them.
fn names_of<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(Probe) {
        Err(Names(names)) => names,
        Ok(_) => &[],
    }
}

/// A deserializer that only asks for names (see [`names_of`]).
struct Probe;

/// What [`Probe`] ends with: the names it was given.
#[derive(Debug)]
struct Names(&'static [&'static str]);

impl std::fmt::Display for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "names {:?}", self.0)
    }
}

impl std::error::Error for Names {}

impl serde::de::Error for Names {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Names(&[])
    }
}

impl<'de> serde::Deserializer<'de> for Probe {
    type Error = Names;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Names> {
        Err(Names(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Names> {
        Err(Names(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Names> {
        Err(Names(variants))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_derive() {
        assert_eq!(names_of::<Durability>(), ["flush", "buffered"]);
        assert!(names_of::<Config>().contains(&"max_connections"));
        assert!(names_of::<AuthConfig>().contains(&"password_file"));
    }

    #[test]
    fn grouped_fields_keep_their_flat_keys() {
        // `Config` is read through the flat shape: its names are the keys.
        assert!(names_of::<Config>().contains(&"max_rooms"));
        assert!(!names_of::<Config>().contains(&"chat"));
        let env = vec![
            ("ROOMQ_MAX_ROOMS".to_string(), "3".to_string()),
            ("ROOMQ_DURABILITY".to_string(), "buffered".to_string()),
            ("ROOMQ_MAX_SESSIONS_PER_USER".to_string(), "4".to_string()),
        ];
        let config =
            Config::load_from(None, env, &[("max_connections", "7".into())]).expect("flat keys load");
        assert_eq!(config.chat.max_rooms, 3);
        assert_eq!(config.store.durability, Durability::Buffered);
        assert_eq!(config.per_user.max_sessions_per_user, 4);
        assert_eq!(config.limits.max_connections, 7);
        let grouped = vec![("ROOMQ_LIMITS__MAX_CONNECTIONS".to_string(), "7".to_string())];
        let err = Config::load_from(None, grouped, &[]).expect_err("groups are not keys");
        assert!(err.to_string().contains("names no setting"), "{err}");
    }
}

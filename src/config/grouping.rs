//! The macro that makes the grouped [`Config`](super::Config) and the flat
//! shape it is read through from one listing (`settings.rs`), so that each
//! setting's doc comment, which is its reference, is written once.

/// From one listing of the settings, makes:
/// - `Config`, the top-level settings and one field per group, what code
///   (the broker's and an embedder's) reads: `config.limits.max_connections`;
/// - each group's struct (`Limits`, …), whose `Default` is the group of
///   `Config::default()`;
/// - `FlatConfig`, every setting at the top level, spelled as the TOML
///   file, the `ROOMQ_*` variables and the flags spell it, with
///   `deny_unknown_fields`: `Config` is deserialised through it, so the
///   keys stay flat and an unknown key's error still names the key;
/// - `From<FlatConfig> for Config`, which sorts the settings into groups.
///
/// A setting is in one place only: moving it to another group moves its
/// field in code, never its key.
macro_rules! grouped_config {
    (
        $(#[$config_meta:meta])*
        pub struct Config {
            $( $(#[$top_meta:meta])* pub $top:ident : $top_ty:ty, )*
        }
        $(
            $(#[$group_meta:meta])*
            pub struct $Group:ident in $group:ident {
                $( $(#[$field_meta:meta])* pub $field:ident : $field_ty:ty, )*
            }
        )*
    ) => {
        $(#[$config_meta])*
        #[derive(Clone, Debug, serde::Deserialize)]
        #[serde(from = "FlatConfig")]
        pub struct Config {
            $( $(#[$top_meta])* pub $top: $top_ty, )*
            $( $(#[$group_meta])* pub $group: $Group, )*
        }

        $(
            $(#[$group_meta])*
            #[derive(Clone, Debug, PartialEq, Eq)]
            pub struct $Group {
                $( $(#[$field_meta])* pub $field: $field_ty, )*
            }

            impl Default for $Group {
                fn default() -> Self {
                    Config::default().$group
                }
            }
        )*

        /// Every setting as the configuration's sources spell it: one flat
        /// list of keys, with the sections (`[auth]`, `[cluster]`) and lists
        /// (`[[listeners]]`, …) of the top level. Only read, into a
        /// [`Config`], which is its `From`.
        #[derive(serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub(super) struct FlatConfig {
            $( $(#[$top_meta])* pub(super) $top: $top_ty, )*
            $( $( $(#[$field_meta])* pub(super) $field: $field_ty, )* )*
        }

        impl From<FlatConfig> for Config {
            fn from(flat: FlatConfig) -> Self {
                Config {
                    $( $top: flat.$top, )*
                    $( $group: $Group { $( $field: flat.$field, )* }, )*
                }
            }
        }
    };
}

pub(super) use grouped_config;

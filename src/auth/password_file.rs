//! The password file: one `user:hash` per line, the hash in argon2id PHC
//! form (`$argon2id$v=19$...`), as `roomq passwd FILE USER` writes it.
//! Blank lines and lines starting with `#` are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;

use super::argon2_check::HashMemory;

/// Users and their password hashes.
pub struct PasswordFile {
    pub path: PathBuf,
    users: HashMap<String, String>,
    /// Argon2 working memory, kept between checks.
    memory: HashMemory,
}

impl PasswordFile {
    /// Reads and checks the file; the error names the file and line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!(
                    "{} line {}: expected `user:hash`",
                    path.display(),
                    number + 1
                ));
            };
            if PasswordHash::new(hash).is_err() {
                return Err(format!(
                    "{} line {}: the hash for {user:?} is not a PHC string",
                    path.display(),
                    number + 1
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(PasswordFile {
            path: path.to_path_buf(),
            users,
            memory: HashMemory::default(),
        })
    }

    /// Whether `user` is in the file.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Whether `user` exists and `password` matches its hash.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(hash) = self.users.get(user) else {
            // Spend the same time as a real check, so a missing user does
            // not answer faster than a wrong password.
            self.memory.spend_a_check(password);
            return false;
        };
        self.memory.verify(password, hash)
    }
}

/// Refuses names the file cannot hold (`:` ends the name, a leading `#`
/// makes the line a comment, surrounding spaces are trimmed) and names that
/// can never be an identity in a topic (`/`, `+`, `#`, control characters:
/// `{sender}` is one topic level, and ACL patterns refuse them).
pub fn check_user_name(user: &str) -> Result<(), String> {
    if !super::is_valid_name(user) || user.contains(|c: char| c == ':' || c.is_whitespace()) {
        return Err(format!(
            "user name {user:?} must be non-empty, without `:`, `/`, `+`, `#`, spaces or control characters"
        ));
    }
    Ok(())
}

/// An argon2id hash of `password` with a random salt, in PHC form.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    Argon2::default()
        .hash_password(password, &SaltString::generate(&mut OsRng))
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Sets (adds or replaces) `user`'s password in the file at `path`,
/// creating the file if needed; other lines are kept as they are.
pub fn set_password(path: &Path, user: &str, password: &[u8]) -> Result<(), String> {
    check_user_name(user)?;
    let hash = hash_password(password)?;
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| l.split_once(':').map(|(u, _)| u) != Some(user))
        .map(str::to_string)
        .collect();
    lines.push(format!("{user}:{hash}"));
    // Hashes can be attacked offline: a new file is its owner's alone
    // (0600); an existing one keeps the mode its operator gave it.
    let mode = std::fs::metadata(path).map_or(0o600, |m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o7777
    });
    let tmp = path.with_extension("tmp");
    write_with_mode(&tmp, (lines.join("\n") + "\n").as_bytes(), mode)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `bytes` to a new `path` that has `mode` from its creation (no
/// moment where others can read it).
fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // A leftover from an interrupted run may have another mode.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have taken bits the operator's mode had.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()
}

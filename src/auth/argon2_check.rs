//! Password checks against argon2 PHC hashes in working memory that is
//! kept and reused. Each check needs `m_cost` KiB (19 MiB by default);
//! allocating it per check let the allocator keep a freed copy in every
//! thread arena that ever ran one: a flood of wrong passwords grew the
//! broker by ~700 MiB that it never gave back, although only
//! `max_concurrent_logins` checks run at once. Reused buffers cost that
//! many times 19 MiB, once.

use argon2::password_hash::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::Mutex;

/// Buffers kept for the next checks. Checks run at most
/// `max_concurrent_logins` at a time (the login pool's slots), so the pool
/// holds at most that many; `KEPT_AT_MOST` caps it should a caller run
/// more.
#[derive(Default)]
pub struct HashMemory {
    spare: Mutex<Vec<Vec<Block>>>,
}

const KEPT_AT_MOST: usize = 16;

/// A fixed salt for the check spent on an unknown user (its result is
/// thrown away; only its cost matters).
const UNKNOWN_USER_SALT: &[u8] = b"roomq-unknown-user";

impl HashMemory {
    /// Runs `f` with at least `blocks` argon2 blocks of working memory.
    fn with<R>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
        let mut memory = self.spare.lock().pop().unwrap_or_default();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        let result = f(&mut memory[..blocks]);
        let mut spare = self.spare.lock();
        if spare.len() < KEPT_AT_MOST {
            spare.push(memory);
        }
        result
    }

    /// Whether `password` matches the PHC string `phc`; a string that does
    /// not parse never matches.
    pub fn verify(&self, password: &[u8], phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from).transpose() {
            Ok(version) => version.unwrap_or_default(),
            Err(_) => return false,
        };
        let mut salt_bytes = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let mut computed = vec![0u8; expected.len()];
        let blocks = params.block_count();
        let hasher = Argon2::new(algorithm, version, params);
        let hashed = self.with(blocks, |memory| {
            hasher
                .hash_password_into_with_memory(password, salt, &mut computed, memory)
                .is_ok()
        });
        // `Output`'s equality is constant-time.
        hashed && Output::new(&computed).is_ok_and(|computed| computed == expected)
    }

    /// Spends what a check with the default parameters costs, so that an
    /// unknown user is not answered faster than a wrong password.
    pub fn spend_a_check(&self, password: &[u8]) {
        let params = Params::default();
        let blocks = params.block_count();
        let hasher = Argon2::new(Algorithm::default(), Version::default(), params);
        let mut thrown_away = [0u8; Params::DEFAULT_OUTPUT_LEN];
        self.with(blocks, |memory| {
            let _ =
                hasher.hash_password_into_with_memory(password, UNKNOWN_USER_SALT, &mut thrown_away, memory);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    fn phc(password: &[u8], params: Params) -> String {
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password, &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn agrees_with_the_argon2_crate_and_reuses_its_memory() {
        let memory = HashMemory::default();
        let small = Params::new(64, 1, 1, None).unwrap();
        let hash = phc(b"right", small);
        assert!(memory.verify(b"right", &hash));
        assert!(!memory.verify(b"wrong", &hash));
        assert!(!memory.verify(b"right", "not a phc string"));
        // One buffer, used by every check that ran one after another.
        assert_eq!(memory.spare.lock().len(), 1);
        // A hash with more memory grows the kept buffer instead of adding one.
        let bigger = phc(b"right", Params::new(256, 1, 1, None).unwrap());
        assert!(memory.verify(b"right", &bigger));
        memory.spend_a_check(b"anything");
        let spare = memory.spare.lock();
        assert_eq!(spare.len(), 1);
        assert!(spare[0].len() >= Params::default().block_count());
    }
}

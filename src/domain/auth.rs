//! Who may do what: the four roles, each including the one before, and the
//! shape of an API token. Pure: the token's randomness comes from the
//! caller, and only its SHA-256 digest is ever stored.

use std::{fmt, str::FromStr};

use sha2::{Digest, Sha256};

/// A token's role. The order is the order of power: a role may do all that
/// the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads everything except secrets.
    Viewer,
    /// Also starts, plans, stops and retries executions.
    Operator,
    /// Also creates and updates pipelines and purges caches.
    Editor,
    /// Also deletes pipelines and manages tokens and secrets.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Editor, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}; expected one of viewer, operator, editor, admin"))
    }
}

/// Every token starts with this, so a leaked one is recognisable (secret
/// scanners, log review) and a typo of another credential is not mistaken
/// for one.
pub const TOKEN_PREFIX: &str = "sw_";

/// Bytes of randomness in a generated token (256 bits).
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// The shortest token accepted from configuration (`auth.admin_token`):
/// anything shorter could be guessed.
pub const MIN_TOKEN_LEN: usize = 24;

/// The longest bearer token looked up; a longer header is refused unread.
pub const MAX_TOKEN_LEN: usize = 256;

/// The token text for `random` bytes: the prefix and unpadded base64url.
pub fn token_from_random(random: &[u8; TOKEN_RANDOM_BYTES]) -> String {
    use base64::Engine;
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    )
}

/// What the database keeps of a token: its SHA-256 digest. A token holds 256
/// random bits, so a fast hash is enough: nothing can be guessed from it.
pub fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Checks a token's name: 1 to 64 letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "token name {name:?} is not valid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Editor && Role::Editor < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("viewer, operator"));
    }

    #[test]
    fn tokens_are_prefixed_and_digested() {
        let token = token_from_random(&[7; TOKEN_RANDOM_BYTES]);
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(token_digest(&token).len(), 32);
        assert_ne!(token_digest(&token), token_digest("sw_other"));
    }

    #[test]
    fn token_names() {
        assert!(check_token_name("ci-bot.prod_1").is_ok());
        for bad in ["", "-x", "a b", "é", &"x".repeat(65)] {
            assert!(check_token_name(bad).is_err(), "{bad:?}");
        }
    }
}

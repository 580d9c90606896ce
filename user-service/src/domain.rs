//! Request fields parsed into types that can only hold valid values.

use std::fmt;

use platform::FieldError;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

/// A trimmed, lower-cased, plausible email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let email = raw.trim().to_lowercase();
        let bad = |why: &str| FieldError::new("email", why.to_owned());
        if email.is_empty() {
            return Err(bad("is required"));
        }
        if email.len() > 254 {
            return Err(bad("must be at most 254 characters"));
        }
        let (local, domain) = email
            .split_once('@')
            .ok_or_else(|| bad("must look like name@example.com"))?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
        if !local_ok || !domain_ok {
            return Err(bad("must look like name@example.com"));
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that meets the rules. Never printed: Debug and Display are redacted.
pub struct Password(SecretString);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: String) -> Result<Self, FieldError> {
        let n = raw.chars().count();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&n) {
            return Err(FieldError::new(
                "password",
                format!(
                    "must be {} to {} characters",
                    Self::MIN_CHARS,
                    Self::MAX_CHARS
                ),
            ));
        }
        if raw.trim().is_empty() {
            return Err(FieldError::new("password", "must not be only whitespace"));
        }
        Ok(Self(SecretString::from(raw)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// 1..=64 characters after trimming, no control, bidirectional-override or zero-width
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let name = raw.trim();
        let n = name.chars().count();
        if n == 0 || n > 64 {
            return Err(FieldError::new(
                "display_name",
                "must be 1 to 64 characters",
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(FieldError::new(
                "display_name",
                "must not contain control characters",
            ));
        }
        if platform::text::has_invisible_format(name) {
            return Err(FieldError::new(
                "display_name",
                "must not contain bidirectional-override or zero-width characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user's UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub Uuid);

impl UserId {
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        Uuid::parse_str(raw.trim())
            .map(Self)
            .map_err(|_| FieldError::new(field, "must be a UUID"))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Admin => "admin",
        }
    }

    pub fn from_db(s: &str) -> Self {
        if s == "admin" {
            Self::Admin
        } else {
            Self::Customer
        }
    }

    pub fn to_pb(self) -> shop_proto::user::v1::Role {
        match self {
            Self::Customer => shop_proto::user::v1::Role::Customer,
            Self::Admin => shop_proto::user::v1::Role::Admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_lowercased_and_checked() {
        assert_eq!(
            Email::parse("  Alice@Example.COM ").map(|e| e.0),
            Ok("alice@example.com".to_owned())
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@exa mple.com",
            "a@@example.com",
            "a@-x.com",
            "a..b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn password_rules() {
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse(" ".repeat(10)).is_err());
        assert!(Password::parse("x".repeat(129)).is_err());
        assert!(Password::parse("é".repeat(128)).is_ok());
        let p = Password::parse("hunter2hunter2".into()).expect("valid");
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn display_name_rules() {
        assert_eq!(
            DisplayName::parse("  Ada ").map(|d| d.0),
            Ok("Ada".to_owned())
        );
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"x".repeat(65)).is_err());
        assert!(DisplayName::parse("a\u{7}b").is_err());
        assert!(DisplayName::parse("Ad\u{202E}a").is_err());
        assert!(DisplayName::parse("A\u{200B}da").is_err());
    }
}

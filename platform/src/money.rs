//! Money as integer minor units plus a known ISO 4217 currency. Parsed once at the edge.

use std::fmt;

use shop_proto::common::v1 as pb;

use crate::FieldError;

/// The currencies Shop accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Currency {
    Usd,
    Eur,
    Gbp,
    Jpy,
    Chf,
    Cad,
    Aud,
    Sek,
}

impl Currency {
    pub const ALL: [Currency; 8] = [
        Self::Usd,
        Self::Eur,
        Self::Gbp,
        Self::Jpy,
        Self::Chf,
        Self::Cad,
        Self::Aud,
        Self::Sek,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Usd => "USD",
            Self::Eur => "EUR",
            Self::Gbp => "GBP",
            Self::Jpy => "JPY",
            Self::Chf => "CHF",
            Self::Cad => "CAD",
            Self::Aud => "AUD",
            Self::Sek => "SEK",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.code().eq_ignore_ascii_case(code.trim()))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A non-negative amount in minor units of a known currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, FieldError> {
        if amount_minor < 0 {
            return Err(FieldError::new("amount_minor", "must not be negative"));
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount_minor: 0,
            currency,
        }
    }

    /// Parses a wire value; `field` names it in errors (`price`, `amount`).
    pub fn parse(value: Option<&pb::Money>, field: &str) -> Result<Self, FieldError> {
        let value = value.ok_or_else(|| FieldError::new(field, "is required"))?;
        let currency = Currency::parse(&value.currency).ok_or_else(|| {
            FieldError::new(
                format!("{field}.currency"),
                format!("unknown currency {:?}", truncate(&value.currency, 8)),
            )
        })?;
        Self::new(value.amount_minor, currency)
            .map_err(|_| FieldError::new(format!("{field}.amount_minor"), "must not be negative"))
    }

    pub fn amount_minor(self) -> i64 {
        self.amount_minor
    }

    pub fn currency(self) -> Currency {
        self.currency
    }

    /// `self * qty`, or None on overflow.
    pub fn times(self, qty: i64) -> Option<Self> {
        self.amount_minor.checked_mul(qty).map(|amount_minor| Self {
            amount_minor,
            currency: self.currency,
        })
    }

    /// `self + other`, or None on overflow or mixed currencies.
    pub fn plus(self, other: Self) -> Option<Self> {
        if self.currency != other.currency {
            return None;
        }
        self.amount_minor
            .checked_add(other.amount_minor)
            .map(|amount_minor| Self {
                amount_minor,
                currency: self.currency,
            })
    }
}

impl From<Money> for pb::Money {
    fn from(m: Money) -> Self {
        pb::Money {
            amount_minor: m.amount_minor,
            currency: m.currency.code().to_owned(),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_currency_and_rejects_negative() {
        let ok = pb::Money {
            amount_minor: 1999,
            currency: "usd".into(),
        };
        let m = Money::parse(Some(&ok), "price").expect("valid");
        assert_eq!((m.amount_minor(), m.currency()), (1999, Currency::Usd));

        let neg = pb::Money {
            amount_minor: -1,
            currency: "USD".into(),
        };
        assert_eq!(
            Money::parse(Some(&neg), "price").map_err(|e| e.field),
            Err("price.amount_minor".to_string())
        );
        let unknown = pb::Money {
            amount_minor: 1,
            currency: "XYZ".into(),
        };
        assert_eq!(
            Money::parse(Some(&unknown), "price").map_err(|e| e.field),
            Err("price.currency".to_string())
        );
        assert!(Money::parse(None, "price").is_err());
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies() {
        let a = Money::new(5, Currency::Usd).expect("valid");
        let b = Money::new(5, Currency::Eur).expect("valid");
        assert_eq!(a.plus(b), None);
        assert_eq!(a.times(3).map(Money::amount_minor), Some(15));
    }
}

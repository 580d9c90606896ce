//! Card data, validated once at the edge. The number and CVC only live in memory for the
//! gateway call; `Debug` shows brand and last four digits only, so a stray `?card` in a log
//! line cannot leak them.

use std::fmt;

use platform::FieldError;
use shop_proto::payment::v1 as pb;
use time::OffsetDateTime;

pub use card_gateway::card::{Brand, CardProblem, check, luhn_valid, normalize_number};

/// A validated card.

#[derive(Clone)]
pub struct Card {
    number: String,
    exp_month: u8,
    exp_year: u16,
    cvc: String,
    brand: Brand,
}

impl Card {
    /// Parses the wire card; `field` names it in errors (`card.number`, ...).
    pub fn parse(
        card: Option<&pb::Card>,
        field: &str,
        now: OffsetDateTime,
    ) -> Result<Self, FieldError> {
        let card = card.ok_or_else(|| FieldError::new(field, "is required"))?;
        let number = check(
            &card.number,
            i64::from(card.exp_month),
            i64::from(card.exp_year),
            &card.cvc,
            now,
        )
        .map_err(|p| FieldError::new(format!("{field}.{}", p.field()), p.message()))?;
        Ok(Self {
            brand: Brand::of(&number),
            number,
            // Ranges were checked above.
            exp_month: u8::try_from(card.exp_month).unwrap_or_default(),
            exp_year: u16::try_from(card.exp_year).unwrap_or_default(),
            cvc: card.cvc.clone(),
        })
    }

    pub fn brand(&self) -> Brand {
        self.brand
    }

    pub fn last4(&self) -> &str {
        &self.number[self.number.len().saturating_sub(4)..]
    }

    pub fn exp_month(&self) -> u8 {
        self.exp_month
    }

    pub fn exp_year(&self) -> u16 {
        self.exp_year
    }

    /// The full number, for the gateway request body only.
    pub fn number(&self) -> &str {
        &self.number
    }

    /// The CVC, for the gateway request body only.
    pub fn cvc(&self) -> &str {
        &self.cvc
    }
}

impl fmt::Debug for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Card")
            .field("brand", &self.brand.as_str())
            .field("last4", &self.last4())
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        time::Date::from_calendar_date(2026, time::Month::November, 22)
            .expect("date")
            .midnight()
            .assume_utc()
    }

    #[test]
    fn debug_hides_number_and_cvc() {
        let pb = pb::Card {
            number: "4242424242424242".into(),
            exp_month: 12,
            exp_year: 2030,
            cvc: "987".into(),
        };
        let card = Card::parse(Some(&pb), "card", now()).expect("valid");
        let shown = format!("{card:?}");
        assert!(!shown.contains("4242424242424242") && !shown.contains("987"));
        assert!(shown.contains("4242"));
    }
}

//! The card rules a processor applies: number (Luhn, length), expiry and CVC, and the brand
//! a number belongs to. Shared with payment-service, which checks cards at its edge.

use time::OffsetDateTime;

/// Card network, guessed from the number's prefix (IIN ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Unknown,
}

impl Brand {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Visa => "visa",
            Self::Mastercard => "mastercard",
            Self::Amex => "amex",
            Self::Discover => "discover",
            Self::Unknown => "unknown",
        }
    }

    /// Brand of a digits-only card number.
    pub fn of(digits: &str) -> Self {
        let prefix = |n: usize| digits.get(..n).and_then(|p| p.parse::<u32>().ok());
        match (prefix(1), prefix(2), prefix(3), prefix(4)) {
            (Some(4), ..) => Self::Visa,
            (_, Some(51..=55), ..) | (.., Some(2221..=2720)) => Self::Mastercard,
            (_, Some(34 | 37), ..) => Self::Amex,
            (.., Some(6011)) | (_, Some(65), ..) | (_, _, Some(644..=649), _) => Self::Discover,
            _ => Self::Unknown,
        }
    }
}

/// Luhn (mod 10) check of a digits-only string.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The digits of a card number with spaces and dashes removed; None if anything else appears.
pub fn normalize_number(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '0'..='9' => out.push(c),
            ' ' | '-' => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Why a card number, expiry or CVC is unacceptable. Messages never contain the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardProblem {
    NumberCharacters,
    NumberLength,
    NumberLuhn,
    ExpMonth,
    ExpYear,
    Expired,
    Cvc,
}

impl CardProblem {
    pub fn field(self) -> &'static str {
        match self {
            Self::NumberCharacters | Self::NumberLength | Self::NumberLuhn => "number",
            Self::ExpMonth => "exp_month",
            Self::ExpYear | Self::Expired => "exp_year",
            Self::Cvc => "cvc",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::NumberCharacters => "must contain only digits, spaces and dashes",
            Self::NumberLength => "must have 12 to 19 digits",
            Self::NumberLuhn => "is not a valid card number (checksum mismatch)",
            Self::ExpMonth => "must be between 1 and 12",
            Self::ExpYear => "must be a four-digit year",
            Self::Expired => "the card has expired",
            Self::Cvc => "must be 3 or 4 digits",
        }
    }
}

/// Checks number, expiry and CVC the way a card processor would.
pub fn check(
    number: &str,
    exp_month: i64,
    exp_year: i64,
    cvc: &str,
    now: OffsetDateTime,
) -> Result<String, CardProblem> {
    let digits = normalize_number(number).ok_or(CardProblem::NumberCharacters)?;
    if !(12..=19).contains(&digits.len()) {
        return Err(CardProblem::NumberLength);
    }
    if !luhn_valid(&digits) {
        return Err(CardProblem::NumberLuhn);
    }
    if !(1..=12).contains(&exp_month) {
        return Err(CardProblem::ExpMonth);
    }
    if !(1000..=9999).contains(&exp_year) {
        return Err(CardProblem::ExpYear);
    }
    // Valid through the last day of the expiry month.
    let now_months = i64::from(now.year()) * 12 + i64::from(u8::from(now.month()));
    if exp_year * 12 + exp_month < now_months {
        return Err(CardProblem::Expired);
    }
    if !(3..=4).contains(&cvc.len()) || !cvc.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CardProblem::Cvc);
    }
    Ok(digits)
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
    fn luhn_and_brands() {
        assert!(luhn_valid("4242424242424242"));
        assert!(!luhn_valid("4242424242424241"));
        assert_eq!(Brand::of("4242424242424242"), Brand::Visa);
        assert_eq!(Brand::of("5555555555554444"), Brand::Mastercard);
        assert_eq!(Brand::of("2223003122003222"), Brand::Mastercard);
        assert_eq!(Brand::of("378282246310005"), Brand::Amex);
        assert_eq!(Brand::of("6011111111111117"), Brand::Discover);
        assert_eq!(Brand::of("3056930009020004"), Brand::Unknown);
    }

    #[test]
    fn checks_number_expiry_and_cvc() {
        let ok = check("4242 4242-4242 4242", 11, 2026, "123", now());
        assert_eq!(ok.as_deref(), Ok("4242424242424242"));
        let err = |n: &str, m, y, c: &str| check(n, m, y, c, now()).err();
        assert_eq!(
            err("4242x", 1, 2030, "123"),
            Some(CardProblem::NumberCharacters)
        );
        assert_eq!(
            err("42424242", 1, 2030, "123"),
            Some(CardProblem::NumberLength)
        );
        assert_eq!(
            err("4242424242424241", 1, 2030, "123"),
            Some(CardProblem::NumberLuhn)
        );
        assert_eq!(
            err("4242424242424242", 13, 2030, "123"),
            Some(CardProblem::ExpMonth)
        );
        assert_eq!(
            err("4242424242424242", 1, 30, "123"),
            Some(CardProblem::ExpYear)
        );
        assert_eq!(
            err("4242424242424242", 10, 2026, "123"),
            Some(CardProblem::Expired)
        );
        assert_eq!(
            err("4242424242424242", 1, 2030, "12"),
            Some(CardProblem::Cvc)
        );
        assert_eq!(
            err("4242424242424242", 1, 2030, "12a"),
            Some(CardProblem::Cvc)
        );
    }
}

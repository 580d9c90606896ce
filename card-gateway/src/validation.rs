//! Parameter checks; failures here are not stored under the idempotency key (Stripe does not
//! store requests that fail validation).

use axum::{body::Bytes, http::HeaderMap};
use time::OffsetDateTime;

use crate::{
    api,
    card::{self, Brand},
    errors::{Reject, card_error, invalid_request},
    ledger::{TokenCharge, ValidCharge, VaultCard},
    tokens::AccountId,
};

/// `key` in `account`'s namespace; the shop's account (0) keeps keys as sent, so journals
/// from before accounts still replay.
pub(crate) fn scoped_key(account: AccountId, key: &str) -> String {
    if account == 0 {
        key.to_owned()
    } else {
        format!("acct_{account}:{key}")
    }
}

/// The request's Idempotency-Key, in `account`'s namespace (keys are per account, as at
/// Stripe: another account's key neither replays nor blocks this one's).
pub(crate) fn idempotency_key(
    headers: &HeaderMap,
    account: AccountId,
) -> Result<Option<String>, Reject> {
    let Some(v) = headers.get(api::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Some(scoped_key(account, k))),
        _ => Err(invalid_request(
            "idempotency_key_invalid",
            "Idempotency-Key must be 1 to 255 printable ASCII characters.",
            None,
        )),
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Reject> {
    serde_json::from_slice(body).map_err(|e| {
        invalid_request(
            "parameter_invalid",
            &format!("Invalid request body: {e}"),
            None,
        )
    })
}

/// A charge's card or token, validated.
pub(crate) enum Validated {
    Card(ValidCharge),
    Token(TokenCharge),
}

/// The card checks of a charge and of a token: number (Luhn), expiry, CVC.
pub(crate) fn validate_card(
    c: Option<&api::CardDetails>,
    now: OffsetDateTime,
) -> Result<VaultCard, Reject> {
    let c = c.ok_or_else(|| {
        invalid_request(
            "parameter_missing",
            "Missing required param: card.",
            Some("card"),
        )
    })?;
    let digits =
        card::check(&c.number, c.exp_month, c.exp_year, &c.cvc, now).map_err(card_error)?;
    Ok(VaultCard {
        digits,
        exp_month: c.exp_month,
        exp_year: c.exp_year,
    })
}

pub(crate) fn validate_charge(
    p: &api::CreateCharge,
    now: OffsetDateTime,
    account: AccountId,
) -> Result<Validated, Reject> {
    let amount = p.amount.ok_or_else(|| {
        invalid_request(
            "parameter_missing",
            "Missing required param: amount.",
            Some("amount"),
        )
    })?;
    if amount < 1 {
        return Err(invalid_request(
            "amount_too_small",
            "Amount must be at least 1 minor unit.",
            Some("amount"),
        ));
    }
    if amount > 99_999_999 {
        return Err(invalid_request(
            "amount_too_large",
            "Amount must be no more than 99999999 minor units.",
            Some("amount"),
        ));
    }
    let currency = p.currency.as_deref().ok_or_else(|| {
        invalid_request(
            "parameter_missing",
            "Missing required param: currency.",
            Some("currency"),
        )
    })?;
    let currency = platform::money::Currency::parse(currency).ok_or_else(|| {
        invalid_request("parameter_invalid", "Invalid currency.", Some("currency"))
    })?;
    let card = match (&p.card, &p.token) {
        (Some(_), Some(_)) => {
            return Err(invalid_request(
                "parameter_invalid",
                "Provide either card or token, not both.",
                Some("token"),
            ));
        }
        (None, Some(t)) if t.is_empty() || t.len() > 255 => {
            return Err(invalid_request(
                "parameter_invalid",
                "token must be 1 to 255 characters.",
                Some("token"),
            ));
        }
        (None, Some(_)) => None,
        (card, None) => Some(validate_card(card.as_ref(), now)?),
    };
    if p.description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 1000)
    {
        return Err(invalid_request(
            "parameter_invalid",
            "description must be at most 1000 characters.",
            Some("description"),
        ));
    }
    let currency = currency.code().to_ascii_lowercase();
    Ok(match (card, &p.token) {
        (Some(card), _) => Validated::Card(ValidCharge {
            amount,
            currency,
            description: p.description.clone(),
            brand: Brand::of(&card.digits).as_str(),
            digits: card.digits,
            exp_month: card.exp_month,
            exp_year: card.exp_year,
        }),
        (None, token) => Validated::Token(TokenCharge {
            account,
            token: token.clone().unwrap_or_default(),
            amount,
            currency,
            description: p.description.clone(),
        }),
    })
}

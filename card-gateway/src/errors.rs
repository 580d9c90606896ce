//! The processor's error answers, in Stripe's JSON shape.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::Value;

use crate::{card::CardProblem, ledger::error_body};

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// An error answer; small, so `Result`s carrying it stay small.
pub(crate) struct Reject {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        json_response(self.status, self.body)
    }
}

pub(crate) fn invalid_request(code: &str, message: &str, param: Option<&str>) -> Reject {
    Reject {
        status: StatusCode::BAD_REQUEST,
        body: error_body(
            "invalid_request_error",
            Some(code),
            None,
            message,
            param,
            None,
        ),
    }
}

pub(crate) fn api_error() -> Response {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        error_body(
            "api_error",
            None,
            None,
            "An unknown error occurred while processing the request.",
            None,
            None,
        ),
    )
}

pub(crate) fn card_error(problem: CardProblem) -> Reject {
    let (code, message, param) = match problem {
        CardProblem::NumberCharacters | CardProblem::NumberLength => (
            "invalid_number",
            "The card number is not a valid credit card number.",
            "card[number]",
        ),
        CardProblem::NumberLuhn => (
            "incorrect_number",
            "Your card number is incorrect.",
            "card[number]",
        ),
        CardProblem::ExpMonth => (
            "invalid_expiry_month",
            "Your card's expiration month is invalid.",
            "card[exp_month]",
        ),
        CardProblem::ExpYear | CardProblem::Expired => (
            "invalid_expiry_year",
            "Your card's expiration year is invalid.",
            "card[exp_year]",
        ),
        CardProblem::Cvc => (
            "invalid_cvc",
            "Your card's security code is invalid.",
            "card[cvc]",
        ),
    };
    Reject {
        status: StatusCode::PAYMENT_REQUIRED,
        body: error_body("card_error", Some(code), None, message, Some(param), None),
    }
}

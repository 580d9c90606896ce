//! `Debug` for the messages that carry secrets (build.rs skips the generated one): card
//! number and CVC, passwords and access tokens are shown as `[redacted]`, everything else
//! as usual. A field added to one of these messages shows up only when added here.

use std::fmt;

use crate::{payment::v1 as pay, user::v1 as user};

const REDACTED: &str = "[redacted]";

impl fmt::Debug for pay::Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Card")
            .field("number", &REDACTED)
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .field("cvc", &REDACTED)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for user::RegisterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("email", &self.email)
            .field("password", &REDACTED)
            .field("display_name", &self.display_name)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for user::LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &REDACTED)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for user::LoginResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginResponse")
            .field("access_token", &REDACTED)
            .field("expires_in_seconds", &self.expires_in_seconds)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for user::ValidateTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateTokenRequest")
            .field("access_token", &REDACTED)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for user::ChainedCheckoutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainedCheckoutRequest")
            .field("access_token", &REDACTED)
            .field("idempotency_key", &self.idempotency_key)
            .field("lines", &self.lines)
            .field("card", &self.card)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAN: &str = "4242424242424242";
    const CVC: &str = "987";
    const PASSWORD: &str = "correct horse battery";
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    fn card() -> pay::Card {
        pay::Card {
            number: PAN.into(),
            exp_month: 12,
            exp_year: 2031,
            cvc: CVC.into(),
        }
    }

    #[test]
    fn card_debug_shows_no_number_or_cvc() {
        let shown = format!("{:?}", card());
        assert!(!shown.contains(PAN) && !shown.contains(CVC), "{shown}");
        assert!(
            shown.contains("2031"),
            "non-secret fields still show: {shown}"
        );
        // Nested in a charge request too.
        let req = pay::ChargeRequest {
            card: Some(card()),
            ..Default::default()
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains(PAN) && !shown.contains(CVC), "{shown}");
        let shown = format!("{req:#?}");
        assert!(!shown.contains(PAN) && !shown.contains(CVC), "{shown}");
    }

    #[test]
    fn password_and_token_messages_hide_them() {
        let shown = [
            format!(
                "{:?}",
                user::RegisterRequest {
                    email: "a@b.co".into(),
                    password: PASSWORD.into(),
                    display_name: "Ada".into(),
                }
            ),
            format!(
                "{:?}",
                user::LoginRequest {
                    email: "a@b.co".into(),
                    password: PASSWORD.into(),
                }
            ),
            format!(
                "{:?}",
                user::LoginResponse {
                    access_token: TOKEN.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                user::ValidateTokenRequest {
                    access_token: TOKEN.into(),
                }
            ),
            format!(
                "{:?}",
                user::ChainedCheckoutRequest {
                    access_token: TOKEN.into(),
                    card: Some(card()),
                    ..Default::default()
                }
            ),
        ];
        for s in &shown {
            assert!(
                !s.contains(PASSWORD) && !s.contains(TOKEN) && !s.contains(PAN),
                "{s}"
            );
            assert!(s.contains(REDACTED), "{s}");
        }
        assert!(shown[0].contains("a@b.co"), "the email still shows");
    }
}

//! SHA-256 fingerprints of request parameters, stored with idempotency keys to detect a key
//! reused with other parameters. The card enters only as brand, last four digits and
//! expiry, so a fingerprint cannot be brute-forced back into a card number.

use platform::money::Money;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::card::Card;

pub type Fingerprint = [u8; 32];

/// Length-prefixed fields, so ("ab","c") and ("a","bc") differ.
struct Fields(Sha256);

impl Fields {
    fn new(kind: &str) -> Self {
        let mut f = Self(Sha256::new());
        f.add(kind.as_bytes());
        f
    }

    fn add(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    fn money(&mut self, m: Money) -> &mut Self {
        self.add(&m.amount_minor().to_be_bytes())
            .add(m.currency().code().as_bytes())
    }

    fn card(&mut self, c: &Card) -> &mut Self {
        self.add(c.brand().as_str().as_bytes())
            .add(c.last4().as_bytes())
            .add(&[c.exp_month()])
            .add(&c.exp_year().to_be_bytes())
    }

    fn finish(self) -> Fingerprint {
        self.0.finalize().into()
    }
}

pub fn charge(
    key: &str,
    user_id: Uuid,
    order_id: Uuid,
    amount: Money,
    card: &Card,
    description: &str,
) -> Fingerprint {
    let mut f = Fields::new("charge/v1");
    f.add(key.as_bytes())
        .add(user_id.as_bytes())
        .add(order_id.as_bytes())
        .money(amount)
        .card(card)
        .add(description.as_bytes());
    f.finish()
}

/// An asynchronous checkout's charge: the card token stands for the card.
pub fn token_charge(
    key: &str,
    user_id: Uuid,
    order_id: Uuid,
    amount: Money,
    token: &str,
) -> Fingerprint {
    let mut f = Fields::new("token-charge/v1");
    f.add(key.as_bytes())
        .add(user_id.as_bytes())
        .add(order_id.as_bytes())
        .money(amount)
        .add(token.as_bytes());
    f.finish()
}

/// A chained checkout: the lines (sorted) stand for the amount, which item-service prices.
pub fn chained(
    key: &str,
    user_id: Uuid,
    order_id: Uuid,
    lines: &[(String, i32)],
    card: &Card,
) -> Fingerprint {
    let mut sorted = lines.to_vec();
    sorted.sort();
    let mut f = Fields::new("chained/v1");
    f.add(key.as_bytes())
        .add(user_id.as_bytes())
        .add(order_id.as_bytes())
        .card(card);
    for (item, qty) in &sorted {
        f.add(item.as_bytes()).add(&qty.to_be_bytes());
    }
    f.finish()
}

/// `amount` None means "everything that is left".
pub fn refund(key: &str, payment_id: Uuid, amount: Option<Money>) -> Fingerprint {
    let mut f = Fields::new("refund/v1");
    f.add(key.as_bytes()).add(payment_id.as_bytes());
    match amount {
        Some(m) => f.add(b"amount").money(m),
        None => f.add(b"rest"),
    };
    f.finish()
}

#[cfg(test)]
mod tests {
    use platform::money::Currency;
    use shop_proto::payment::v1 as pb;

    use super::*;

    fn card(number: &str) -> Card {
        let now = time::OffsetDateTime::now_utc();
        let pb = pb::Card {
            number: number.into(),
            exp_month: 12,
            exp_year: now.year() + 2,
            cvc: "123".into(),
        };
        Card::parse(Some(&pb), "card", now).expect("valid card")
    }

    #[test]
    fn same_parameters_same_fingerprint_any_change_differs() {
        let (u, o) = (Uuid::new_v4(), Uuid::new_v4());
        let m = |a| Money::new(a, Currency::Usd).expect("money");
        let c = card("4242424242424242");
        let base = charge("k", u, o, m(100), &c, "d");
        assert_eq!(base, charge("k", u, o, m(100), &c, "d"));
        assert_ne!(base, charge("k2", u, o, m(100), &c, "d"));
        assert_ne!(base, charge("k", u, o, m(101), &c, "d"));
        assert_ne!(
            base,
            charge("k", u, o, m(100), &card("5555555555554444"), "d")
        );
        assert_ne!(base, charge("k", u, o, m(100), &c, "e"));
        assert_ne!(refund("k", u, None), refund("k", u, Some(m(1))));
        let lines = [("a".to_owned(), 1), ("b".to_owned(), 2)];
        let swapped = [("b".to_owned(), 2), ("a".to_owned(), 1)];
        assert_eq!(
            chained("k", u, o, &lines, &c),
            chained("k", u, o, &swapped, &c)
        );
    }
}

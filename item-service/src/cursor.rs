//! ListItems: the sort orders and opaque page tokens.
//!
//! Pages are keyset pages: a token holds the sort key and `_id` of the last item served,
//! and the next page asks for what sorts strictly after that pair. Unlike skip/offset this
//! neither repeats nor skips items when others are inserted or deleted between pages. The
//! token also carries a fingerprint of the filter and the sort, so a token used with a
//! different filter is rejected instead of silently paging something else.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use platform::FieldError;
use serde::{Deserialize, Serialize};
use shop_proto::item::v1::ItemSort;

use crate::store::ItemDoc;

const FIELD: &str = "page.page_token";
/// Tokens longer than this are refused by `platform::paging::Page::parse`.
const MAX_TOKEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    NameAsc,
    PriceAsc,
    PriceDesc,
    Newest,
}

impl Sort {
    pub fn from_pb(v: i32) -> Result<Self, FieldError> {
        match ItemSort::try_from(v) {
            Ok(ItemSort::Unspecified | ItemSort::NameAsc) => Ok(Self::NameAsc),
            Ok(ItemSort::PriceAsc) => Ok(Self::PriceAsc),
            Ok(ItemSort::PriceDesc) => Ok(Self::PriceDesc),
            Ok(ItemSort::Newest) => Ok(Self::Newest),
            Err(_) => Err(FieldError::new("sort", "unknown sort order")),
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::NameAsc => 1,
            Self::PriceAsc => 2,
            Self::PriceDesc => 3,
            Self::Newest => 4,
        }
    }

    /// The indexed field the order is on (always followed by `_id` as the tie-breaker).
    pub fn field(self) -> &'static str {
        match self {
            Self::NameAsc => "name_lc",
            Self::PriceAsc | Self::PriceDesc => "price.amount_minor",
            Self::Newest => "created_at",
        }
    }

    fn ascending(self) -> bool {
        matches!(self, Self::NameAsc | Self::PriceAsc)
    }

    pub fn sort_doc(self) -> Document {
        let dir = if self.ascending() { 1 } else { -1 };
        doc! { self.field(): dir, "_id": dir }
    }

    /// The sort key of an item under this order.
    pub fn key_of(self, item: &ItemDoc) -> Bson {
        match self {
            Self::NameAsc => Bson::String(item.name_lc.clone()),
            Self::PriceAsc | Self::PriceDesc => Bson::Int64(item.price.amount_minor),
            Self::Newest => Bson::DateTime(item.created_at),
        }
    }

    /// Filter for "strictly after (key, id)" in this order.
    pub fn after(self, key: Bson, id: ObjectId) -> Document {
        let op = if self.ascending() { "$gt" } else { "$lt" };
        let field = self.field();
        doc! { "$or": [
            { field: { op: key.clone() } },
            { field: key, "_id": { op: id } },
        ] }
    }
}

/// What a page token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// The last item's sort key; None when it was too long to carry (then the caller
    /// looks the key up by `id`).
    pub key: Option<Bson>,
    pub id: ObjectId,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    /// Sort code.
    s: u8,
    /// Filter fingerprint.
    f: String,
    /// Key: string (name), integer (price), or milliseconds (newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ks: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kn: Option<i64>,
    i: String,
}

/// Fingerprint of the filter and sort a token was made for (FNV-1a; binding, not secrecy).
fn fingerprint(category: &str, query: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in category.bytes().chain([0u8]).chain(query.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub fn encode(sort: Sort, category: &str, query: &str, last: &ItemDoc) -> String {
    let mut w = Wire {
        v: 1,
        s: sort.code(),
        f: fingerprint(category, query),
        ks: None,
        kn: None,
        i: last.id.to_hex(),
    };
    match sort.key_of(last) {
        Bson::String(s) => w.ks = Some(s),
        Bson::Int64(n) => w.kn = Some(n),
        Bson::DateTime(d) => w.kn = Some(d.timestamp_millis()),
        _ => {}
    }
    let token = to_b64(&w);
    if token.len() <= MAX_TOKEN {
        return token;
    }
    // A very long name: carry only the id, the next call reads the key back.
    w.ks = None;
    to_b64(&w)
}

fn to_b64(w: &Wire) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(w).unwrap_or_default())
}

pub fn decode(token: &str, sort: Sort, category: &str, query: &str) -> Result<Cursor, FieldError> {
    let bad = || FieldError::new(FIELD, "is not a valid page token");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let w: Wire = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if w.v != 1 {
        return Err(bad());
    }
    if w.s != sort.code() || w.f != fingerprint(category, query) {
        return Err(FieldError::new(
            FIELD,
            "was made for a different filter or sort",
        ));
    }
    let id = ObjectId::parse_str(&w.i).map_err(|_| bad())?;
    let key = match (sort, w.ks, w.kn) {
        (Sort::NameAsc, Some(s), None) => Some(Bson::String(s)),
        (Sort::NameAsc, None, None) => None,
        (Sort::PriceAsc | Sort::PriceDesc, None, Some(n)) => Some(Bson::Int64(n)),
        (Sort::Newest, None, Some(ms)) => {
            Some(Bson::DateTime(mongodb::bson::DateTime::from_millis(ms)))
        }
        _ => return Err(bad()),
    };
    Ok(Cursor { key, id })
}

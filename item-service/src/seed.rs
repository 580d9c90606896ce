//! The demo catalog: 1,200 items across 12 categories, the same on every run (a fixed
//! pseudo-random sequence picks prices and stock), loaded idempotently: SKUs are unique,
//! so a re-run inserts only what is missing and never touches existing items (whose stock
//! may have moved since).

use std::collections::HashSet;

use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{Bson, DateTime, Document, doc},
};

use crate::{
    error::{Error, is_duplicate_key},
    input::{NewItem, Sku},
    inventory::StockDoc,
    store::{ItemDoc, ItemStore},
};

pub const PER_CATEGORY: usize = 100;

struct Category {
    slug: &'static str,
    sku: &'static str,
    /// Price range in cents.
    price: (i64, i64),
    nouns: &'static [&'static str],
}

const CATEGORIES: &[Category] = &[
    Category {
        slug: "electronics",
        sku: "ELE",
        price: (999, 49_999),
        nouns: &[
            "Wireless Earbuds",
            "Bluetooth Speaker",
            "USB-C Charger",
            "Mechanical Keyboard",
            "Gaming Mouse",
            "27\" 4K Monitor",
            "HD Webcam",
            "Power Bank 20000mAh",
            "Smartwatch",
            "Noise-Cancelling Headphones",
            "Portable SSD 1TB",
            "HDMI Cable 2m",
        ],
    },
    Category {
        slug: "books",
        sku: "BOO",
        price: (799, 5_999),
        nouns: &[
            "Weeknight Cookbook",
            "Mystery Novel",
            "Bird Field Guide",
            "World Atlas",
            "Poetry Collection",
            "Biography",
            "Rust Programming Handbook",
            "Travel Guide to Portugal",
            "Picture Book",
            "History of the Sea",
        ],
    },
    Category {
        slug: "kitchen",
        sku: "KIT",
        price: (899, 24_999),
        nouns: &[
            "Chef's Knife",
            "Cast Iron Skillet",
            "Espresso Maker",
            "Bamboo Cutting Board",
            "Blender",
            "Dutch Oven",
            "Electric Kettle",
            "Mixing Bowl Set",
            "Measuring Cups",
            "Salad Spinner",
        ],
    },
    Category {
        slug: "clothing",
        sku: "CLO",
        price: (1_299, 14_999),
        nouns: &[
            "Cotton T-Shirt",
            "Hoodie",
            "Rain Jacket",
            "Wool Socks",
            "Denim Jeans",
            "Running Shorts",
            "Beanie",
            "Flannel Shirt",
            "Chinos",
            "Puffer Vest",
        ],
    },
    Category {
        slug: "sports",
        sku: "SPO",
        price: (799, 19_999),
        nouns: &[
            "Yoga Mat",
            "Dumbbell Set",
            "Tennis Racket",
            "Football",
            "Cycling Helmet",
            "Jump Rope",
            "Insulated Water Bottle",
            "Hiking Backpack",
            "Resistance Bands",
            "Climbing Chalk Bag",
        ],
    },
    Category {
        slug: "toys",
        sku: "TOY",
        price: (599, 8_999),
        nouns: &[
            "Building Blocks",
            "1000-Piece Puzzle",
            "Plush Bear",
            "Remote Control Car",
            "Board Game",
            "Stunt Kite",
            "Wooden Train Set",
            "Art Kit",
        ],
    },
    Category {
        slug: "garden",
        sku: "GAR",
        price: (699, 15_999),
        nouns: &[
            "Pruning Shears",
            "Watering Can",
            "Raised Bed Kit",
            "Garden Hose 25m",
            "Seed Starter Tray",
            "Bird Feeder",
            "Compost Bin",
            "Solar Lantern",
        ],
    },
    Category {
        slug: "beauty",
        sku: "BEA",
        price: (399, 4_999),
        nouns: &[
            "Face Cream",
            "Shampoo",
            "Lip Balm",
            "Sunscreen SPF 50",
            "Hand Soap",
            "Body Lotion",
            "Beard Oil",
            "Hair Brush",
        ],
    },
    Category {
        slug: "office",
        sku: "OFF",
        price: (299, 29_999),
        nouns: &[
            "Dotted Notebook",
            "Fountain Pen",
            "Desk Lamp",
            "Stapler",
            "Sticky Notes",
            "Monitor Stand",
            "File Organizer",
            "Ergonomic Chair",
        ],
    },
    Category {
        slug: "pets",
        sku: "PET",
        price: (499, 12_999),
        nouns: &[
            "Dog Leash",
            "Cat Scratching Post",
            "Pet Bed",
            "Chew Toy",
            "Bird Cage",
            "Aquarium Filter",
            "Litter Box",
            "Dog Harness",
        ],
    },
    Category {
        slug: "grocery",
        sku: "GRO",
        price: (199, 2_999),
        nouns: &[
            "Coffee Beans",
            "Green Tea",
            "Olive Oil",
            "Dark Chocolate",
            "Wildflower Honey",
            "Durum Pasta",
            "Granola",
            "Hot Sauce",
        ],
    },
    Category {
        slug: "home",
        sku: "HOM",
        price: (999, 17_999),
        nouns: &[
            "Throw Blanket",
            "Scented Candle",
            "Picture Frame",
            "Wall Clock",
            "Table Lamp",
            "Cotton Towels",
            "Doormat",
            "Storage Basket",
        ],
    },
];

const STYLES: &[&str] = &[
    "Classic",
    "Eco",
    "Premium",
    "Compact",
    "Deluxe",
    "Everyday",
    "Pro",
    "Vintage",
    "Ultra",
    "Essential",
    "Nordic",
    "Urban",
    "Heritage",
];

const COLOURS: &[&str] = &[
    "Black",
    "White",
    "Navy",
    "Forest Green",
    "Sand",
    "Red",
    "Slate",
    "Oak",
    "Sky Blue",
    "Charcoal",
    "Mustard",
    "Terracotta",
];

/// SplitMix64: tiny, fixed, and the same everywhere, so the catalog is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = u64::try_from(hi - lo + 1).unwrap_or(1);
        lo + i64::try_from(self.next() % span).unwrap_or(0)
    }
}

/// The catalog as validated new items, always the same list.
pub fn catalog() -> Vec<NewItem> {
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    let mut out = Vec::with_capacity(CATEGORIES.len() * PER_CATEGORY);
    for cat in CATEGORIES {
        for j in 0..PER_CATEGORY {
            let noun = cat.nouns[j % cat.nouns.len()];
            let style = STYLES[(j / cat.nouns.len() + j) % STYLES.len()];
            let colour = COLOURS[usize::try_from(rng.next() % COLOURS.len() as u64).unwrap_or(0)];
            // Prices end in 99 like real ones.
            let dollars = rng.range(cat.price.0 / 100, cat.price.1 / 100);
            let cents = dollars * 100 + 99;
            // About one item in twenty is sold out.
            let stock = if rng.next().is_multiple_of(20) {
                0
            } else {
                rng.range(1, 500)
            };
            let sku = format!("{}-{:04}", cat.sku, j + 1);
            let name = format!("{style} {noun}, {colour}");
            out.push(NewItem {
                // No outside photo service: the gateway draws each item's picture.
                image_url: String::new(),
                description: format!(
                    "{style} {} in {}. A dependable pick from our {} range.",
                    noun.to_lowercase(),
                    colour.to_lowercase(),
                    cat.slug
                ),
                sku: Sku(sku),
                name,
                category: cat.slug.to_owned(),
                price: platform::money::Money::new(cents, platform::money::Currency::Usd)
                    .unwrap_or_else(|_| {
                        platform::money::Money::zero(platform::money::Currency::Usd)
                    }),
                stock,
            });
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    /// Items in the seed catalog.
    pub total: usize,
    /// Items this run inserted (0 when everything was there already).
    pub inserted: usize,
}

/// Loads the demo catalog into `db` (creating the indexes first); safe to run again.
pub async fn seed_catalog(db: &Database) -> Result<SeedReport, Error> {
    let store = ItemStore::new(db);
    store.ensure_indexes().await?;
    let items = catalog();
    let total = items.len();
    let (first, last) = match (items.first(), items.last()) {
        (Some(f), Some(l)) => (f.sku.0.clone(), l.sku.0.clone()),
        _ => return Ok(SeedReport { total, inserted: 0 }),
    };
    let present = store
        .collection()
        .count_documents(doc! { "sku": { "$in": [first, last] } })
        .await
        .map_err(Error::mongo("counting seeded items"))?;
    if present == 2
        && store
            .collection()
            .count_documents(doc! { "sku": { "$in": items.iter().map(|i| Bson::String(i.sku.0.clone())).collect::<Vec<_>>() } })
            .await
            .map_err(Error::mongo("counting seeded items"))?
            == total as u64
    {
        return Ok(SeedReport { total, inserted: 0 });
    }
    // Only what is missing: the stock of a new item is written before its catalog
    // document (as `ItemStore::insert` does), so an item never shows without stock.
    let present: HashSet<String> = store
        .collection()
        .clone_with_type::<Document>()
        .find(doc! { "sku": { "$in": items.iter().map(|i| Bson::String(i.sku.0.clone())).collect::<Vec<_>>() } })
        .projection(doc! { "sku": 1, "_id": 0 })
        .await
        .map_err(Error::mongo("reading seeded items"))?
        .try_collect::<Vec<Document>>()
        .await
        .map_err(Error::mongo("reading seeded items"))?
        .iter()
        .filter_map(|d| d.get_str("sku").ok().map(str::to_owned))
        .collect();
    let now = DateTime::now();
    let (docs, stock): (Vec<ItemDoc>, Vec<StockDoc>) = items
        .into_iter()
        .filter(|i| !present.contains(&i.sku.0))
        .map(|i| {
            let units = i.stock;
            let doc = ItemDoc::new(i, now);
            let stock = StockDoc::new(doc.id, units);
            (doc, stock)
        })
        .unzip();
    if docs.is_empty() {
        return Ok(SeedReport { total, inserted: 0 });
    }
    store
        .inventory()
        .collection()
        .insert_many(&stock)
        .await
        .map_err(Error::mongo("seeding stock"))?;
    // Unordered: a duplicate SKU (a seeder racing this one) fails alone and the rest goes
    // in; the stock written for the losers is dropped again.
    let failed: Vec<usize> = match store.collection().insert_many(&docs).ordered(false).await {
        Ok(_) => Vec::new(),
        Err(e) if is_duplicate_key(&e) => match e.kind.as_ref() {
            mongodb::error::ErrorKind::InsertMany(m) => {
                m.write_errors.iter().flatten().map(|w| w.index).collect()
            }
            _ => (0..docs.len()).collect(),
        },
        Err(e) => return Err(Error::mongo("seeding items")(e)),
    };
    let orphans: Vec<Bson> = failed
        .iter()
        .filter_map(|&i| docs.get(i))
        .map(|d| Bson::ObjectId(d.id))
        .collect();
    if !orphans.is_empty() {
        store
            .inventory()
            .collection()
            .delete_many(doc! { "_id": { "$in": orphans } })
            .await
            .map_err(Error::mongo("dropping stock of items seeded elsewhere"))?;
    }
    let inserted = docs.len() - failed.len();
    Ok(SeedReport { total, inserted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_deterministic_valid_and_unique() {
        let a = catalog();
        let b = catalog();
        assert!(a.len() >= 1000);
        let skus: std::collections::HashSet<_> = a.iter().map(|i| i.sku.0.clone()).collect();
        assert_eq!(skus.len(), a.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (&x.sku, &x.name, x.price, x.stock),
                (&y.sku, &y.name, y.price, y.stock)
            );
            assert!(Sku::parse(&x.sku.0).is_ok());
            assert!(crate::input::name(&x.name).is_ok());
            assert!(crate::input::image_url(&x.image_url).is_ok());
        }
    }
}

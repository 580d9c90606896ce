//! Page-size rules shared by every list RPC (1..=100, default 20).

use shop_proto::common::v1::PageRequest;

use crate::FieldError;

pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;

/// A validated page request: size and the raw cursor (each service decodes its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub size: u32,
    pub token: Option<String>,
}

impl Page {
    pub fn parse(page: Option<&PageRequest>) -> Result<Self, FieldError> {
        let Some(page) = page else {
            return Ok(Self {
                size: DEFAULT_PAGE_SIZE,
                token: None,
            });
        };
        let size = match page.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE as i32).contains(&n) => n as u32,
            n => {
                return Err(FieldError::new(
                    "page.page_size",
                    format!("must be between 1 and {MAX_PAGE_SIZE}, got {n}"),
                ));
            }
        };
        let token = match page.page_token.trim() {
            "" => None,
            t if t.len() > 512 => {
                return Err(FieldError::new(
                    "page.page_token",
                    "is not a valid page token",
                ));
            }
            t => Some(t.to_owned()),
        };
        Ok(Self { size, token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(Page::parse(None).map(|p| p.size), Ok(20));
        let req = |n| PageRequest {
            page_size: n,
            page_token: String::new(),
        };
        assert_eq!(Page::parse(Some(&req(0))).map(|p| p.size), Ok(20));
        assert_eq!(Page::parse(Some(&req(100))).map(|p| p.size), Ok(100));
        assert!(Page::parse(Some(&req(101))).is_err());
        assert!(Page::parse(Some(&req(-1))).is_err());
    }
}

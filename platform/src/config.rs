//! Small parsers shared by the services' clap configs.

/// `on`/`off` switch (also accepts true/false, 1/0, yes/no).
pub fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        other => Err(format!("expected on or off, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_switch;

    #[test]
    fn switches() {
        assert_eq!(parse_switch(" ON "), Ok(true));
        assert_eq!(parse_switch("0"), Ok(false));
        assert!(
            parse_switch("maybe")
                .expect_err("not a switch")
                .contains("maybe")
        );
    }
}

//! Parsing uuids exactly as PostgreSQL's `uuid_in` does, without raising: the tenant and user
//! settings, claims and tokens are parsed on every query, and a malformed value must become a
//! clear context error rather than `uuid_in`'s. (The `uuid` crate accepts forms PostgreSQL
//! refuses, `urn:uuid:...`, and refuses forms it accepts, `{32 hex digits}`.) A leaf.

/// Parse a uuid the way PostgreSQL's `uuid_in` does: optional surrounding braces, 32 hex digits,
/// and an optional '-' after any group of four digits.
pub fn parse(text: &str) -> Option<pgrx::Uuid> {
    parse_bytes(text.as_bytes())
}

/// [`parse`] of bytes (a setting's raw value).
pub fn parse_bytes(text: &[u8]) -> Option<pgrx::Uuid> {
    let inner = match text {
        [b'{', inner @ .., b'}'] => inner,
        _ => text,
    };
    let mut bytes = [0u8; 16];
    let mut digits = 0usize;
    let mut iter = inner.iter().peekable();
    while let Some(&c) = iter.next() {
        let nibble = (c as char).to_digit(16)? as u8;
        if digits == 32 {
            return None;
        }
        bytes[digits / 2] |= if digits.is_multiple_of(2) { nibble << 4 } else { nibble };
        digits += 1;
        if digits.is_multiple_of(4) && digits < 32 && iter.peek() == Some(&&b'-') {
            iter.next();
        }
    }
    (digits == 32).then(|| pgrx::Uuid::from_bytes(bytes))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn parses_what_uuid_in_accepts() {
        let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        for text in [
            canonical,
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
        ] {
            let ours = parse(text).map(|u| u.to_string());
            let postgres =
                Spi::get_one_with_args::<pgrx::Uuid>("SELECT $1::uuid", &[text.into()]).unwrap().map(|u| u.to_string());
            assert_eq!(ours, postgres, "{text}");
            assert_eq!(ours.as_deref(), Some(canonical));
        }
        for bad in [
            "",
            "acme",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} should be refused");
        }
    }
}

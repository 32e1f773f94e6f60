//! VG/LV tag values: VDSM's escaping and LVM's tag rules.
//!
//! LVM tags may only hold `[A-Za-z0-9_+.-/=!:&#]`. VDSM stores arbitrary text (domain
//! metadata lines such as `DESCRIPTION=my domain`) by writing every other character as
//! `&<decimal code point>&` (`lvmTagEncode`/`lvmTagDecode` in vdsm's `blockSD.py`). `&`
//! itself is not in the kept set, so the escape is unambiguous.

use crate::error::LvmError;

/// Longest tag this crate writes. Debian 12's lvm2 (2.03.16) stores longer ones, but LVM's
/// documentation promises 1024, so domains made here stay readable by any LVM.
pub const MAX_TAG_LEN: usize = 1024;

/// Characters [`encode_tag`] keeps as they are (VDSM's `INVALID_CHARS` complement).
fn kept(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '.' | '-' | '/' | '=' | '!' | ':' | '#')
}

/// Escapes `value` the way VDSM does: every character outside `[A-Za-z0-9_+.-/=!:#]`
/// becomes `&<decimal code point>&` (space → `&32&`, `,` → `&44&`, `&` → `&38&`).
pub fn encode_tag(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if kept(c) {
            out.push(c);
        } else {
            out.push('&');
            out.push_str(&u32::from(c).to_string());
            out.push('&');
        }
    }
    out
}

/// Reverses [`encode_tag`]. Like VDSM's regex `&(\d+)&`, a `&` that does not start a
/// well-formed escape stays as it is; an escape naming no Unicode scalar value is an error.
pub fn decode_tag(tag: &str) -> Result<String, LvmError> {
    let bytes = tag.as_bytes();
    let mut out = String::with_capacity(tag.len());
    let mut i = 0;
    let mut plain_from = 0;
    while i < bytes.len() {
        if bytes[i] != b'&' {
            i += 1;
            continue;
        }
        let digits = bytes[i + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let close = i + 1 + digits;
        if digits == 0 || bytes.get(close) != Some(&b'&') {
            i += 1;
            continue;
        }
        let number = &tag[i + 1..close];
        let ch = number
            .parse::<u32>()
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| LvmError::TagEncoding {
                tag: tag.to_string(),
                detail: format!("&{number}& is not a Unicode character"),
            })?;
        out.push_str(&tag[plain_from..i]);
        out.push(ch);
        i = close + 1;
        plain_from = i;
    }
    out.push_str(&tag[plain_from..]);
    Ok(out)
}

/// Checks a tag against LVM's character set and [`MAX_TAG_LEN`] before it reaches argv.
pub fn check_tag(tag: &str) -> Result<(), LvmError> {
    let ok = |c: char| kept(c) || c == '&';
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || !tag.chars().all(ok) || tag.starts_with('-') {
        let shown: String = tag.chars().take(80).collect();
        return Err(LvmError::InvalidArgument(format!(
            "tag {shown:?} ({} bytes) is not a valid LVM tag (characters [A-Za-z0-9_+.-/=!:&#], \
             1 to {MAX_TAG_LEN} bytes, no leading '-'); encode free text with encode_tag",
            tag.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_matches_vdsm_examples() {
        // The examples of vdsm's tests/storage/blocksd_test.py.
        assert_eq!(encode_tag("my domain"), "my&32&domain");
        assert_eq!(encode_tag("a,b"), "a&44&b");
        assert_eq!(encode_tag("a&b"), "a&38&b");
        assert_eq!(encode_tag("\u{05d9}"), "&1497&");
        assert_eq!(
            encode_tag("pv:36001405a1b2,uuid:AbCd-12,pestart:0"),
            "pv:36001405a1b2&44&uuid:AbCd-12&44&pestart:0"
        );
    }

    #[test]
    fn encode_keeps_the_allowed_set() {
        let kept = "AZaz09_+.-/=!:#";
        assert_eq!(encode_tag(kept), kept);
        assert_eq!(encode_tag("é|\"\n"), "&233&&124&&34&&10&");
    }

    #[test]
    fn decode_reverses_encode() {
        for s in [
            "my domain",
            "a,b&c",
            "\u{05d9}\u{1F600} x",
            "",
            "&&",
            "&1&",
            "DESCRIPTION=a=b",
        ] {
            assert_eq!(decode_tag(&encode_tag(s)).unwrap(), s, "{s:?}");
        }
    }

    #[test]
    fn decode_leaves_malformed_escapes_like_vdsm() {
        assert_eq!(decode_tag("a&b&32&c").unwrap(), "a&b c");
        assert_eq!(decode_tag("&&32&").unwrap(), "& ");
        assert_eq!(decode_tag("x&12").unwrap(), "x&12");
        assert_eq!(decode_tag("&x&").unwrap(), "&x&");
    }

    #[test]
    fn decode_refuses_non_characters() {
        for bad in ["&55296&", "&1114112&", "&99999999999999999999&"] {
            assert_eq!(decode_tag(bad).unwrap_err().code(), "TagEncoding", "{bad}");
        }
    }

    #[test]
    fn check_tag_limits() {
        check_tag("MDT_DESCRIPTION=my&32&domain").unwrap();
        check_tag(&"a".repeat(MAX_TAG_LEN)).unwrap();
        for bad in ["", "a b", "a,b", "-x", "é"] {
            assert_eq!(
                check_tag(bad).unwrap_err().code(),
                "InvalidArgument",
                "{bad}"
            );
        }
        assert!(check_tag(&"a".repeat(MAX_TAG_LEN + 1)).is_err());
    }
}

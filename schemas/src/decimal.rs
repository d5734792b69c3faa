//! Exact conversion between decimal text and Avro's `decimal` representation (the unscaled
//! value as big-endian two's-complement bytes), without going through floating point.

use std::fmt;

/// Why a decimal text could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalError(pub String);

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecimalError {}

/// A decimal text split into sign, integer digits and fractional digits.
struct Parts<'a> {
    negative: bool,
    int_part: &'a str,
    frac_part: &'a str,
}

/// Checks that `text` is a finite decimal with at most `scale` significant fractional digits,
/// without converting it (capture validates every value; only the encoder converts).
pub fn check(text: &str, scale: u32) -> Result<(), DecimalError> {
    split(text, scale).map(|_| ())
}

fn split(text: &str, scale: u32) -> Result<Parts<'_>, DecimalError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(DecimalError(format!(
            "`{text}` is not a finite decimal number"
        )));
    }
    let frac_trimmed = frac_part.trim_end_matches('0');
    if frac_trimmed.len() > scale as usize {
        return Err(DecimalError(format!(
            "`{text}` has more than {scale} fractional digits"
        )));
    }
    Ok(Parts {
        negative,
        int_part,
        frac_part,
    })
}

/// Encodes decimal text (`-12.3`) at `scale` as the unscaled two's-complement big-endian bytes.
/// Fails when the text is not a finite decimal or has more fractional digits than `scale`.
pub fn text_to_unscaled(text: &str, scale: u32) -> Result<Vec<u8>, DecimalError> {
    let Parts {
        negative,
        int_part,
        frac_part,
    } = split(text, scale)?;
    // Magnitude as little-endian base-256 limbs, built by multiply-by-10-and-add.
    let mut mag: Vec<u8> = Vec::new();
    let padded = frac_part
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(scale as usize);
    for d in int_part.bytes().chain(padded) {
        let mut carry = u32::from(d - b'0');
        for limb in &mut mag {
            let v = u32::from(*limb) * 10 + carry;
            *limb = (v & 0xFF) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            mag.push((carry & 0xFF) as u8);
            carry >>= 8;
        }
    }
    // Two's complement, big-endian, with room for the sign bit.
    mag.push(0);
    if negative {
        let mut carry = 1u16;
        for limb in &mut mag {
            let v = u16::from(!*limb) + carry;
            *limb = (v & 0xFF) as u8;
            carry = v >> 8;
        }
    }
    mag.reverse();
    // Drop redundant sign bytes.
    while mag.len() > 1
        && ((mag[0] == 0 && mag[1] & 0x80 == 0) || (mag[0] == 0xFF && mag[1] & 0x80 != 0))
    {
        mag.remove(0);
    }
    Ok(mag)
}

/// Renders unscaled two's-complement big-endian bytes at `scale` as decimal text.
pub fn unscaled_to_text(bytes: &[u8], scale: u32) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    // Magnitude, big-endian.
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        let mut carry = 1u16;
        for limb in mag.iter_mut().rev() {
            let v = u16::from(!*limb) + carry;
            *limb = (v & 0xFF) as u8;
            carry = v >> 8;
        }
    }
    // Repeated division by 10 gives the digits, least significant first.
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for limb in &mut mag {
            let v = (rem << 8) | u32::from(*limb);
            *limb = (v / 10) as u8;
            rem = v % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    while digits.len() <= scale as usize {
        digits.push(b'0');
    }
    digits.reverse();
    let split = digits.len() - scale as usize;
    let mut out = String::with_capacity(digits.len() + 2);
    if negative {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&digits[..split]).unwrap_or("0"));
    if scale > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[split..]).unwrap_or("0"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_trip_exactly() {
        for (text, scale, expect) in [
            ("0", 2, "0.00"),
            ("1.5", 2, "1.50"),
            ("-1.5", 2, "-1.50"),
            ("-0.01", 2, "-0.01"),
            ("127", 0, "127"),
            ("128", 0, "128"),
            ("-128", 0, "-128"),
            ("-129", 0, "-129"),
            (
                "123456789012345678901234567890.123456789",
                9,
                "123456789012345678901234567890.123456789",
            ),
            (
                "-99999999999999999999999999999999999999",
                0,
                "-99999999999999999999999999999999999999",
            ),
        ] {
            let bytes = text_to_unscaled(text, scale).unwrap();
            assert_eq!(unscaled_to_text(&bytes, scale), expect, "{text}");
        }
    }

    #[test]
    fn two_complement_bytes_are_minimal() {
        assert_eq!(text_to_unscaled("127", 0).unwrap(), vec![0x7F]);
        assert_eq!(text_to_unscaled("128", 0).unwrap(), vec![0x00, 0x80]);
        assert_eq!(text_to_unscaled("-128", 0).unwrap(), vec![0x80]);
        assert_eq!(text_to_unscaled("-1", 0).unwrap(), vec![0xFF]);
        assert_eq!(text_to_unscaled("0", 0).unwrap(), vec![0x00]);
    }

    #[test]
    fn rejects_what_is_not_a_decimal() {
        assert!(text_to_unscaled("NaN", 2).is_err());
        assert!(text_to_unscaled("1.234", 2).is_err());
        assert!(text_to_unscaled("", 2).is_err());
        assert!(text_to_unscaled("1e5", 2).is_err());
        assert!(
            check("1e5", 2).is_err() && check("1.234", 2).is_err() && check("-1.230", 2).is_ok()
        );
        assert_eq!(
            text_to_unscaled("1.230", 2).unwrap(),
            text_to_unscaled("1.23", 2).unwrap()
        );
    }
}

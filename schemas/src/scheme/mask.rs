//! Masking and hashing of personal data in mapping schemes (`sluice.mask`).

use serde_json::Value as Json;

use crate::event::Datum;
use crate::resolve::AvroType;

/// What a masked field holds instead of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// Nothing: null, or the field's default when it cannot be null.
    Redact,
    /// The SHA-256 of the value's text form, lower-case hex. Deterministic, so joins and
    /// keys still work — and so a guessable value (an email) can be found by hashing guesses:
    /// prefer `hmac-sha256`.
    Sha256,
    /// HMAC-SHA-256 of the value's text form under the secret in `SLUICE_SCHEMES_HMAC_KEY`,
    /// lower-case hex: deterministic for whoever holds the key, unguessable for others.
    HmacSha256,
    /// `*` for every character but the last n.
    KeepLast(usize),
    /// `*` for every character but the first n.
    KeepFirst(usize),
}

/// The environment variable holding the HMAC key.
pub const HMAC_KEY_ENV: &str = "SLUICE_SCHEMES_HMAC_KEY";

impl Mask {
    pub const CHOICES: &'static str =
        "use \"redact\", \"sha256\", \"hmac-sha256\", {\"keep_last\": 4} or {\"keep_first\": 2}";

    pub fn parse(json: &Json) -> Result<Mask, String> {
        match json {
            Json::String(s) => match s.as_str() {
                "redact" => Ok(Mask::Redact),
                "sha256" => Ok(Mask::Sha256),
                "hmac-sha256" => Ok(Mask::HmacSha256),
                other => Err(
                    match super::did_you_mean(other, ["redact", "sha256", "hmac-sha256"]) {
                        Some(k) => format!("\"{other}\" is not a mask (did you mean \"{k}\"?)"),
                        None => format!("\"{other}\" is not a mask"),
                    },
                ),
            },
            Json::Object(o) if o.len() == 1 => {
                let (k, v) = o.iter().next().expect("one entry");
                let n = v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    format!("\"{k}\" needs a positive number of characters, not {v}")
                })? as usize;
                match k.as_str() {
                    "keep_last" => Ok(Mask::KeepLast(n)),
                    "keep_first" => Ok(Mask::KeepFirst(n)),
                    other => Err(format!("\"{other}\" is not a mask")),
                }
            }
            other => Err(format!("{other} is not a mask")),
        }
    }

    /// Whether the mask can fill a field of this type: `Err((message, fix))` when not.
    pub fn fits(&self, ty: &AvroType, default: Option<&Json>) -> Result<(), (String, String)> {
        match self {
            Mask::Redact => {
                if ty.accepts_null() || default.is_some() {
                    Ok(())
                } else {
                    Err((
                        "\"redact\" writes null, and the field cannot be null".into(),
                        "make the type [\"null\", …], or give a \"default\" to write instead"
                            .into(),
                    ))
                }
            }
            _ => {
                if ty.non_null().iter().all(|t| **t == AvroType::String)
                    && !ty.non_null().is_empty()
                {
                    Ok(())
                } else {
                    Err((
                        format!(
                            "a {} value is text, and the field's type is {ty}",
                            self.name()
                        ),
                        "make the field's type \"string\" (or [\"null\", \"string\"])".into(),
                    ))
                }
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Mask::Redact => "redact",
            Mask::Sha256 => "sha256",
            Mask::HmacSha256 => "hmac-sha256",
            Mask::KeepLast(_) => "keep_last",
            Mask::KeepFirst(_) => "keep_first",
        }
    }

    /// Whether the masked value is the same for the same input (usable in a key).
    pub fn deterministic(&self) -> bool {
        matches!(self, Mask::Sha256 | Mask::HmacSha256)
    }

    /// Masks a value whose text form is `text`. `replacement` is what `redact` writes.
    pub fn apply(&self, text: &str, key: Option<&ring::hmac::Key>, replacement: &Datum) -> Datum {
        match self {
            Mask::Redact => replacement.clone(),
            Mask::Sha256 => Datum::String(hex(ring::digest::digest(
                &ring::digest::SHA256,
                text.as_bytes(),
            )
            .as_ref())),
            Mask::HmacSha256 => match key {
                Some(key) => Datum::String(hex(ring::hmac::sign(key, text.as_bytes()).as_ref())),
                // A mapping with an HMAC mask is only compiled with a key.
                None => Datum::Null,
            },
            Mask::KeepLast(n) => {
                let chars: Vec<char> = text.chars().collect();
                let keep = chars.len().saturating_sub(*n);
                Datum::String(
                    chars
                        .iter()
                        .enumerate()
                        .map(|(i, c)| if i < keep { '*' } else { *c })
                        .collect(),
                )
            }
            Mask::KeepFirst(n) => Datum::String(
                text.chars()
                    .enumerate()
                    .map(|(i, c)| if i < *n { c } else { '*' })
                    .collect(),
            ),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_parse_and_apply() {
        let none = Datum::Null;
        assert_eq!(
            Mask::parse(&json!("sha256"))
                .unwrap()
                .apply("abc", None, &none),
            // The SHA-256 test vector of "abc".
            Datum::String(
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()
            )
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"key");
        assert_eq!(
            Mask::HmacSha256.apply(
                "The quick brown fox jumps over the lazy dog",
                Some(&key),
                &none
            ),
            // RFC 4231-style vector (Wikipedia's HMAC example).
            Datum::String(
                "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8".into()
            )
        );
        assert_eq!(
            Mask::parse(&json!({"keep_last": 4}))
                .unwrap()
                .apply("4111111111111111", None, &none),
            Datum::String("************1111".into())
        );
        assert_eq!(
            Mask::KeepFirst(2).apply("Ada", None, &none),
            Datum::String("Ad*".into())
        );
        assert_eq!(Mask::Redact.apply("x", None, &none), Datum::Null);
        assert_eq!(
            Mask::parse(&json!("sha-256")).unwrap_err(),
            "\"sha-256\" is not a mask (did you mean \"sha256\"?)"
        );
        assert!(Mask::parse(&json!({"keep_last": 0})).is_err());
    }
}

//! JSON values as they are produced: checked, then compacted byte for byte.
//!
//! Compacting removes the whitespace between tokens and nothing else (as Go's
//! `json.Compact`, which seed 003 uses): numbers, escapes and key order stay
//! exactly as sent, which re-serialising a parsed value would not promise
//! (large integers, `1.0`, `\u00e9`). Pure.

use serde::Deserialize;
use serde::de::IgnoredAny;

/// `bytes` without insignificant whitespace, if they are one JSON value in
/// UTF-8; else the parser's message with its position (line and column).
pub fn compact(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "JSON must be UTF-8; the byte at offset {} is not",
            e.valid_up_to()
        )
    })?;
    let mut parser = serde_json::Deserializer::from_str(text);
    // Skipping a value builds nothing and keeps its nesting on a heap stack,
    // so a deeply nested body costs memory in proportion, never the call stack.
    IgnoredAny::deserialize(&mut parser).map_err(|e| e.to_string())?;
    parser.end().map_err(|e| e.to_string())?;
    Ok(strip_whitespace(bytes))
}

/// Drops space, tab, CR and LF outside strings. The input is valid JSON, so
/// a quote that is not escaped always opens or closes a string.
fn strip_whitespace(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else {
            match byte {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_string = true;
                    out.push(byte);
                }
                _ => out.push(byte),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compacted(text: &str) -> String {
        String::from_utf8(compact(text.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn whitespace_between_tokens_goes_and_strings_stay_as_sent() {
        assert_eq!(
            compacted("{ \"a b\" : [ 1 ,\n\t2.50 ] ,\r\n \"c\\\" d\": \"x  y\" }\n"),
            r#"{"a b":[1,2.50],"c\" d":"x  y"}"#
        );
        assert_eq!(
            compacted("  12345678901234567890123  "),
            "12345678901234567890123"
        );
        assert_eq!(compacted(r#" "\u00e9\\" "#), r#""\u00e9\\""#);
    }

    #[test]
    fn what_is_not_one_json_value_is_refused_with_its_position() {
        let error = compact(b"{\"a\": }").unwrap_err();
        assert!(error.contains("line 1 column 7"), "{error}");
        let error = compact(b"{\"a\": 1}\n{\"b\": 2}").unwrap_err();
        assert!(error.contains("trailing characters"), "{error}");
        assert!(compact(b"").unwrap_err().contains("EOF"));
        assert!(compact(b"   ").is_err());
        assert!(compact(b"\"\\q\"").is_err(), "an invalid escape");
        assert!(compact(b"\"a\x01b\"").is_err(), "a raw control character");
        assert!(compact(b"[1,]").is_err());
        assert!(compact(b"\"\xff\"").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn deep_nesting_is_checked_without_recursion() {
        let deep = format!("{}{}", "[ ".repeat(100_000), "] ".repeat(100_000));
        assert_eq!(compact(deep.as_bytes()).unwrap().len(), 200_000);
        let unclosed = "[".repeat(100_000);
        assert!(compact(unclosed.as_bytes()).unwrap_err().contains("EOF"));
    }
}

//! Text that comes from a guest (error messages, deny reasons, what it wrote
//! to stderr) made safe to pass on: at most [`MAX_GUEST_TEXT`] bytes, with no
//! control characters, before it reaches a log line, the registry, a Kafka
//! header, an alert or an API response. Pure.

/// The most bytes of guest text the host passes on.
pub const MAX_GUEST_TEXT: usize = 1024;

/// The start of `text`, cut to [`MAX_GUEST_TEXT`] bytes on a character
/// boundary, with line breaks and tabs turned into spaces and every other
/// control character removed. A cut is marked with how much was left out.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_GUEST_TEXT + 32));
    for (at, c) in text.char_indices() {
        if out.len() + c.len_utf8() > MAX_GUEST_TEXT {
            out.push_str(&format!("… ({} more bytes cut)", text.len() - at));
            break;
        }
        push_clean(&mut out, c);
    }
    out
}

/// Like [`clean`], but keeps the end of `text`: where a panic message is,
/// at the end of what a guest wrote to stderr.
pub fn clean_tail(text: &str) -> String {
    if text.len() <= MAX_GUEST_TEXT {
        return clean(text);
    }
    let mut start = text.len() - MAX_GUEST_TEXT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let mut out = format!("({start} earlier bytes cut) …");
    for c in text[start..].chars() {
        push_clean(&mut out, c);
    }
    out
}

fn push_clean(out: &mut String, c: char) {
    match c {
        '\n' | '\r' | '\t' => out.push(' '),
        c if c.is_control() => {}
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_plain_text_passes_unchanged() {
        assert_eq!(clean("no such field: country"), "no such field: country");
    }

    #[test]
    fn control_characters_are_stripped_and_line_breaks_become_spaces() {
        assert_eq!(
            clean("line one\r\nX-Injected: 1\u{1b}[31mred\u{0}"),
            "line one  X-Injected: 1[31mred"
        );
    }

    #[test]
    fn long_text_is_cut_to_a_kilobyte_and_says_so() {
        let huge = "é".repeat(12 * 1024 * 1024);
        let cleaned = clean(&huge);
        let kept: String = cleaned.chars().take_while(|&c| c == 'é').collect();
        assert_eq!(kept.len(), MAX_GUEST_TEXT);
        assert!(cleaned.ends_with("more bytes cut)"), "{cleaned}");
        assert!(cleaned.len() < MAX_GUEST_TEXT + 64);
    }

    #[test]
    fn the_tail_keeps_the_end_where_the_panic_message_is() {
        let stderr = format!("{}panicked at src/lib.rs:3: boom\n", "noise\n".repeat(1000));
        let cleaned = clean_tail(&stderr);
        assert!(
            cleaned.ends_with("panicked at src/lib.rs:3: boom "),
            "{cleaned}"
        );
        assert!(cleaned.starts_with('('), "{cleaned}");
        assert!(cleaned.len() < MAX_GUEST_TEXT + 64);
        assert_eq!(clean_tail("short\n"), "short ");
    }
}

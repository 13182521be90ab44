//! Text a host sent, made safe to show on the user's terminal: control characters (escape
//! sequences that move the cursor, retitle the window, rewrite the clipboard) are shown as
//! escapes (`\u{1b}`), never sent to the terminal. Newlines and tabs stay.

use std::borrow::Cow;

use nu_session_protocol::RemoteError;

/// `text` with its control characters (other than newline and tab) written out.
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// An error from a host with every text in it [`printable`].
pub fn printable_error(mut error: RemoteError) -> RemoteError {
    let clean = |text: &mut String| {
        if let Cow::Owned(clean) = printable(text) {
            *text = clean;
        }
    };
    clean(&mut error.msg);
    if let Some(help) = error.help.as_mut() {
        clean(help);
    }
    if let Some(code) = error.code.as_mut() {
        clean(code);
    }
    for label in &mut error.labels {
        clean(&mut label.text);
    }
    error.inner = error.inner.into_iter().map(printable_error).collect();
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use nu_session_protocol::ErrorKind;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        assert_eq!(printable("plain\ttext\n"), "plain\ttext\n");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
        assert_eq!(
            printable("\u{1b}]0;pwned\u{7}\u{1b}[2J\r"),
            "\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\r"
        );
        // C1 controls (a one-byte CSI) too.
        assert_eq!(printable("a\u{9b}31mb"), "a\\u{9b}31mb");
    }

    #[test]
    fn every_text_of_an_error_is_cleaned() {
        let mut error = RemoteError::new(ErrorKind::Failed, "bad\u{1b}[31m");
        error.help = Some("\u{1b}[2J".into());
        error.inner = vec![RemoteError::new(ErrorKind::Failed, "inner\u{7}")];
        let error = printable_error(error);
        assert_eq!(error.msg, "bad\\u{1b}[31m");
        assert_eq!(error.help.as_deref(), Some("\\u{1b}[2J"));
        assert_eq!(error.inner[0].msg, "inner\\u{7}");
    }
}

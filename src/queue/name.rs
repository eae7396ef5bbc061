//! Queue name rules.
//!
//! Names are data, never SQL identifiers: nothing in pgflow is named after a queue's name, so the
//! rules exist for people and tools (logs, metrics labels, URLs), not for safety. They follow
//! Amazon SQS: 1 to 80 characters of ASCII letters, digits, `_`, `-` and `.`, starting with a
//! letter or digit. The same rule is the CHECK constraint `queue_name_format` on `pgflow.queue`.
use std::fmt;

/// Longest queue name, in characters.
pub const MAX_LEN: usize = 80;

/// The rule in one line, used as the error hint.
pub const RULE: &str = "A queue name has 1 to 80 characters: ASCII letters, digits, '_', '-' and '.', starting with a letter or digit.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong { len: usize },
    BadFirst { ch: char },
    BadChar { ch: char, pos: usize },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "it is empty"),
            NameError::TooLong { len } => {
                write!(
                    f,
                    "it has {len} characters, more than the {MAX_LEN} allowed"
                )
            }
            NameError::BadFirst { ch } => write!(f, "it starts with {ch:?}, not a letter or digit"),
            NameError::BadChar { ch, pos } => {
                write!(
                    f,
                    "character {pos} is {ch:?}, not a letter, digit, '_', '-' or '.'"
                )
            }
        }
    }
}

/// Checks a queue name against the rules; the first broken rule is reported.
pub fn validate(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let first = chars.next().ok_or(NameError::Empty)?;
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadFirst { ch: first });
    }
    for (i, ch) in chars.enumerate() {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')) {
            return Err(NameError::BadChar { ch, pos: i + 2 });
        }
    }
    let len = name.chars().count();
    if len > MAX_LEN {
        return Err(NameError::TooLong { len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_seed_queue_names() {
        for name in [
            "proposals_for_consensus_queue",
            "rollback_triggers_queue",
            "genesis.code-execution.requests",
            "q1",
            "9lives",
            &"a".repeat(MAX_LEN),
        ] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_empty_and_too_long() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(
            validate(&"a".repeat(MAX_LEN + 1)),
            Err(NameError::TooLong { len: 81 })
        );
    }

    #[test]
    fn rejects_sql_and_odd_characters_with_their_position() {
        assert_eq!(
            validate("x; drop table y --"),
            Err(NameError::BadChar { ch: ';', pos: 2 })
        );
        assert_eq!(validate("_private"), Err(NameError::BadFirst { ch: '_' }));
        assert_eq!(validate("-x"), Err(NameError::BadFirst { ch: '-' }));
        assert_eq!(validate("a b"), Err(NameError::BadChar { ch: ' ', pos: 2 }));
        assert_eq!(validate("qué"), Err(NameError::BadChar { ch: 'é', pos: 3 }));
        assert_eq!(
            validate("a\"b"),
            Err(NameError::BadChar { ch: '"', pos: 2 })
        );
        assert_eq!(
            validate("a\u{0}"),
            Err(NameError::BadChar {
                ch: '\u{0}',
                pos: 2
            })
        );
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // A bad character is reported before the length, whatever the byte count.
        let long_multibyte = "é".repeat(50);
        assert!(matches!(
            validate(&long_multibyte),
            Err(NameError::BadFirst { .. })
        ));
    }

    #[test]
    fn messages_name_the_problem() {
        let e = validate("x; drop").unwrap_err();
        assert_eq!(
            e.to_string(),
            "character 2 is ';', not a letter, digit, '_', '-' or '.'"
        );
        assert_eq!(
            NameError::TooLong { len: 81 }.to_string(),
            "it has 81 characters, more than the 80 allowed"
        );
    }
}

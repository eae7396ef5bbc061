//! Topic routing for `publish`: which bound patterns a topic matches.
//!
//! A topic is dot-separated words (`safety_profile.update.instance-3`); each word is 1 to 64 of
//! `A-Z a-z 0-9 _ -`, at most 255 bytes in all. A pattern is the same, where a word may also be
//! `*` (exactly one word) or `#` (zero or more words), as in AMQP topic exchanges:
//! `safety_profile.*` matches `safety_profile.update` but not `safety_profile` or
//! `safety_profile.update.x`; `safety_profile.#` matches all three; `#` matches every topic.
use std::fmt;

pub const MAX_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong(usize),
    EmptyWord(usize),
    BadWord(usize, String),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => write!(f, "must not be empty"),
            TopicError::TooLong(n) => write!(f, "is {n} bytes long; the limit is {MAX_LEN}"),
            TopicError::EmptyWord(i) => {
                write!(f, "word {} is empty (two dots, or a dot at an end)", i + 1)
            }
            TopicError::BadWord(i, w) => write!(
                f,
                "word {} ({w:?}) must be 1 to 64 of A-Z a-z 0-9 _ - (or * / # alone, in a pattern)",
                i + 1
            ),
        }
    }
}

fn check(s: &str, pattern: bool) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    for (i, w) in s.split('.').enumerate() {
        if w.is_empty() {
            return Err(TopicError::EmptyWord(i));
        }
        let wildcard = pattern && (w == "*" || w == "#");
        let plain = w.len() <= 64
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !wildcard && !plain {
            return Err(TopicError::BadWord(i, w.to_owned()));
        }
    }
    Ok(())
}

/// Checks a topic given to `publish`.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check(topic, false)
}

/// Checks a pattern given to `bind`.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    check(pattern, true)
}

/// Whether `topic` matches `pattern` (both valid). Dynamic programming over words, one row at a
/// time: O(p × t) time and O(t) memory.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let t: Vec<&str> = topic.split('.').collect();
    // prev[j]: the pattern words so far match the first j topic words.
    let mut prev = vec![false; t.len() + 1];
    prev[0] = true;
    let mut cur = vec![false; t.len() + 1];
    for w in pattern.split('.') {
        for j in 0..=t.len() {
            cur[j] = match w {
                "#" => prev[j] || (j > 0 && cur[j - 1]),
                "*" => j > 0 && prev[j - 1],
                w => j > 0 && prev[j - 1] && t[j - 1] == w,
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[t.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_words_match_only_themselves() {
        assert!(matches("a.b.c", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b.C"), "case-sensitive");
    }

    #[test]
    fn star_is_exactly_one_word() {
        assert!(matches("safety_profile.*", "safety_profile.update"));
        assert!(!matches("safety_profile.*", "safety_profile"));
        assert!(!matches("safety_profile.*", "safety_profile.update.x"));
        assert!(matches("*.update.*", "safety_profile.update.i-3"));
        assert!(!matches("*.update.*", "update.i-3"));
    }

    #[test]
    fn hash_is_zero_or_more_words() {
        assert!(matches("#", "a"));
        assert!(matches("#", "a.b.c"));
        assert!(matches("safety_profile.#", "safety_profile"));
        assert!(matches("safety_profile.#", "safety_profile.update.i-3"));
        assert!(!matches("safety_profile.#", "rollback.update"));
        assert!(matches("a.#.z", "a.z"));
        assert!(matches("a.#.z", "a.b.c.z"));
        assert!(!matches("a.#.z", "a.b.c"));
        assert!(matches("#.z.#", "z"));
        assert!(matches("*.#", "a.b"));
    }

    #[test]
    fn bad_topics_and_patterns_are_refused_with_the_reason() {
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(validate_topic("a..b"), Err(TopicError::EmptyWord(1)));
        assert_eq!(validate_topic(".a"), Err(TopicError::EmptyWord(0)));
        assert_eq!(
            validate_topic("a.*"),
            Err(TopicError::BadWord(1, "*".into()))
        );
        assert_eq!(
            validate_topic("a b"),
            Err(TopicError::BadWord(0, "a b".into()))
        );
        assert!(validate_topic("a.".repeat(127).trim_end_matches('.')).is_ok());
        assert_eq!(
            validate_topic(&"a".repeat(256)),
            Err(TopicError::TooLong(256))
        );
        assert!(validate_pattern("a.*.#").is_ok());
        assert_eq!(
            validate_pattern("a.b*"),
            Err(TopicError::BadWord(1, "b*".into()))
        );
        assert_eq!(
            validate_pattern("a.##"),
            Err(TopicError::BadWord(1, "##".into()))
        );
        assert!(
            validate_topic(&"x".repeat(65)).is_err(),
            "a word is at most 64 bytes"
        );
        assert!(TopicError::EmptyWord(1).to_string().contains("word 2"));
    }
}

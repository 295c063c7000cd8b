//! The settings a backend is opened with, as plain typed values: what
//! `backend_from_url(url, queue, **options)` and a backend's Python class hand
//! to the core. Each backend takes the options it knows by name and checks
//! them (its rules live in its own folder, once); any option left over is an
//! error naming it and listing what the backend takes.

use std::time::Duration;

use crate::{Error, Result};

/// One option's value, as given.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl OptionValue {
    fn kind(&self) -> &'static str {
        match self {
            OptionValue::Bool(_) => "a bool",
            OptionValue::Int(_) => "an int",
            OptionValue::Float(_) => "a float",
            OptionValue::Str(_) => "a string",
        }
    }
}

/// Named options for one backend. Options given as `None` are left out by
/// the caller: the backend's default applies.
#[derive(Debug, Clone, Default)]
pub struct Options {
    given: Vec<(String, OptionValue)>,
}

impl Options {
    pub fn new() -> Self {
        Options::default()
    }

    /// Add (or replace) an option.
    pub fn set(&mut self, name: impl Into<String>, value: OptionValue) -> &mut Self {
        let name = name.into();
        self.given.retain(|(k, _)| *k != name);
        self.given.push((name, value));
        self
    }

    fn take(&mut self, name: &str) -> Option<OptionValue> {
        let at = self.given.iter().position(|(k, _)| k == name)?;
        Some(self.given.remove(at).1)
    }

    fn wrong(name: &str, expected: &str, got: &OptionValue) -> Error {
        Error::Config(format!("{name}: expected {expected}, got {}", got.kind()))
    }

    pub fn take_str(&mut self, name: &str) -> Result<Option<String>> {
        match self.take(name) {
            None => Ok(None),
            Some(OptionValue::Str(s)) => Ok(Some(s)),
            Some(other) => Err(Self::wrong(name, "a string", &other)),
        }
    }

    pub fn take_bool(&mut self, name: &str) -> Result<Option<bool>> {
        match self.take(name) {
            None => Ok(None),
            Some(OptionValue::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(Self::wrong(name, "a bool", &other)),
        }
    }

    /// A non-negative integer.
    pub fn take_u64(&mut self, name: &str) -> Result<Option<u64>> {
        match self.take(name) {
            None => Ok(None),
            Some(OptionValue::Int(i)) => u64::try_from(i)
                .map(Some)
                .map_err(|_| Error::Config(format!("{name}: must be >= 0, got {i}"))),
            Some(other) => Err(Self::wrong(name, "an int", &other)),
        }
    }

    /// Seconds (an int or a float), finite and not negative.
    pub fn take_seconds(&mut self, name: &str) -> Result<Option<Duration>> {
        let secs = match self.take(name) {
            None => return Ok(None),
            Some(OptionValue::Int(i)) => i as f64,
            Some(OptionValue::Float(f)) => f,
            Some(other) => return Err(Self::wrong(name, "a number of seconds", &other)),
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(Error::Config(format!(
                "{name}: must be a finite, non-negative number of seconds, got {secs}"
            )));
        }
        Duration::try_from_secs_f64(secs)
            .map(Some)
            .map_err(|_| Error::Config(format!("{name}: out of range")))
    }

    /// After a backend took what it knows: an error naming whatever is left.
    pub fn finish(self, backend: &str, takes: &[&str]) -> Result<()> {
        if self.given.is_empty() {
            return Ok(());
        }
        let unknown: Vec<String> = self.given.iter().map(|(k, _)| format!("'{k}'")).collect();
        let takes = if takes.is_empty() {
            "no options".to_string()
        } else {
            takes.join(", ")
        };
        Err(Error::Config(format!(
            "unknown option(s) {} for {backend}; it takes: {takes}",
            unknown.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_taken_by_name_and_type() {
        let mut o = Options::new();
        o.set("lease_timeout", OptionValue::Int(2))
            .set("schema", OptionValue::Str("s".into()))
            .set("declare", OptionValue::Bool(false));
        assert_eq!(
            o.take_seconds("lease_timeout").unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(o.take_str("schema").unwrap().as_deref(), Some("s"));
        assert_eq!(o.take_bool("declare").unwrap(), Some(false));
        assert_eq!(o.take_u64("absent").unwrap(), None);
        assert!(o.finish("X", &[]).is_ok());
    }

    #[test]
    fn options_of_the_wrong_type_or_left_over_are_errors() {
        let mut o = Options::new();
        o.set("lease_timeout", OptionValue::Str("soon".into()));
        let e = o.take_seconds("lease_timeout").unwrap_err().to_string();
        assert!(
            e.contains("lease_timeout: expected a number of seconds"),
            "{e}"
        );
        let mut o = Options::new();
        o.set("lease_timeout", OptionValue::Float(-1.0));
        assert!(o.take_seconds("lease_timeout").is_err());
        let mut o = Options::new();
        o.set("colour", OptionValue::Str("red".into()));
        let e = o
            .finish("SqliteBackend", &["lease_timeout"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown option(s) 'colour' for SqliteBackend; it takes: lease_timeout"),
            "{e}"
        );
    }
}

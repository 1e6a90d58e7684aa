//! Logging: `tracing` with an env filter, human-readable on a terminal or
//! JSON lines with `--log-format json`. Every line goes through a
//! [`Redactor`] on its way to stderr, so no credential of the database URL
//! is ever written, whoever logs it (sqlx included). The text format is
//! coloured only when stderr is a terminal: a log written to a file or a
//! pipe holds no ANSI escape codes.

use std::{
    io::{IsTerminal, Write},
    sync::Arc,
};

use tracing_subscriber::{fmt, fmt::MakeWriter, EnvFilter};

use crate::{
    config::{LogConfig, LogFormat},
    redact::Redactor,
};

pub fn init(config: &LogConfig, redactor: Redactor) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = Scrubbing(Arc::new(redactor));
    let colour = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = fmt().with_env_filter(filter).with_writer(writer).with_ansi(colour);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Whether text logs carry colour: only on a terminal, and never when
/// `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Makes writers to stderr that mask secrets. The formatter writes each
/// event with one `write_all` of the whole line, so a secret is never
/// split between two writes.
#[derive(Clone)]
struct Scrubbing(Arc<Redactor>);

struct ScrubbingWriter(Arc<Redactor>);

impl<'a> MakeWriter<'a> for Scrubbing {
    type Writer = ScrubbingWriter;

    fn make_writer(&'a self) -> ScrubbingWriter {
        ScrubbingWriter(self.0.clone())
    }
}

impl Write for ScrubbingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().lock().write_all(self.0.scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::use_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None), "a file or pipe gets no escape codes");
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }
}

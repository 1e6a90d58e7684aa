//! Logging: `tracing` with an env filter, human-readable on a terminal or
//! JSON lines with `--log-format json`. Every line goes through a
//! [`Redactor`] on its way to stderr, so no credential of the database URL
//! is ever written, whoever logs it (sqlx included).

use std::{io::Write, sync::Arc};

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
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
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

//! ARN-style ids (SPEC 1.1) and parsing of execution references, which may be
//! an ARN or a bare UUID.

use uuid::Uuid;

use crate::config::ArnConfig;

#[derive(Debug, Clone)]
pub struct Arns {
    prefix: String,
}

/// An execution reference as a client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRef {
    pub id: Uuid,
    /// The pipeline name an ARN named; a bare UUID names none.
    pub pipeline: Option<String>,
}

impl Arns {
    pub fn new(config: &ArnConfig) -> Self {
        Arns {
            prefix: format!(
                "arn:{}:{}:{}:{}:pipeline/",
                config.partition, config.service, config.region, config.account
            ),
        }
    }

    pub fn pipeline(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn execution(&self, pipeline: &str, id: Uuid) -> String {
        format!("{}{pipeline}/execution/{id}", self.prefix)
    }

    /// Parses an ARN or a bare UUID. An ARN with another partition, service,
    /// region or account is not one of ours.
    pub fn parse_execution(&self, text: &str) -> Result<ExecutionRef, String> {
        if let Ok(id) = Uuid::parse_str(text) {
            return Ok(ExecutionRef { id, pipeline: None });
        }
        let bad = || {
            format!(
                "{text:?} is neither an execution id (UUID) nor an execution ARN ({}NAME/execution/UUID)",
                self.prefix
            )
        };
        let rest = text.strip_prefix(&self.prefix).ok_or_else(bad)?;
        let (pipeline, id) = rest.split_once("/execution/").ok_or_else(bad)?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        if pipeline.is_empty() {
            return Err(bad());
        }
        Ok(ExecutionRef {
            id,
            pipeline: Some(pipeline.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arns() -> Arns {
        Arns::new(&crate::config::Config::defaults().arn)
    }

    #[test]
    fn formats_and_parses() {
        let id = Uuid::now_v7();
        let arn = arns().execution("train", id);
        assert_eq!(
            arn,
            format!("arn:stepwise:pipelines:local:000000000000:pipeline/train/execution/{id}")
        );
        assert_eq!(
            arns().parse_execution(&arn).unwrap(),
            ExecutionRef {
                id,
                pipeline: Some("train".into())
            }
        );
        assert_eq!(arns().parse_execution(&id.to_string()).unwrap().pipeline, None);
        assert!(arns().parse_execution("nope").unwrap_err().contains("\"nope\""));
        assert!(arns()
            .parse_execution(&format!("arn:aws:sagemaker:x:1:pipeline/t/execution/{id}"))
            .is_err());
    }
}

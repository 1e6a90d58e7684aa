//! Name rules for pipelines, steps and parameters (SPEC 1.2). Hand-written
//! rather than regexes: the rules are tiny and the messages can then say
//! exactly what is wrong with the value.

/// SageMaker's pipeline-name rule `[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}`: ASCII
/// letters, digits and hyphens, starting and ending with a letter or digit, at
/// most 256 characters (SageMaker's API length limit).
pub fn check_pipeline_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("pipeline name must not be empty".into());
    }
    if name.len() > 256 {
        return Err(format!(
            "pipeline name {name:?} is {} characters long; at most 256 are allowed",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
        return Err(format!(
            "pipeline name {name:?} contains {c:?}; only letters, digits and hyphens are allowed"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "pipeline name {name:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Step names: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn check_step_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("step name must not be empty".into());
    }
    if name.chars().count() > 64 {
        return Err(format!("step name {name:?} is longer than 64 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "step name {name:?} contains {c:?}; only letters, digits, '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Parameter names: `[A-Za-z][A-Za-z0-9_]{0,63}`.
pub fn check_parameter_name(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("parameter name must not be empty".into());
    };
    if !first.is_ascii_alphabetic() {
        return Err(format!("parameter name {name:?} must start with a letter"));
    }
    if name.chars().count() > 64 {
        return Err(format!("parameter name {name:?} is longer than 64 characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(format!(
            "parameter name {name:?} contains {c:?}; only letters, digits and '_' are allowed"
        ));
    }
    Ok(())
}

/// Secret names, the rule of an environment variable name:
/// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters.
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("secret name must not be empty".into());
    };
    if name.len() > 128 {
        return Err(format!(
            "secret name {name:?} is {} characters long; at most 128 are allowed",
            name.chars().count()
        ));
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(format!("secret name {name:?} must start with a letter or '_'"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(format!(
            "secret name {name:?} contains {c:?}; only letters, digits and '_' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_names() {
        assert!(check_pipeline_name("train").is_ok());
        assert!(check_pipeline_name("a--b-9").is_ok());
        assert!(check_pipeline_name(&"a".repeat(256)).is_ok());
        assert!(check_pipeline_name(&"a".repeat(257)).unwrap_err().contains("256"));
        assert!(check_pipeline_name("").is_err());
        assert!(check_pipeline_name("-a").unwrap_err().contains("\"-a\""));
        assert!(check_pipeline_name("a-").is_err());
        assert!(check_pipeline_name("a_b").unwrap_err().contains("'_'"));
    }

    #[test]
    fn step_names() {
        assert!(check_step_name("Train_1-x").is_ok());
        assert!(check_step_name(&"s".repeat(64)).is_ok());
        assert!(check_step_name(&"s".repeat(65)).is_err());
        assert!(check_step_name("").is_err());
        assert!(check_step_name("a b").unwrap_err().contains("\"a b\""));
    }

    #[test]
    fn secret_names() {
        assert!(check_secret_name("API_TOKEN_2").is_ok());
        assert!(check_secret_name("_x").is_ok());
        assert!(check_secret_name(&"a".repeat(128)).is_ok());
        assert!(check_secret_name(&"a".repeat(129)).unwrap_err().contains("128"));
        assert!(check_secret_name("2x").unwrap_err().contains("\"2x\""));
        assert!(check_secret_name("a-b").unwrap_err().contains("'-'"));
        assert!(check_secret_name("").is_err());
    }

    #[test]
    fn parameter_names() {
        assert!(check_parameter_name("Epochs_2").is_ok());
        assert!(check_parameter_name("2x").unwrap_err().contains("\"2x\""));
        assert!(check_parameter_name("a-b").is_err());
        assert!(check_parameter_name(&format!("a{}", "b".repeat(63))).is_ok());
        assert!(check_parameter_name(&format!("a{}", "b".repeat(64))).is_err());
        assert!(check_parameter_name("").is_err());
    }
}

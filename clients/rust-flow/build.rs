//! Generates the typed client from the repository's openapi.yaml with
//! progenitor, into OUT_DIR: nothing generated is committed.

use std::{env, fs, path::PathBuf};

fn main() {
    let spec_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi.yaml");
    println!("cargo:rerun-if-changed={}", spec_path.display());
    let text = fs::read_to_string(&spec_path).expect("read openapi.yaml");
    let spec: openapiv3::OpenAPI = serde_yaml::from_str(&text).expect("openapi.yaml is an OpenAPI 3.0 document");
    let mut settings = progenitor::GenerationSettings::default();
    settings.with_interface(progenitor::InterfaceStyle::Builder);
    let mut generator = progenitor::Generator::new(&settings);
    let tokens = generator.generate_tokens(&spec).expect("progenitor generates a client");
    let file = syn::parse2(tokens).expect("the generated client parses");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("stepwise_client.rs");
    fs::write(&out, prettyplease::unparse(&file)).expect("write the generated client");
}
